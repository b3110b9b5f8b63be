"""Delivery to Google Cloud Storage (docs/delivery.md, "gcs"), run by `deliver_all` in
engine/deliver/targets.py with the same retries and outcome shape as S3.

The coordinator imports this module when a job has a `gcs` target; google-cloud-storage and
google-auth are imported only inside `GcsUpload.run` (the coordinator stays light).

- Files up to `RESUMABLE_THRESHOLD` go in one request (a multipart upload); larger ones as a
  resumable upload in `RESUMABLE_CHUNK` pieces (a multiple of 256 KiB, as GCS requires), with
  `stop()` polled between pieces.
- The object carries the file's sha256 as metadata (`metadata["sha256"]`, like S3's). After the
  upload the object is read back (metadata only) and its size, its sha256 metadata and the
  crc32c GCS computed from the bytes it stored are compared with the local file's.
- Credentials: `credentials` (a service-account JSON, from a `${NAME}` secret) or
  `credentials_file`; none with `endpoint_url` (an emulator): anonymous; none otherwise: the
  ambient Google credentials (Application Default Credentials), only when the caller allows
  ambient credentials (the CLI does; the service only with ALLOW_AMBIENT_CREDENTIALS=1). A
  `credentials_file` is a file on the machine that runs the job, so it counts as ambient too.
- Errors are worded here (status codes and reasons, never the library's text, which may hold
  upload session URLs or credential fragments).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from engine.deliver.common import DeliveryFailure, DeliveryStopped, Stop, checked_address

RESUMABLE_THRESHOLD = 8 * 1024 * 1024  # larger files go as resumable uploads
RESUMABLE_CHUNK = 8 * 1024 * 1024  # a multiple of 256 KiB (GCS's rule for resumable chunks)
TIMEOUT = (10.0, 120.0)  # (connect, read) seconds per request
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
EMULATOR_PROJECT = "pageferry"  # a project id for the anonymous client (emulators ignore it)
NO_GCS_CREDENTIALS = (
    "no GCS credentials: give credentials (a service-account JSON in a ${NAME} secret) or credentials_file"
)
NO_AMBIENT = " (this service uses its own Google credentials only with ALLOW_AMBIENT_CREDENTIALS=1)"
RETRYABLE_STATUSES = (408, 429, 500, 502, 503, 504)

assert RESUMABLE_CHUNK % (256 * 1024) == 0


def gcs_location(url: str, filename: str) -> tuple[str, str]:
    """`gs://bucket/prefix/` + filename → (bucket, object name). A url not ending in '/' names
    the object itself (`gs://bucket/exports/latest.csv`), as for S3."""
    bucket, _, prefix = url[len("gs://") :].partition("/")
    if not prefix or prefix.endswith("/"):
        return bucket, prefix + filename
    return bucket, prefix


def file_digests(path: Path) -> tuple[int, str, str]:
    """(size, sha256 hex, crc32c as GCS shows it: base64 of the big-endian 4 bytes)."""
    import google_crc32c

    sha = hashlib.sha256()
    crc = google_crc32c.Checksum()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), base64.b64encode(crc.digest()).decode("ascii")


class GcsUpload:
    """One copy of `path` to a `gcs` target (a resolved `GcsTarget`: secrets substituted).

    `policy` (engine.fetch.outbound.OutboundPolicy, or None: no check) vets `endpoint_url`'s
    host and the addresses it resolves to before anything connects; `ambient_credentials`
    says whether the machine's own Google credentials (or a credentials file on it) may be
    used."""

    def __init__(self, target: Any, path: Path, policy: Any = None, ambient_credentials: bool = True):
        self.target = target
        self.path = Path(path)
        self.policy = policy
        self.ambient_credentials = ambient_credentials
        self.bucket, self.name = gcs_location(target.url, self.path.name)
        self.resumable: bool | None = None  # how the last upload went (tests, logs)

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    def credentials(self) -> set[str]:
        """Every credential this upload may use, for scrubbing messages: the JSON text and the
        private key in it (as text and as the JSON escapes it)."""
        raw = self.target.credentials
        if not raw:
            return set()
        found = {raw}
        try:
            info = json.loads(raw)
        except ValueError:
            return found
        if isinstance(info, dict):
            for field in ("private_key", "private_key_id", "refresh_token", "client_secret"):
                value = info.get(field)
                if isinstance(value, str) and value:
                    found.add(value)
                    found.add(json.dumps(value)[1:-1])
                    found.update(line for line in value.splitlines() if len(line) >= 16)
        return found

    # ------------------------------------------------------------------ connecting

    def _endpoint(self) -> str | None:
        """`endpoint_url`, checked with the outbound policy (ALLOWED_SOURCE_HOSTS; the service:
        public addresses only) as written and at every address its host resolves to; over plain
        http the checked address replaces the name, so a second lookup cannot answer
        differently (over https the name stays: TLS binds the connection to it) - as for S3.
        No endpoint_url: Google's own endpoint, which a spec cannot point anywhere else."""
        endpoint = self.target.endpoint_url
        if not endpoint:
            return None
        endpoint = endpoint.rstrip("/")
        from yarl import URL

        from engine.fetch.outbound import url_problem

        if self.policy is not None:
            problem = url_problem(endpoint, self.policy)
            if problem:
                raise DeliveryFailure(f"GCS: endpoint_url: {problem}", retryable=False)
        parsed = URL(endpoint)
        address = checked_address(parsed.raw_host or "", parsed.port or 443, self.policy, "GCS")
        if parsed.scheme != "http":
            return endpoint
        return str(parsed.with_host(address))

    def _google_credentials(self) -> tuple[Any, str | None]:
        """(credentials, project) for the client."""
        from google.oauth2 import service_account

        t = self.target
        if t.credentials:
            try:
                info = json.loads(t.credentials)
                if not isinstance(info, dict):
                    raise ValueError
                creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
            except Exception:
                raise DeliveryFailure(
                    "GCS: credentials is not a service-account JSON document (type, client_email, private_key, ...)",
                    retryable=False,
                ) from None
            return creds, info.get("project_id") or EMULATOR_PROJECT
        if t.credentials_file:
            if not self.ambient_credentials:
                raise DeliveryFailure(
                    "GCS: credentials_file names a file on the machine that runs the job; this service "
                    "allows that only with ALLOW_AMBIENT_CREDENTIALS=1 (give credentials in a ${NAME} secret)",
                    retryable=False,
                )
            try:
                creds = service_account.Credentials.from_service_account_file(t.credentials_file, scopes=SCOPES)
                with open(t.credentials_file, encoding="utf-8") as f:
                    project = json.load(f).get("project_id")
            except OSError as exc:
                raise DeliveryFailure(
                    f"GCS: cannot read credentials_file ({exc.strerror or type(exc).__name__})", retryable=False
                ) from None
            except Exception:
                raise DeliveryFailure(
                    "GCS: credentials_file is not a service-account JSON file", retryable=False
                ) from None
            return creds, project or EMULATOR_PROJECT
        if t.endpoint_url:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials(), EMULATOR_PROJECT
        if not self.ambient_credentials:
            raise DeliveryFailure("GCS: " + NO_GCS_CREDENTIALS + NO_AMBIENT, retryable=False)
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, project = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError:
            raise DeliveryFailure(
                "GCS: " + NO_GCS_CREDENTIALS + ", or set up Application Default Credentials", False
            ) from None
        return creds, project or EMULATOR_PROJECT

    def _client(self) -> Any:
        from google.cloud import storage  # type: ignore[import-untyped]

        creds, project = self._google_credentials()
        endpoint = self._endpoint()
        options = {"api_endpoint": endpoint} if endpoint else None
        return storage.Client(project=project, credentials=creds, client_options=options)

    # ------------------------------------------------------------------ uploading

    def run(self, stop: Stop) -> None:
        try:
            size, sha256, crc32c = file_digests(self.path)
            client = self._client()
            bucket = client.bucket(self.bucket)
            self.resumable = size > RESUMABLE_THRESHOLD
            if stop():
                raise DeliveryStopped()
            if self.resumable:
                self._upload_resumable(bucket, sha256, stop)
            else:
                blob = bucket.blob(self.name)
                blob.metadata = {"sha256": sha256}
                blob.upload_from_filename(str(self.path), checksum="crc32c", retry=None, timeout=TIMEOUT)
            self._verify(bucket, size, sha256, crc32c)
        except (DeliveryFailure, DeliveryStopped):
            raise
        except Exception as exc:
            raise _gcs_failure(exc, self.bucket) from None

    def _upload_resumable(self, bucket: Any, sha256: str, stop: Stop) -> None:
        from google.cloud.storage.fileio import BlobWriter  # type: ignore[import-untyped]

        blob = bucket.blob(self.name, chunk_size=RESUMABLE_CHUNK)
        blob.metadata = {"sha256": sha256}
        writer = BlobWriter(
            blob, chunk_size=RESUMABLE_CHUNK, ignore_flush=True, retry=None, checksum="crc32c", timeout=TIMEOUT
        )
        with open(self.path, "rb") as f:
            for piece in iter(lambda: f.read(RESUMABLE_CHUNK), b""):
                if stop():
                    # Abandoned: an unfinished resumable session never becomes an object.
                    raise DeliveryStopped()
                writer.write(piece)
        writer.close()  # the last piece, which finalizes the object

    def _verify(self, bucket: Any, size: int, sha256: str, crc32c: str) -> None:
        stored = bucket.get_blob(self.name, retry=None, timeout=TIMEOUT)
        if stored is None:
            raise DeliveryFailure(f"GCS: the object {self.name!r} is missing after the upload", retryable=True)
        if stored.size != size:
            raise DeliveryFailure(f"GCS: the stored object has {stored.size} bytes, not {size}", retryable=True)
        if (stored.metadata or {}).get("sha256") != sha256:
            raise DeliveryFailure("GCS: the stored object's sha256 metadata differs from the file's", retryable=True)
        if stored.crc32c is not None and stored.crc32c != crc32c:
            raise DeliveryFailure("GCS: the stored object's crc32c differs from the file's", retryable=True)


def _gcs_failure(exc: Exception, bucket: str) -> DeliveryFailure:
    """A library exception → a failure worded here (no library text: it may quote URLs with
    upload session ids, or credential fragments)."""
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    name = type(exc).__name__
    if isinstance(exc, gx.GoogleAPICallError):
        status = exc.code or 0
        if status == 404:
            return DeliveryFailure(f"GCS: bucket {bucket!r} not found (HTTP 404)", retryable=False)
        if status in (401, 403):
            return DeliveryFailure(f"GCS: access denied to bucket {bucket!r} (HTTP {status})", retryable=False)
        reason = _reason(exc)
        return DeliveryFailure(
            f"GCS: HTTP {status}" + (f" ({reason})" if reason else ""), retryable=status in RETRYABLE_STATUSES
        )
    if isinstance(exc, ax.RefreshError):
        return DeliveryFailure("GCS: the credentials were refused (no access token)", retryable=False)
    if isinstance(exc, ax.TransportError):
        return DeliveryFailure("GCS: cannot reach the token endpoint", retryable=True)
    if isinstance(exc, ax.GoogleAuthError):
        return DeliveryFailure(f"GCS: the credentials cannot be used ({name})", retryable=False)
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse  # type: ignore[import-untyped]

    if isinstance(exc, DataCorruption):
        return DeliveryFailure("GCS: the upload's crc32c check failed", retryable=True)
    if isinstance(exc, InvalidResponse):
        status = getattr(getattr(exc, "response", None), "status_code", None) or 0
        if status == 404:
            return DeliveryFailure(f"GCS: bucket {bucket!r} not found (HTTP 404)", retryable=False)
        if status in (401, 403):
            return DeliveryFailure(f"GCS: access denied to bucket {bucket!r} (HTTP {status})", retryable=False)
        return DeliveryFailure(f"GCS: HTTP {status}", retryable=status in RETRYABLE_STATUSES)
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return DeliveryFailure("GCS: the connection timed out", retryable=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return DeliveryFailure("GCS: cannot connect to the endpoint (connection failed)", retryable=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return DeliveryFailure(f"GCS: the request failed ({name})", retryable=True)
    if isinstance(exc, OSError):
        return DeliveryFailure(f"GCS: {name}: {exc.strerror or 'I/O error'}", retryable=True)
    return DeliveryFailure(f"GCS: unexpected {name}", retryable=False)


def _reason(exc: Any) -> str:
    """The API's error reason code (`rateLimitExceeded`, `invalid`): a short fixed word."""
    try:
        for item in exc.errors or ():
            reason = item.get("reason") if isinstance(item, dict) else None
            if isinstance(reason, str) and reason.isidentifier() and len(reason) <= 60:
                return reason
    except Exception:
        pass
    return ""
