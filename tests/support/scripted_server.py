"""A real HTTP/1.1 server on 127.0.0.1 (port 0, one thread per connection) that answers from a
per-test script and records every request it gets.

    server.add("GET", "/v1/orders", Reply(500), Reply.json([{"a": 1}]))

Replies for one (method, path) are used in order; the last one is repeated once the others are
used up. The path is matched without its query string. A request with no script gets a 404 and
is listed in `server.unscripted` (the fixture fails the test on it).

Behaviours of a `Reply` besides status/headers/body:
  delay        seconds to wait before answering (woken early when the server stops)
  drop         close the connection without answering
  truncate     declare a Content-Length `truncate` bytes larger than the body, send the body, close
  chunked      Transfer-Encoding: chunked, no Content-Length
  repeat       the body is sent `repeat` times (a large body without holding it in memory)
  chunk_delay  seconds to wait between two pieces of the body

Every request is logged as a `Recorded`: method, target (path + query), path, query, headers
(case-insensitive), body, arrival time (time.monotonic()), and once the reply is over: whether
it was sent completely, how many body bytes went out, and whether the client closed the
connection before the reply was complete (`finished` is set then).
"""

from __future__ import annotations

import gzip
import json
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    drop: bool = False
    truncate: int = 0
    chunked: bool = False
    repeat: int = 1
    chunk_delay: float = 0.0

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: dict | None = None, gzipped: bool = False, **kw) -> Reply:
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return cls(status, headers, body, **kw)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, {"Location": location})


@dataclass
class Recorded:
    method: str
    target: str  # path + query, as sent
    path: str
    query: str
    headers: Any  # http.client.HTTPMessage: case-insensitive get / `in`
    body: bytes
    arrived: float  # time.monotonic()
    completed: bool = False
    client_closed: bool = False
    bytes_sent: int = 0
    finished: threading.Event = field(default_factory=threading.Event)
    client: tuple = ()  # the client's (address, port): one per connection

    @property
    def host(self) -> str:
        return (self.headers.get("Host") or "").rsplit(":", 1)[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # no server thread waits forever on a stuck client
    server: _HTTPServer

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _serve(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        rec = Recorded(
            self.command,
            self.path,
            parts.path,
            parts.query,
            self.headers,
            body,
            time.monotonic(),
            client=tuple(self.client_address),
        )
        reply = owner._next(rec)
        try:
            self._answer(reply, rec, owner._stopping)
            rec.completed = not reply.drop and not reply.truncate
        except OSError:  # BrokenPipe, ConnectionReset, socket timeout: the client went away
            rec.client_closed = True
            self.close_connection = True
        finally:
            rec.finished.set()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _answer(self, reply: Reply, rec: Recorded, stopping: threading.Event) -> None:
        if reply.delay:
            stopping.wait(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        total = len(reply.body) * reply.repeat
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        lowered = {k.lower() for k in reply.headers}
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in lowered:
            self.send_header("Content-Length", str(total + reply.truncate))
        if reply.truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        for n in range(reply.repeat):
            if n and reply.chunk_delay:
                stopping.wait(reply.chunk_delay)
            piece = reply.body
            if not piece:
                continue
            if reply.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            rec.bytes_sent += len(piece)
        if reply.chunked:
            self.wfile.write(b"0\r\n\r\n")
        if reply.truncate:
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedServer

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that hung up (or was made to): expected here
        super().handle_error(request, client_address)


class ScriptedServer:
    def __init__(self, host: str = "127.0.0.1", tls: tuple | None = None):
        """`tls`: (certificate, key) files - the server then speaks HTTPS."""
        self.script: dict[tuple[str, str], list[Reply]] = {}
        self.log: list[Recorded] = []
        self.unscripted: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _HTTPServer((host, 0), _Handler)
        self._httpd.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"scripted-server-{self.port}",
        )
        self._thread.start()

    def url(self, target: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{target}"

    def add(self, method: str, path: str, *replies: Reply) -> ScriptedServer:
        with self._lock:
            self.script.setdefault((method.upper(), path), []).extend(replies)
        return self

    def replace(self, method: str, path: str, *replies: Reply) -> ScriptedServer:
        with self._lock:
            self.script[(method.upper(), path)] = list(replies)
        return self

    def _next(self, rec: Recorded) -> Reply:
        with self._lock:
            self.log.append(rec)
            queue = self.script.get((rec.method, rec.path))
            if not queue:
                self.unscripted.append(rec)
                return Reply.json({"error": "unscripted request"}, status=404)
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.log if path is None or r.path == path]

    def close(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
