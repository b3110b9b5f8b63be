"""Start/stop the local test API as a subprocess and talk to its control endpoints.

    with TestAPI() as api:                      # or: api = TestAPI.start() ... api.stop()
        requests.get(api.url("/items/page", page=2, n=500))
        api.log()                               # [{"t", "method", "path", "query", ...}, ...]
        api.reset()

Control calls use urllib with proxies disabled (no dependency on ``requests``).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[2]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _StartMethod:
    """``TestAPI.start(**kw)`` builds and starts an instance; ``api.start()`` starts ``api``."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, cls):
        if obj is None:
            return lambda **kw: self.func(cls(**kw))
        return lambda: self.func(obj)


def _qvalue(v) -> str:
    if v is True:
        return "1"
    if v is False:
        return "0"
    return str(v)


class TestAPI:
    """A test API server subprocess on 127.0.0.1."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
        cache_mb: int | None = None,
        extra_args: list[str] | None = None,
    ):
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.cache_mb = cache_mb
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self._stderr = None
        self._stderr_final: str | None = None
        self._pump: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    @_StartMethod
    def start(self) -> TestAPI:
        """Launch the server, wait for ``READY <port>`` (``startup_timeout`` s) and return self."""
        if self.proc is not None:
            return self
        cmd = [
            sys.executable,
            "-m",
            "tests.testapi.server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.cache_mb is not None:
            cmd += ["--cache-mb", str(self.cache_mb)]
        cmd += self.extra_args
        env = dict(os.environ)
        paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = tempfile.TemporaryFile(prefix="testapi-stderr-")
        self._stderr_final = None
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        lines: queue.Queue = queue.Queue()

        def pump(stream=self.proc.stdout):
            # Forward the first line, then keep draining so the pipe never fills.
            try:
                for raw in iter(stream.readline, b""):
                    lines.put(raw.decode("utf-8", "replace").strip())
            finally:
                stream.close()
                lines.put(None)

        self._pump = threading.Thread(target=pump, name="testapi-stdout", daemon=True)
        self._pump.start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"test API did not print READY within {self.startup_timeout}s") from None
        if not line or not line.startswith("READY "):
            err = self.stderr_text()
            self.stop()
            raise RuntimeError(f"test API failed to start (got {line!r}); stderr:\n{err}")
        self.port = int(line.split()[1])
        self.base_url = f"http://{self.host}:{self.port}"
        self._owner_pid = os.getpid()
        atexit.register(self._atexit_stop)
        return self

    def _atexit_stop(self) -> None:
        if os.getpid() == getattr(self, "_owner_pid", None):  # not in a forked child
            self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGTERM), then kill it if it has not exited after ``timeout`` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._stderr is not None:
            self._stderr_final = self.stderr_text()
            self._stderr.close()
            self._stderr = None
        atexit.unregister(self._atexit_stop)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stderr_text(self) -> str:
        """What the server wrote to stderr (tracebacks of test-API bugs end up here)."""
        if self._stderr is None:
            return self._stderr_final or ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self) -> TestAPI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers
    def url(self, path: str, **query) -> str:
        """``base_url + path`` plus the query (True/False become 1/0; lists repeat the key)."""
        if not path.startswith("/"):
            path = "/" + path
        items = []
        for k, v in query.items():
            if isinstance(v, (list, tuple)):
                items.extend((k, _qvalue(x)) for x in v)
            elif v is not None:
                items.append((k, _qvalue(v)))
        return f"{self.base_url}{path}" + (f"?{urlencode(items)}" if items else "")

    def _call(self, method: str, path: str, timeout: float = 10.0, body: bytes | None = None):
        data = body if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.base_url + path, method=method, data=data)
        with _OPENER.open(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def log(self, path: str | None = None, since: int = 0) -> list[dict]:
        """The arrival log (list of dicts, arrival order), optionally only entries for ``path``."""
        entries = self._call("GET", f"/_log?since={since}")["requests"]
        if path is not None:
            entries = [e for e in entries if e["path"] == path]
        return entries

    def tokens_issued(self) -> int:
        return self._call("GET", "/_log?since=999999999")["tokens_issued"]

    def stats(self) -> dict:
        return self._call("GET", "/_stats")

    def warm(self, paths, timeout: float = 300.0) -> dict:
        """Pre-render ``paths`` (``"/items/page?page=1&n=..."``, or full URLs of this server) into
        the server's cache, so a timed run doesn't pay for rendering. Not logged."""
        rel = [p[len(self.base_url) :] if p.startswith(self.base_url) else p for p in paths]
        return self._call("POST", "/_warm", timeout=timeout, body=json.dumps({"paths": rel}).encode())

    def reset(self) -> None:
        """Clear the log, the per-key fault attempt counters and the OAuth state."""
        self._call("POST", "/_reset")
