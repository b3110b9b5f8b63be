"""Peers for the outbound tests: an "internal" host on 127.0.0.2 that counts every TCP
connection it gets (and answers nothing useful), and a job runner with a chosen policy."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from engine.fetch.outbound import OutboundPolicy
from engine.spec.models import parse_spec
from engine.spec.prepare import prepare
from engine.spec.redact import SecretNames

INTERNAL = "127.0.0.2"  # on loopback, bindable here: stands for an address inside the network


class ConnectionCounter:
    """A TCP listener that accepts, counts and closes every connection (an FTP banner, an HTTP
    peer, whatever: any connection at all is the failure)."""

    def __init__(self, host: str = INTERNAL):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                conn.sendall(b"220 INTERNAL-BANNER ready\r\n")
            except OSError:
                pass
            conn.close()

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> ConnectionCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_with_policy(
    engine,
    tmp_path: Path,
    spec: dict,
    policy: OutboundPolicy,
    env: dict | None = None,
    secret_names: SecretNames | None = None,
):
    """`prepare` and run `spec` as a process with `policy` would (the service: public only, or
    its ALLOWED_SOURCE_HOSTS); returns the JobResult, raises SpecError / JobFailed."""
    from engine.run.engine import new_job_id

    prepared = prepare(parse_spec(spec), env or {}, policy, base_dir=tmp_path, secret_names=secret_names)
    job_id = new_job_id("sec")
    options = engine.options(job_id, tmp_path / "work" / job_id, tmp_path / "out" / prepared.spec.output_name)
    options.outbound = policy
    return engine.runner(prepared, options).run()
