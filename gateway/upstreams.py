"""Demo upstream services: the simulated API surface, answering like real services.

``gatewise upstreams`` serves every route of ``telemetry.simulator.surface``
on one port (or several, for load balancing): JSON bodies of the route's
typical size, ``Cache-Control: public, max-age=30`` and an ``ETag`` on
cacheable routes (a matching ``If-None-Match`` gets 304), an optional
latency per service, and ``/healthz``. ``/fail`` toggles a 503 mode so
circuit breakers can be watched opening.

    app = upstream_app(latency_scale=0.0)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["upstream_app"]


def upstream_app(
    latency_scale: float = 0.0, max_body: int = 32_768, name: str = "demo", replay: bool = False
) -> Starlette:
    """``latency_scale`` 1.0 sleeps each service's simulated median latency. ``replay``: answer
    as the recorded upstream did, from the request's ``x-replay-status`` (status code),
    ``x-replay-bytes`` (body size) and ``x-replay-ms`` (latency, capped at 2 s) headers, so
    replayed traffic (``demo/closed_loop.py``) keeps its failed logins, 404s and slow routes."""
    from config.demo_api import ROUTES, SERVICES
    from config.gateway import RouteSettings
    from gateway.routing import Router

    routes = {f"{r.method} {r.template}": r for r in ROUTES}
    router = Router([RouteSettings(route=k, service=r.service) for k, r in routes.items()])
    state: dict[str, Any] = {"failing": False, "served": 0, "not_modified": 0}

    async def handle(request: Request) -> Response:
        if request.url.path == "/healthz":
            return JSONResponse(
                {"status": "failing" if state["failing"] else "ok"},
                status_code=503 if state["failing"] else 200,
            )
        if request.url.path == "/fail":
            state["failing"] = request.query_params.get("on", "1") == "1"
            return JSONResponse({"failing": state["failing"]})
        if request.url.path == "/bench":
            return Response(b'{"ok":true}', media_type="application/json")
        if state["failing"]:
            return JSONResponse({"error": "unavailable"}, status_code=503)
        rs = router.match(request.method, request.url.path)
        if rs is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        r = routes[rs.route]
        if replay and "x-replay-status" in request.headers:
            return await _replayed(request)
        if latency_scale > 0:
            median, sigma = SERVICES[r.service]
            await asyncio.sleep(latency_scale * median / 1000 * random.lognormvariate(0, sigma))
        size = int(min(r.resp_median, max_body))
        payload = {
            "route": rs.route,
            "path": request.url.path,
            "service": r.service,
            "instance": name,
            "consumer": request.headers.get("x-consumer-id"),
            "data": "x" * max(0, size - 160),
        }
        body = json.dumps(payload).encode()
        headers = {}
        if r.cacheable:
            etag = '"' + hashlib.sha1(request.url.path.encode()).hexdigest()[:16] + '"'
            headers = {"cache-control": "public, max-age=30", "etag": etag}
            if request.headers.get("if-none-match") == etag:
                state["not_modified"] += 1
                return Response(status_code=304, headers=headers)
        else:
            headers = {"cache-control": "no-store"}
        state["served"] += 1
        status = 201 if request.method == "POST" else 200
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    # replayed bodies keep their recorded size on the wire: random (incompressible) text, not
    # a run of one byte that the gateway's gzip would shrink to nothing
    noise = base64.b64encode(random.Random(0).randbytes(max_body))[:max_body]

    async def _replayed(request: Request) -> Response:
        h = request.headers
        try:
            status = int(h["x-replay-status"])
            size = int(h.get("x-replay-bytes") or 0)
            ms = float(h.get("x-replay-ms") or 0)
        except ValueError:
            return JSONResponse({"error": "bad x-replay-* header"}, status_code=400)
        if not 100 <= status <= 599:
            return JSONResponse({"error": "x-replay-status out of range"}, status_code=400)
        if ms > 0:
            await asyncio.sleep(min(ms, 2000.0) / 1000)
        state["served"] += 1
        if status in (204, 304) or status < 200:
            return Response(status_code=status)
        return Response(
            noise[: min(max(size, 0), max_body)],
            status_code=status,
            headers={"cache-control": "no-store"},
            media_type="application/json",
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", handle, methods=methods)])
    app.state.upstream = state
    return app
