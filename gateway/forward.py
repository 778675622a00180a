"""The gateway's upstream client: one bounded call to one upstream instance.

Two implementations of one small interface (``Forwarder``):

- ``Http1Forwarder``, the default: HTTP/1.1 on asyncio protocols with httptools'
  parser and a keep-alive pool per instance. Measured in the gateway (docs/benchmarks.md,
  issue 24): httpx/httpcore polled every pooled connection on every request and was most
  of the gateway's CPU; aiohttp took the gateway from ~1,500 to ~380 µs of CPU per request,
  this client to ~250 µs.
- ``HttpxForwarder``: an ``httpx.AsyncClient`` over an injected transport (the tests'
  ``httpx.ASGITransport`` and ``MockTransport``).

A body up to ``buffer_limit`` bytes is read whole (the cache and compression need it);
a larger one, or one of unknown length that grows past it, streams through in chunks
(``UpstreamResponse.chunks``), so a big download never sits in the gateway's memory.
Bodies arrive decoded where the client can decode them (gzip, deflate); the headers
describe the body as returned (``content-encoding`` only when it is still encoded).
Failures come back as two exceptions, whatever the client: ``UpstreamTimeout`` (the
gateway answers 504) and ``UpstreamUnreachable`` (502).

    fwd = Http1Forwarder(); await fwd.start()
    r = await fwd.request("GET", "http://10.0.0.7:8000/v1/x", {}, b"", Timeouts(5.0, 1.0))
    await fwd.aclose()
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

__all__ = [
    "Forwarder",
    "Http1Forwarder",
    "HttpxForwarder",
    "Timeouts",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]

CHUNK = 64 * 1024


class UpstreamTimeout(Exception):
    """No connection or no bytes from the upstream within the service's timeouts."""


class UpstreamUnreachable(Exception):
    """Connection refused or reset, or a malformed answer."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per call: ``connect_s`` to open a connection; ``read_s`` for each read and for
    waiting on a free pooled connection (httpx's meaning of a timeout).

        Timeouts(read_s=5.0, connect_s=1.0)
    """

    read_s: float
    connect_s: float


class UpstreamResponse:
    """Status, headers (as received) and either the whole ``body`` or, when it is larger
    than the buffer limit, ``body`` None and the rest to be read with ``chunks()``
    (which releases the connection when done; ``aclose()`` does when it is not read)."""

    __slots__ = ("_close", "_head", "_rest", "body", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | None,
        head: bytes = b"",
        rest: AsyncIterator[bytes] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._head = head
        self._rest = rest
        self._close = close

    async def chunks(self) -> AsyncIterator[bytes]:
        """The streamed body: what was read before streaming began, then the rest."""
        try:
            if self._head:
                yield self._head
            if self._rest is not None:
                async for c in self._rest:
                    if c:
                        yield c
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            await close()


class Forwarder(Protocol):
    """What the gateway asks of an upstream client."""

    async def start(self) -> None: ...

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class Http1Forwarder:
    """A small HTTP/1.1 client on asyncio protocols, parsing with httptools (llhttp, the
    parser uvicorn serves with): keep-alive connections pooled per instance (LIFO, up to
    ``max_connections`` each, idle ones dropped after ``keepalive_s``), one request per
    connection at a time, gzip and deflate bodies decoded, TLS for ``https://`` instances.
    On loopback under uvloop it spends ~8 µs of CPU per request where aiohttp spends ~60 µs;
    in the gateway, aiohttp cost ~130 µs more per proxied request than this client
    (docs/benchmarks.md, issue 24).

    A pooled connection the upstream closed while idle is noticed (and dropped) before
    reuse; one that closes just as a request goes out, before any byte of an answer, is
    retried once on a new connection for idempotent methods (as aiohttp and NGINX do)."""

    def __init__(
        self, max_connections: int = 512, buffer_limit: int = 1 << 20, keepalive_s: float = 4.0
    ) -> None:
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        # below uvicorn's default keep-alive (5 s): we drop an idle connection before it does
        self.keepalive_s = keepalive_s
        self._pools: dict[str, _Pool] = {}
        self._ssl: Any = None

    async def start(self) -> None:
        pass

    def _pool(self, origin: str) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            scheme, _, hostport = origin.partition("://")
            host, _, port = hostport.rpartition(":")
            if not host:
                host, port = hostport, ""
            tls = scheme == "https"
            if tls and self._ssl is None:
                import ssl

                self._ssl = ssl.create_default_context()
            pool = _Pool(
                host.strip("[]"),
                int(port or (443 if tls else 80)),
                hostport,
                self._ssl if tls else None,
                self.max_connections,
                self.keepalive_s,
            )
            self._pools[origin] = pool
        return pool

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamResponse:
        scheme_end = url.index("://") + 3
        slash = url.find("/", scheme_end)
        origin, target = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        pool = self._pool(origin)
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {pool.hostport}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
        if body or method not in _NO_BODY_METHODS:
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        wire = "".join(lines).encode("latin-1") + body
        for attempt in (0, 1):
            conn = await pool.acquire(timeouts)
            reused = conn.used > 0
            try:
                conn.send(method, wire)
                await conn.wait(self.buffer_limit, timeouts.read_s)
            except _Stale:
                # closed by the upstream as the request went out, no answer begun
                if attempt == 0 and reused and method in _IDEMPOTENT_METHODS:
                    continue
                raise UpstreamUnreachable("connection closed by the upstream") from None
            except BaseException:
                conn.close()
                raise
            break
        if conn.done:
            return UpstreamResponse(conn.status, conn.response_headers(), conn.take(), b"")
        head = conn.take()
        return UpstreamResponse(
            conn.status,
            conn.response_headers(),
            None,
            head,
            conn.rest(timeouts.read_s),
            conn.aclose,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class _Stale(Exception):
    """The connection closed before any byte of the answer (on a reused one: most likely the
    upstream's idle timeout, so an idempotent request may go again)."""


class _Pool:
    """The connections to one instance: idle ones (LIFO: the warmest first) and a cap."""

    def __init__(
        self, host: str, port: int, hostport: str, ssl: Any, limit: int, keepalive_s: float
    ) -> None:
        self.host, self.port, self.hostport, self.ssl = host, port, hostport, ssl
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.idle: list[_Conn] = []
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeouts: Timeouts) -> _Conn:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        while self.open >= self.limit:  # every connection busy: wait for one, bounded
            fut = loop.create_future()
            self.waiters.append(fut)
            try:
                async with asyncio.timeout(timeouts.read_s):
                    await fut
            except TimeoutError:
                raise UpstreamTimeout("no free connection to the upstream") from None
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)
            if self.idle:
                return await self.acquire(timeouts)
        self.open += 1
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the inner result when
            # a cancel arrives as the inner call ends, losing the cancel (a task stopped while
            # connecting to a refusing upstream kept running)
            async with asyncio.timeout(timeouts.connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            self._closed()
            raise UpstreamTimeout(f"connect to {self.hostport} timed out") from None
        except OSError as exc:
            self._closed()
            raise UpstreamUnreachable(f"{self.hostport}: {exc.strerror or exc}") from None
        except BaseException:
            self._closed()
            raise
        return conn

    def release(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake()

    def _closed(self) -> None:
        self.open -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the parser's callbacks fill in the current answer; the
    request's task waits on ``_wake`` for headers and body, bounded by a per-read timer."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.closed = False
        self.counted = True  # in pool.open until closed
        self.idle_since = 0.0
        self.used = 0
        self.busy = False
        self._wake: asyncio.Future[None] | None = None
        self._reset("GET")

    def _reset(self, method: str) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head = method == "HEAD"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.started = False  # a byte of the answer arrived
        self.done = False
        self.until_eof = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.paused = False
        self.notify_at = 0  # wake the reader once this many body bytes wait
        self.pause_at = 0  # and stop reading the socket past this many
        self.decoder: Any = None

    # the request's side ----------------------------------------------------------------
    def send(self, method: str, wire: bytes) -> None:
        if self.closed:
            raise _Stale()
        self._reset(method)
        self.busy = True
        self.used += 1
        self.transport.write(wire)

    async def wait(self, limit: int, read_s: float) -> None:
        """Until the whole answer is in, or more than ``limit`` bytes of its body."""
        self.notify_at = self.pause_at = limit
        while not self.done and self.size <= limit:
            await self._next(read_s)
        self.notify_at = 0  # streaming from here on: every chunk as it comes

    async def _next(self, read_s: float) -> None:
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        fut = self._wake = loop.create_future()
        timer = loop.call_later(read_s, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._wake = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        if self.done and self.busy:
            self._finish()
        return out

    async def rest(self, read_s: float) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                yield self.take()
            elif self.done:
                return
            else:
                await self._next(read_s)

    async def aclose(self) -> None:
        if self.busy:
            self.close()

    def _finish(self) -> None:
        self.busy = False
        if self.keep_alive and not self.closed and not self.until_eof:
            self.pool.release(self)
        else:
            self.close()

    def response_headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers]

    def close(self) -> None:
        self.busy = False
        if not self.closed:
            self.closed = True
            self.transport.close()
        if self.counted:
            self.counted = False
            self.pool._closed()

    # the parser's side -----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.done:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnreachable("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an exception of a callback below
            if not isinstance(cause, UpstreamUnreachable):
                cause = UpstreamUnreachable(f"malformed answer from the upstream: {exc}")
            self._fail(cause)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.done:
            if self.until_eof and self.status and exc is None:
                self.on_message_complete()  # the body ran to the end of the connection
            elif not self.started:
                self._fail(_Stale())
            else:
                self._fail(UpstreamUnreachable("the upstream closed the connection mid-answer"))
        if self.counted:
            self.counted = False
            self.pool._closed()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.close()
        self._notify()

    def _notify(self) -> None:
        fut = self._wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:  # a second answer to one request: never reuse this connection
            self.keep_alive = False
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the answer is still to come
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        names = {k.lower(): v for k, v in self.headers}
        enc = names.get(b"content-encoding", b"").strip().lower()
        if enc in (b"gzip", b"x-gzip", b"deflate"):
            self.decoder = zlib.decompressobj(47)  # zlib or gzip, by its header
            self.headers = [(k, v) for k, v in self.headers if k.lower() != b"content-encoding"]
        self.until_eof = (
            not self.head
            and status not in (204, 304)
            and b"content-length" not in names
            and b"chunked" not in names.get(b"transfer-encoding", b"").lower()
        )
        if self.head:  # no body follows, whatever content-length says
            self.on_message_complete()

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except Exception as exc:
                raise UpstreamUnreachable(f"undecodable body: {exc}") from None
        if data:
            self.chunks.append(data)
            self.size += len(data)
            if self.size > self.pause_at and not self.paused:
                self.paused = True  # bounded: the reader catches up before more comes in
                self.transport.pause_reading()
            if self.size > self.notify_at:
                self._notify()

    def on_message_complete(self) -> None:
        if self.done or not self.status:
            return
        if self.decoder is not None:
            tail = self.decoder.flush()
            if tail:
                self.chunks.append(tail)
                self.size += len(tail)
        self.done = True
        self._notify()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout("no answer from the upstream in time"))


class HttpxForwarder:
    """An ``httpx.AsyncClient`` over ``transport`` (tests inject ``httpx.ASGITransport``)."""

    def __init__(
        self, transport: Any = None, max_connections: int = 512, buffer_limit: int = 1 << 20
    ) -> None:
        self.transport = transport
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        self._client: Any = None

    async def start(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            transport=self.transport,
            limits=httpx.Limits(
                max_connections=self.max_connections, max_keepalive_connections=128
            ),
            follow_redirects=False,
            trust_env=False,
        )

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, timeouts: Timeouts
    ) -> UpstreamResponse:
        import httpx

        t = httpx.Timeout(timeouts.read_s, connect=timeouts.connect_s)
        req = self._client.build_request(method, url, headers=headers, content=body, timeout=t)
        try:
            r = await self._client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(str(exc) or "timeout") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
        # httpx decodes the body: its content-encoding no longer applies
        hdrs = [(k, v) for k, v in r.headers.items() if k.lower() != "content-encoding"]
        rest = r.aiter_bytes(CHUNK)
        try:
            head, whole = await _read_up_to(rest, self.buffer_limit)
        except httpx.TimeoutException as exc:
            await r.aclose()
            raise UpstreamTimeout(str(exc) or "read timeout") from exc
        except httpx.TransportError as exc:
            await r.aclose()
            raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
        if whole:
            await r.aclose()
            return UpstreamResponse(r.status_code, hdrs, head)
        return UpstreamResponse(r.status_code, hdrs, None, head, rest, r.aclose)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _read_up_to(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Read ``chunks`` until they end (``(body, True)``) or pass ``limit`` bytes
    (``(what was read, False)``: the rest is still in ``chunks``)."""
    parts: list[bytes] = []
    n = 0
    async for c in chunks:
        parts.append(c)
        n += len(c)
        if n > limit:
            return b"".join(parts), False
    return b"".join(parts), True
