"""The gateway in process: auth, RBAC, limits, scoring degradation, cache, breaker,
policy reload and the admin API, telemetry under a concurrent burst; its default upstream
client (``gateway/forward.py``) against real servers on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest

from gateway.forward import Http1Forwarder, Timeouts, UpstreamUnreachable
from gateway.policy import Override
from gateway.policy_store import PolicyStore
from telemetry.store import TelemetryStore
from tests.gateway.conftest import (
    Clock,
    FakeScorer,
    key_headers,
    running,
    serving,
    with_gateway,
)


def test_auth_rbac_and_anonymous_routes(gw_settings):
    s, keys = gw_settings

    async def main():
        async with running(s) as (gw, c):
            assert (
                await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))
            ).status_code == 200
            r = await c.get("/v1/orders/1")
            assert r.status_code == 401 and r.json() == {"error": "missing_credentials"}
            assert "www-authenticate" in r.headers
            r = await c.get("/v1/orders/1", headers=key_headers("gw_abcdef123456_nope"))
            assert r.status_code == 401 and r.json()["error"] == "invalid_key"
            assert (await c.get("/v1/health")).status_code == 200  # anonymous route
            # carol may only read products
            assert (
                await c.get("/v1/products/3", headers=key_headers(keys["carol"]))
            ).status_code == 200
            r = await c.get("/v1/orders/1", headers=key_headers(keys["carol"]))
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            assert (await c.get("/nowhere", headers=key_headers(keys["alice"]))).status_code == 404
            r = await c.patch("/v1/orders/1", headers=key_headers(keys["alice"]))
            assert r.status_code == 405 and "GET" in r.headers["allow"]
            # the admin API needs the admin role
            assert (
                await c.get("/admin/policy", headers=key_headers(keys["alice"]))
            ).status_code == 403
            assert (
                await c.get("/admin/policy", headers=key_headers(keys["bob"]))
            ).status_code == 200
        return gw

    gw = asyncio.run(main())
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    assert len(ev) == gw.sink.emitted == 8  # proxied traffic; admin calls are not telemetry
    assert set(ev["auth_result"].dropna()) >= {
        "ok",
        "missing_credentials",
        "invalid_key",
        "forbidden",
        "anonymous",
    }
    assert ev.loc[ev["auth_result"] == "forbidden", "client_id"].tolist() == ["carol"]


def test_limits_cost_and_retry_after_in_event_time(gw_settings):
    s, keys = gw_settings  # alice: free tier, 60/min; an export costs 10
    clock = Clock()

    async def main():
        async with running(s, clock) as (_, c):
            h = key_headers(keys["alice"])
            codes = [(await c.get("/v1/reports/export", headers=h)).status_code for _ in range(7)]
            assert codes == [200] * 6 + [429]
            r = await c.get("/v1/orders/1", headers=h)
            assert r.status_code == 429 and r.json()["error"] == "throttle"
            assert r.headers["retry-after"] == "1" and r.headers["ratelimit-remaining"] == "0"
            clock.advance(1.0)
            r = await c.get("/v1/orders/1", headers=h)
            assert r.status_code == 200 and r.headers["ratelimit-limit"] == "60"
            clock.advance(60.0)
            assert (await c.get("/v1/orders/1", headers=h)).headers["ratelimit-remaining"] == "59"

    asyncio.run(main())


def _enforce(s, bands=None, mode="enforce", **policy_update):
    store = PolicyStore(s.policy_dir)
    from gateway.policy import default_policy

    p = default_policy(
        s.static_limits_per_minute,
        s.gateway.route_costs,
        bands
        or [
            {"min_score": 0.5, "action": "throttle", "limit_factor": 0.1},
            {"min_score": 0.9, "action": "block"},
        ],
    )
    t = p.targets["abuse"].model_copy(update={"mode": mode})
    return store.publish(
        p.model_copy(update={"targets": {"abuse": t}, **policy_update}), reason="test"
    )


def test_scores_drive_bands_and_shadow_only_records(gw_settings):
    s, keys = gw_settings
    s = with_gateway(s, scoring=s.gateway.scoring.model_copy(update={"enabled": True}))
    scorer = FakeScorer({"alice": 0.95, "carol": 0.6, "bob": 0.1})

    async def main(mode):
        _enforce(s, mode=mode)
        async with running(s, Clock(), scorer) as (_, c):
            a = await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))
            b = await c.get("/v1/orders/1", headers=key_headers(keys["bob"]))
            carol = [
                (await c.get("/v1/products/1", headers=key_headers(keys["carol"]))).status_code
                for _ in range(40)
            ]
        return a, b, carol

    a, b, carol = asyncio.run(main("enforce"))
    assert a.status_code == 403 and a.json()["error"] == "block" and b.status_code == 200
    assert carol.count(200) == 30  # pro 300/min, throttled to a tenth: burst 30
    calls = scorer.calls
    a, b, carol = asyncio.run(main("shadow"))
    assert a.status_code == 200 and carol.count(200) == 40
    assert scorer.calls - calls == 3  # one call per client, then the cache
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    shadow = ev[ev["policy_version"] == ev["policy_version"].max()]
    assert set(shadow.loc[shadow["client_id"] == "alice", "ratelimit_decision"]) == {"shadow_block"}
    assert set(shadow.loc[shadow["client_id"] == "carol", "ratelimit_decision"]) == {
        "shadow_throttle"
    }
    assert shadow["model_version"].dropna().unique().tolist() == ["7"]
    assert abs(shadow.loc[shadow["client_id"] == "alice", "model_score"].iloc[0] - 0.95) < 1e-6


def test_scoring_down_degrades_per_config(gw_settings):
    s, keys = gw_settings
    scoring = s.gateway.scoring.model_copy(update={"enabled": True})
    scorer = FakeScorer({"alice": 0.99}, mode="slow")

    async def main(failure_mode):
        cfg = with_gateway(s, scoring=scoring.model_copy(update={"failure_mode": failure_mode}))
        _enforce(cfg)
        async with running(cfg, Clock(), scorer) as (gw, c):
            codes = [
                (await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))).status_code
                for _ in range(6)
            ]
            return codes, gw.scorer.breaker.state, scorer.calls

    codes, state, calls = asyncio.run(main("open"))
    assert codes == [200] * 6  # fail-open: limits alone judge
    assert state == "open" and calls == 3  # breaker opened after 3 timeouts: no more calls
    scorer.calls = 0
    scorer.mode = "down"
    codes, state, _ = asyncio.run(main("closed"))
    assert codes == [503] * 6 and state == "open"


def test_pushed_scores_act_without_a_call_and_a_bad_push_names_its_field(gw_settings):
    """POST /admin/scores (the stream's score push): admins only; a pushed score is the
    client's fresh score (the next request needs no call); a bad body changes nothing."""
    s, keys = gw_settings
    s = with_gateway(s, scoring=s.gateway.scoring.model_copy(update={"enabled": True}))
    scorer = FakeScorer({"alice": 0.1})
    push = {"model_version": "8", "results": [{"id": "alice", "score": 0.97}]}
    bad = {"results": [{"id": "alice", "score": 0.2}, {"id": "bob", "score": 1.7}]}

    async def main():
        _enforce(s)
        async with running(s, Clock(), scorer) as (gw, c):
            alice, bob = key_headers(keys["alice"]), key_headers(keys["bob"])
            before = await c.get("/v1/orders/1", headers=alice)
            calls = scorer.calls
            forbidden = await c.post("/admin/scores", headers=alice, json=push)
            pushed = await c.post("/admin/scores", headers=bob, json=push)
            after = await c.get("/v1/orders/1", headers=alice)
            refused = await c.post("/admin/scores", headers=bob, json=bad)
            again = await c.get("/v1/orders/1", headers=alice)
            return before, calls, forbidden, pushed, after, refused, again, scorer.calls, gw

    before, calls, forbidden, pushed, after, refused, again, calls_end, gw = asyncio.run(main())
    assert before.status_code == 200 and calls == 1
    assert forbidden.status_code == 403 and pushed.json() == {"accepted": 1}
    assert after.status_code == 403 and after.json()["error"] == "block"
    assert refused.status_code == 400 and "results[1].score" in refused.json()["detail"]
    assert again.status_code == 403  # the bad push did not lower alice's score to 0.2
    assert calls_end == calls  # pushed scores are fresh: no call to the service
    assert gw.status()["scoring"]["pushed"] == 1


def test_the_targets_own_failure_mode_wins_and_shadow_never_refuses(gw_settings):
    """A target's failure_mode overrides the gateway's; closed refuses only where the target
    enforces (a target in shadow acts on no request, score or not)."""
    s, keys = gw_settings
    scoring = s.gateway.scoring.model_copy(update={"enabled": True, "failure_mode": "open"})
    cfg = with_gateway(s, scoring=scoring)
    scorer = FakeScorer({"alice": 0.99}, mode="down")

    async def main(mode, target_fails):
        p = _enforce(cfg, mode=mode)
        t = p.targets["abuse"].model_copy(update={"failure_mode": target_fails})
        PolicyStore(cfg.policy_dir).publish(
            p.model_copy(update={"targets": {"abuse": t}}), reason="test"
        )
        async with running(cfg, Clock(), scorer) as (_, c):
            return [
                (await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))).status_code
                for _ in range(3)
            ]

    assert asyncio.run(main("enforce", "closed")) == [503] * 3
    assert asyncio.run(main("enforce", None)) == [200] * 3  # the gateway's open
    assert asyncio.run(main("shadow", "closed")) == [200] * 3
    ev = TelemetryStore(cfg.telemetry_dir).read().to_pandas()
    assert (ev["ratelimit_decision"] == "scoring_unavailable").sum() == 3


def test_cache_etag_and_compression(gw_settings):
    s, keys = gw_settings
    from gateway.upstreams import upstream_app

    up = upstream_app()
    clock = Clock()

    async def main():
        async with running(s, clock, upstream=up) as (_, c):
            h = key_headers(keys["bob"], **{"accept-encoding": "gzip"})
            r1 = await c.get("/v1/products/9", headers=h)
            clock.advance(0.1)  # distinct event times: the store keeps no arrival order
            r2 = await c.get("/v1/products/9", headers=h)
            clock.advance(0.1)
            assert r1.status_code == r2.status_code == 200 and r1.content == r2.content
            assert (
                r2.headers["content-encoding"] == "gzip"
                and json.loads(r2.content)["path"] == "/v1/products/9"
            )
            r3 = await c.get(
                "/v1/products/9",
                headers=key_headers(keys["bob"], **{"if-none-match": r1.headers["etag"]}),
            )
            assert r3.status_code == 304
            served = up.state.upstream["served"]
            clock.advance(31)  # stale: revalidated with If-None-Match, upstream answers 304
            r4 = await c.get("/v1/products/9", headers=key_headers(keys["bob"]))
            assert r4.status_code == 200 and json.loads(r4.content)["path"] == "/v1/products/9"
            await c.get("/v1/orders/9", headers=key_headers(keys["bob"]))
            await c.get("/v1/orders/9", headers=key_headers(keys["bob"]))
            assert up.state.upstream["not_modified"] == 1
            return served, up.state.upstream["served"]

    served, after = asyncio.run(main())
    assert served == 1 and after == 3  # products/9 once (revalidation is a 304), orders/9 twice
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas().sort_values("timestamp", kind="stable")
    by_path = ev.groupby("url_path")["cache_status"].agg(list).to_dict()
    assert by_path == {
        "/v1/products/9": ["MISS", "HIT", "HIT", "REVALIDATED"],
        "/v1/orders/9": ["BYPASS", "BYPASS"],
    }


def test_circuit_breaker_opens_fast_fails_and_recovers(gw_settings):
    s, keys = gw_settings
    from gateway.upstreams import upstream_app

    up = upstream_app()
    clock = Clock()

    async def main():
        async with running(s, clock, upstream=up) as (gw, c):
            h = key_headers(keys["bob"])
            up.state.upstream["failing"] = True
            codes = [(await c.get("/v1/orders/1", headers=h)).status_code for _ in range(4)]
            inst = gw.upstreams["orders"].instances[0]
            # GET retries once on 503 (the only instance, again): open after 5 failures
            assert inst.breaker.state == "open"
            r = await c.get("/v1/orders/1", headers=h)
            assert (
                r.status_code == 503
                and r.json()["error"] == "circuit_open"
                and "retry-after" in r.headers
            )
            up.state.upstream["failing"] = False
            clock.advance(10.0)
            ok = await c.get("/v1/orders/1", headers=h)  # the half-open probe succeeds
            return codes, ok.status_code, inst.breaker.transitions

    codes, ok, transitions = asyncio.run(main())
    # the upstream's own 503s pass through until the breaker opens; then the gateway's fast 503
    assert codes == [503, 503, 503, 503] and ok == 200
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_post_is_not_retried(gw_settings):
    s, keys = gw_settings
    from gateway.upstreams import upstream_app

    up = upstream_app()

    async def main():
        async with running(s, upstream=up) as (gw, c):
            up.state.upstream["failing"] = True
            r = await c.post("/v1/orders", headers=key_headers(keys["bob"]), content=b"{}")
            return r.status_code, gw.upstreams["orders"].instances[0].breaker.failures

    assert asyncio.run(main()) == (503, 1)  # one attempt, the upstream's answer


def test_policy_reload_rejects_invalid_and_admin_push(gw_settings):
    s, keys = gw_settings

    async def main():
        async with running(s) as (gw, c):
            store = PolicyStore(s.policy_dir)
            v1 = gw.core.policy.version
            store.active_path.write_text('{"tiers": {"free": {"requests_per_minute": -5}}}')
            assert gw.reload_policy() is False and gw.core.policy.version == v1
            assert "tiers.free.requests_per_minute" in gw.policy_error
            r = await c.get("/readyz")
            assert r.status_code == 503 and "requests_per_minute" in r.json()["policy_error"]
            # still enforcing the last good policy
            assert (
                await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))
            ).status_code == 200
            doc = gw.core.policy.model_dump(mode="json")
            doc["overrides"] = [
                Override(client_id="alice", action="block", reason="test").model_dump(mode="json")
            ]
            bad = dict(doc, default_tier="gold")
            r = await c.put(
                "/admin/policy", headers=key_headers(keys["bob"]), content=json.dumps(bad)
            )
            assert r.status_code == 422 and "default_tier" in r.json()["detail"]
            r = await c.put(
                "/admin/policy?reason=block+alice",
                headers=key_headers(keys["bob"]),
                content=json.dumps(doc),
            )
            assert r.status_code == 201 and r.json()["version"] == v1 + 1
            assert gw.core.policy.version == v1 + 1 and gw.policy_error is None
            r = await c.get("/v1/orders/1", headers=key_headers(keys["alice"]))
            assert r.status_code == 403 and r.json()["error"] == "block"
            hist = (await c.get("/admin/policy/history", headers=key_headers(keys["bob"]))).json()
            assert hist[-1]["author"] == "bob" and hist[-1]["reason"] == "block alice"

    asyncio.run(main())


def test_telemetry_count_equals_requests_under_a_concurrent_burst(gw_settings):
    s, keys = gw_settings
    n = 400

    async def main():
        async with running(s) as (_gw, c):
            who = ["alice", "bob", "carol", None]
            rs = await asyncio.gather(
                *(
                    c.get(
                        f"/v1/products/{i}",
                        headers=key_headers(keys[who[i % 4]]) if who[i % 4] else {},
                    )
                    for i in range(n)
                )
            )
            return rs

    rs = asyncio.run(main())
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    assert len(ev) == n and ev["request_id"].nunique() == n
    assert set(ev["request_id"]) == {r.headers["x-request-id"] for r in rs}
    by_status = ev["http_response_status_code"].value_counts().to_dict()
    assert by_status == {code: sum(r.status_code == code for r in rs) for code in by_status}


def test_unwritable_store_at_shutdown_spills_events(gw_settings, monkeypatch):
    s, keys = gw_settings

    async def main():
        async with running(s) as (gw, c):
            monkeypatch.setattr(gw.sink.store, "append", _broken)
            for _ in range(5):
                await c.get("/v1/orders/1", headers=key_headers(keys["bob"]))
            return gw

    gw = asyncio.run(main())
    files = list((s.data_dir / "telemetry-spill").glob("*.jsonl"))
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert gw.sink.spilled == len(lines) == 5 and gw.sink.written == 0
    assert {x["client_id"] for x in lines} == {"bob"}


def _broken(*a, **k):
    raise OSError("disk full")


# the default client against real upstreams on loopback ---------------------------------
def _loopback_upstream(state: dict) -> Any:
    """A real upstream for the gateway's own client; ``?mode=`` picks how it answers."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def handle(request: Request) -> Response:
        state["hits"] = state.get("hits", 0) + 1
        q = request.query_params
        mode = q.get("mode", "echo")
        if mode == "slow":
            await asyncio.sleep(float(q.get("s", "1")))
        if mode == "fail":
            return JSONResponse({"error": "down"}, status_code=503)
        if mode == "big":  # chunked, no content-length: the gateway cannot know its size

            async def chunks():
                for i in range(int(q["n"])):
                    yield (b"%06d" % i) * 1000

            return StreamingResponse(chunks(), media_type="text/plain")
        if mode == "gzip":
            body = json.dumps({"data": "y" * 4000}).encode()
            return Response(
                gzip.compress(body),
                headers={"content-encoding": "gzip"},
                media_type="application/json",
            )
        if mode == "hop":
            hop = {"connection": "x-internal", "x-internal": "secret", "x-kept": "yes"}
            return Response(b"{}", headers=hop, media_type="application/json")
        return JSONResponse(
            {
                "method": request.method,
                "raw_path": request.scope["raw_path"].decode(),
                "query": request.scope["query_string"].decode(),
                "headers": dict(request.headers),
                "body": (await request.body()).decode(),
            }
        )

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


def _fast_timeouts(s, timeout_s: float = 0.3):
    svcs = {
        n: v.model_copy(update={"timeout_s": timeout_s, "health_path": None})
        for n, v in s.gateway.services.items()
    }
    return with_gateway(s, services=svcs)


def test_default_client_forwards_path_headers_and_body_and_drops_hop_by_hop(gw_settings):
    """Over a real loopback connection: the path and query as the client sent them, the
    client's headers minus hop-by-hop ones (and those its Connection header names) and the
    API key, the gateway's own headers added, a POST body passed on; the upstream's
    hop-by-hop response headers dropped."""
    s, keys = gw_settings
    state: dict = {}

    async def main():
        async with (
            serving(_loopback_upstream(state)) as url,
            running(_fast_timeouts(s), upstream_url=url) as (gw, c),
        ):
            h = key_headers(
                keys["bob"],
                **{
                    "connection": "keep-alive, x-secret-hop",
                    "x-secret-hop": "1",
                    "keep-alive": "timeout=5",
                    "te": "trailers",
                    "proxy-authorization": "Basic eA==",
                    "x-custom": "kept",
                    "user-agent": "test-agent/1",
                },
            )
            got = await c.get("/v1/orders/7%20x?q=a%20b&mode=echo", headers=h)
            posted = await c.post("/v1/orders", headers=key_headers(keys["bob"]), content=b"hi")
            hop = await c.get("/v1/orders/1?mode=hop", headers=key_headers(keys["bob"]))
            assert isinstance(gw.http, Http1Forwarder)
            return got, posted, hop

    got, posted, hop = asyncio.run(main())
    assert got.status_code == 200
    e = got.json()
    assert e["raw_path"] == "/v1/orders/7%20x" and e["query"] == "q=a%20b&mode=echo"
    sent = e["headers"]
    for dropped in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "x-api-key"):
        assert dropped not in sent, dropped
    assert sent["x-custom"] == "kept" and sent["user-agent"] == "test-agent/1"
    assert sent["x-consumer-id"] == "bob" and sent["x-consumer-tier"] == "enterprise"
    assert sent["x-request-id"] == got.headers["x-request-id"]
    assert sent["host"].startswith("127.0.0.1:")
    assert "accept-encoding" not in sent  # the hop to the upstream stays uncompressed
    assert posted.status_code == 200 and posted.json()["body"] == "hi"
    assert posted.json()["headers"]["content-length"] == "2"
    assert hop.status_code == 200 and hop.headers["x-kept"] == "yes"
    assert "x-internal" not in hop.headers


def test_default_client_timeouts_retries_unreachable_and_breaker(gw_settings):
    """A slow upstream: 504 after the idempotent retry (two attempts), one attempt for a POST;
    nothing listening: 502, and after five failures the breaker answers 503 itself."""
    from tests.conftest import free_port

    s, keys = gw_settings
    s = _fast_timeouts(s, timeout_s=0.2)
    state: dict = {}
    h = key_headers(keys["bob"])

    async def slow():
        async with (
            serving(_loopback_upstream(state), timeout_graceful_shutdown=1) as url,
            running(s, upstream_url=url) as (_gw, c),
        ):
            got = await c.get("/v1/orders/1?mode=slow&s=1", headers=h)
            hits_get = state["hits"]
            posted = await c.post("/v1/orders?mode=slow&s=1", headers=h, content=b"{}")
            return got, hits_get, posted, state["hits"] - hits_get

    got, hits_get, posted, hits_post = asyncio.run(slow())
    assert got.status_code == 504 and got.json()["error"] == "upstream_timeout" and hits_get == 2
    assert posted.status_code == 504 and hits_post == 1

    async def unreachable():
        async with running(s, upstream_url=f"http://127.0.0.1:{free_port()}") as (gw, c):
            codes = [(await c.get("/v1/orders/1", headers=h)) for _ in range(4)]
            inst = gw.upstreams["orders"].instances[0]
            return codes, inst.breaker.state

    rs, state_after = asyncio.run(unreachable())
    # GET: two attempts per request; the third request's first attempt is the fifth failure,
    # which opens the breaker; the fourth is answered by the breaker
    assert [r.status_code for r in rs] == [502, 502, 502, 503]
    assert rs[0].json()["error"] == "upstream_unreachable"
    assert rs[3].json()["error"] == "circuit_open" and "retry-after" in rs[3].headers
    assert state_after == "open"


def test_default_client_streams_large_bodies_and_recompresses(gw_settings):
    """A body larger than the cache takes streams through chunk by chunk, whole, gzipped on
    the fly when the client asks; its event is recorded when it ends, with its size. An
    upstream's gzip body is decoded on the way in and compressed per client on the way out."""
    s, keys = gw_settings
    s = with_gateway(
        _fast_timeouts(s, timeout_s=5.0),
        cache=s.gateway.cache.model_copy(update={"max_body_bytes": 64 * 1024}),
    )
    state: dict = {}
    h = key_headers(keys["bob"], **{"accept-encoding": "identity"})  # httpx asks for gzip
    expected = b"".join((b"%06d" % i) * 1000 for i in range(100))  # 600 kB

    async def main():
        async with (
            serving(_loopback_upstream(state)) as url,
            running(s, upstream_url=url) as (_gw, c),
        ):
            plain = await c.get("/v1/orders/1?mode=big&n=100", headers=h)
            zipped = await c.get(
                "/v1/orders/2?mode=big&n=100", headers={**h, "accept-encoding": "gzip"}
            )
            gz_plain = await c.get("/v1/orders/3?mode=gzip", headers=h)
            gz_zipped = await c.get(
                "/v1/orders/4?mode=gzip", headers={**h, "accept-encoding": "gzip"}
            )
            again = await c.get("/v1/orders/5?mode=echo", headers=h)  # the pool still works
            return plain, zipped, gz_plain, gz_zipped, again

    plain, zipped, gz_plain, gz_zipped, again = asyncio.run(main())
    assert plain.status_code == 200 and plain.content == expected
    assert "content-length" not in plain.headers  # streamed (chunked)
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == expected
    assert len(zipped.headers.get("content-length", "")) == 0
    assert gz_plain.json() == {"data": "y" * 4000} and "content-encoding" not in gz_plain.headers
    assert gz_zipped.headers["content-encoding"] == "gzip"
    assert gz_zipped.json() == {"data": "y" * 4000}
    assert again.status_code == 200
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas().set_index("url_path")
    assert ev.loc["/v1/orders/1", "response_bytes"] == len(expected)
    assert ev.loc["/v1/orders/2", "response_bytes"] < len(expected)  # gzipped on the wire
    assert len(ev) == 5


async def _close_on_second_request(reader, writer):
    """An upstream that answers the first request on a connection with keep-alive, then
    closes on the next one without answering (an idle timeout racing a reused connection)."""
    n = 0
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        n += 1
        lines = head.decode("latin-1").lower().split("\r\n")
        length = sum(int(x.split(":")[1]) for x in lines if x.startswith("content-length:"))
        await reader.readexactly(length)
        if n > 1:
            writer.close()
            return
        body = b"" if lines[0].startswith("head ") else b"ok"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n" + body)
        await writer.drain()


def test_a_reused_connection_closed_before_answering_is_retried_once_for_idempotent_methods():
    """The pool's stale-connection race: a GET goes again on a new connection; a POST (which
    the upstream may have acted on) fails as unreachable rather than being sent twice."""

    async def main():
        srv = await asyncio.start_server(_close_on_second_request, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        fwd = Http1Forwarder()
        await fwd.start()
        t = Timeouts(5.0, 1.0)
        try:
            first = await fwd.request("GET", url + "/a", {}, b"", t)
            second = await fwd.request("GET", url + "/b", {}, b"", t)  # reused, then again
            with pytest.raises(UpstreamUnreachable):
                await fwd.request("POST", url + "/c", {}, b"x", t)  # reused: not sent again
            posted = await fwd.request("POST", url + "/d", {}, b"x", t)  # a new connection
            # a HEAD answer has no body, whatever its content-length says
            head = await fwd.request("HEAD", url + "/e", {}, b"", t)
        finally:
            await fwd.aclose()
            srv.close()
            await srv.wait_closed()
        return first, second, posted, head

    first, second, posted, head = asyncio.run(main())
    assert [r.status for r in (first, second, posted, head)] == [200] * 4
    assert (first.body, second.body, posted.body, head.body) == (b"ok", b"ok", b"ok", b"")


def test_stopping_while_health_checks_hit_a_refusing_upstream_returns(gw_settings):
    """Stopping cancels the health checks even when every check fails at once (connection
    refused): the cancel must not be lost in the client's connect timeout."""
    from tests.conftest import free_port

    s, _ = gw_settings
    svcs = {
        n: v.model_copy(
            update={"instances": [f"http://127.0.0.1:{free_port()}"], "health_interval_s": 0.01}
        )
        for n, v in s.gateway.services.items()
    }
    s = with_gateway(s, services=svcs)

    async def main():
        from gateway.app import create_app

        gw = create_app(s).state.gateway
        await gw.start()
        await asyncio.sleep(0.2)  # many refused checks
        await asyncio.wait_for(gw.stop(), 60)  # a guard against hanging, not a timing
        return [t.done() for t in gw._tasks]

    assert all(asyncio.run(main()))


@pytest.mark.integration
def test_redis_limits_are_exact_across_replicas(gw_settings):
    """Two gateway replicas share Redis counters: a burst of 60 allows exactly the limit."""
    import uuid

    from gateway.ratelimit import RedisLimiter

    s, keys = gw_settings
    s = with_gateway(s, ratelimit_backend="redis")
    prefix = f"gw:test:{uuid.uuid4().hex}:"
    clock = Clock()

    async def main():
        async with (
            running(s, clock, limiter=RedisLimiter(prefix=prefix)) as (_, a),
            running(s, clock, limiter=RedisLimiter(prefix=prefix)) as (_, b),
        ):
            h = key_headers(keys["alice"])  # free: 60/min
            rs = await asyncio.gather(
                *((a if i % 2 else b).get("/v1/orders/1", headers=h) for i in range(90))
            )
        RedisLimiter(prefix=prefix).reset()
        return [r.status_code for r in rs]

    codes = asyncio.run(main())
    assert codes.count(200) == 60 and codes.count(429) == 30
