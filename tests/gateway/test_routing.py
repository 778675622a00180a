"""Route matching, round robin and the circuit breaker's transitions."""

from __future__ import annotations

from config.gateway import BreakerSettings, RouteSettings, ServiceSettings
from gateway.routing import CircuitBreaker, Router, Upstream


def test_router_prefers_literals_and_reports_methods():
    r = Router(
        [
            RouteSettings(route="GET /v1/orders/{id}", service="orders"),
            RouteSettings(route="GET /v1/orders/export", service="reports"),
            RouteSettings(route="DELETE /v1/orders/{id}", service="orders"),
        ]
    )
    assert r.match("GET", "/v1/orders/42").route == "GET /v1/orders/{id}"
    assert r.match("GET", "/v1/orders/export").service == "reports"
    assert r.match("GET", "/v1/orders/42/items") is None
    assert r.match("POST", "/v1/orders/42") is None
    assert r.allowed_methods("/v1/orders/42") == ["DELETE", "GET"]


def test_breaker_closed_open_half_open_closed():
    t = [0.0]
    b = CircuitBreaker(BreakerSettings(failure_threshold=3, reset_timeout_s=10), clock=lambda: t[0])
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow() and b.retry_after() == 10
    t[0] = 9.9
    assert not b.allow()
    t[0] = 10.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # one probe at a time
    b.failure()  # the probe failed: open again for a full timeout
    assert b.state == "open" and not b.allow()
    t[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()
    assert b.transitions == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_round_robin_skips_open_and_unhealthy_instances():
    up = Upstream.build(
        "svc",
        ServiceSettings(
            instances=["http://a:1", "http://b:1", "http://c:1"],
            breaker=BreakerSettings(failure_threshold=1),
        ),
    )
    assert [up.pick().url for _ in range(3)] == ["http://a:1", "http://b:1", "http://c:1"]
    up.instances[1].breaker.failure()
    up.instances[2].healthy = False
    assert {up.pick().url for _ in range(4)} == {"http://a:1"}
    assert up.pick(exclude={"http://a:1"}).url == "http://c:1"  # unhealthy beats nothing
