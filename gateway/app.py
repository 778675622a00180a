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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config.settings import Settings
from gateway.addresses import ClientAddress
from gateway.auth import Authenticator, AuthResult, ConsumersFile, Principal, Rbac
from gateway.cache import ResponseCache
from gateway.decision import DecisionCore
from gateway.policy import PolicyError, initial_policy
from gateway.policy_store import PolicyStore
from gateway.ratelimit import MemoryLimiter, RedisLimiter
from gateway.routing import Router, Upstream
from gateway.scan import LocalScanner, RemoteScanner, ScanResult, request_values
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
    "host",
    "content-length",
    "x-api-key",
    "accept-encoding",
}
# upstream response headers the gateway sets itself (uvicorn adds its own date/server)
_DROP_RESPONSE = frozenset(_HOP | {"content-encoding", "date", "server"})
_IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
_COMPRESSIBLE = ("application/json", "text/", "application/xml", "application/javascript")
_NO_SCORE = Score(None, None, False, "disabled")


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
        import httpx

        self._timeouts = {
            n: httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s)
            for n, s in g.services.items()
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
        self._transport = transport
        self._scoring_transport = scoring_transport
        self.http: Any = None
        self.scorer: ScoringClient | None = None
        # the payload scanner (gateway/scan.py): the compact champion in process, or serving
        self.local_scanner: LocalScanner | None = None
        self.remote_scanner: RemoteScanner | None = None
        if g.scanning.enabled and g.scanning.mode == "local":
            self.local_scanner = LocalScanner(settings.scanner_path(g.scanning.target))
        self.counts: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        import httpx

        self.http = httpx.AsyncClient(
            transport=self._transport,
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            follow_redirects=False,
        )
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
        if self.http is not None:
            await self.http.aclose()
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
                        r = await self.http.get(inst.url + up.cfg.health_path, timeout=1.0)
                        inst.healthy = r.status_code < 500
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
        rid = h.get("x-request-id") or uuid.uuid4().hex
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
        resp.headers["x-request-id"] = rid
        ev["http_response_status_code"] = resp.status_code
        ev["response_bytes"] = len(resp.body) if hasattr(resp, "body") else None
        ev["duration_ms"] = (time.perf_counter() - t0) * 1000
        ev.setdefault("http_route", path)
        ev.setdefault("client_id", ev["client_address"] or "unknown")
        self.sink.emit(ev)
        if self.stream is not None:
            self.stream.emit(ev)
        self._count(ev.get("ratelimit_decision") or ev.get("auth_result") or "other")
        return resp

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
        body = b""
        if request.method not in ("GET", "HEAD", "OPTIONS", "DELETE") or request.headers.get(
            "content-length"
        ):
            body = await request.body()  # cached by Starlette: forwarding reads it again
        values = request_values(
            request.url.path, request.url.query, body, request.headers.get("content-type"), sc
        )
        if not values:
            return None
        if isinstance(scanner, LocalScanner):
            res: ScanResult = scanner.scan(values)
        else:
            res = await scanner.scan(values)
        ev["scan_label"] = res.label
        ev["scan_score"] = res.score
        if not res.available:
            self._count(f"scan_{res.reason}")
            if sc.failure_mode == "closed":
                ev["ratelimit_decision"] = "scanning_unavailable"
                return _error(503, "scanning_unavailable", {"retry-after": "1"})
            return None
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

    async def _forward(
        self,
        request: Request,
        service: str,
        cacheable: bool,
        p: Principal,
        ev: dict[str, Any],
        now: float,
    ) -> Response:
        import httpx

        method = request.method
        key = f"{service}:{request.url.path}?{request.url.query}"
        inm = request.headers.get("if-none-match")
        entry = (
            self.cache.get(key)
            if cacheable and method == "GET" and self.cfg.cache.enabled
            else None
        )
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
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        headers.update(
            {
                "x-request-id": ev["request_id"],
                "x-consumer-id": p.client_id,
                "x-forwarded-for": ev["client_address"] or "",
                **extra,
            }
        )
        if p.tier:
            headers["x-consumer-tier"] = p.tier
        body = await request.body()
        tries = 1 + (up.cfg.retries if method in _IDEMPOTENT else 0)
        tried: set[str] = set()
        timeout = self._timeouts[service]
        last = "no_healthy_instance"
        t_up = time.perf_counter()
        last_resp: Any = None
        for attempt in range(tries):
            # another instance if there is one; the same one again otherwise
            inst = up.pick(tried) or (up.pick() if attempt else None)
            if inst is None:
                break
            tried.add(inst.url)
            url = (
                inst.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            try:
                r = await self.http.request(
                    method, url, headers=headers, content=body, timeout=timeout
                )
            except httpx.TimeoutException:
                inst.breaker.failure()
                last = "upstream_timeout"
                continue
            except httpx.TransportError:
                inst.breaker.failure()
                last = "upstream_unreachable"
                continue
            if r.status_code >= 500:
                inst.breaker.failure()
                last = f"upstream_{r.status_code}"
                if method in _IDEMPOTENT and r.status_code in (502, 503, 504):
                    last_resp = r
                    continue
            else:
                inst.breaker.success()
            ev["upstream_duration_ms"] = (time.perf_counter() - t_up) * 1000
            if r.status_code == 304 and entry is not None:
                self.cache.refresh(key, now)
                ev["cache_status"] = "REVALIDATED"
                return self._respond(request, entry.status, entry.headers, entry.body, 0)
            out_headers = [(k, v) for k, v in r.headers.items() if k.lower() not in _DROP_RESPONSE]
            if cacheable and method == "GET" and self.cfg.cache.enabled:
                self.cache.store(key, r.status_code, out_headers, r.content, now)
            return self._respond(request, r.status_code, out_headers, r.content, None)
        ev["upstream_duration_ms"] = (time.perf_counter() - t_up) * 1000
        if last_resp is not None:  # retries exhausted: the last upstream answer, as NGINX does
            hdrs = [(k, v) for k, v in last_resp.headers.items() if k.lower() not in _HOP]
            return self._respond(request, last_resp.status_code, hdrs, last_resp.content, None)
        if last == "no_healthy_instance" or not tried:
            return _error(503, "circuit_open", {"retry-after": str(max(1, int(up.retry_after())))})
        return _error(504 if last == "upstream_timeout" else 502, last)

    def _respond(
        self,
        request: Request,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        age: int | None,
    ) -> Response:
        hdrs = dict(headers)
        if age is not None:
            hdrs["age"] = str(age)
        ctype = hdrs.get("content-type", "")
        if (
            len(body) >= self.cfg.compression_min_bytes
            and "gzip" in request.headers.get("accept-encoding", "")
            and ctype.startswith(_COMPRESSIBLE)
        ):
            body = gzip.compress(body, compresslevel=5)
            hdrs["content-encoding"] = "gzip"
            hdrs["vary"] = "Accept-Encoding"
        return Response(body, status_code=status, headers=hdrs)

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
        ok = self.policy_error is None and self.http is not None
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
            *self._stream_metrics(),
            f"gatewise_policy_version {self.core.policy.version}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

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

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/healthz", gw.healthz),
            Route("/readyz", gw.readyz),
            Route("/metrics", gw.metrics),
            Route("/admin/policy", gw.admin_policy, methods=["GET", "PUT"]),
            Route("/admin/policy/history", gw.admin_history),
            Route("/admin/status", gw.admin_status),
            Route("/admin/scores", gw.admin_scores, methods=["POST"]),
            Route("/{path:path}", gw.handle, methods=methods),
        ],
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
