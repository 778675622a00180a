from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

T0 = 1_795_000_000.0  # 2026-11-18


@dataclass
class Clock:
    now: float = T0
    mono: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.now += s
        self.mono += s


@dataclass
class FakeScorer:
    """Stands in for the external BentoML service (an upstream of the gateway)."""

    scores: dict[str, float] = field(default_factory=dict)
    mode: str = "up"  # up | down | slow
    calls: int = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        import json

        self.calls += 1
        if self.mode == "down":
            return httpx.Response(500, json={"error": "boom"})
        if self.mode == "slow":
            raise httpx.ReadTimeout("too slow", request=request)
        body = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "model_version": "7",
                "results": [{"id": i, "score": self.scores.get(i)} for i in body["ids"]],
            },
        )


@pytest.fixture()
def gw_settings(settings):
    """Settings with three consumers: alice (free), bob (enterprise, admin), carol (reader)."""
    from config.gateway import RoleRule
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    keys: dict[str, str] = {}
    consumers = []
    for cid, tier, roles, region in (
        ("alice", "free", ["consumer"], "eu-west"),
        ("bob", "enterprise", ["consumer", "admin"], "us-east"),
        ("carol", "pro", ["reader"], "ap-south"),
    ):
        kid, key, digest = new_api_key()
        keys[cid] = key
        consumers.append(
            Consumer(
                client_id=cid,
                tier=tier,
                roles=roles,
                region=region,
                device_type="server",
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    ConsumersFile(consumers=consumers).save(settings.gateway_consumers_path)
    roles = dict(settings.gateway.roles)
    roles["reader"] = [RoleRule(methods=["GET"], routes=["/v1/products*"])]
    s = with_gateway(settings, roles=roles)
    return s, keys


def with_gateway(settings: Any, **update: Any) -> Any:
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=update)})


@asynccontextmanager
async def running(
    settings: Any,
    clock: Clock | None = None,
    scorer: FakeScorer | None = None,
    upstream: Any = None,
    upstream_url: str | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real gateway app in process. Upstreams are the demo services over ASGI (httpx), or,
    with ``upstream_url``, every service is that real server on loopback, reached through the
    gateway's default client (``gateway/forward.py``)."""
    from gateway.app import create_app
    from gateway.upstreams import upstream_app

    clock = clock or Clock()
    if upstream_url is None:
        up = upstream if upstream is not None else upstream_app()
        kw["transport"] = httpx.ASGITransport(app=up)
    else:
        services = {
            n: svc.model_copy(update={"instances": [upstream_url]})
            for n, svc in settings.gateway.services.items()
        }
        settings = with_gateway(settings, services=services)
    app = create_app(
        settings,
        clock=clock,
        monotonic=clock.monotonic,
        scoring_transport=httpx.MockTransport(scorer.handler) if scorer else None,
        **kw,
    )
    gw = app.state.gateway
    await gw.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.0.0.9", 5555)),
            base_url="http://gw",
        ) as c:
            yield gw, c
    finally:
        await gw.stop()


def key_headers(key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, **extra}


@asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port in the running event loop (a real
    upstream for the gateway's own client); yields its base URL. ``config``: more
    ``uvicorn.Config`` options."""
    import asyncio

    import uvicorn

    from tests.conftest import free_port

    port = free_port()
    opts: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **(opts | config)))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
