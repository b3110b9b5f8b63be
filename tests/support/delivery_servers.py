"""Real peers for the delivery tests, all on 127.0.0.1 in this process: a webhook receiver
(http.server), an S3-compatible server (moto's standalone server) and an FTP/FTPS server
(pyftpdlib, TLS with a self-signed certificate made here with `cryptography`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.net import free_port

S3_KEY, S3_SECRET = "AKIDPAGEFERRYTEST", "s3-secret-Zq81wQ"

# Quiet peers: pyftpdlib logs every command, moto's werkzeug every request.
logging.getLogger("pyftpdlib").addHandler(logging.NullHandler())
logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
logging.getLogger("werkzeug").setLevel(logging.ERROR)


# ------------------------------------------------------------------ webhook receiver


class Receiver:
    """Records every POST. Answers `fail_first` times with `fail_status`, then 200 - or 401
    when a secret is set and the signature does not match the exact body bytes."""

    def __init__(
        self,
        secret: str | None = None,
        fail_first: int = 0,
        fail_status: int = 500,
        delay: float = 0.0,
        hold: threading.Event | None = None,
        retry_after: str | None = None,
    ):
        """`delay`: seconds before each answer; `hold`: answer only once this event is set
        (30 s at most)."""
        self.secret, self.fail_first, self.fail_status, self.delay = secret, fail_first, fail_status, delay
        self.hold, self.retry_after = hold, retry_after
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    n = len(receiver.requests) + 1
                    entry = {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": None,
                        "received": time.monotonic(),
                    }
                    receiver.requests.append(entry)
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                if n <= receiver.fail_first:
                    status = receiver.fail_status
                elif receiver.secret is not None and not receiver.signed(entry):
                    status = 401
                else:
                    status = 200
                entry["status"] = status
                self.send_response(status)
                if status != 200 and receiver.retry_after is not None:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def signed(self, entry: dict) -> bool:
        expected = "sha256=" + hmac.new(self.secret.encode(), entry["body"], hashlib.sha256).hexdigest()
        return hmac.compare_digest(entry["headers"].get("X-Pageferry-Signature", ""), expected)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def accepted(self) -> list[dict]:
        """Bodies (decoded) of the POSTs answered 200."""
        return [json.loads(r["body"]) for r in self.requests if r["status"] == 200]

    def wait(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len([r for r in self.requests if r["status"] is not None]) < count:
            assert time.monotonic() < deadline, f"the receiver got {len(self.requests)} of {count} POSTs"
            time.sleep(0.05)
        return self.requests

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ S3 (moto)


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def __enter__(self) -> S3Server:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


# ------------------------------------------------------------------ FTP / FTPS (pyftpdlib)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost, its own CA (so it can be trusted as ca_file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pageferry test FTPS")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class FtpServer:
    """pyftpdlib on 127.0.0.1 in a thread. `tls`: explicit FTPS, required on control and data
    connections. `fail_stores`: the first N STORs are answered `450` (a transient error)."""

    def __init__(
        self,
        root: Path,
        user: str = "ferry",
        password: str = "ftp-pw-K2m9x",
        tls: bool = True,
        certs: Path | None = None,
        fail_stores: int = 0,
    ):
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
        from pyftpdlib.servers import FTPServer

        self.root, self.user, self.password, self.tls = Path(root), user, password, tls
        self.root.mkdir(parents=True, exist_ok=True)
        self.received: list[str] = []  # paths of files stored, in order
        self.commands: list[str] = []
        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(self.root), perm="elradfmwMT")
        server_self = self
        base = TLS_FTPHandler if tls else FTPHandler
        remaining = {"fail": fail_stores}

        class Handler(base):
            auth_failed_timeout = 0.05

            def pre_process_command(self, line, cmd, arg):
                server_self.commands.append(cmd)
                return super().pre_process_command(line, cmd, arg)

            def ftp_STOR(self, file, mode="w"):
                if remaining["fail"] > 0:
                    remaining["fail"] -= 1
                    self.respond("450 Not now, try again.")
                    return
                return super().ftp_STOR(file, mode)

            def on_file_received(self, file):
                server_self.received.append(file)

        Handler.authorizer = authorizer
        Handler.passive_ports = None
        if tls:
            self.cert, self.key = self_signed_certificate(certs or self.root.parent / "certs")
            Handler.certfile, Handler.keyfile = str(self.cert), str(self.key)
            Handler.tls_control_required = True
            Handler.tls_data_required = True
            Handler.ssl_context = None  # built from certfile/keyfile on first use
        from pyftpdlib.ioloop import IOLoop

        # An IO loop of its own: the default one is a process-wide singleton, and two servers
        # polling it from two threads trample each other.
        self.server = FTPServer(("127.0.0.1", 0), Handler, ioloop=IOLoop())
        self.port = self.server.address[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.server.ioloop.loop(timeout=0.05, blocking=False)
        self.server.close_all()

    def target(self, **overrides) -> dict:
        target = {
            "type": "ftp",
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.user,
            "password": self.password,
            "directory": "/exports/daily",
            "tls": self.tls,
        }  # its certificate is trusted through FTPS_CA_FILE (`self.cert`), a setting, not a spec field
        target.update(overrides)
        return target

    def __enter__(self) -> FtpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(5)
