"""Where a job's shards and the service's results are shared between instances: RESULT_STORE
read once from the settings into a small, picklable object that any process (a pool process,
later a Dask worker on another host) turns into a client of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from config import Settings
from engine.errors import JobFailed


class ResultStoreError(JobFailed):
    """RESULT_STORE cannot be used (the bucket is missing, the credentials are refused, the
    endpoint does not answer). A JobFailed, so a job that meets it fails saying so; the
    message names RESULT_STORE and never holds a key."""


@dataclass(frozen=True)
class StoreConfig:
    """RESULT_STORE=s3://bucket/prefix and its RESULT_STORE_* settings. The keys stay out of
    repr (and so out of logs and tracebacks that print it)."""

    bucket: str
    prefix: str = ""  # without slashes at either end; "" = the bucket's root
    endpoint_url: str | None = None  # MinIO, moto, ... (None: AWS)
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    ambient: bool = False  # without keys, may boto3 take the AWS environment's credentials?

    @property
    def url(self) -> str:
        """RESULT_STORE as the operator wrote it (for messages)."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        """The object key of `relative` (a path below RESULT_STORE, '/'-separated)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message."""
        return tuple(value for value in (self.access_key, self.secret_key) if value)


def store_config(settings: Settings, service: bool) -> StoreConfig | None:
    """The shared store RESULT_STORE names, or None: shards and results stay on local disk
    (DATA_DIR) - the default. `service`: the AWS environment's credentials only with
    ALLOW_AMBIENT_CREDENTIALS=1 (the CLI runs for its own user: always)."""
    if not settings.result_store.startswith("s3://"):
        return None
    bucket, _, prefix = settings.result_store.removeprefix("s3://").partition("/")
    return StoreConfig(
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint_url=settings.result_store_endpoint_url,
        region=settings.result_store_region,
        access_key=settings.result_store_access_key,
        secret_key=settings.result_store_secret_key,
        ambient=not service or settings.allow_ambient_credentials,
    )
