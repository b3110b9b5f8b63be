"""Limits that keep one client from starving the others (docs/security.md, "Fail closed").

- `BodyLimiter`: a WSGI middleware. At most `MAX_REQUEST_BODIES` requests with a body are read
  at once per worker process; one more is answered `503` (`Retry-After: 1`) at once, without
  reading its body. A body being read gets a per-read socket timeout (`READ_TIMEOUT`) and a
  total deadline (`BODY_SECONDS` plus its declared length at `MIN_RATE`): a stalled body is
  given up with `408` and its thread is freed. A connection whose body was not read to the end
  is closed right after the answer: never drained, never lingered on (gunicorn's graceful close
  waits up to 2 s for the client on the worker's main thread, which also accepts connections).
- `SocketSlots`: websocket viewers per task and in total, per worker process (`429` when full).
- `check_spec_size`: the job spec as stored (compact JSON) over `MAX_SPEC_BYTES` is a `413`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from typing import Any

from werkzeug.exceptions import RequestTimeout

from service.errors import ApiError

READ_TIMEOUT = 10.0  # seconds one read of a request body may wait for data
BODY_SECONDS = 30.0  # a body's total deadline: this ...
MIN_RATE = 64 * 1024  # ... plus its declared length read at this many bytes a second


def _error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None):
    body = json.dumps({"error": code, "message": message, "details": []}).encode()
    return body, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(headers or [])]


def _has_body(environ: dict) -> bool:
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    try:
        return int(environ.get("CONTENT_LENGTH") or 0) > 0
    except ValueError:
        return False


def _give_up_connection(environ: dict) -> None:
    """Close the connection after this answer instead of draining the unread body, and say
    so (`Connection: close`): a client is never told keep-alive and then cut off."""
    stream = environ.get("pageferry.raw_input", environ.get("wsgi.input"))
    if stream is not None and hasattr(stream, "failed"):  # gunicorn's http.body.Body
        stream.failed = True  # gunicorn: a body that failed to read ends the connection
    # gunicorn gives the app no handle on its response but through wsgi.early_hints' closure
    hints = environ.get("wsgi.early_hints")
    for cell in getattr(hints, "__closure__", None) or ():
        try:
            target = cell.cell_contents
        except ValueError:
            continue
        if callable(getattr(target, "force_close", None)):  # gunicorn.http.wsgi.Response
            target.force_close()


def _blocking(sock: Any) -> None:
    """The socket as gunicorn keeps it between reads: blocking, no timeout."""
    if sock is not None:
        try:
            sock.settimeout(None)
        except OSError:
            pass


def _finish_quickly(wrapped: _DeadlineInput, sock: Any) -> None:
    """Read what is left of a body the app did not read, if it has all arrived already (at
    most 256 KiB, 50 ms): then the connection can stay open. A body still on its way is not
    waited for."""
    if sock is None:
        return
    deadline = time.monotonic() + 0.05
    try:
        for _ in range(64):
            if wrapped.done or time.monotonic() > deadline:
                return
            sock.settimeout(0.005)
            data = wrapped.stream.read(4096)
            wrapped._after(data, 4096)
    except Exception:  # nothing more yet (a timeout), or the client went away
        return


def _drop(sock: socket.socket) -> None:
    """End a connection whose request body is left unread, once its answer is written: FIN
    after the answer, what already arrived is discarded without waiting, then no more reading
    (so gunicorn's close does not linger on a client that keeps the connection open)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0)
        for _ in range(16):  # at most 64 KiB already in the buffer: fewer resets for the client
            if not sock.recv(4096):
                break
    except OSError:  # BlockingIOError (nothing more yet) included
        pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class _ThenDrop:
    """The app's answer; when the server closes it (after writing it), `_drop` the connection."""

    def __init__(self, body, sock: socket.socket):
        self.body, self.sock = body, sock

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            _drop(self.sock)


class _DeadlineInput:
    """wsgi.input with a total deadline and a per-read socket timeout; tells whether the body
    was read to its end."""

    def __init__(self, stream: Any, sock: Any, length: int | None, deadline: float):
        self.stream, self.sock, self.length, self.deadline = stream, sock, length, deadline
        self.done = length == 0
        self.seen = 0

    def _before(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("the request body was not sent in time")
        if self.sock is not None:
            try:
                self.sock.settimeout(min(READ_TIMEOUT, remaining))
            except OSError:
                pass

    def _after(self, data: bytes, size: int | None) -> bytes:
        self.seen += len(data)
        if not data and size != 0:
            self.done = True
        elif self.length is not None and self.seen >= self.length:
            self.done = True
        return data

    def _call(self, method: str, size: int | None = None) -> bytes:
        self._before()
        try:
            data = getattr(self.stream, method)() if size is None else getattr(self.stream, method)(size)
        except TimeoutError:  # socket.timeout: no data for READ_TIMEOUT
            raise RequestTimeout("the request body stalled") from None
        return self._after(data, size)

    def read(self, size: int | None = -1) -> bytes:
        return self._call("read", None if size is None or size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        data = self._call("readline", None if size is None or size < 0 else size)
        if data and not data.endswith(b"\n") and (size is None or size < 0 or len(data) < size):
            self.done = True
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")


class BodyLimiter:
    """The WSGI middleware (see the module's docstring); `app.wsgi_app = BodyLimiter(...)`."""

    def __init__(self, app, max_bodies: int):
        self.app = app
        self.max_bodies = max_bodies
        self._slots = threading.BoundedSemaphore(max_bodies)

    def __call__(self, environ: dict, start_response):
        if not _has_body(environ):
            return self.app(environ, start_response)
        sock = environ.get("gunicorn.socket")
        if not self._slots.acquire(blocking=False):
            _give_up_connection(environ)
            body, headers = _error(
                503,
                "unavailable",
                f"too many request bodies being received (MAX_REQUEST_BODIES={self.max_bodies}); retry shortly",
                [("Retry-After", "1"), ("Connection", "close")],
            )
            start_response("503 Service Unavailable", headers)
            return [body] if sock is None else _ThenDrop([body], sock)
        raw = environ.get("wsgi.input")
        try:
            length: int | None = int(environ.get("CONTENT_LENGTH") or 0) or None
        except ValueError:
            length = None
        wrapped = _DeadlineInput(raw, sock, length, time.monotonic() + BODY_SECONDS + (length or 0) / MIN_RATE)
        environ["pageferry.raw_input"] = raw
        environ["wsgi.input"] = wrapped
        try:
            answer = self.app(environ, start_response)
        finally:
            self._slots.release()
            _blocking(sock)
        if not wrapped.done:  # answered before the body was read (a 401, 404, 408, 413...)
            _finish_quickly(wrapped, sock)
            _blocking(sock)
        if wrapped.done:
            return answer
        _give_up_connection(environ)
        return answer if sock is None else _ThenDrop(answer, sock)


class SocketSlots:
    """Open websockets of this worker process, per task and in total."""

    def __init__(self, per_task: int, total: int):
        self.per_task, self.total = per_task, total
        self._lock = threading.Lock()
        self._by_task: Counter[str] = Counter()

    def acquire(self, task_id: str) -> str | None:
        """Take a slot; None when taken, else which limit is reached."""
        with self._lock:
            if sum(self._by_task.values()) >= self.total:
                return f"MAX_WS_TOTAL ({self.total}) websockets are open on this worker"
            if self._by_task[task_id] >= self.per_task:
                return f"MAX_WS_PER_TASK ({self.per_task}) websockets are open on this task"
            self._by_task[task_id] += 1
            return None

    def release(self, task_id: str) -> None:
        with self._lock:
            self._by_task[task_id] -= 1
            if self._by_task[task_id] <= 0:
                del self._by_task[task_id]

    def open(self) -> int:
        with self._lock:
            return sum(self._by_task.values())


def spec_bytes(document: Any) -> int:
    """The size of a spec (or profile) as stored: compact JSON, UTF-8."""
    return len(json.dumps(document, separators=(",", ":")).encode("utf-8"))


def check_spec_size(document: Any, limit: int, field: str = "spec") -> None:
    """413 when a spec, as it would be stored, exceeds `limit` (MAX_SPEC_BYTES)."""
    try:
        size = spec_bytes(document)
    except (RecursionError, TypeError, ValueError):
        return  # not a storable document: validation answers for it
    if size > limit:
        raise ApiError(
            413,
            f"the job spec is {size} bytes as stored; MAX_SPEC_BYTES is {limit}",
            "payload_too_large",
            [{"field": field, "message": f"at most {limit} bytes (compact JSON)"}],
        )
