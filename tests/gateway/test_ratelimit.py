"""GCRA: exact admission, Retry-After, costs, all-or-nothing; Redis agrees with memory."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.ratelimit import Check, Limit, MemoryLimiter, RedisLimiter

T0 = 1_800_000_000.0


def test_burst_then_steady_rate_is_exact():
    lim = MemoryLimiter()
    c = [Check("c:{a}", Limit(60, 60.0))]  # 60/min, burst 60
    assert sum(lim.hit(c, T0).allowed for _ in range(100)) == 60
    r = lim.hit(c, T0)
    assert not r.allowed and r.remaining == 0
    # one request per second comes back
    assert r.retry_after == pytest.approx(1.0)
    assert r.headers()["retry-after"] == "1"
    assert not lim.hit(c, T0 + 0.99).allowed
    assert lim.hit(c, T0 + 1.0).allowed
    assert not lim.hit(c, T0 + 1.0).allowed


def test_retry_after_is_when_the_request_would_pass():
    lim = MemoryLimiter()
    c = [Check("k", Limit(10, 60.0, burst=2), cost=2)]
    assert lim.hit(c, T0).allowed
    r = lim.hit(c, T0 + 1.0)
    assert not r.allowed
    # 2 units at 6 s each: admitted again 12 s after the first request
    assert r.retry_after == pytest.approx(11.0)
    assert r.headers()["retry-after"] == "11"
    assert not lim.hit(c, T0 + 1.0 + r.retry_after - 0.01).allowed
    assert lim.hit(c, T0 + 1.0 + r.retry_after).allowed


def test_cost_and_all_or_nothing():
    lim = MemoryLimiter()
    consumer = Check("c", Limit(100, 60.0), cost=10)
    route = Check("r", Limit(3, 60.0))
    got = [lim.hit([consumer, route], T0).allowed for _ in range(5)]
    assert got == [True, True, True, False, False]
    # the refused requests charged nothing on the consumer limit: 70 units left
    r = lim.hit([Check("c", Limit(100, 60.0), cost=1)], T0)
    assert r.allowed and r.remaining == 69


def test_headers_report_the_binding_limit():
    lim = MemoryLimiter()
    r = lim.hit([Check("big", Limit(1000, 60.0)), Check("small", Limit(5, 60.0))], T0)
    assert r.key == "small" and r.limit == 5 and r.remaining == 4
    assert r.headers()["ratelimit-limit"] == "5" and "retry-after" not in r.headers()


def _sequence(seed: int, n: int = 400):
    rng = random.Random(seed)
    t = T0
    out = []
    for _ in range(n):
        t += rng.expovariate(8.0)
        key = rng.choice(["a", "b", "c"])
        out.append(
            (t, [Check(f"c:{{{key}}}", Limit(20, 60.0, burst=5), cost=rng.choice([1, 1, 2]))])
        )
    return out


@pytest.mark.integration
def test_redis_backend_agrees_with_memory():
    red = RedisLimiter(prefix=f"gw:test:{random.random()}:")
    red.reset()
    mem = MemoryLimiter()
    try:
        for now, checks in _sequence(1):
            a, b = mem.hit(checks, now), red.hit(checks, now)
            assert (a.allowed, a.remaining, a.limit) == (b.allowed, b.remaining, b.limit)
            assert a.retry_after == pytest.approx(b.retry_after, abs=1e-5)
            assert a.reset_after == pytest.approx(b.reset_after, abs=1e-5)
    finally:
        red.reset()


@pytest.mark.integration
def test_redis_never_over_admits_under_concurrency():
    """Four 'replicas' (own connection pools) fire 400 requests at once at a limit of 50."""

    async def main() -> int:
        prefix = f"gw:test:{random.random()}:"
        replicas = [RedisLimiter(prefix=prefix) for _ in range(4)]
        c = [Check("c:{shared}", Limit(50, 3600.0))]
        now = T0
        try:
            results = await asyncio.gather(*(replicas[i % 4].ahit(c, now) for i in range(400)))
        finally:
            replicas[0].reset()
            for r in replicas:
                await r.aclose()
        return sum(r.allowed for r in results)

    assert asyncio.run(main()) == 50
