"""The closed loop's parts: fresh traffic of the same clients, the per-request outcome, and a
real replay through a real gateway (upstream answering as recorded)."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest


def _small(settings, clients=300):
    sim = settings.simulator.model_copy(update={"clients": clients, "days": 1.0, "seed": 5})
    return settings.model_copy(update={"simulator": sim})


def _calm(live):
    """Replay fidelity, not breakers (tested in tests/gateway): replayed 5xx runs would open a
    service's breaker and the gateway would answer 503 for the upstream."""
    g = live.gateway
    calm = {
        n: sv.model_copy(
            update={"breaker": sv.breaker.model_copy(update={"failure_threshold": 10_000})}
        )
        for n, sv in g.services.items()
    }
    return live.model_copy(update={"gateway": g.model_copy(update={"services": calm})})


def test_fresh_traffic_is_a_new_day_of_the_same_clients(settings):
    from demo.closed_loop import fresh_traffic
    from telemetry.simulator import simulate

    s = _small(settings)
    t = fresh_traffic(s, minutes=1.0, max_rps=20.0)
    hist = simulate(s.simulator)
    # same clients with the same attributes as the recorded history
    cons = hist.consumers.to_pandas().set_index("client_id")
    got = t.consumers.set_index("client_id")
    assert set(got.index) <= set(cons.index)
    pd.testing.assert_frame_equal(got.sort_index(), cons.loc[sorted(got.index)])
    ev = t.events
    # the span: 2 x 1 minute, at most 20 requests/s on average, starting after the history
    assert ev["offset_s"].between(0, 120, inclusive="left").all()
    assert len(ev) <= 20 * 120 and len(ev) == t.span["requests"]
    start = pd.Timestamp(t.span["simulated_start"])
    assert start >= s.simulator.start + pd.Timedelta(days=1)
    # not the history's day shifted: other request ids, and abuse only from abusive roles
    assert not set(ev["request_id"]) & set(hist.events.column("request_id").to_pylist())
    roles = hist.clients.to_pandas().set_index("client_id")["abusive"]
    assert roles.loc[ev.loc[ev["abusive"] == 1, "client_id"].unique()].all()
    assert t.span["abusive_requests"] == int(ev["abusive"].sum())


def test_a_span_that_cannot_exist_is_refused_by_name(settings):
    from demo.closed_loop import fresh_traffic

    with pytest.raises(ValueError, match="--minutes"):
        fresh_traffic(settings, minutes=0)
    with pytest.raises(ValueError, match="--max-rps"):
        fresh_traffic(settings, minutes=1, max_rps=0)
    with pytest.raises(ValueError, match=r"stays under 0\.001 rps"):
        fresh_traffic(_small(settings), minutes=1, max_rps=0.001)


def test_outcome_counts_each_request_once_per_phase_and_system():
    from demo.closed_loop import outcome
    from demo.loop_report import verdicts

    rid = [f"r{i}" for i in range(8)]
    events = pd.DataFrame(
        {
            "request_id": rid,
            "client_id": ["bad", "bad", "ok1", "ok2", "bad", "bad", "ok1", "ok2"],
            "abusive": [1, 1, 0, 0, 1, 1, 0, 0],
            "scenario": ["flood"] * 2 + ["normal"] * 2 + ["flood"] * 2 + ["normal"] * 2,
            "offset_s": [0, 1, 2, 3, 60, 61, 62, 63],
        }
    )
    sent = pd.DataFrame(
        {"request_id": rid, "status": [200] * 8, "sent_s": [0, 1, 2, 3, 70, 71, 72, 73]}
    )
    sent["offset_s"] = events["offset_s"]
    sent["late_s"] = 0.0
    dec = ["allow", "shadow_block", "allow", "allow", "block", "block", "allow", "throttle"]
    recorded = pd.DataFrame(
        {
            "request_id": rid,
            "ratelimit_decision": dec,
            "tier": ["free"] * 8,
            "region": ["eu", "eu", "eu", "us", "eu", "eu", "eu", "us"],
            "device_type": ["server"] * 8,
            "policy_version": ["1"] * 4 + ["2"] * 4,
        }
    )
    static = pd.DataFrame({"request_id": rid, "action": ["allow"] * 7 + ["throttle"]})
    o = outcome(events, sent, recorded, static, phase_b_from=60, min_group=1)
    assert o["unrecorded"] == 0 and o["no_response"] == 0
    # a request the gateway never recorded is counted, and counted as not stopped
    short = outcome(events, sent, recorded.iloc[:-1], static, phase_b_from=60, min_group=1)
    assert short["unrecorded"] == 1 and short["B_gatewise"]["legitimate_harmed"] == 0
    a, b, bs = o["A_gatewise"], o["B_gatewise"], o["B_static"]
    assert (a["abusive"], a["abusive_stopped"], a["legitimate_harmed"]) == (2, 0, 0)
    assert (b["abusive_stopped_share"], b["legitimate_harmed_share"]) == (1.0, 0.5)
    assert (bs["abusive_stopped_share"], bs["legitimate_harmed_share"]) == (0.0, 0.5)
    # a band in shadow only records: not stopped, but counted in what shadow would have done
    assert o["A_with_shadow"]["abusive_stopped"] == 1 and a["abusive_stopped"] == 0
    assert o["B_with_shadow"]["abusive_stopped"] == b["abusive_stopped"]
    # the harmed legitimate request is us's: us 100% vs eu 0% -> an infinite ratio
    assert math.isinf(b["fpr_ratio"])
    (c,) = [x for x in o["clients"] if x["client_id"] == "bad"]
    assert c["detected_after_s"] == 70 and c["stopped_share"] == 0.5
    v = {x["measure"]: x for x in verdicts(o)}
    assert v["abusive_stopped_share"]["met"] and v["abusive_stopped_share"]["beats_static"]
    assert not v["legitimate_harmed_share"]["met"]


@pytest.mark.integration
def test_replay_through_the_real_gateway_keeps_ids_statuses_and_rate(settings):
    from demo.closed_loop import (
        _recorded,
        fresh_traffic,
        register_consumers,
        release_labels,
        replay,
        replay_settings,
    )
    from demo.servers import ThreadedServer, free_port
    from gateway.app import create_app
    from gateway.upstreams import upstream_app
    from labeling.store import LabelStore

    s = _small(settings, clients=200)
    t = fresh_traffic(s, minutes=0.1, max_rps=40.0)  # 12 s of traffic
    ev = t.events
    keys = register_consumers(s, t.consumers)
    up, gw = free_port(), free_port()
    live = _calm(replay_settings(s, up))
    app = create_app(live)
    started = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
    with (
        ThreadedServer(upstream_app(replay=True), up),
        ThreadedServer(app, gw, proxy_headers=False),
    ):
        sent = replay(f"http://127.0.0.1:{gw}", ev, keys, "rt1")
        for _ in range(100):
            tel = app.state.gateway.status()["telemetry"]
            if tel["written"] >= tel["emitted"]:
                break
            time.sleep(0.1)
    assert len(sent) == len(ev) and (sent["status"] > 0).all()
    # real rate: the last request went out about when its offset said (open loop)
    span = ev["offset_s"].iloc[-1] - ev["offset_s"].iloc[0]
    assert sent["sent_s"].max() >= span * 0.9
    rec = _recorded(s, "rt1", started.to_pydatetime())
    assert set(rec["request_id"]) == set(sent["request_id"])
    both = sent.merge(rec, on="request_id").merge(
        ev.assign(request_id="rt1-" + ev["request_id"])[
            ["request_id", "http_response_status_code", "client_address"]
        ],
        on="request_id",
    )
    passed = both[both["ratelimit_decision"] == "allow"]
    assert len(passed) > 0
    # what the upstream recorded is what the client got back through the gateway
    assert (passed["status"] == passed["http_response_status_code_y"]).mean() > 0.95
    n = release_labels(s, ev.assign(request_id="rt1-" + ev["request_id"]), rec, "rt1")
    lab = LabelStore(s.labels_dir).read().to_pandas()
    assert n == len(lab) and set(lab["source"]) == {"simulator"}
    assert set(lab["labelled_by"]) == {"closed-loop truth release"}
    assert int(lab["label"].max()) == int(ev["abusive"].max())


def _stand_in_scorer(scores: dict[str, float]):
    """A real HTTP server speaking the scoring service's multi-id contract (the service is an
    upstream of the gateway here; the replay's live path is the part under test)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls: list[list[str]] = []

    async def score(request):
        body = await request.json()
        calls.append(body["ids"])
        res = [{"id": i, "score": scores.get(i, 0.01)} for i in body["ids"]]
        return JSONResponse({"model_version": "t1", "results": res})

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), calls


@pytest.mark.integration
def test_a_live_replay_scores_every_client_and_streams_every_request(settings):
    """The closed loop's live path: the replay's gateway publishes every request to the
    in-process stream, the stream processor applies them, the gateway asks the scoring
    service about each client (batched, cached) and an enforced band acts on the score."""
    from demo.closed_loop import (
        LiveFeatures,
        _recorded,
        fresh_traffic,
        register_consumers,
        replay,
        replay_settings,
    )
    from demo.servers import ThreadedServer, free_port
    from gateway.app import create_app
    from gateway.policy import default_policy
    from gateway.policy_store import PolicyStore
    from gateway.upstreams import upstream_app

    s = _small(settings, clients=200)
    t = fresh_traffic(s, minutes=0.1, max_rps=40.0)
    ev = t.events
    bad = set(ev.loc[ev["abusive"] == 1, "client_id"])
    assert bad, "the chosen span has abusive clients"
    keys = register_consumers(s, t.consumers, admin="operator")
    assert set(keys) == set(ev["client_id"]) | {"operator"}
    p = default_policy(
        s.static_limits_per_minute, s.gateway.route_costs, [{"min_score": 0.9, "action": "block"}]
    )
    tgt = p.targets["abuse"].model_copy(update={"mode": "enforce"})
    PolicyStore(s.policy_dir).publish(
        p.model_copy(update={"targets": {"abuse": tgt}}), reason="test"
    )
    scorer, calls = _stand_in_scorer(dict.fromkeys(bad, 0.99))
    up, gw, sc = free_port(), free_port(), free_port()
    live_s = replay_settings(s, up, f"http://127.0.0.1:{sc}", stream="gatewise-test-live")
    assert live_s.stream.enabled and live_s.stream.backend == "memory"
    assert live_s.gateway.scoring.enabled
    live_s = _calm(live_s)
    app = create_app(live_s)
    started = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=5)
    with (
        ThreadedServer(scorer, sc),
        LiveFeatures(
            live_s, push=False, score_push=(f"http://127.0.0.1:{gw}", keys["operator"])
        ) as live,
        ThreadedServer(upstream_app(replay=True), up),
        ThreadedServer(app, gw, proxy_headers=False),
    ):
        sent = replay(f"http://127.0.0.1:{gw}", ev, keys, "lv1")
        for _ in range(100):
            tel = app.state.gateway.status()["telemetry"]
            if tel["written"] >= tel["emitted"]:
                break
            time.sleep(0.1)
        scoring = app.state.gateway.status()["scoring"]
    assert len(sent) == len(ev) and (sent["status"] > 0).all()
    # every request the gateway handled went through the stream to the processor
    assert live.status["applied"] == len(ev) and live.status["lag_events"] == 0
    # every client was asked about, in far fewer calls than requests (cache, batches)
    asked = {i for ids in calls for i in ids}
    assert asked == set(ev["client_id"])
    assert scoring["failures"] == 0 and scoring["lookups"] == len(ev)
    assert 0 < scoring["calls"] < len(calls) < len(ev) / 5  # the rest: the score push's
    # the processor pushed each client's score once (they never move here) to the gateway
    sp = live.status["score_push"]
    assert sp["failures"] == 0 and 0 < sp["pushed"] == scoring["pushed"] <= len(asked)
    rec = _recorded(s, "lv1", started.to_pydatetime())
    df = rec.merge(ev.assign(request_id="lv1-" + ev["request_id"])[["request_id", "abusive"]])
    blocked = df["ratelimit_decision"] == "block"
    # the enforced band blocked the flagged clients from their first request, and nobody else
    assert blocked[df["abusive"] == 1].all()
    assert not blocked[df["abusive"] == 0].any()


def test_legitimate_demo_roles_are_driven_at_their_own_busiest_minute(settings):
    """The live act drives a legitimate client no faster than it went in its history."""
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from demo.gateway_act import busiest_minute_rps
    from telemetry.schema import EVENT_SCHEMA
    from telemetry.store import TelemetryStore

    t0 = datetime(2026, 11, 2, 12, tzinfo=UTC)
    rows = []
    # a: 30 requests in minute 0, 90 in minute 1; b: 6 in minute 5
    for cid, minute, n in (("a", 0, 30), ("a", 1, 90), ("b", 5, 6)):
        for i in range(n):
            rows.append(
                {
                    "request_id": f"{cid}-{minute}-{i}",
                    "client_id": cid,
                    "timestamp": t0 + timedelta(minutes=minute, seconds=i * 60 / n),
                    "http_request_method": "GET",
                    "url_path": "/v1/orders",
                    "http_route": "/v1/orders",
                    "http_response_status_code": 200,
                }
            )
    TelemetryStore(settings.telemetry_dir).append(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
    assert busiest_minute_rps(settings) == {"a": 1.5, "b": 0.1}
