"""The dashboard's API against the analytics functions it wraps, on small hand-made stores
(httpx over ASGI: no server, no browser)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analytics.source import Filters, Source
from tests.analytics.conftest import SMALL, T0, event, store_of

DAY = 1440  # minutes


def _get(app: Any, url: str, **params: Any) -> Any:
    import httpx

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
            return await c.get(url, params=params)

    return asyncio.run(go())


def _records(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


def _security_events() -> list[Any]:
    """SMALL plus policy versions, refusals and model scores."""
    out = [event(*row, policy_version="1") for row in SMALL]
    out += [
        event("c4", 120, "/v1/orders", 429, 20, policy_version="2", tier="free", region="ap-south"),
        event("c4", 121, "/v1/orders", 403, 20, policy_version="2", ratelimit_decision="block",
              tier="free", region="ap-south",
              model_version="m1", model_score=0.9,
              scan_label="sqli", scan_score=0.999, scan_action="shadow_block"),
        event("c5", 122, "/v1/search", 200, 20, policy_version="2", model_version="m1",
              model_score=0.2, scan_label="benign", scan_score=0.01),
        event("c5", 123, "/v1/search", 200, 20, policy_version="2", model_version="m1",
              model_score=0.7, scan_label="xss", scan_score=0.95, scan_action="shadow_challenge"),
    ]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dash")
    return {
        "small": store_of(base / "small", [event(*row) for row in SMALL]),
        "sec": store_of(base / "sec", _security_events()),
        "data_dir": base / "data",
    }


@pytest.fixture(scope="module")
def app(stores: dict[str, Path]) -> Any:
    from analytics.dashboard import create_app
    from config.settings import Settings

    app = create_app(
        Settings(data_dir=stores["data_dir"]), {"small": [stores["small"]], "sec": [stores["sec"]]}
    )
    yield app
    app.state.dashboard.close()


@pytest.fixture(scope="module")
def src(stores: dict[str, Path]) -> Any:
    s = Source([stores["small"]])
    yield s
    s.close()


def test_page_and_plotly_are_served(app) -> None:
    from analytics.dashboard import plotly_js_path

    page = _get(app, "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for marker in ('id="kpi-requests"', 'id="filter-tier"', 'id="apply"', "/static/plotly.min.js"):
        assert marker in page.text
    # nothing from the internet: every script and stylesheet is ours
    assert "http://" not in page.text and "https://" not in page.text
    js = _get(app, "/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) == plotly_js_path().stat().st_size
    for asset in ("dashboard.js", "dashboard_views.js", "dashboard.css"):
        assert _get(app, f"/static/{asset}").status_code == 200


def test_meta_describes_the_dataset(app) -> None:
    meta = _get(app, "/api/meta").json()
    assert [d["name"] for d in meta["datasets"]] == ["small", "sec"]
    assert meta["dataset"] == "small" and meta["events"] == 9
    assert meta["first"] == T0.isoformat() and meta["last"].startswith("2026-01-05T11:45")
    assert meta["tiers"] == ["free", "pro"] and "/v2/new" in meta["routes"]
    assert meta["refresh_s"] == 15.0 and meta["stamp"]
    assert _get(app, "/api/meta", dataset="sec").json()["policy_versions"] == ["1", "2"]


def test_panels_equal_the_analytics(app, src) -> None:
    from analytics.usage import breakdown, overview, top_consumers

    body = _get(app, "/api/panel/overview").json()
    assert body["name"] == "overview" and body["meta"] == {}
    got = _records(body)[0]
    want = overview(src, Filters()).iloc[0]
    for col in ("requests", "consumers", "rate_5xx", "rate_4xx", "p95_ms", "p50_ms"):
        assert got[col] == pytest.approx(want[col]), col
    assert got["first"] == T0.isoformat()  # timestamps as ISO strings

    rows = {r["key"]: r for r in _records(_get(app, "/api/panel/breakdown", by="route").json())}
    ref = breakdown(src, Filters(), "route").set_index("key")
    assert set(rows) == set(ref.index)
    for key, r in rows.items():
        assert r["requests"] == ref.loc[key, "requests"]
        assert r["p95_ms"] == pytest.approx(ref.loc[key, "p95_ms"])
        assert r["share"] == pytest.approx(ref.loc[key, "share"])
    top = _records(_get(app, "/api/panel/top_consumers", n="2").json())
    assert [r["client_id"] for r in top] == top_consumers(src, Filters(), n=2)["client_id"].tolist()


def test_filters_change_the_numbers(app, src) -> None:
    from analytics.usage import overview

    def requests(**params: Any) -> int:
        body = _get(app, "/api/panel/overview", **params)
        assert body.status_code == 200, body.text
        return int(_records(body.json())[0]["requests"])

    assert requests() == 9
    assert requests(tier="pro") == 3 == overview(src, Filters(tiers=("pro",)))["requests"][0]
    assert requests(route="/v1/search", region="us-east") == 1
    # repeated and comma-separated values both mean "any of"
    assert requests(route=["/v1/search", "/v2/new"]) == 6 == requests(route="/v1/search,/v2/new")
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    assert requests(start=start.isoformat(), end=end.isoformat()) == 3
    assert requests(start="2026-01-05T11:00:00Z", end="2026-01-05T12:00") == 3
    assert requests(start="2026-01-05 11:00", end="2026-01-05T12:00:00+00:00") == 3
    # an unencoded "+" arrives as a space
    assert _get(app, "/api/panel/overview?start=2026-01-05T12:00:00%2001:00").status_code == 200
    assert requests(start="2026-01-05T12:00:00+01:00", end="2026-01-06") == 3
    # a period is the last stretch of the data: 10:45-11:45 holds minutes 50, 65, 90, 105
    assert requests(period="1h") == 4 and requests(period="all") == 9


def test_traffic_and_slo_panels(app, src) -> None:
    from analytics.usage import slo
    from config.analytics import SloSettings

    t = _get(app, "/api/panel/traffic", granularity="hour").json()
    assert [r["requests"] for r in _records(t)] == [6, 3] and t["meta"]["granularity"] == "hour"
    by = _records(_get(app, "/api/panel/traffic", granularity="hour", by="tier").json())
    assert sum(r["requests"] for r in by if r["key"] == "pro") == 3
    body = _get(app, "/api/panel/slo").json()
    ref = slo(src, src.resolve(Filters()), SloSettings())
    assert body["meta"]["breaching"] == ref.loc[ref["status"] == "breaching", "route"].tolist()
    assert "/v1/search" in body["meta"]["breaching"]
    # NaN (no request in the last hour of a route) is null, never NaN in the JSON
    assert "NaN" not in _get(app, "/api/panel/slo").text


def test_csv_has_the_same_rows(app) -> None:
    body = _get(app, "/api/panel/breakdown", by="route", tier="free").json()
    res = _get(app, "/api/panel/breakdown.csv", by="route", tier="free")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    assert "attachment" in res.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(res.text)))
    assert rows[0] == body["columns"]
    assert len(rows) - 1 == len(body["rows"])
    for got, want in zip(rows[1:], body["rows"], strict=True):
        for g, w in zip(got, want, strict=True):
            if isinstance(w, (int, float)) and not isinstance(w, bool):
                assert float(g) == pytest.approx(w)
            else:
                assert g == ("" if w is None else str(w))


def test_drill_down_route_then_consumer(app) -> None:
    rc = _get(app, "/api/panel/route_consumers", route="/v1/search").json()
    assert {r["client_id"]: r["requests"] for r in _records(rc)} == {"c1": 4, "c3": 1}
    assert rc["meta"]["route"] == "/v1/search"
    cr = _records(_get(app, "/api/panel/consumer_requests", client="c2").json())
    assert [r["status"] for r in cr] == [429, 404, 200]  # newest first
    assert all(r["request_id"].startswith("c2-") for r in cr)


@pytest.mark.parametrize(
    ("url", "params", "param"),
    [
        ("/api/panel/overview", {"start": "yesterday"}, "start"),
        ("/api/panel/overview", {"end": "2026-13-01"}, "end"),
        ("/api/panel/overview", {"period": "7x"}, "period"),
        ("/api/panel/overview", {"start": "2026-01-06", "end": "2026-01-05"}, "end"),
        ("/api/panel/overview", {"dataset": "nope"}, "dataset"),
        ("/api/meta", {"dataset": "nope"}, "dataset"),
        ("/api/panel/breakdown", {"by": "colour"}, "by"),
        ("/api/panel/traffic", {"granularity": "fortnight"}, "granularity"),
        ("/api/panel/top_consumers", {"n": "many"}, "n"),
        ("/api/panel/route_consumers", {}, "route"),
        ("/api/panel/consumer_requests", {}, "client"),
        ("/api/panel/anomalies", {"metric": "colour"}, "metric"),
        ("/api/panel/policy_effect", {"dataset": "sec", "policy": "9"}, "policy"),
        ("/api/panel/policy_effect", {"dataset": "sec", "start": "soon"}, "start"),
    ],
)
def test_bad_parameters_are_400_naming_them(app, url, params, param) -> None:
    res = _get(app, url, **params)
    assert res.status_code == 400, res.text
    body = res.json()
    assert body["param"] == param and body["error"].startswith(f"{param}:"), body


def test_unknown_panel_is_404(app) -> None:
    for url in ("/api/panel/colours", "/api/panel/colours.csv"):
        res = _get(app, url)
        assert res.status_code == 404 and "colours" in res.json()["error"]


def test_security_panels(app, stores) -> None:
    dec = _records(_get(app, "/api/panel/security_decisions", dataset="sec").json())
    totals: dict[tuple[str, str], int] = {}
    for r in dec:
        key = (r["policy_version"], r["decision"])
        totals[key] = totals.get(key, 0) + r["requests"]
    assert totals == {("1", "allow"): 8, ("1", "throttle"): 1, ("2", "throttle"): 1,
                      ("2", "block"): 1, ("2", "allow"): 2}  # fmt: skip
    models = _get(app, "/api/panel/security_models", dataset="sec").json()
    (m1,) = _records(models)
    assert (m1["model_version"], m1["clients"], m1["flagged_clients"]) == ("m1", 2, 2)
    assert m1["flagged_requests"] == 2 and m1["flagged_client_share"] == pytest.approx(1.0)
    assert {r[0] for r in models["meta"]["clients"]["rows"]} == {"c4", "c5"}
    refused = {(r["tier"], r["region"]): r for r in _records(
        _get(app, "/api/panel/security_refused", dataset="sec").json())}  # fmt: skip
    assert refused["free", "ap-south"]["refused"] == 2
    assert refused["pro", "us-east"]["refused_share"] == pytest.approx(1 / 3)


def test_payload_scanner_panel(app) -> None:
    scan = _get(app, "/api/panel/security_scan", dataset="sec").json()
    rows = {(r["label"], r["action"]): r for r in _records(scan)}
    assert set(rows) == {("sqli", "shadow_block"), ("xss", "shadow_challenge"), ("benign", "none")}
    assert rows["sqli", "shadow_block"]["requests"] == 1
    assert rows["xss", "shadow_challenge"]["max_score"] == pytest.approx(0.95)
    assert [r["label"] for r in _records(scan)][-1] == "benign"  # attacks first
    clients = {r[0]: r for r in scan["meta"]["clients"]["rows"]}
    assert set(clients) == {"c4", "c5"} and scan["meta"]["note"] is None
    # a dataset without scanned requests says why
    empty = _get(app, "/api/panel/security_scan", dataset="small").json()
    assert empty["rows"] == [] and "no scanned requests" in empty["meta"]["note"]


def test_policies_and_models_without_stores(app) -> None:
    pol = _get(app, "/api/panel/policies", dataset="sec").json()
    assert pol["rows"] == [] and "no published policies" in pol["meta"]["note"]
    assert [r[0] for r in pol["meta"]["observed"]["rows"]] == ["1", "2"]
    models = _get(app, "/api/panel/models").json()
    assert models["meta"]["registry"]["status"] == "no registry"
    assert "no drift or bias" in models["meta"]["note"]


def test_policies_from_the_store(tmp_path, stores) -> None:
    from analytics.dashboard import create_app
    from config.settings import Settings
    from gateway.policy import default_policy
    from gateway.policy_store import PolicyStore

    settings = Settings(data_dir=tmp_path)
    store = PolicyStore(settings.policy_dir)
    limits = {"free": 60, "pro": 600}
    store.publish(default_policy(limits), reason="first")
    store.publish(default_policy(limits), reason="tighter free tier")
    app = create_app(settings, {"sec": [stores["sec"]]})
    before = _get(app, "/api/meta").json()["stamp"]
    rows = _records(_get(app, "/api/panel/policies").json())
    assert [(r["version"], r["reason"]) for r in rows] == [(2, "tighter free tier"), (1, "first")]
    store.publish(default_policy(limits), reason="third")
    assert _get(app, "/api/meta").json()["stamp"] != before  # the page reloads
    assert _records(_get(app, "/api/panel/policies").json())[0]["reason"] == "third"
    app.state.dashboard.close()


def _cohort_events() -> list[Any]:
    e = [
        event("a", 0, "/v1/search", 200, 10),
        event("a", 7 * DAY, "/v1/orders", 200, 10, http_request_method="POST"),
        event("a", 21 * DAY, "/v1/search", 200, 10, tier="pro"),
        event("b", 60, "/v1/search", 200, 10),
        event("b", 61, "/v1/search", 200, 10),
        event("d", 7 * DAY + 60, "/v1/search", 200, 10),
        event("d", 8 * DAY, "/v1/search", 200, 10, tier="pro"),
        event("e", 28 * DAY, "/v1/search", 200, 10, tier="pro"),
    ]
    return e


def test_cohort_panels_equal_the_analytics(tmp_path) -> None:
    from analytics import cohorts
    from analytics.dashboard import create_app
    from config.analytics import AnalyticsSettings
    from config.settings import Settings

    root = store_of(tmp_path / "t", _cohort_events())
    app = create_app(Settings(data_dir=tmp_path), {"c": [root]})
    src = Source([root])
    f = src.resolve(Filters())
    people = cohorts.consumers(src, f, 14)

    lost = _get(app, "/api/panel/lost_consumers").json()
    churned = people[people["churned"]].sort_values("requests", ascending=False)
    assert lost["meta"]["churned"] == len(churned) and lost["meta"]["consumers"] == len(people)
    assert [r["client_id"] for r in _records(lost)] == churned["client_id"].tolist()

    ret = _get(app, "/api/panel/retention").json()
    table = cohorts.retention(src, f, people=people)["table"]
    assert [r["cohort"] for r in _records(ret)] == list(table.index)
    for r, (_, want) in zip(_records(ret), table.iterrows(), strict=True):
        got = [r[str(k)] for k in table.columns]
        np.testing.assert_allclose(np.array(got, dtype=float), want.to_numpy(dtype=float))

    fun = _records(_get(app, "/api/panel/funnel").json())
    ref = cohorts.funnel(src, f, AnalyticsSettings().funnel)
    assert [r["consumers"] for r in fun] == ref["consumers"].tolist()

    # four consumers: a survival curve yes, a Cox model maybe not; either way a 200
    surv = _get(app, "/api/panel/survival").json()
    assert set(surv["meta"]["curves"]) == set(people["first_tier"])
    for name in ("cox", "compare", "forecast", "anomalies", "adoption", "revenue"):
        res = _get(app, f"/api/panel/{name}")
        assert res.status_code == 200, (name, res.text)
    src.close()
    app.state.dashboard.close()


def _policy_events() -> list[Any]:
    """40 consumers before and after policy "2" (day 28); a third of them throttled after
    it; some come back in the outcome window (days 70-84). Policy "3" starts on day 80."""
    rng = np.random.default_rng(4)
    out = []
    for i in range(40):
        cid = f"k{i:02d}"
        tier = ("free", "pro")[i % 2]
        for d in rng.choice(np.arange(1, 28), size=3 + i % 4, replace=False):
            out.append(event(cid, int(d) * DAY + i, "/v1/search", 200, 10, tier=tier,
                             policy_version="1"))  # fmt: skip
        # every one calls in the week after the change (a third are throttled) and the next
        out.append(event(cid, 29 * DAY + i, "/v1/search", 429 if i % 3 == 0 else 200, 10,
                         tier=tier, policy_version="2"))  # fmt: skip
        out.append(event(cid, 38 * DAY + i, "/v1/search", 200, 10, tier=tier, policy_version="2"))
        if rng.random() < (0.4 if i % 3 == 0 else 0.7):
            out.append(event(cid, 75 * DAY + i, "/v1/search", 200, 10, tier=tier,
                             policy_version="2"))  # fmt: skip
    out.append(event("z", 80 * DAY, "/v1/search", 200, 10, policy_version="3"))
    out.append(event("z", 85 * DAY, "/v1/search", 200, 10, policy_version="3"))
    return out


def test_policy_effect_picks_a_judgeable_version(tmp_path) -> None:
    from analytics import stats
    from analytics.dashboard import create_app
    from config.settings import Settings

    root = store_of(tmp_path / "t", _policy_events())
    app = create_app(Settings(data_dir=tmp_path), {"p": [root]})
    src = Source([root])
    body = _get(app, "/api/panel/policy_effect").json()
    m = body["meta"]
    # "3" is newest but has 6 days of data after it; "2" has 57
    assert m["policy"] == "2" and m["warning"] is None, m
    at = stats.policy_change_time(src, "2")
    ref = stats.propensity_match(stats.policy_cohort(src, at))
    assert m["att"] == pytest.approx(ref["att"]) and m["n_matched"] == ref["n_matched"]
    assert m["ci_low"] == pytest.approx(ref["ci_low"])
    assert m["ci_high"] == pytest.approx(ref["ci_high"])
    assert m["naive_difference"] == pytest.approx(ref["naive_difference"])
    assert [r[0] for r in body["rows"]] == ref["balance"]["covariate"].tolist()
    assert "ATT" in m["sentence"] and "95 % CI" in m["sentence"]
    # the filters do not change it (it is judged on every consumer)
    assert _get(app, "/api/panel/policy_effect", tier="pro").json()["meta"]["att"] == m["att"]
    # asked for by name: the newest one cannot be judged, and says why
    late = _get(app, "/api/panel/policy_effect", policy="3").json()["meta"]
    assert late["policy"] == "3" and "needs 56" in late["warning"]
    assert late.get("error") or late.get("att") is not None
    src.close()
    app.state.dashboard.close()


def test_stamp_changes_when_telemetry_lands(tmp_path, monkeypatch) -> None:
    import analytics.dashboard as dashboard
    from analytics.dashboard import create_app
    from config.settings import Settings

    monkeypatch.setattr(dashboard, "_STAMP_TTL_S", 0.0)
    root = store_of(tmp_path / "t", [event(*row) for row in SMALL[:4]])
    app = create_app(Settings(data_dir=tmp_path), {"live": [root]})
    first = _get(app, "/api/meta").json()
    assert _records(_get(app, "/api/panel/overview").json())[0]["requests"] == 4
    store_of(root, [event(*row) for row in SMALL[4:]])
    second = _get(app, "/api/meta").json()
    assert second["stamp"] != first["stamp"] and second["events"] == 9
    # a new stamp: the cached answer is not served any more
    assert _records(_get(app, "/api/panel/overview").json())[0]["requests"] == 9
    app.state.dashboard.close()


def test_empty_store_answers_empty(tmp_path) -> None:
    from analytics.dashboard import create_app, default_datasets
    from config.settings import Settings

    settings = Settings(data_dir=tmp_path)
    assert default_datasets(settings) == {"gateway": [settings.telemetry_dir]}
    app = create_app(settings)
    meta = _get(app, "/api/meta").json()
    assert meta["events"] == 0 and meta["first"] is None
    for name in ("overview", "traffic", "breakdown", "slo", "lost_consumers", "policy_effect"):
        res = _get(app, f"/api/panel/{name}", period="7d")
        assert res.status_code == 200, (name, res.text)
    assert "no policy version" in _get(app, "/api/panel/policy_effect").json()["meta"]["error"]
    app.state.dashboard.close()


def test_history_dataset_comes_first(tmp_path) -> None:
    from analytics.dashboard import create_app
    from config.settings import Settings

    settings = Settings(data_dir=tmp_path)
    store_of(settings.history_dir / "telemetry", [event(*row) for row in SMALL])
    app = create_app(settings)
    meta = _get(app, "/api/meta").json()
    assert [d["name"] for d in meta["datasets"]] == ["history", "gateway"]
    assert meta["dataset"] == "history" and meta["events"] == 9
    app.state.dashboard.close()
