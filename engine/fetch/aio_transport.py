"""The HTTP transport on an event loop: `engine.fetch.transport.HttpClient`'s direct path (pooled
keep-alive connections to a plain http(s) URL) over asyncio streams, so one fetch process
keeps many requests in flight without a thread for each.

Why: a thread per in-flight request costs a wake-up, a GIL hand-off and ~9 context switches
per page; with a slow API and 32 in flight that, not the network, bounded the fetch (1.6x the
ideal time on 2 cores). One loop wakes once for many answers.

The same request bytes (`HttpClient.prepare`), redirect rules (`redirect_hop`), host allowlist,
body limits (`BodyCollector`) and error wording (`_as_fetch_error`) as the blocking client; the
response is framed the way `http.client` frames it (status line, `100 Continue`, keep-alive,
Content-Length, chunked, read-to-close). A hop that does not take the direct path (a proxy from
the environment, a URL urllib3 would rewrite) is sent by the blocking client on a helper thread.
"""
from __future__ import annotations

import asyncio
import http.client
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from engine.fetch.transport import (CHUNK, MAX_REDIRECTS, BodyCollector, FetchError, HttpClient, Response, _as_fetch_error,
                         _Headers, _reusable, message_from_lines, redirect_hop, with_query)

MAX_LINE = 65536      # http.client's limits on a header line and on the number of headers
MAX_HEADERS = 100

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class _Head:
    status: int
    headers: _Headers
    length: int | None    # body bytes still to read; None: chunked, or until the server closes
    chunked: bool
    will_close: bool


class AsyncHttpClient:
    """One per fetch process, used from its one event loop; limits and routes are the
    blocking `client`'s."""

    def __init__(self, client: HttpClient):
        self.client = client
        self._idle: dict[tuple, list[_Connection]] = {}

    def close(self) -> None:
        pools, self._idle = self._idle, {}
        for idle in pools.values():
            for _, writer in idle:
                writer.close()

    async def send(self, method: str, url: str, params: dict, headers: dict, body: Any, timeout: float,
                   before_each: Callable[[], Awaitable[Any]],
                   answered: Callable[[Any], None] = lambda ticket: None) -> Response:
        """`HttpClient.send` on the event loop: `before_each` is awaited before every hop."""
        for _ in range(MAX_REDIRECTS + 1):
            self.client.check_host(url)
            response = await self._send_once(method, with_query(url, params), headers, body, timeout,
                                             before_each, answered)
            hop = redirect_hop(response, method, url, headers, body)
            if hop is None:
                return response
            (method, url, headers, body), params = hop, {}
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", retryable=False)

    async def _send_once(self, method: str, url: str, headers: dict, body: Any, timeout: float,
                         before_send: Callable[[], Awaitable[Any]], answered: Callable[[Any], None]) -> Response:
        prepared = self.client.prepare(method, url, headers, body, timeout)
        if prepared.key is None:
            return await self._send_on_thread(method, url, headers, body, timeout, before_send, answered)
        key = prepared.key
        connection = self._pooled(key)
        try:
            ticket = await before_send()
        except BaseException:   # cancelled while waiting for the slot
            if connection is not None:
                self._release(key, connection)
            raise
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                if connection is None:
                    connection = await self._connect(key)
                reader, writer = connection
                writer.write(prepared.request)
                head = await _read_head(reader, method)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a worded FetchError
            if connection is not None:
                connection[1].close()
            raise _as_fetch_error(_stdlib_error(exc), timeout, "connection failed") from None
        answered(ticket)
        complete = False
        try:
            collected = BodyCollector(self.client.max_body, head.status, head.headers, started, timeout)
            async for chunk in _body(reader, head, timeout):
                collected.add(chunk)
            data = collected.finish()
            complete = True
            return Response(head.status, head.headers, data, url)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _as_fetch_error(_stdlib_error(exc), timeout, "body truncated or connection dropped",
                                  head.status) from None
        finally:
            if complete and not head.will_close:
                self._release(key, connection)
            else:
                writer.close()  # a half-read connection cannot be reused

    async def _send_on_thread(self, method: str, url: str, headers: dict, body: Any, timeout: float,
                              before_send: Callable[[], Awaitable[Any]], answered: Callable[[Any], None]) -> Response:
        loop = asyncio.get_running_loop()

        def before_send_blocking() -> Any:   # the rate-limit slot is still taken on the loop
            return asyncio.run_coroutine_threadsafe(before_send(), loop).result()

        return await loop.run_in_executor(None, self.client._send_once, method, url, headers, body, timeout,
                                          before_send_blocking, answered)

    def _pooled(self, key: tuple) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            reader, writer = idle.pop()
            # Closed, or sent something unasked: the loop may have read it already (EOF), or
            # not yet (the socket is readable).
            if not reader.at_eof() and not writer.is_closing() and _reusable(writer.get_extra_info("socket")):
                return reader, writer
            writer.close()
        return None

    async def _connect(self, key: tuple) -> _Connection:
        scheme, host, port = key
        if scheme == "https":
            return await asyncio.open_connection(host, port, ssl=self.client.tls_context(), server_hostname=host,
                                                 limit=MAX_LINE + 2)
        return await asyncio.open_connection(host, port, limit=MAX_LINE + 2)

    def _release(self, key: tuple, connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.client.pool_size:
            idle.append(connection)
        else:
            connection[1].close()


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError:   # longer than the stream's limit
        raise http.client.LineTooLong("header line") from None


async def _read_head(reader: asyncio.StreamReader, method: str) -> _Head:
    """Status line and headers, read as `http.client.HTTPResponse.begin` reads them."""
    while True:
        line = str(await _readline(reader), "iso-8859-1")
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        try:
            version, status, _ = (line.split(None, 2) + [""])[:3]
            code = int(status)
        except ValueError:
            raise http.client.BadStatusLine(line) from None
        if not version.startswith("HTTP/") or not 100 <= code <= 999:
            raise http.client.BadStatusLine(line)
        lines = []
        while True:
            header = await _readline(reader)
            lines.append(header)
            if header in (b"\r\n", b"\n", b""):
                break
            if len(lines) > MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if code != 100:   # a 100 Continue is followed by the real response
            break
    headers = _Headers(message_from_lines(lines))
    connection = (headers.get("Connection") or "").lower()
    if version == "HTTP/1.0" or not version.startswith("HTTP/1."):
        will_close = "keep-alive" not in connection and headers.get("Keep-Alive") is None
    else:
        will_close = "close" in connection
    chunked = (headers.get("Transfer-Encoding") or "").lower() == "chunked"
    length = None
    if not chunked:
        try:
            length = int(headers.get("Content-Length") or "")
        except ValueError:
            length = None
        if length is not None and length < 0:
            length = None
    if code in (204, 304) or code < 200 or method == "HEAD":
        length = 0
    if length is None and not chunked:
        will_close = True   # the body ends when the server closes
    return _Head(code, headers, length, chunked, will_close)


async def _body(reader: asyncio.StreamReader, head: _Head, timeout: float) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (chunked framing removed); each read within `timeout`."""
    if head.chunked:
        while True:
            async with asyncio.timeout(timeout):
                line = await _readline(reader)
            if not line:
                raise http.client.IncompleteRead(b"")
            size = int(line.split(b";", 1)[0], 16)  # a ValueError: invalid chunked encoding
            if size == 0:
                async with asyncio.timeout(timeout):
                    while (await _readline(reader)) not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                return
            async for chunk in _exactly(reader, size, timeout):
                yield chunk
            async with asyncio.timeout(timeout):
                await reader.readexactly(2)   # the chunk's CRLF
    remaining = head.length
    while remaining is None or remaining > 0:
        async with asyncio.timeout(timeout):
            chunk = await reader.read(CHUNK if remaining is None else min(remaining, CHUNK))
        if not chunk:
            if remaining:
                raise http.client.IncompleteRead(b"", remaining)
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


async def _exactly(reader: asyncio.StreamReader, size: int, timeout: float) -> AsyncIterator[bytes]:
    while size > 0:
        async with asyncio.timeout(timeout):
            chunk = await reader.read(min(size, CHUNK))
        if not chunk:
            raise http.client.IncompleteRead(b"", size)
        size -= len(chunk)
        yield chunk


def _stdlib_error(exc: BaseException) -> BaseException:
    """asyncio's exceptions as the stdlib's blocking ones, so they are worded alike."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return http.client.IncompleteRead(exc.partial, exc.expected)
    return exc
