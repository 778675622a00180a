"""The scoring client under load: batching, single flight, cache, stale scores on failure.

The BentoML service is an upstream of the gateway; ``FakeScorer`` stands in for it (counting
calls and the ids in each), the client is the part under test."""

from __future__ import annotations

import asyncio
import json

import httpx

from config.gateway import ScoringSettings
from gateway.scoring import ScoringClient
from tests.gateway.conftest import FakeScorer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _client(scorer: FakeScorer, clock: Clock, **cfg) -> tuple[ScoringClient, list[list[str]]]:
    batches: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if scorer.mode == "up":
            batches.append(json.loads(request.content)["ids"])
        return scorer.handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://scorer")
    return ScoringClient(ScoringSettings(enabled=True, **cfg), http, clock), batches


def test_concurrent_lookups_of_many_clients_go_out_as_few_calls():
    scorer = FakeScorer({f"c{i}": i / 100 for i in range(100)})

    async def run():
        sc, batches = _client(scorer, Clock(), max_batch=64)
        out = await asyncio.gather(*(sc.score(f"c{i}") for i in range(100)))
        await sc.aclose()
        return sc, batches, out

    sc, batches, out = asyncio.run(run())
    assert [s.value for s in out] == [i / 100 for i in range(100)]
    assert all(s.available and s.reason == "ok" and s.model_version == "7" for s in out)
    assert sc.calls == 2 and sorted(len(b) for b in batches) == [36, 64]


def test_a_flood_from_one_client_makes_one_call():
    scorer = FakeScorer({"mallory": 0.97})

    async def run():
        sc, batches = _client(scorer, Clock())
        out = await asyncio.gather(*(sc.score("mallory") for _ in range(500)))
        again = await sc.score("mallory")
        await sc.aclose()
        return sc, batches, out, again

    sc, batches, out, again = asyncio.run(run())
    assert batches == [["mallory"]] and sc.calls == 1
    assert {s.value for s in out} == {0.97}
    assert again.reason == "cached"


def test_a_failing_service_serves_recent_scores_as_stale_then_none():
    scorer = FakeScorer({"alice": 0.91})
    clock = Clock()

    async def run():
        sc, _ = _client(scorer, clock, cache_ttl_s=5, max_stale_s=60)
        first = await sc.score("alice")
        scorer.mode = "slow"
        clock.t += 10  # past the cache, within the stale bound
        stale = await sc.score("alice")
        new = await sc.score("bob")  # nothing cached: no score
        clock.t += 100  # past the stale bound (the breaker has reset by now)
        scorer.mode = "down"
        gone = await sc.score("alice")
        await sc.aclose()
        return sc, first, stale, new, gone

    sc, first, stale, new, gone = asyncio.run(run())
    assert first.reason == "ok"
    assert stale.available and stale.value == 0.91 and stale.reason == "stale"
    assert not new.available and new.reason == "timeout"
    assert not gone.available and gone.reason == "error"
    assert sc.stale == 1 and sc.unavailable == 2 and sc.failures == 3


def test_an_unknown_client_is_answered_not_failed_and_asked_again_soon():
    scorer = FakeScorer({"alice": 0.2})
    clock = Clock()

    async def run():
        sc, _ = _client(scorer, clock, cache_ttl_s=5, unknown_ttl_s=1)
        out = await asyncio.gather(sc.score("alice"), sc.score("newcomer"))
        scorer.scores["newcomer"] = 0.8  # the stream has pushed its first window
        clock.t += 0.5
        early = await sc.score("newcomer")
        clock.t += 1.0
        later = await sc.score("newcomer")
        await sc.aclose()
        return sc, out, early, later

    sc, (a, n), early, later = asyncio.run(run())
    assert a.value == 0.2
    assert n.available and n.value is None and n.reason == "unknown_client"
    assert early.reason == "cached" and early.value is None
    assert later.reason == "ok" and later.value == 0.8
    assert sc.failures == 0
