"""RESULT_STORE=s3://bucket/prefix: the shared copy of shards and results in an S3-compatible
bucket (AWS, MinIO, moto), through boto3. Also the S3 client plumbing the `deliver` targets
use (one way to build a session and a client, one way to put an S3 error into words)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.storage.config import ResultStoreError, StoreConfig

log = logging.getLogger("pageferry.storage")

REQUEST_ATTEMPTS = 5  # botocore's tries per request: a shard upload rides out a brief outage
CHECK_ATTEMPTS = 2  # ... but the start-up ping says at once that the store cannot be reached
CHUNK = 1024 * 1024  # bytes per read when streaming an object
DELETE_BATCH = 1000  # keys per DeleteObjects request (S3's maximum)
RETRYABLE_CODES = ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed")


# ------------------------------------------------------------------ the client (shared with deliver)


def s3_session(access_key: str | None, secret_key: str | None, region: str | None):
    """A boto3 session: the keys given, else boto3's own lookup (environment, instance role)."""
    import boto3

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region)


def s3_client(session, endpoint_url: str | None, attempts: int, path_style: bool):
    """An S3 client with bounded timeouts and botocore's standard retries; path-style
    addressing for endpoints other than AWS's (MinIO and moto have no per-bucket host names)."""
    from botocore.config import Config

    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if path_style else {},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def describe_s3_error(exc: Exception) -> tuple[str, bool]:
    """(what went wrong in words, whether another try may succeed) for a boto3 error."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or "error"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = (err.get("Message") or "").strip()
        retryable = (status or 0) >= 500 or code in RETRYABLE_CODES
        text = f"S3 {code}" + (f" (HTTP {status})" if status else "") + (f": {message[:300]}" if message else "")
        return text, retryable
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return f"S3: cannot connect to the endpoint ({type(exc).__name__})", True
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.ConnectionError)):
        return f"S3: the connection failed ({type(exc).__name__})", True
    if isinstance(exc, bx.ParamValidationError):
        return f"S3: {exc}", False
    if isinstance(exc, OSError):
        return f"S3: {type(exc).__name__}: {exc.strerror or exc}", True
    return f"S3: {type(exc).__name__}: {exc}"[:500], False


# ------------------------------------------------------------------ the store


@dataclass
class StoredObject:
    """One object of the store, as a download needs it."""

    key: str
    size: int
    last_modified: datetime | None


class S3ResultStore:
    """Objects below RESULT_STORE's prefix, addressed by paths relative to it. Thread-safe (one
    boto3 client, built on first use); every failure is a ResultStoreError naming RESULT_STORE."""

    shared = True

    def __init__(self, config: StoreConfig):
        self.config = config
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ResultStore({self.config.url!r})"

    # ------------------------------------------------------------ plumbing
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._new_client(REQUEST_ATTEMPTS)
            return self._client

    def _new_client(self, attempts: int):
        config = self.config
        if not config.ambient and not (config.access_key and config.secret_key):
            raise ResultStoreError(
                f"RESULT_STORE {config.url}: set RESULT_STORE_ACCESS_KEY and RESULT_STORE_SECRET_KEY "
                "(or ALLOW_AMBIENT_CREDENTIALS=1 to use the AWS environment's credentials)"
            )
        session = s3_session(config.access_key, config.secret_key, config.region)
        if session.get_credentials() is None:
            raise ResultStoreError(
                f"RESULT_STORE {config.url}: no credentials: set RESULT_STORE_ACCESS_KEY and "
                "RESULT_STORE_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        return s3_client(session, config.endpoint_url, attempts, bool(config.endpoint_url))

    def _failure(self, doing: str, exc: Exception) -> ResultStoreError:
        if isinstance(exc, ResultStoreError):
            return exc
        text, _ = describe_s3_error(exc)
        for secret in self.config.secrets():
            text = text.replace(secret, "***")
        return ResultStoreError(f"RESULT_STORE {self.config.url}: {doing}: {text}")

    # ------------------------------------------------------------ objects
    def check(self) -> None:
        """Fail now, saying why, when the bucket cannot be listed (missing, wrong keys, no
        endpoint) - the service's start-up ping."""
        try:
            client = self._new_client(CHECK_ATTEMPTS)
            client.list_objects_v2(Bucket=self.config.bucket, Prefix=self.config.key(""), MaxKeys=1)
        except Exception as exc:
            raise self._failure("cannot list the bucket", exc) from None

    def names(self, relative: str) -> dict[str, int]:
        """Every object below `relative` (a folder, ending in '/'): its path relative to that
        folder -> its size."""
        prefix = self.config.key(relative)
        found: dict[str, int] = {}
        try:
            pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(prefix) :]] = item["Size"]
        except Exception as exc:
            raise self._failure(f"cannot list {relative}", exc) from None
        return found

    def upload(self, path: Path, relative: str, metadata: dict[str, str] | None = None) -> None:
        """Store the file at `path` as `relative`, with `metadata` (multipart above 8 MiB, by
        boto3's transfer; an object appears whole or not at all)."""
        extra = {"Metadata": metadata} if metadata else None
        try:
            self.client().upload_file(str(path), self.config.bucket, self.config.key(relative), ExtraArgs=extra)
        except Exception as exc:
            raise self._failure(f"cannot store {relative}", exc) from None

    def download(self, relative: str, path: Path) -> tuple[str, dict[str, str]]:
        """Copy `relative` to `path` (a temp name beside it, renamed when complete); returns the
        SHA-256 of the bytes and the object's metadata."""
        temp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
        digest = hashlib.sha256()
        try:
            found = self.client().get_object(Bucket=self.config.bucket, Key=self.config.key(relative))
            body = found["Body"]
            path.parent.mkdir(parents=True, exist_ok=True)
            with body, open(temp, "wb") as file:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
                    file.write(chunk)
            os.replace(temp, path)
        except Exception as exc:
            temp.unlink(missing_ok=True)
            raise self._failure(f"cannot read {relative}", exc) from None
        return digest.hexdigest(), dict(found.get("Metadata") or {})

    def copy(self, source: str, target: str) -> None:
        """A copy inside the bucket (the bytes do not travel through this process)."""
        bucket = self.config.bucket
        try:
            self.client().copy({"Bucket": bucket, "Key": self.config.key(source)}, bucket, self.config.key(target))
        except Exception as exc:
            raise self._failure(f"cannot copy {source}", exc) from None

    def remove(self, relative: str) -> int:
        """Delete every object below the folder `relative` (ending in '/'), or the object
        `relative` itself; returns how many were deleted."""
        keys = [relative + name for name in self.names(relative)] if relative.endswith("/") else [relative]
        try:
            for start in range(0, len(keys), DELETE_BATCH):
                batch = [{"Key": self.config.key(k)} for k in keys[start : start + DELETE_BATCH]]
                self.client().delete_objects(Bucket=self.config.bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as exc:
            raise self._failure(f"cannot delete {relative}", exc) from None
        return len(keys)

    def stored(self, relative: str) -> StoredObject | None:
        """The object `relative`, or None when there is none."""
        from botocore.exceptions import ClientError

        key = self.config.key(relative)
        try:
            head = self.client().head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._failure(f"cannot find {relative}", exc) from None
        except Exception as exc:
            raise self._failure(f"cannot find {relative}", exc) from None
        return StoredObject(relative, int(head["ContentLength"]), head.get("LastModified"))

    def stream(self, relative: str, span: tuple[int, int] | None = None) -> Iterator[bytes]:
        """The bytes of `relative` (of [start, stop) when `span` is given), a chunk at a time:
        memory stays bounded whatever the object's size. The request is sent at once, so a
        failure is raised here, not half-way through a response."""
        extra = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
        try:
            body = self.client().get_object(Bucket=self.config.bucket, Key=self.config.key(relative), **extra)["Body"]
        except Exception as exc:
            raise self._failure(f"cannot read {relative}", exc) from None
        return _chunks(body)


def _chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()  # also when the client went away mid-download
