"""Payload scanning in the gateway: which values are scanned, shadow first, per-route
enforcement, telemetry fields, hot reload of the compact champion, and the remote path's
degradation when the scanning service is down or slow."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from config.gateway import ScanningSettings
from gateway.policy import PolicyError, parse_policy
from gateway.policy_store import PolicyStore
from gateway.scan import parse_record, request_values
from telemetry.store import TelemetryStore
from tests.gateway.conftest import Clock, key_headers, running, with_gateway

XSS = "<script>alert(document.cookie)</script>"


@pytest.fixture(scope="module")
def compact():
    """A real (small) scanner: a linear detector and class head fitted on 4,000 real
    payloads, exported in the compact form the gateway loads."""
    import numpy as np

    from models.data import payload_dataset
    from models.payload import compact_scanner, with_class_head
    from models.search import build_model

    ds = payload_dataset(synthetic_benign=1000)
    rows = np.random.default_rng(0).choice(len(ds.y), 6000, replace=False)
    X, y = ds.X.iloc[rows], ds.y.iloc[rows]
    p = {"family": "linear", "text": True, "C": 20.0, "class_weight": "balanced"}
    det = build_model(p, "binary", X, y)
    return compact_scanner(with_class_head(det, X, ds.detail.iloc[rows], 0.5), "4")


def test_request_values_from_query_body_and_path():
    cfg = ScanningSettings()
    v = request_values("/v1/search", "q=red+shoes&page=2&x=%3Cb%3E", b"", None, cfg)
    assert v == ["red shoes", "2", "<b>"]
    body = json.dumps({"user": {"name": "O'Brien", "tags": ["a", 5]}, "ok": True}).encode()
    assert request_values("/v1/orders", "", body, "application/json; charset=utf-8", cfg) == [
        "O'Brien",
        "a",
        "5",
    ]
    form = b"name=O%27Brien&comment=%3Cscript%3E"
    assert request_values("/", "", form, "application/x-www-form-urlencoded", cfg) == [
        "O'Brien",
        "<script>",
    ]
    # plain path segments are not content; odd ones are
    assert request_values("/v1/files/..%2F..%2Fetc%2Fpasswd", "", b"", None, cfg) == [
        "../../etc/passwd"
    ]
    assert request_values("/v1/orders/42", "", b"\x89PNG", "image/png", cfg) == []
    small = ScanningSettings(max_values=2, max_value_bytes=16)
    vals = request_values("/", "a=1&b=" + "x" * 100 + "&c=3", b"", None, small)
    assert vals == ["1", "x" * 16]


def test_parse_record_names_what_is_wrong():
    cfg = ScanningSettings()
    assert parse_record('{"method": "GET", "url": "/a?q=%27"}', cfg) == (["'"], "request")
    assert parse_record("plain value\n", cfg) == (["plain value"], "value")
    assert parse_record('{"not": "a request"}', cfg)[1] == "value"
    with pytest.raises(ValueError, match="url"):
        parse_record('{"url": 5}', cfg)
    with pytest.raises(ValueError, match="headers"):
        parse_record('{"url": "/", "headers": []}', cfg)
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_record("{broken", cfg)


def test_policy_route_bands_validated_and_resolved():
    base = {"tiers": {"free": {"requests_per_minute": 60}}}
    doc = parse_policy(
        {
            **base,
            "targets": {
                "payload": {
                    "mode": "shadow",
                    "bands": [{"min_score": 0.5, "action": "log"}],
                    "routes": {"POST /v1/auth/login": {"mode": "enforce"}},
                }
            },
        }
    )
    t = doc.targets["payload"]
    assert t.route_band("POST", "/v1/auth/login", 0.7)[0] == "enforce"
    assert t.route_band("GET", "/v1/search", 0.7) == ("shadow", t.bands[0])
    with pytest.raises(PolicyError, match=r"targets\.payload.*routes: 'login'"):
        parse_policy({**base, "targets": {"payload": {"routes": {"login": {}}}}})
    with pytest.raises(PolicyError, match="bands"):
        parse_policy(
            {
                **base,
                "targets": {
                    "payload": {
                        "routes": {
                            "* /x": {
                                "bands": [
                                    {"min_score": 0.9, "action": "block"},
                                    {"min_score": 0.5, "action": "log"},
                                ]
                            }
                        }
                    }
                },
            }
        )


def _events(s):
    return TelemetryStore(s.telemetry_dir).read().to_pandas()


def test_shadow_first_then_enforced_on_one_route(gw_settings, compact):
    s, keys = gw_settings
    compact.save(s.scanner_path())
    alice = key_headers(keys["alice"])

    async def main():
        async with running(s, Clock()) as (gw, c):
            assert gw.status()["scanning"]["version"] == "4"
            benign = await c.get("/v1/search", params={"q": "red shoes"}, headers=alice)
            shadow = await c.get("/v1/search", params={"q": XSS}, headers=alice)
            plain = await c.get("/v1/orders/7", headers=alice)  # nothing to scan
            # enforce on search only; orders stay in shadow
            store = PolicyStore(s.policy_dir)
            pol = store.load()
            t = pol.targets["payload"]
            block = [{"min_score": 0.5, "action": "block"}]
            routes = {"GET /v1/search": {"mode": "enforce", "bands": block}}
            targets = {
                **pol.targets,
                "payload": t.model_validate({**t.model_dump(), "routes": routes}),
            }
            store.publish(pol.model_copy(update={"targets": targets}), author="t", reason="enforce")
            assert gw.reload_policy()
            blocked = await c.get("/v1/search", params={"q": XSS}, headers=alice)
            body = json.dumps({"item": "x", "note": XSS})
            other = await c.post(
                "/v1/orders", content=body, headers={**alice, "content-type": "application/json"}
            )
            return benign, shadow, plain, blocked, other

    benign, shadow, plain, blocked, other = asyncio.run(main())
    assert benign.status_code == shadow.status_code == plain.status_code == 200
    assert blocked.status_code == 403 and blocked.json()["error"] == "scan_block"
    assert "xss" in blocked.json()["detail"]
    assert other.status_code in (200, 201)  # shadow on orders: recorded, not refused
    ev = _events(s)
    ev["policy_version"] = ev["policy_version"].astype(int)
    benign_ev = ev[ev["url_query"].fillna("").str.contains("red")].iloc[0]
    xss_get = ev[(ev["url_path"] == "/v1/search") & ev["url_query"].str.contains("script")]
    xss_get = xss_get.sort_values("policy_version")
    post = ev[ev["http_request_method"] == "POST"].iloc[0]
    assert benign_ev["scan_label"] == "benign" and benign_ev["scan_score"] < 0.5
    assert pd_isna(benign_ev["scan_action"])
    assert xss_get["scan_label"].tolist() == ["xss", "xss"] and post["scan_label"] == "xss"
    # the default bands (log 0.5, challenge 0.9, block 0.99), in shadow where not enforced
    score = compact.score_one(XSS)[1]
    assert score >= 0.9 and abs(xss_get["scan_score"].iloc[0] - score) < 1e-6
    shadow_action = "shadow_block" if score >= 0.99 else "shadow_challenge"
    assert xss_get["scan_action"].tolist() == [shadow_action, "block"]
    assert xss_get["ratelimit_decision"].iloc[1] == "scan_block"
    assert post["scan_action"] == shadow_action
    assert ev.loc[ev["url_path"] == "/v1/orders/7", "scan_label"].isna().all()


def pd_isna(v):
    import pandas as pd

    return pd.isna(v)


def test_gateway_picks_up_a_new_export(gw_settings, compact):
    s, keys = gw_settings
    path = s.scanner_path()
    path.unlink(missing_ok=True)

    async def main():
        async with running(s, Clock()) as (gw, c):
            h = key_headers(keys["alice"])
            before = await c.get("/v1/search", params={"q": XSS}, headers=h)
            st0 = gw.status()["scanning"]
            compact.save(path)
            gw.local_scanner.reload()  # what the watcher task does every poll_s
            after = await c.get("/v1/search", params={"q": XSS}, headers=h)
            return before, after, st0, gw.status()["scanning"]

    before, after, st0, st1 = asyncio.run(main())
    assert before.status_code == after.status_code == 200
    assert st0["version"] is None and "no compact scanner" in st0["error"]
    assert st1["version"] == "4" and st1["reloads"] == 1
    ev = _events(s)
    assert sorted(ev["scan_label"].fillna("-")) == ["-", "xss"]


class FakeScanService:
    """Stands in for the BentoML service's /scan (an upstream of the gateway)."""

    def __init__(self, mode: str = "up") -> None:
        self.mode = mode
        self.calls = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        assert request.url.path == "/scan"
        if self.mode == "down":
            return httpx.Response(503, json={"error": "no model"})
        if self.mode == "slow":
            raise httpx.ReadTimeout("too slow", request=request)
        values = json.loads(request.content)["values"]
        results = [
            {
                "label": "xss" if "<script" in v else "benign",
                "score": 0.999 if "<script" in v else 0.01,
            }
            for v in values
        ]
        return httpx.Response(200, json={"model_version": "9", "results": results})


def _remote(s, failure_mode="open"):
    sc = s.gateway.scanning.model_copy(update={"mode": "remote", "failure_mode": failure_mode})
    return with_gateway(s, scanning=sc)


def _enforce_payload(s):
    store = PolicyStore(s.policy_dir)
    from gateway.policy import initial_policy

    pol = initial_policy(s)
    t = pol.targets["payload"].model_copy(update={"mode": "enforce"})
    store.publish(
        pol.model_copy(update={"targets": {**pol.targets, "payload": t}}), author="t", reason="t"
    )


@pytest.mark.parametrize("mode", ["down", "slow"])
def test_remote_scanner_down_or_slow_degrades_per_config(gw_settings, mode):
    s, keys = gw_settings
    svc = FakeScanService(mode)

    async def main(cfg):
        _enforce_payload(cfg)
        async with running(cfg, Clock(), svc) as (gw, c):
            h = key_headers(keys["alice"])
            codes = [
                (await c.get("/v1/search", params={"q": XSS}, headers=h)).status_code
                for _ in range(5)
            ]
            return codes, gw.remote_scanner.breaker.state

    codes, state = asyncio.run(main(_remote(s, "open")))
    assert codes == [200] * 5 and state == "open"
    assert svc.calls == 3  # the breaker opened after three failures: no more calls
    ev = _events(s)
    assert set(ev["scan_label"]) == {"unavailable"} and ev["scan_score"].isna().all()
    svc.calls = 0
    codes, _ = asyncio.run(main(_remote(s, "closed")))
    assert codes == [503] * 5


def test_remote_scanner_up_enforces_its_verdict(gw_settings):
    s, keys = gw_settings
    svc = FakeScanService("up")

    async def main():
        cfg = _remote(s)
        _enforce_payload(cfg)
        async with running(cfg, Clock(), svc) as (_, c):
            h = key_headers(keys["alice"])
            ok = await c.get("/v1/search", params={"q": "O'Brien"}, headers=h)
            bad = await c.get("/v1/search", params={"q": XSS}, headers=h)
            return ok, bad

    ok, bad = asyncio.run(main())
    assert ok.status_code == 200 and bad.status_code == 403
    assert bad.json()["error"] == "scan_block"


def test_throttle_band_on_the_payload_target_is_refused_by_name():
    base = {"tiers": {"free": {"requests_per_minute": 60}}}
    bad = {"min_score": 0.9, "action": "throttle"}
    with pytest.raises(PolicyError, match=r"targets\.payload\.bands: action 'throttle'"):
        parse_policy({**base, "targets": {"payload": {"bands": [bad]}}})
    with pytest.raises(PolicyError, match=r"routes\.GET /v1/search\.bands: action 'throttle'"):
        parse_policy(
            {**base, "targets": {"payload": {"routes": {"GET /v1/search": {"bands": [bad]}}}}}
        )
    # the abuse target keeps throttle bands
    parse_policy({**base, "targets": {"abuse": {"bands": [bad]}}})


def test_a_route_switched_off_is_not_scanned(gw_settings, compact):
    s, keys = gw_settings
    compact.save(s.scanner_path())
    store = PolicyStore(s.policy_dir)
    from gateway.policy import initial_policy

    pol = initial_policy(s)
    t = pol.targets["payload"].model_validate(
        {**pol.targets["payload"].model_dump(), "routes": {"GET /v1/search": {"mode": "off"}}}
    )
    store.publish(
        pol.model_copy(update={"targets": {**pol.targets, "payload": t}}), author="t", reason="t"
    )

    async def main():
        async with running(s, Clock()) as (_, c):
            h = key_headers(keys["alice"])
            off = await c.get("/v1/search", params={"q": XSS}, headers=h)
            on = await c.get("/v1/products", params={"q": XSS}, headers=h)
            return off, on

    off, on = asyncio.run(main())
    assert off.status_code == on.status_code == 200
    ev = _events(s)
    assert ev.loc[ev["url_path"] == "/v1/search", "scan_label"].isna().all()
    assert ev.loc[ev["url_path"] == "/v1/products", "scan_label"].tolist() == ["xss"]
