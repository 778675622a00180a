"""The ASGI gateway: authenticate, authorize, score, decide, cache, route, record.

    app = create_app(settings)           # Starlette app; `gatewise gateway` serves it
    uvicorn.run(app, port=8080)

Every request — served, refused or failed — produces one telemetry event in
the store's contract; the event's ``ratelimit_decision`` is the decision
core's label, so a backtest over the same events can be compared request by
request. The policy is read from ``<data_dir>/policy/active.json``, watched
and swapped atomically; an invalid document is refused and the last good one
stays in force (``/readyz`` and ``/admin/status`` say so).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import random
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from config.settings import Settings
from features.request_parts import extract
from gateway.addresses import ClientAddress
from gateway.auth import Authenticator, AuthResult, ConsumersFile, Principal, Rbac
from gateway.cache import ResponseCache
from gateway.decision import DecisionCore
from gateway.forward import (
    Forwarder,
    Http1Forwarder,
    HttpxForwarder,
    Timeouts,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.policy import PolicyError, initial_policy
from gateway.policy_store import PolicyStore
from gateway.ratelimit import MemoryLimiter, RedisLimiter
from gateway.routing import Router, Upstream
from gateway.scan import UNSCANNED, LocalScanner, RemoteScanner, ScanResult
from gateway.scoring import Score, ScoringClient
from gateway.sink import TelemetrySink
from telemetry.stream import StreamPublisher

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("gatewise.gateway")

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "expect",  # the gateway has read the whole body already
    "host",
    "content-length",
    "x-api-key",
    "accept-encoding",
}
# upstream response headers the gateway sets itself (uvicorn adds its own date/server)
_DROP_RESPONSE = frozenset(_HOP | {"date", "server", "x-request-id"})
_IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
_COMPRESSIBLE = ("application/json", "text/", "application/xml", "application/javascript")
_NO_SCORE = Score(None, None, False, "disabled")
_HEALTH_TIMEOUTS = Timeouts(1.0, 1.0)


class Gateway:
    """The gateway's state: settings, policy, limiter, upstreams, cache, scorer, sink."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        transport: Any = None,
        scoring_transport: Any = None,
        limiter: MemoryLimiter | RedisLimiter | None = None,
    ) -> None:
        from telemetry.store import TelemetryStore

        self.settings = settings
        g = settings.gateway
        self.cfg = g
        self.clock = clock
        self.policies = PolicyStore(settings.policy_dir)
        policy = self.policies.publish_if_absent(
            initial_policy(settings),
            author="gatewise gateway",
            reason="initial policy from gatewise.yaml (static tier limits, abuse target in shadow)",
        )
        self.policy_error: str | None = None
        self._policy_stamp = self._stamp()
        if limiter is None:
            limiter = (
                RedisLimiter(g.redis_url) if g.ratelimit_backend == "redis" else MemoryLimiter()
            )
        self.core = DecisionCore(policy, limiter, target=g.scoring.target)
        self.addresses = ClientAddress(g.trusted_proxies)
        self.auth = Authenticator(ConsumersFile.load(settings.gateway_consumers_path), g.jwt)
        self.rbac = Rbac(g.roles)
        self.router = Router(g.routes)
        self.anonymous = set(g.anonymous_routes)
        self.monotonic = monotonic  # breakers and score caches (wall time may jump)
        self.upstreams = {n: Upstream.build(n, s, monotonic) for n, s in g.services.items()}
        self._timeouts = {
            n: Timeouts(s.timeout_s, s.connect_timeout_s) for n, s in g.services.items()
        }
        self.cache = ResponseCache(g.cache.max_entries, g.cache.max_body_bytes)
        self.sink = TelemetrySink(
            TelemetryStore(settings.telemetry_dir),
            g.telemetry,
            settings.data_dir / "telemetry-spill",
        )
        # the live path (features/stream.py): the same events, batched to the broker; never
        # blocks a request (bounded buffer, losses counted)
        self.stream: StreamPublisher | None = (
            StreamPublisher(settings.stream) if settings.stream.enabled else None
        )
        self._scoring_transport = scoring_transport
        # the upstream client (gateway/forward.py): HTTP/1.1 on httptools, or httpx over an
        # injected transport (tests)
        self.http: Forwarder = (
            Http1Forwarder(buffer_limit=g.cache.max_body_bytes)
            if transport is None
            else HttpxForwarder(transport, buffer_limit=g.cache.max_body_bytes)
        )
        self._started = False
        self.scorer: ScoringClient | None = None
        # the payload scanner (gateway/scan.py): the compact champion in process, or serving
        self.local_scanner: LocalScanner | None = None
        self.remote_scanner: RemoteScanner | None = None
        if g.scanning.enabled and g.scanning.mode == "local":
            self.local_scanner = LocalScanner(settings.scanner_path(g.scanning.target), g.scanning)
        self.counts: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        import httpx

        await self.http.start()
        self._started = True
        if self.cfg.scoring.enabled:
            client = None
            if self._scoring_transport is not None:
                client = httpx.AsyncClient(
                    transport=self._scoring_transport,
                    base_url=self.cfg.scoring.url,
                    timeout=self.cfg.scoring.timeout_ms / 1000,
                )
            self.scorer = ScoringClient(self.cfg.scoring, client, self.monotonic)
        sc = self.cfg.scanning
        if sc.enabled and sc.mode == "remote":
            client = None
            if self._scoring_transport is not None:
                client = httpx.AsyncClient(
                    transport=self._scoring_transport,
                    base_url=sc.url,
                    timeout=sc.timeout_ms / 1000,
                )
            self.remote_scanner = RemoteScanner(sc, client, self.monotonic)
        await self.sink.start()
        if self.stream is not None:
            await self.stream.start()
        self._tasks = [
            asyncio.create_task(self._watch_policy(), name="policy-watch"),
            asyncio.create_task(self._health_checks(), name="health-checks"),
        ]
        if self.local_scanner is not None:
            self._tasks.append(asyncio.create_task(self._watch_scanner(), name="scanner-watch"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sink.stop()
        if self.stream is not None:
            await self.stream.stop()
        await self.http.aclose()
        self._started = False
        if self.scorer is not None:
            await self.scorer.aclose()
        if self.remote_scanner is not None:
            await self.remote_scanner.aclose()
        if isinstance(self.core.limiter, RedisLimiter):
            await self.core.limiter.aclose()

    # policy ------------------------------------------------------------
    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.policies.active_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload_policy(self) -> bool:
        """Swap in the active file if it changed and is valid; keep the old one otherwise."""
        stamp = self._stamp()
        if stamp == self._policy_stamp:
            return False
        self._policy_stamp = stamp
        try:
            new = self.policies.load()
        except PolicyError as exc:
            self.policy_error = str(exc)
            log.error("policy rejected, keeping v%s: %s", self.core.policy.version, exc)
            return False
        self.core.policy = new  # one reference assignment: requests see old or new, never half
        self.policy_error = None
        log.info("policy v%s in force: %s", new.version, new.reason)
        return True

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.policy_poll_s)
            await asyncio.to_thread(self.reload_policy)

    async def _watch_scanner(self) -> None:
        assert self.local_scanner is not None
        while True:
            await asyncio.sleep(self.cfg.scanning.poll_s)
            await asyncio.to_thread(self.local_scanner.reload)

    async def _health_checks(self) -> None:
        while True:
            for up in self.upstreams.values():
                if not up.cfg.health_path:
                    continue
                for inst in up.instances:
                    try:
                        r = await self.http.request(
                            "GET", inst.url + up.cfg.health_path, {}, b"", _HEALTH_TIMEOUTS
                        )
                        await r.aclose()
                        inst.healthy = r.status < 500
                    except Exception:
                        inst.healthy = False
            await asyncio.sleep(min(u.cfg.health_interval_s for u in self.upstreams.values()))

    # the request path --------------------------------------------------
    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def handle(self, request: Request) -> Response:
        t0 = time.perf_counter()
        now = self.clock()
        method, path = request.method, request.url.path
        h = request.headers
        # unique, not secret: no urandom syscall per request (uuid4 was ~5% of a proxied
        # request's CPU); the module's generator is reseeded in every forked process
        rid = h.get("x-request-id") or f"{random.getrandbits(128):032x}"
        ev: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(now, UTC),
            "request_id": rid,
            "client_address": self.addresses.resolve(
                request.client.host if request.client else None, h
            ),
            "user_agent": h.get("user-agent"),
            "http_request_method": method,
            "url_path": path,
            "url_query": request.url.query or None,
            "request_bytes": int(h.get("content-length") or 0),
            "policy_version": str(self.core.policy.version),
        }
        resp = await self._handle(request, now, ev)
        resp.raw_headers.append((b"x-request-id", rid.encode("latin-1")))
        if isinstance(resp, StreamingResponse):  # recorded when its last byte has gone out
            resp.body_iterator = self._recorded(resp.body_iterator, resp.status_code, ev, t0)
        else:
            self._record(ev, resp.status_code, len(resp.body), t0)
        return resp

    def _record(self, ev: dict[str, Any], status: int, size: int, t0: float) -> None:
        """The request's telemetry event, to the sink's buffer (and the stream's): no I/O."""
        ev["http_response_status_code"] = status
        ev["response_bytes"] = size
        ev["duration_ms"] = (time.perf_counter() - t0) * 1000
        ev.setdefault("http_route", ev["url_path"])
        ev.setdefault("client_id", ev["client_address"] or "unknown")
        self.sink.emit(ev)
        if self.stream is not None:
            self.stream.emit(ev)
        self._count(ev.get("ratelimit_decision") or ev.get("auth_result") or "other")

    async def _recorded(
        self, chunks: AsyncIterable[Any], status: int, ev: dict[str, Any], t0: float
    ) -> AsyncIterator[bytes]:
        """A streamed body, counted; its event is recorded when it ends, however it ends."""
        size = 0
        try:
            async for c in chunks:
                size += len(c)
                yield c
        finally:
            self._record(ev, status, size, t0)

    def _principal(self, request: Request, route: str, method: str) -> AuthResult:
        h = request.headers
        if f"{method} {route}" in self.anonymous and not (
            h.get("x-api-key") or h.get("authorization")
        ):
            cid = (self.cfg.client_id_header and h.get(self.cfg.client_id_header)) or (
                self.addresses.resolve(request.client.host if request.client else None, h)
                or "anonymous"
            )
            return AuthResult(True, "anonymous", Principal(cid, ("anonymous",)))
        return self.auth.authenticate(h)

    async def _handle(self, request: Request, now: float, ev: dict[str, Any]) -> Response:
        method, path = request.method, request.url.path
        rs = self.router.match(method, path)
        if rs is None:
            ev["ratelimit_decision"] = "no_route"
            allowed = self.router.allowed_methods(path)
            if allowed:
                return _error(405, "method_not_allowed", {"allow": ", ".join(allowed)})
            return _error(404, "no_route")
        route = rs.route.split(" ", 1)[1]
        ev["http_route"] = route
        ev["upstream_service"] = rs.service
        a = self._principal(request, route, method)
        ev["auth_result"] = a.reason
        if not a.ok or a.principal is None:
            return _error(401, a.reason, {"www-authenticate": 'Bearer realm="gatewise"'})
        p = a.principal
        ev.update(
            client_id=p.client_id,
            api_key_id=p.api_key_id,
            tier=p.tier,
            region=p.region,
            device_type=p.device_type,
        )
        if a.reason != "anonymous" and not self.rbac.allowed(p.roles, method, route):
            ev["auth_result"] = "forbidden"
            return _error(403, "forbidden")
        refused = await self._scan(request, method, route, ev)
        if refused is not None:
            return refused
        score = _NO_SCORE
        target = self.core.policy.targets.get(self.core.target)
        if self.scorer is not None and target is not None and target.mode != "off":
            score = await self.scorer.score(p.client_id, target.alias)
            ev["model_version"] = score.model_version
            ev["model_score"] = score.value
            # closed refuses only where the target enforces: a target in shadow acts on no
            # request, with or without a score
            fails = target.failure_mode or self.cfg.scoring.failure_mode
            if (
                not score.available
                and fails == "closed"
                and target.for_route(method, route)[0] == "enforce"
            ):
                ev["ratelimit_decision"] = "scoring_unavailable"
                return _error(503, f"scoring_{score.reason}", {"retry-after": "1"})
        d = await self.core.adecide(p, method, route, score.value, now)
        ev["ratelimit_decision"] = d.label
        if not d.allowed:
            return _error(d.status, d.action, d.headers, d.reason)
        resp = await self._forward(request, rs.service, rs.cacheable, p, ev, now)
        for k, v in d.headers.items():
            resp.headers[k] = v
        return resp

    async def _scan(
        self, request: Request, method: str, route: str, ev: dict[str, Any]
    ) -> Response | None:
        """Scan the request's values; a refusal when an enforced band says so."""
        scanner = self.local_scanner or self.remote_scanner
        if scanner is None:
            return None
        sc = self.cfg.scanning
        target = self.core.policy.targets.get(sc.target)
        if target is not None and target.for_route(method, route)[0] == "off":
            return None  # switched off for this route: no scanning cost, no verdict recorded
        scope = request.scope
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        ctype, length = None, b""
        for k, v in raw:
            if k == b"content-type":
                ctype = v.decode("latin-1")
            elif k == b"content-length":
                length = v
        body = b""
        if length or request.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
            body = await request.body()  # cached by Starlette: forwarding reads it again
        ex = extract(
            scope["path"],
            scope["query_string"].decode("latin-1"),
            raw if sc.scan_headers else (),
            body,
            ctype,
            sc,
        )
        if not ex.values and not ex.gaps:
            return None
        if isinstance(scanner, LocalScanner):
            res: ScanResult = scanner.scan(ex.values, ex.gaps)
        else:
            res = await scanner.scan(ex.values, ex.gaps)
        ev["scan_label"] = res.label
        ev["scan_score"] = res.score
        if not res.available:
            self._count(f"scan_{res.reason}")
            if sc.failure_mode == "closed":
                ev["ratelimit_decision"] = "scanning_unavailable"
                return _error(503, "scanning_unavailable", {"retry-after": "1"})
            return None
        if res.label == UNSCANNED:
            ev["scan_gap"] = res.gap
            return self._unscanned(res, method, route, target, ev)
        if res.score is None or target is None:
            return None
        mode, band = target.route_band(method, route, res.score)
        if band is None or band.action == "allow":
            return None
        reason = f"payload scan: {res.label} score {res.score:.3f} >= {band.min_score}"
        if band.action == "log" or mode == "shadow":
            ev["scan_action"] = band.action if band.action == "log" else f"shadow_{band.action}"
            if band.action != "log":
                self._count(f"shadow_scan_{band.action}")
            return None
        action = "block" if band.action == "block" else "challenge"
        ev["scan_action"] = action
        ev["ratelimit_decision"] = f"scan_{action}"
        return _error(403, f"scan_{action}", None, reason)

    def _unscanned(
        self, res: ScanResult, method: str, route: str, target: Any, ev: dict[str, Any]
    ) -> Response | None:
        """A request the scanner could not read in full: never benign; the route's action."""
        why = (res.gap or "").split(":")[0].split(" ")[0] or "budget"
        self._count(f"scan_unscanned_{why}")
        default = self.cfg.scanning.unscanned_action
        mode, action = (
            ("shadow", default) if target is None else target.unscanned_for(method, route, default)
        )
        if action == "log" or mode == "shadow":
            ev["scan_action"] = "log" if action == "log" else f"shadow_{action}"
            return None
        ev["scan_action"] = action
        ev["ratelimit_decision"] = f"scan_{action}"
        return _error(403, f"scan_{action}", None, f"payload scan: unscanned ({res.gap})")

    async def _forward(
        self,
        request: Request,
        service: str,
        cacheable: bool,
        p: Principal,
        ev: dict[str, Any],
        now: float,
    ) -> Response:
        method = request.method
        key = f"{service}:{request.url.path}?{request.url.query}"
        inm = request.headers.get("if-none-match")
        use_cache = cacheable and method == "GET" and self.cfg.cache.enabled
        entry = self.cache.get(key) if use_cache else None
        extra: dict[str, str] = {}
        if entry is not None:
            if entry.fresh(now):
                ev["cache_status"] = "HIT"
                self.cache.hits += 1
                if inm and entry.etag and inm == entry.etag:
                    return Response(status_code=304, headers={"etag": entry.etag})
                return self._respond(
                    request, entry.status, entry.headers, entry.body, entry.age(now)
                )
            if entry.etag:
                extra["if-none-match"] = entry.etag
        ev["cache_status"] = (
            "EXPIRED"
            if entry is not None
            else ("MISS" if cacheable and method == "GET" else "BYPASS")
        )
        up = self.upstreams[service]
        headers = _request_headers(request)
        headers.update(extra)
        headers["x-request-id"] = ev["request_id"]
        headers["x-consumer-id"] = p.client_id
        headers["x-forwarded-for"] = ev["client_address"] or ""
        if p.tier:
            headers["x-consumer-tier"] = p.tier
        body = await request.body()
        target = _target(request)
        tries = 1 + (up.cfg.retries if method in _IDEMPOTENT else 0)
        tried: set[str] = set()
        timeouts = self._timeouts[service]
        last = "no_healthy_instance"
        t_up = time.perf_counter()
        last_resp: UpstreamResponse | None = None
        for attempt in range(tries):
            # another instance if there is one; the same one again otherwise
            inst = up.pick(tried) or (up.pick() if attempt else None)
            if inst is None:
                break
            tried.add(inst.url)
            try:
                r = await self.http.request(method, inst.url + target, headers, body, timeouts)
            except UpstreamTimeout:
                inst.breaker.failure()
                last = "upstream_timeout"
                continue
            except UpstreamUnreachable:
                inst.breaker.failure()
                last = "upstream_unreachable"
                continue
            if r.status >= 500:
                inst.breaker.failure()
                last = f"upstream_{r.status}"
                if method in _IDEMPOTENT and r.status in (502, 503, 504):
                    if last_resp is not None:
                        await last_resp.aclose()
                    last_resp = r
                    continue
            else:
                inst.breaker.success()
            if last_resp is not None:
                await last_resp.aclose()
            ev["upstream_duration_ms"] = (time.perf_counter() - t_up) * 1000
            if r.status == 304 and entry is not None:
                await r.aclose()
                self.cache.refresh(key, now)
                ev["cache_status"] = "REVALIDATED"
                return self._respond(request, entry.status, entry.headers, entry.body, 0)
            out_headers = _response_headers(r.headers)
            if r.body is None:  # larger than the cache takes: streamed through
                return self._stream(request, r, out_headers)
            if use_cache:
                self.cache.store(key, r.status, out_headers, r.body, now)
            return self._respond(request, r.status, out_headers, r.body, None)
        ev["upstream_duration_ms"] = (time.perf_counter() - t_up) * 1000
        if last_resp is not None:  # retries exhausted: the last upstream answer, as NGINX does
            hdrs = _response_headers(last_resp.headers)
            if last_resp.body is None:
                return self._stream(request, last_resp, hdrs)
            return self._respond(request, last_resp.status, hdrs, last_resp.body, None)
        if last == "no_healthy_instance" or not tried:
            return _error(503, "circuit_open", {"retry-after": str(max(1, int(up.retry_after())))})
        return _error(504 if last == "upstream_timeout" else 502, last)

    def _gzip(self, request: Request, headers: list[tuple[str, str]], size: int | None) -> bool:
        """Whether to compress this body for this client (``size`` None: unknown, large)."""
        if size is not None and size < self.cfg.compression_min_bytes:
            return False
        if "gzip" not in request.headers.get("accept-encoding", ""):
            return False
        ctype = ""
        for k, v in headers:
            if k == "content-encoding":
                return False  # still encoded as the upstream sent it
            if k == "content-type":
                ctype = v
        return ctype.startswith(_COMPRESSIBLE)

    def _respond(
        self,
        request: Request,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        age: int | None,
    ) -> Response:
        raw = _raw_headers(headers)
        if age is not None:
            raw.append((b"age", str(age).encode()))
        if body and self._gzip(request, headers, len(body)):
            body = gzip.compress(body, compresslevel=5)
            raw += _GZIP_HEADERS
        resp = Response(body, status_code=status)  # content-length only
        resp.raw_headers += raw
        return resp

    def _stream(
        self, request: Request, r: UpstreamResponse, headers: list[tuple[str, str]]
    ) -> Response:
        """A body too large to buffer, passed on chunk by chunk (gzipped on the fly when the
        client takes it); the upstream connection is released when it ends."""
        raw = _raw_headers(headers)
        chunks = r.chunks()
        if self._gzip(request, headers, None):
            chunks = _gzip_chunks(chunks)
            raw += _GZIP_HEADERS
        resp = StreamingResponse(chunks, status_code=r.status)
        resp.raw_headers += raw
        return resp

    # admin and ops -----------------------------------------------------
    def _admin(self, request: Request) -> AuthResult | Response:
        a = self.auth.authenticate(request.headers)
        if not a.ok or a.principal is None:
            return _error(401, a.reason)
        if self.cfg.admin_role not in a.principal.roles:
            return _error(403, "forbidden")
        return a

    async def admin_policy(self, request: Request) -> Response:
        a = self._admin(request)
        if isinstance(a, Response):
            return a
        if request.method == "GET":
            return JSONResponse(self.core.policy.model_dump(mode="json"))
        body = await request.body()
        try:
            from gateway.policy import parse_policy

            doc = parse_policy(body, "request body")
            assert a.principal is not None
            new = await asyncio.to_thread(
                self.policies.publish,
                doc,
                author=a.principal.client_id,
                reason=request.query_params.get("reason") or doc.reason,
            )
        except PolicyError as exc:
            return JSONResponse({"error": "invalid_policy", "detail": str(exc)}, status_code=422)
        await asyncio.to_thread(self.reload_policy)
        return JSONResponse(new.summary(), status_code=201)

    async def admin_scores(self, request: Request) -> Response:
        """Scores pushed for clients whose score moved (``features/score_push.py``):
        ``{"model_version": "7", "alias": "champion", "results": [{"id": .., "score": ..}]}``;
        each becomes the client's fresh cached score. 400 names the first bad field."""
        a = self._admin(request)
        if isinstance(a, Response):
            return a
        if self.scorer is None:
            return _error(409, "scoring_disabled", detail="gateway.scoring.enabled is false")
        try:
            body = json.loads(await request.body())
            rows = _pushed_scores(body)
        except ValueError as exc:
            return _error(400, "invalid_scores", detail=str(exc))
        mv = body.get("model_version")
        alias = body.get("alias")
        for cid, value in rows:
            self.scorer.put(cid, value, None if mv is None else str(mv), alias)
        return JSONResponse({"accepted": len(rows)})

    async def admin_history(self, request: Request) -> Response:
        a = self._admin(request)
        if isinstance(a, Response):
            return a
        return JSONResponse(await asyncio.to_thread(self.policies.history))

    async def admin_status(self, request: Request) -> Response:
        a = self._admin(request)
        if isinstance(a, Response):
            return a
        return JSONResponse(self.status())

    def status(self) -> dict[str, Any]:
        return {
            "policy_version": self.core.policy.version,
            "policy_error": self.policy_error,
            "decisions": self.counts,
            "telemetry": {
                "emitted": self.sink.emitted,
                "written": self.sink.written,
                "pending": self.sink.pending,
                "dropped": self.sink.dropped,
            },
            "stream": None if self.stream is None else self.stream.stats(),
            "cache": {"entries": len(self.cache), "hits": self.cache.hits},
            "upstreams": {
                n: [
                    {"url": i.url, "healthy": i.healthy, "breaker": i.breaker.state}
                    for i in u.instances
                ]
                for n, u in self.upstreams.items()
            },
            "scanning": None
            if (self.local_scanner or self.remote_scanner) is None
            else (self.local_scanner or self.remote_scanner).status(),  # type: ignore[union-attr]
            "scoring": None
            if self.scorer is None
            else {
                "breaker": self.scorer.breaker.state,
                "lookups": self.scorer.lookups,
                "calls": self.scorer.calls,
                "failures": self.scorer.failures,
                "stale": self.scorer.stale,
                "unavailable": self.scorer.unavailable,
                "pushed": self.scorer.pushed,
            },
        }

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ok = self.policy_error is None and self._started
        body = {
            "ready": ok,
            "policy_version": self.core.policy.version,
            "policy_error": self.policy_error,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        lines = ["# TYPE gatewise_requests_total counter"]
        lines += [
            f'gatewise_requests_total{{decision="{k}"}} {v}' for k, v in sorted(self.counts.items())
        ]
        lines += [
            f"gatewise_telemetry_emitted_total {self.sink.emitted}",
            f"gatewise_telemetry_written_total {self.sink.written}",
            f"gatewise_telemetry_dropped_total {self.sink.dropped}",
            f"gatewise_cache_hits_total {self.cache.hits}",
            *self._scan_metrics(),
            *self._stream_metrics(),
            f"gatewise_policy_version {self.core.policy.version}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    def _scan_metrics(self) -> list[str]:
        out = ["# TYPE gatewise_scan_unscanned_total counter"]
        out += [
            f'gatewise_scan_unscanned_total{{reason="{k.removeprefix("scan_unscanned_")}"}} {v}'
            for k, v in sorted(self.counts.items())
            if k.startswith("scan_unscanned_")
        ]
        if self.local_scanner is not None:
            ls = self.local_scanner
            out += [
                f"gatewise_scan_cache_hits_total {ls.cache_hits}",
                f"gatewise_scan_cache_misses_total {ls.cache_misses}",
            ]
        return out

    def _stream_metrics(self) -> list[str]:
        if self.stream is None:
            return []
        st = self.stream.stats()
        return [
            f"gatewise_stream_emitted_total {st['emitted']}",
            f"gatewise_stream_published_total {st['published']}",
            f"gatewise_stream_pending {st['pending']}",
            f"gatewise_stream_dropped_total {st['dropped']}",
            f"gatewise_stream_failed_publishes_total {st['failed_publishes']}",
            f"gatewise_stream_connected {int(st['connected'])}",
        ]


_GZIP_HEADERS = [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]


def _target(request: Request) -> str:
    """Path and query as the client sent them (still percent-encoded), for the upstream."""
    scope = request.scope
    raw = scope.get("raw_path")
    path = raw.split(b"?", 1)[0].decode("latin-1") if raw else request.url.path
    qs = scope.get("query_string") or b""
    return f"{path}?{qs.decode('latin-1')}" if qs else path


def _connection_tokens(value: str) -> set[str]:
    """Headers a ``Connection`` header names: hop-by-hop too (RFC 9110, 7.6.1)."""
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _request_headers(request: Request) -> dict[str, str]:
    """The client's headers the upstream should see: hop-by-hop ones and the gateway's
    own credentials dropped; repeated ones joined, as a proxy may."""
    out: dict[str, str] = {}
    conn = ""
    for k, v in request.scope["headers"]:
        name = k.decode("latin-1").lower()
        if name in _HOP:
            if name == "connection":
                conn = v.decode("latin-1")
            continue
        value = v.decode("latin-1")
        if name in out:
            value = out[name] + ("; " if name == "cookie" else ", ") + value
        out[name] = value
    if conn:
        for t in _connection_tokens(conn):
            out.pop(t, None)
    return out


def _response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers the client should see (names lower-cased)."""
    out = [(k.lower(), v) for k, v in headers]
    drop = _DROP_RESPONSE
    conn = [v for k, v in out if k == "connection"]
    if conn:
        drop = drop | _connection_tokens(",".join(conn))
    return [(k, v) for k, v in out if k not in drop]


def _raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), _header_bytes(v)) for k, v in headers]


def _header_bytes(v: str) -> bytes:
    try:
        return v.encode("latin-1")
    except UnicodeEncodeError:  # aiohttp decodes header values as UTF-8, escaping bad bytes
        return v.encode("utf-8", "surrogateescape")


async def _gzip_chunks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    z = zlib.compressobj(5, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    async for c in chunks:
        out = z.compress(c)
        if out:
            yield out
    yield z.flush()


def _pushed_scores(body: Any) -> list[tuple[str, float | None]]:
    """(client id, score) pairs of a ``POST /admin/scores`` body; ValueError names the field."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with `results`")
    for k in ("model_version", "alias"):
        if body.get(k) is not None and not isinstance(body[k], str | int):
            raise ValueError(f"`{k}` must be a string")
    results = body.get("results")
    if not isinstance(results, list):
        raise ValueError("`results` must be a list of {id, score}")
    out: list[tuple[str, float | None]] = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not r["id"]:
            raise ValueError(f"results[{i}].id must be a non-empty string")
        v = r.get("score")
        if v is not None and (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not 0 <= v <= 1
        ):
            raise ValueError(f"results[{i}].score must be a number in [0, 1] or null, not {v!r}")
        out.append((r["id"], None if v is None else float(v)))
    return out


def _error(
    status: int, reason: str, headers: dict[str, str] | None = None, detail: str = ""
) -> Response:
    body = {"error": reason} | ({"detail": detail} if detail else {})
    return JSONResponse(body, status_code=status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class GatewayApp(Starlette):
    """Starlette for the gateway's own endpoints (health, metrics, admin); a proxied request
    goes straight to ``Gateway.handle``, past Starlette's middleware and router (which tries
    every route before the catch-all): the same handler and response, ~10% less CPU per
    proxied request (docs/benchmarks.md, issue 24)."""

    def __init__(self, gateway: Gateway, own_paths: set[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.gateway = gateway
        self._own = frozenset(own_paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _METHODS
            and scope["path"] not in self._own
            and not scope.get("root_path")
        ):
            scope["app"] = self
            response = await self.gateway.handle(Request(scope, receive))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, **kw: Any) -> Starlette:
    """The Starlette app around a ``Gateway`` (``app.state.gateway``)."""
    gw = Gateway(settings, **kw)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    own = [
        Route("/healthz", gw.healthz),
        Route("/readyz", gw.readyz),
        Route("/metrics", gw.metrics),
        Route("/admin/policy", gw.admin_policy, methods=["GET", "PUT"]),
        Route("/admin/policy/history", gw.admin_history),
        Route("/admin/status", gw.admin_status),
        Route("/admin/scores", gw.admin_scores, methods=["POST"]),
    ]
    app = GatewayApp(
        gw,
        {r.path for r in own},
        routes=[*own, Route("/{path:path}", gw.handle, methods=list(_METHODS))],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for N worker processes (``GATEWISE_CONFIG`` names the config)."""
    import os
    from pathlib import Path

    from config.settings import load_settings

    return create_app(load_settings(Path(os.environ.get("GATEWISE_CONFIG", "gatewise.yaml"))))
