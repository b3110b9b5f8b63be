"""Delivery: copies of a finished result to S3 or an FTP/FTPS server (docs/spec.md, "Deliver").
`deliver_all` copies to each target in turn and reports one outcome per target, never raising:
a failed copy leaves the downloadable result alone.
"""

from __future__ import annotations

import ftplib
import hashlib
import logging
import posixpath
import secrets as _secrets
import ssl
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.deliver.common import DeliveryFailure, DeliveryStopped, Stop, checked_address
from engine.fetch.outbound import OutboundPolicy
from engine.fetch.retry import wait_before_retry
from engine.spec.models import TABLE_TARGET_TYPES, Retry
from engine.spec.redact import Redactor
from engine.storage.s3 import describe_s3_error, s3_client, s3_session

log = logging.getLogger("pageferry.deliver")

ATTEMPTS = 3  # tries per target, the first included
BACKOFF = 1.0  # seconds before the 2nd try; doubles
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
FTP_BLOCK = 64 * 1024
S3_REQUEST_ATTEMPTS = 3  # botocore's own tries per request (inside each of ours)
NO_S3_CREDENTIALS = (
    "no S3 credentials: give access_key and secret_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)
NO_AMBIENT_CREDENTIALS = (
    "no S3 credentials: give access_key and secret_key (this service does not lend its own cloud "
    "credentials to specs unless its operator sets ALLOW_AMBIENT_CREDENTIALS=1)"
)


@dataclass
class Outcome:
    target: str
    ok: bool = False
    error: str | None = None
    attempts: int = 0

    def as_dict(self) -> dict:
        return {"target": self.target, "ok": self.ok, "error": self.error, "attempts": self.attempts}


def _never() -> bool:
    return False


def deliver_all(
    targets: Iterable,
    path: Path,
    redactor: Redactor,
    stop: Stop = _never,
    sleep: Callable[[float], None] = time.sleep,
    *,
    policy: OutboundPolicy | None = None,
    ambient_credentials: bool = True,
    ca_file: str | None = None,
) -> list[dict]:
    """Copy `path` to every target (resolved spec models, secrets substituted).

    `policy`: where a copy may connect (the target's host resolved and every address checked
    before connecting; the connection goes to the checked address). `ambient_credentials`:
    whether an S3 target without keys may use boto3's environment/instance credentials (the
    CLI: yes; the service: only with ALLOW_AMBIENT_CREDENTIALS). `ca_file`: FTPS_CA_FILE.

    Uploads the result to each target in turn and returns one outcome per target -
    `{"target", "ok", "error", "attempts"}` - never raising for a target that fails: a failed
    copy leaves the downloadable result alone. `target` describes
    where the copy went without any credential (`s3://bucket/prefix/file.zip`,
    `ftps://user@host:21/dir/file.zip`); `error` is worded here and passed through the job's
    redactor plus the credentials actually used (which may come from the AWS environment).

    S3: boto3's transfer manager (multipart above 8 MiB, parts uploaded in parallel), the
    result's sha256 kept as object metadata, the object's size checked afterwards.
    FTP: passive mode, explicit TLS (`AUTH TLS` + `PROT P`) when `tls`, the directory created
    level by level, the file stored under a temporary name and renamed into place.
    Transient failures (connection trouble, timeouts, 4xx FTP replies, 5xx S3 answers) are
    retried with backoff; permanent ones (a wrong password, a refused certificate, access
    denied) are not.

    `stop()` is polled between attempts and while bytes flow: when it says yes, the upload is
    abandoned and the outcome says so.
    """
    outcomes = []
    for target in targets:
        if target.type in TABLE_TARGET_TYPES:
            continue  # table targets: loaded in the export process (engine/deliver/tables.py)
        if stop():
            raise DeliveryStopped()
        upload: S3Upload | FtpUpload | GcsUpload
        if target.type == "s3":
            upload = S3Upload(target, path, policy, ambient_credentials)
        elif target.type == "gcs":
            from engine.deliver.gcs import GcsUpload  # its google-cloud-storage imports only when it runs

            upload = GcsUpload(target, path, policy, ambient_credentials)
        else:
            upload = FtpUpload(target, path, policy, ca_file)
        outcome = _with_retries(upload, redactor, stop, sleep)
        log.info("delivery %s: %s", outcome.target, "ok" if outcome.ok else outcome.error)
        outcomes.append(outcome.as_dict())
    return outcomes


def _with_retries(upload, redactor: Redactor, stop: Stop, sleep) -> Outcome:
    outcome = Outcome(target=redactor.text(upload.describe()))
    scrub = Redactor(set(redactor.secrets) | upload.credentials())
    for attempt in range(1, ATTEMPTS + 1):
        outcome.attempts = attempt
        try:
            upload.run(stop)
            outcome.ok, outcome.error = True, None
            return outcome
        except DeliveryStopped:
            raise
        except DeliveryFailure as exc:
            outcome.error = scrub.text(exc.message)
            if not exc.retryable:
                return outcome
        except Exception as exc:  # a library surprise: reported, never raised into the job
            outcome.error = scrub.text(f"{type(exc).__name__}: {exc}")[:500]
            return outcome
        if attempt < ATTEMPTS:
            delay = wait_before_retry(Retry(attempts=ATTEMPTS, backoff=BACKOFF, max_backoff=60.0), attempt)
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if stop():
                    raise DeliveryStopped()
                sleep(min(0.1, max(0.0, end - time.monotonic())))
    return outcome


# ------------------------------------------------------------------ S3


def s3_location(url: str, filename: str) -> tuple[str, str]:
    """`s3://bucket/prefix/` + filename → (bucket, key). A url not ending in '/' names the
    object itself (`s3://bucket/exports/latest.csv`)."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not prefix or prefix.endswith("/"):
        return bucket, prefix + filename
    return bucket, prefix


class S3Upload:
    def __init__(self, target, path: Path, policy: OutboundPolicy | None = None, ambient_credentials: bool = True):
        self.target = target
        self.path = Path(path)
        self.policy = policy
        self.ambient = ambient_credentials or (target.access_key is not None and target.secret_key is not None)
        self.bucket, self.key = s3_location(target.url, self.path.name)
        self._session = None

    def describe(self) -> str:
        if self._inner():
            return f"s3://{self.bucket}/{self._prefix()}"
        return f"s3://{self.bucket}/{self.key}"

    def _inner(self) -> bool:
        return bool(self.target.inner_files) and self.path.suffix == ".zip"

    def _prefix(self) -> str:
        _, _, prefix = self.target.url[len("s3://") :].partition("/")
        return prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def session(self):
        if self._session is None:
            self._session = s3_session(self.target.access_key, self.target.secret_key, self.target.region)
        return self._session

    def credentials(self) -> set[str]:
        """Every credential this upload may use, for scrubbing messages."""
        if not self.ambient:
            return set()
        try:
            creds = self.session().get_credentials()
        except Exception:
            return set()
        if creds is None:
            return set()
        frozen = creds.get_frozen_credentials()
        return {v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v}

    def _client(self):
        if not self.ambient:
            raise DeliveryFailure(NO_AMBIENT_CREDENTIALS, retryable=False)
        session = self.session()
        if session.get_credentials() is None:
            raise DeliveryFailure(NO_S3_CREDENTIALS, retryable=False)
        return s3_client(session, self._endpoint(), S3_REQUEST_ATTEMPTS, bool(self.target.endpoint_url))

    def _endpoint(self) -> str | None:
        """`endpoint_url`, its host resolved and checked; over plain http the checked address
        replaces the name (over https the name stays: TLS binds the connection to it). No
        endpoint_url: AWS's own endpoint, which a spec cannot point anywhere else."""
        url = self.target.endpoint_url
        if url is None:
            return None
        from yarl import URL

        parsed = URL(url)
        host = parsed.raw_host or ""
        address = checked_address(host, parsed.port or 443, self.policy, "S3")
        if parsed.scheme != "http":
            return url
        return str(parsed.with_host(address))

    def run(self, stop: Stop) -> None:
        from boto3.s3.transfer import TransferConfig

        try:
            client = self._client()
            config = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_CHUNK,
                max_concurrency=4,
                use_threads=True,
            )
            if self._inner():
                with zipfile.ZipFile(self.path) as archive:
                    for member in archive.infolist():
                        if member.is_dir():
                            continue
                        key = self._prefix() + member.filename
                        with archive.open(member) as stream:
                            self._transfer(client, config, stream, key, {}, stop)
                        self._check_size(client, key, member.file_size)
                return
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._transfer(client, config, str(self.path), self.key, {"Metadata": {"sha256": digest.hexdigest()}}, stop)
            self._check_size(client, self.key, self.path.stat().st_size)
        except (DeliveryFailure, DeliveryStopped):
            raise
        except Exception as exc:
            raise _s3_failure(exc) from None

    def _transfer(self, client, config, source, key: str, extra: dict, stop: Stop) -> None:
        from boto3.s3.transfer import create_transfer_manager

        manager = create_transfer_manager(client, config)
        cancelled = False
        try:
            future = manager.upload(source, self.bucket, key, extra_args=extra or None)
            while not future.done():
                if stop():
                    cancelled = True
                    future.cancel()
                    break
                time.sleep(0.05)
            if not cancelled:
                future.result()
        finally:
            manager.shutdown(cancel=cancelled)
        if cancelled:
            raise DeliveryStopped()

    def _check_size(self, client, key: str, size: int) -> None:
        head = client.head_object(Bucket=self.bucket, Key=key)
        if head.get("ContentLength") != size:
            raise DeliveryFailure(
                f"S3: the stored object has {head.get('ContentLength')} bytes, not {size}", retryable=True
            )


def _s3_failure(exc: Exception) -> DeliveryFailure:
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError):
        return DeliveryFailure(NO_S3_CREDENTIALS, retryable=False)
    return DeliveryFailure(*describe_s3_error(exc))


# ------------------------------------------------------------------ FTP / FTPS


class _FtpsWithSessionReuse(ftplib.FTP_TLS):
    """Data connections resume the control connection's TLS session (servers such as vsftpd
    and pyftpdlib's strict mode require it)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


class FtpUpload:
    def __init__(self, target, path: Path, policy: OutboundPolicy | None = None, ca_file: str | None = None):
        self.target = target
        self.path = Path(path)
        self.policy = policy
        self.ca_file = ca_file
        self.directory = target.directory or "/"

    def describe(self) -> str:
        scheme = "ftps" if self.target.tls else "ftp"
        folder = self.directory if self.directory.startswith("/") else "/" + self.directory
        return (
            f"{scheme}://{self.target.username}@{self.target.host}:{self.target.port}"
            f"{posixpath.join(folder, self.path.name)}"
        )

    def credentials(self) -> set[str]:
        return {self.target.password} if self.target.password else set()

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.target.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> ftplib.FTP:
        t = self.target
        # Connected to the checked address; the name is kept for TLS (SNI, the certificate's
        # name). Passive data connections go to the control connection's peer, never to an
        # address the server names (ftplib's default).
        address = checked_address(t.host, t.port, self.policy, "FTP")
        ftp: ftplib.FTP
        if t.tls:
            tls = _FtpsWithSessionReuse(context=self._context(), timeout=t.timeout)
            tls.connect(address, t.port)
            tls.host = t.host
            tls.auth()
            tls.login(t.username, t.password)
            tls.prot_p()
            ftp = tls
        else:
            ftp = ftplib.FTP(timeout=t.timeout)
            ftp.connect(address, t.port)
            ftp.host = t.host
            ftp.login(t.username, t.password)
        ftp.set_pasv(True)
        return ftp

    def _enter_directory(self, ftp: ftplib.FTP) -> None:
        if self.directory.startswith("/"):
            ftp.cwd("/")
        for part in (p for p in self.directory.split("/") if p and p != "."):
            try:
                ftp.cwd(part)
            except ftplib.error_perm:
                try:
                    ftp.mkd(part)
                except ftplib.error_perm:
                    pass  # made meanwhile by someone else, or refused: cwd tells
                ftp.cwd(part)

    def run(self, stop: Stop) -> None:
        name = self.path.name
        temp = f".{name}.part-{_secrets.token_hex(4)}"
        ftp = None
        stored = False
        try:
            ftp = self._connect()
            self._enter_directory(ftp)

            def progress(_block: bytes) -> None:
                if stop():
                    raise DeliveryStopped()

            stored = True  # from here on a (partial) temp file may exist
            with open(self.path, "rb") as f:
                ftp.storbinary(f"STOR {temp}", f, blocksize=FTP_BLOCK, callback=progress)
            try:
                ftp.rename(temp, name)
            except ftplib.error_perm:
                ftp.delete(name)  # some servers refuse to rename over an existing file
                ftp.rename(temp, name)
            stored = False
            try:
                size = ftp.size(name)
            except ftplib.error_perm:
                size = None  # SIZE is optional
            if size is not None and size != self.path.stat().st_size:
                raise DeliveryFailure(f"FTP: the stored file has {size} bytes, not {self.path.stat().st_size}", True)
            try:
                ftp.quit()
            except (ftplib.Error, OSError, EOFError):
                pass
            ftp = None
        except (DeliveryFailure, DeliveryStopped):
            raise
        except ftplib.error_perm as exc:
            raise DeliveryFailure(f"FTP: {_reply(exc)}", retryable=False) from None
        except (ftplib.error_temp, ftplib.error_reply, ftplib.error_proto) as exc:
            raise DeliveryFailure(f"FTP: {_reply(exc)}", retryable=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryFailure(
                f"FTPS: the server's certificate is not trusted ({exc.verify_message}); "
                "the operator can set FTPS_CA_FILE (ca_file), or give verify: false",
                retryable=False,
            ) from None
        except ssl.SSLError as exc:
            raise DeliveryFailure(f"FTPS: TLS failed ({exc.reason or type(exc).__name__})", retryable=True) from None
        except (OSError, EOFError) as exc:
            what = (
                "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or type(exc).__name__)
            )
            raise DeliveryFailure(
                f"FTP: connection to {self.target.host}:{self.target.port} failed ({what})", retryable=True
            ) from None
        finally:
            if ftp is not None:
                if stored:
                    try:
                        ftp.delete(temp)
                    except Exception:
                        pass
                try:
                    ftp.close()
                except Exception:
                    pass


def _reply(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
