"""The NGINX data plane: the compiled bundle (unit), the admin server, live sync, telemetry.

Decision parity with the Python gateway is in ``test_dataplane_parity.py``; this file checks
what surrounds it: what the bundle holds, what the admin server refuses, that a published
policy and a pushed score take effect without a reload, and that the access log becomes
telemetry events through the real ingest.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway import test_dataplane_parity as parity
from tests.gateway.test_dataplane_parity import (
    Client,
    Scenario,
    _publish,
    _write_consumers,
    policy_doc,
)

# the running data plane and its stub upstream, shared with the parity tests' fixtures
plane = parity.plane
stub_upstream = parity.stub_upstream


# the bundle (no NGINX) ------------------------------------------------------------------------
def test_bundle_compiles_policy_consumers_and_routes(settings):
    from config.gateway import RoleRule
    from gateway.auth import ApiKey, Consumer, ConsumersFile
    from gateway.dataplane.bundle import bundle_text, compile_bundle, route_regex
    from gateway.policy import parse_policy

    doc = policy_doc(
        overrides=[
            {
                "client_id": "a",
                "action": "throttle",
                "requests_per_minute": 2,
                "reason": "r",
                "expires_at": "2030-01-01T00:00:00+00:00",
            }
        ],
        allowances={"b": {"requests_per_minute": 50, "reason": "heavy"}},
        exemptions=[
            {"target": "abuse", "attribute": "region", "value": "ap", "reason": "x"},
            {"target": "payload", "attribute": "tier", "value": "free", "reason": "y"},
        ],
    )
    doc["targets"]["payload"] = {"mode": "shadow"}
    doc["targets"]["abuse"]["routes"] = {"POST /v1/auth/login": {"mode": "enforce"}}
    policy = parse_policy(doc)
    consumers = ConsumersFile(
        consumers=[
            Consumer(
                client_id="a",
                roles=["reader"],
                api_keys=[ApiKey(id="abcd1234", sha256="0" * 64, revoked=True)],
            )
        ]
    )
    g = settings.gateway
    roles = dict(g.roles)
    roles["reader"] = [RoleRule(methods=["GET"], routes=["/v1/products*"])]
    g = g.model_copy(update={"roles": roles, "client_id_header": "X-Client-Id"})
    b = compile_bundle(policy, consumers, g)
    json.loads(bundle_text(b))  # serialisable as is
    assert b["keys"] == {"abcd1234": {"sha256": "0" * 64, "revoked": True, "c": 0}}
    assert b["overrides"]["a"]["expires"] == pytest.approx(1893456000.0)
    assert b["allowances"]["b"] == {"rpm": 50, "expires": None}
    assert [e["value"] for e in b["exemptions"]] == ["ap"]  # only the scored target's
    assert b["target"]["failure_mode"] == g.scoring.failure_mode
    assert b["target"]["routes"]["POST /v1/auth/login"] == {"mode": "enforce", "bands": None}
    assert b["target"]["bands"][0]["repr"] == "0.5" and b["target"]["bands"][0]["g"] == "0.5"
    assert set(b["rbac"]["reader"]) == {"GET /v1/products/{id}", "GET /v1/products"}
    assert "DELETE /v1/orders/{id}" in b["rbac"]["consumer"]
    assert b["client_id_header"] == "x_client_id"
    t = b["table"]
    assert t["exact"]["GET /v1/search"] == [r["key"] for r in t["routes"]].index("GET /v1/search")
    assert route_regex("/v1/a.b/{id}") == r"^/v1/a\.b/[^/]+$"
    # patterns in the order gateway/routing.py tries them (the most literal first)
    from gateway.routing import Router

    assert [t["routes"][p[2]]["key"] for p in t["patterns"]] == [
        r.route for _, _, r in Router(g.routes)._patterns
    ]


def test_render_writes_a_config_nginx_accepts(settings, tmp_path):
    from gateway.dataplane.nginx import LOG_FORMAT, NginxProcess, render

    r = render(settings.gateway, tmp_path / "dp", port=18099, admin_port=18098)
    text = r.conf.read_text()
    assert "access_by_lua_block" in text and "127.0.0.1:18098" in text
    assert (r.root / "lua" / "gatewise.lua").exists()
    assert (r.root / "admin.token").stat().st_mode & 0o077 == 0
    assert json.loads(LOG_FORMAT.replace("$", ""))  # the log line is a JSON object
    parity._require_dataplane()  # skips without it; fails under CI
    NginxProcess(r).test()  # nginx -t


# the admin server -----------------------------------------------------------------------------
def test_admin_refuses_without_token_and_keeps_the_last_good_bundle(plane):
    from gateway.dataplane.nginx import DataPlaneAdmin, DataPlaneError

    s, r, admin = plane
    sc = Scenario([Client("z")], policy_doc(), [])
    _write_consumers(s, sc)
    _publish(s, sc, sc.policy)
    from gateway.dataplane.sync import DataPlaneSync

    sync = DataPlaneSync(s, admin, r.root)
    assert sync.sync_once(force=True)
    before = admin.status()["policy_version"]
    assert httpx.get(r.admin_url + "/admin/status").status_code == 401
    wrong = DataPlaneAdmin(r.admin_url, "not-the-token")
    with pytest.raises(httpx.HTTPStatusError):
        wrong.status()
    with pytest.raises(DataPlaneError, match="invalid_bundle"):
        admin.push_bundle('{"bundle_schema": 2}')
    with pytest.raises(DataPlaneError, match="invalid_bundle"):
        admin.push_bundle("not json")
    bad = json.loads(sync.compile())
    bad["keys"] = {"k1": {"sha256": "short", "revoked": False, "c": 0}}
    with pytest.raises(DataPlaneError, match=r"keys\.k1\.sha256"):
        admin.push_bundle(json.dumps(bad))
    assert admin.status()["policy_version"] == before
    with pytest.raises(DataPlaneError, match=r"results\[1\]\.score"):
        admin.push_scores([{"id": "a", "score": 0.1}, {"id": "b", "score": 7}])
    with pytest.raises(DataPlaneError, match=r"results\[0\]\.id"):
        admin.push_scores([{"id": "", "score": 0.1}])


# live: no reload, within the sync's poll -------------------------------------------------------
def _eventually(fn, what: str, timeout_s: float = 20.0):  # a bound on failure, not a timing test
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


def test_policy_and_scores_take_effect_live_without_reload(plane):
    from gateway.dataplane.sync import DataPlaneSync

    s, r, admin = plane
    doc = policy_doc()
    sc = Scenario([Client("live"), Client("calm")], doc, [])
    keys = _write_consumers(s, sc)
    _publish(s, sc, doc)
    sync = DataPlaneSync(s, admin, r.root)
    sync.sync_once(force=True)
    admin.push_scores([], "7")
    pid = admin.status()["worker_pid"]
    stop = threading.Event()
    t = threading.Thread(target=sync.run, args=(stop, 0.1, 3600.0), daemon=True)
    t.start()
    try:
        h = {"x-api-key": keys["live"]}
        url = r.url + "/v1/orders"
        assert httpx.get(url, headers=h).status_code == 200
        blocked = dict(doc, overrides=[{"client_id": "live@", "action": "block", "reason": "x"}])
        _publish(s, sc, blocked)
        version = sync.store.load().version
        _eventually(lambda: httpx.get(url, headers=h).status_code == 403, "the block override")
        assert admin.status()["policy_version"] == version
        assert sync.status.enforced == version and sync.status.lag_s is not None
        # a score pushed for one client: its band acts at once (target in enforce)
        enforce = json.loads(json.dumps(doc))
        enforce["targets"]["abuse"]["mode"] = "enforce"
        _publish(s, sc, enforce)
        calm = {"x-api-key": keys["calm"]}
        _eventually(lambda: admin.status()["policy_version"] == version + 1, "enforce mode")
        assert httpx.get(url, headers=calm).status_code == 200
        admin.push_scores([{"id": sc.cid("calm"), "score": 0.97}], "8")
        resp = httpx.get(url, headers=calm)
        assert resp.status_code == 403 and resp.json()["error"] == "block"
        assert admin.status()["worker_pid"] == pid  # the same worker: no reload, no restart
    finally:
        stop.set()
        t.join(10)


def test_access_log_becomes_telemetry_events(plane, tmp_path):
    from telemetry.ingest import ingest_files
    from telemetry.store import TelemetryStore

    s, r, admin = plane
    sc = Scenario([Client("tele", tier="pro", region="us-east")], policy_doc(), [])
    keys = _write_consumers(s, sc)
    _publish(s, sc, sc.policy)
    from gateway.dataplane.sync import DataPlaneSync

    DataPlaneSync(s, admin, r.root).sync_once(force=True)
    rid = "req-" + sc.suffix
    httpx.get(r.url + "/v1/orders/17?x=1", headers={"x-api-key": keys["tele"], "x-request-id": rid})
    httpx.get(r.url + "/v1/orders/17", headers={"x-request-id": rid + "-anon"})
    _eventually(lambda: rid + "-anon" in r.access_log.read_text(), "the log lines")
    store = TelemetryStore(tmp_path / "store")
    rep = ingest_files([Path(r.access_log)], "auto", store, rejects_dir=tmp_path / "rej")
    assert "nginx-json" in next(iter(rep.detected.values()))
    assert rep.files[0].rejected == 0
    ev = store.read().to_pandas().set_index("request_id")
    ok, anon = ev.loc[rid], ev.loc[rid + "-anon"]
    assert ok["client_id"] == sc.cid("tele") and ok["tier"] == "pro" and ok["region"] == "us-east"
    assert ok["http_route"] == "/v1/orders/{id}" and ok["url_query"] == "x=1"
    assert ok["ratelimit_decision"] == "allow" and ok["auth_result"] == "ok"
    assert ok["policy_version"] == str(admin.status()["policy_version"])
    assert ok["upstream_service"] == "orders" and ok["http_response_status_code"] == 200
    assert anon["auth_result"] == "missing_credentials" and anon["http_response_status_code"] == 401


def test_admin_takes_an_admin_api_key_as_the_score_push_sends_it(plane):
    """``stream.score_push`` posts moved scores with an API key of the admin role (the same
    request it sends the Python gateway): the data plane's admin server takes it."""
    from gateway.dataplane.sync import DataPlaneSync

    s, r, admin = plane
    sc = Scenario([Client("ops", roles=("consumer", "admin")), Client("user")], policy_doc(), [])
    keys = _write_consumers(s, sc)
    _publish(s, sc, sc.policy)
    DataPlaneSync(s, admin, r.root).sync_once(force=True)
    body = {"model_version": "9", "alias": "champion", "results": [{"id": "q", "score": 0.2}]}
    url = r.admin_url + "/admin/scores"
    ok = httpx.post(url, json=body, headers={"x-api-key": keys["ops"]})
    assert ok.status_code == 200 and ok.json() == {"accepted": 1}
    assert httpx.post(url, json=body, headers={"x-api-key": keys["user"]}).status_code == 403
    assert httpx.post(url, json=body).status_code == 401
    assert admin.status()["scores"]["model_version"] == "9"


def test_two_workers_share_limits_without_over_admitting(plane, tmp_path):
    """Limits live in a shared dictionary; with two workers (connections spread by
    ``reuseport``) a burst of concurrent requests admits exactly the burst, not one burst per
    worker. (The per-client lock closes a race too narrow for this test to hit reliably.)"""
    import asyncio

    from gateway.dataplane.nginx import NginxProcess, render
    from gateway.dataplane.sync import DataPlaneSync
    from tests.conftest import free_port

    s, _, _ = plane
    doc = policy_doc(tiers={"free": {"requests_per_minute": 10}})
    sc = Scenario([Client("burst")], doc, [])
    keys = _write_consumers(s, sc)
    _publish(s, sc, doc)
    r2 = render(
        s.gateway,
        tmp_path / "dp2",
        port=free_port(),
        admin_port=free_port(),
        workers=2,  # reuseport (the default) spreads the connections over both
    )
    with NginxProcess(r2) as proc:
        from gateway.dataplane.nginx import DataPlaneAdmin

        admin2 = DataPlaneAdmin(r2.admin_url, r2.token)
        assert DataPlaneSync(s, admin2, r2.root).sync_once(force=True)

        async def burst() -> list[int]:
            limits = httpx.Limits(max_connections=60, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=r2.url, limits=limits) as c:
                h = {"x-api-key": keys["burst"]}
                rs = await asyncio.gather(*(c.get("/v1/orders", headers=h) for _ in range(60)))
                return [x.status_code for x in rs]

        codes = asyncio.run(burst())
        assert codes.count(200) == 10 and codes.count(429) == 50
        st = admin2.status()
        assert st["decisions"].get("throttle", 0) + st["decisions"].get("allow", 0) <= 60
        assert proc.proc is not None
        admin2.close()
