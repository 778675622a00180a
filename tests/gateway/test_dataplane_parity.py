"""Parity: the same requests through the Python gateway and the NGINX data plane give the
same status, decision label and auth result, request by request.

Both run for real: the Python gateway app in process, NGINX with the generated
configuration and ``gatewise.lua`` as a process; the upstream both forward to is a stub
answering 200 to everything (an external upstream: the part under test is the decision).
The policy and consumers come from the same policy store and consumers file; scores are
pushed to both. Limits are a few requests per minute (intervals of 10 s and more), so the
milliseconds between the two gateways' clocks cannot move a decision across a boundary.

Integration: needs nginx with the Lua module; under CI a missing module fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import REPO, free_port, nginx_binary
from tests.gateway.conftest import FakeScorer

pytestmark = pytest.mark.integration

PLAIN = ["/v1/products/42", "/v1/search", "/v1/orders", "/v1/reports/export", "/v1/health"]


def _require_dataplane() -> None:
    from gateway.dataplane.nginx import check

    missing = check()
    if missing:
        msg = "the NGINX data plane needs: " + "; ".join(missing)
        if os.environ.get("CI") or os.environ.get("GATEWISE_REQUIRE_NGINX_LUA"):
            pytest.fail(msg + " (.ci/run installs them)")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def stub_upstream(tmp_path_factory: pytest.TempPathFactory):
    """NGINX answering 200 ``{"ok":true}`` to any request: the services behind both gateways."""
    exe = nginx_binary()
    root = tmp_path_factory.mktemp("stub-upstream")
    port = free_port()
    (root / "logs").mkdir()
    (root / "nginx.conf").write_text(
        f"""daemon off; pid {root}/nginx.pid; error_log {root}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {root}/body;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }} }}
"""
    )
    proc = subprocess.Popen([exe, "-p", str(root), "-c", str(root / "nginx.conf")])
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/x", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, stub_upstream: int):
    """Settings whose services are the stub, a running NGINX data plane, its admin client."""
    _require_dataplane()
    from config.gateway import RoleRule
    from config.settings import load_settings
    from gateway.dataplane.nginx import DataPlaneAdmin, NginxProcess, render

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWISE_")}
    try:
        data = tmp_path_factory.mktemp("dataplane-data")
        s = load_settings(REPO / "gatewise.yaml", data_dir=data)
    finally:
        os.environ.update(saved)
    g = s.gateway
    up = f"http://127.0.0.1:{stub_upstream}"
    services = {n: svc.model_copy(update={"instances": [up]}) for n, svc in g.services.items()}
    roles = dict(g.roles)
    roles["reader"] = [RoleRule(methods=["GET"], routes=["/v1/products*"])]
    g = g.model_copy(
        update={
            "services": services,
            "roles": roles,
            "scoring": g.scoring.model_copy(update={"enabled": True, "cache_ttl_s": 3600.0}),
            "scanning": g.scanning.model_copy(update={"enabled": False}),
            # anonymous callers name themselves: each scenario's are its own (not the address
            # every scenario shares, whose limit state would carry over in NGINX)
            "client_id_header": "X-Client-Id",
        }
    )
    s = s.model_copy(update={"gateway": g})
    r = render(
        g,
        data / "nginx",
        port=free_port(),
        admin_port=free_port(),
        workers=1,
        log_buffer=False,
        reuseport=False,
    )
    proc = NginxProcess(r)
    proc.start()
    admin = DataPlaneAdmin(r.admin_url, r.token)
    try:
        yield Plane(s, r, admin)
    finally:
        admin.close()
        proc.stop()


class Plane(tuple):  # type: ignore[type-arg]
    """(settings, rendered, admin), with a repr short enough for Hypothesis' reports."""

    def __new__(cls, *parts: Any) -> Plane:
        return super().__new__(cls, parts)

    def __repr__(self) -> str:
        return f"Plane({self[1].url})"


# a scenario -----------------------------------------------------------------------------------
@dataclass
class Client:
    name: str
    tier: str = "free"
    region: str = "eu-west"
    roles: tuple[str, ...] = ("consumer",)
    revoked: bool = False
    score: float | None = None


@dataclass
class Step:
    who: str  # a client name, or "none" | "bad" | "bearer"
    method: str = "GET"
    path: str = "/v1/products/42"
    policy: dict[str, Any] | None = None  # publish this document before the request
    scores: dict[str, float] | None = None  # push these scores before the request


@dataclass
class Result:
    status: int
    label: str | None
    auth: str | None
    limit: str | None = None
    remaining: str | None = None
    retry_after: bool = False


@dataclass
class Scenario:
    clients: list[Client]
    policy: dict[str, Any]
    steps: list[Step]
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))

    def cid(self, name: str) -> str:
        return f"{name}-{self.suffix}"


def policy_doc(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tiers": {
            "free": {"requests_per_minute": 5},
            "pro": {"requests_per_minute": 6, "burst": 4},
        },
        "routes": {"GET /v1/reports/export": {"cost": 2}},
        "targets": {
            "abuse": {
                "mode": "shadow",
                "bands": [
                    {"min_score": 0.5, "action": "throttle", "limit_factor": 0.5},
                    {"min_score": 0.9, "action": "block"},
                ],
            }
        },
    }
    doc.update(kw)
    return doc


def _write_consumers(s: Any, sc: Scenario) -> dict[str, str]:
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    keys, consumers = {}, []
    for c in sc.clients:
        kid, key, digest = new_api_key()
        keys[c.name] = key
        consumers.append(
            Consumer(
                client_id=sc.cid(c.name),
                tier=c.tier,
                region=c.region,
                device_type="server",
                roles=list(c.roles),
                api_keys=[ApiKey(id=kid, sha256=digest, revoked=c.revoked)],
            )
        )
    ConsumersFile(consumers=consumers).save(s.gateway_consumers_path)
    return keys


def _publish(s: Any, sc: Scenario, doc: dict[str, Any]) -> None:
    from gateway.policy import parse_policy
    from gateway.policy_store import PolicyStore

    doc = json.loads(json.dumps(doc).replace("@", f"-{sc.suffix}"))  # "alice@": a client id
    PolicyStore(s.policy_dir).publish(parse_policy(doc), author="test", reason="parity")


def _headers(step: Step, keys: dict[str, str], rid: str, suffix: str) -> dict[str, str]:
    h = {"x-request-id": rid, "x-client-id": f"anon-{suffix}"}
    if step.who == "bad":
        h["x-api-key"] = "gw_nosuchkey_" + "x" * 20
    elif step.who == "bearer":
        h["authorization"] = "Bearer abc.def.ghi"
    elif step.who != "none":
        h["x-api-key"] = keys[step.who]
    return h


async def _run(plane: Any, sc: Scenario) -> list[tuple[Step, Result, Result]]:
    from gateway.app import create_app
    from gateway.dataplane.sync import DataPlaneSync
    from telemetry.store import TelemetryStore

    s, r, admin = plane
    keys = _write_consumers(s, sc)
    _publish(s, sc, sc.policy)
    sync = DataPlaneSync(s, admin, r.root)
    assert sync.sync_once(force=True), sync.status.error
    admin.clear_scores()
    scores = {sc.cid(c.name): c.score for c in sc.clients if c.score is not None}
    admin.push_scores([{"id": k, "score": v} for k, v in scores.items()], "7")

    async def stub(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    app = create_app(
        s,
        transport=httpx.ASGITransport(app=stub),
        scoring_transport=httpx.MockTransport(FakeScorer().handler),
    )
    gw = app.state.gateway
    await gw.start()
    for k, v in scores.items():
        gw.scorer.put(k, v, "7", "champion")
    rids: list[str] = []
    py_status: dict[str, httpx.Response] = {}
    ng_status: dict[str, httpx.Response] = {}
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("10.0.0.9", 5555)),
                base_url="http://gw",
            ) as py,
            httpx.AsyncClient(base_url=r.url) as ng,
        ):
            for step in sc.steps:
                if step.policy is not None:
                    _publish(s, sc, step.policy)
                    gw.reload_policy()
                    assert sync.sync_once(), sync.status.error
                if step.scores is not None:
                    pushed = {sc.cid(n): v for n, v in step.scores.items()}
                    for k, v in pushed.items():
                        gw.scorer.put(k, v, "7", "champion")
                    admin.push_scores([{"id": k, "score": v} for k, v in pushed.items()], "7")
                rid = uuid.uuid4().hex
                rids.append(rid)
                h = _headers(step, keys, rid, sc.suffix)
                py_status[rid] = await py.request(step.method, step.path, headers=h)
                ng_status[rid] = await ng.request(step.method, step.path, headers=h)
    finally:
        await gw.stop()
    py_ev = TelemetryStore(s.telemetry_dir).read().to_pandas().set_index("request_id")
    ng_ev = _nginx_events(r.access_log, set(rids))
    out = []
    for step, rid in zip(sc.steps, rids, strict=True):
        e = py_ev.loc[rid]
        out.append(
            (
                step,
                _result(py_status[rid], e["ratelimit_decision"], e["auth_result"]),
                _result(ng_status[rid], ng_ev[rid].get("gw_decision"), ng_ev[rid].get("gw_auth")),
            )
        )
    return out


def _nginx_events(log: Path, rids: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for _ in range(100):  # the log phase runs after the answer is sent
        found = {}
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec["gw_request_id"] in rids:
                found[rec["gw_request_id"]] = rec
        if len(found) == len(rids):
            return found
        time.sleep(0.02)
    raise AssertionError(f"{len(rids) - len(found)} requests missing from {log}")


def _none(v: Any) -> str | None:
    return None if v is None or v == "" or (isinstance(v, float) and v != v) else str(v)


def _result(resp: httpx.Response, label: Any, auth: Any) -> Result:
    h = resp.headers
    return Result(
        resp.status_code,
        _none(label),
        _none(auth),
        h.get("ratelimit-limit"),
        h.get("ratelimit-remaining"),
        "retry-after" in h,
    )


def assert_parity(plane: Any, sc: Scenario) -> list[tuple[Step, Result, Result]]:
    rows = asyncio.run(_run(plane, sc))
    bad = [
        f"#{i} {st.who} {st.method} {st.path}: python {py} != nginx {ng}"
        for i, (st, py, ng) in enumerate(rows)
        if py != ng
    ]
    assert not bad, "\n".join(bad)
    return rows


# fixed cases ----------------------------------------------------------------------------------
def test_auth_routes_and_roles(plane):
    sc = Scenario(
        [Client("alice"), Client("rita", roles=("reader",)), Client("rev", revoked=True)],
        policy_doc(),
        [
            Step("none"),
            Step("bad"),
            Step("bearer"),
            Step("rev"),
            Step("alice"),
            Step("alice", path="/nope"),
            Step("alice", "PATCH", "/v1/products/42"),
            Step("rita", path="/v1/orders"),
            Step("rita", path="/v1/products/42"),
            Step("none", path="/v1/health"),
            Step("alice", path="/v1/health"),
        ],
    )
    rows = assert_parity(plane, sc)
    got = [(py.status, py.label, py.auth) for _, py, _ in rows]
    assert got[:4] == [
        (401, None, "missing_credentials"),
        (401, None, "invalid_key"),
        (401, None, "invalid_token"),
        (401, None, "revoked_key"),
    ]
    assert got[4] == (200, "allow", "ok")
    assert got[5][:2] == (404, "no_route") and got[6][:2] == (405, "no_route")
    assert got[7] == (403, None, "forbidden") and got[8] == (200, "allow", "ok")
    assert got[9] == (200, "allow", "anonymous")


def test_burst_past_limits_and_route_cost(plane):
    sc = Scenario(
        [Client("alice"), Client("paul", tier="pro")],
        policy_doc(),
        [Step("alice") for _ in range(7)]
        + [Step("paul", path="/v1/reports/export") for _ in range(3)]
        + [Step("paul")],
    )
    rows = assert_parity(plane, sc)
    assert [py.status for _, py, _ in rows] == [200] * 5 + [429] * 2 + [200, 200, 429, 429]
    assert all(py.retry_after for _, py, _ in rows if py.status == 429)


def test_overrides_allowances_and_expiry(plane):
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    doc = policy_doc(
        overrides=[
            {"client_id": "b@", "action": "block", "reason": "fraud"},
            {"client_id": "c@", "action": "challenge", "reason": "odd"},
            {"client_id": "t@", "action": "throttle", "requests_per_minute": 2, "reason": "x"},
            {"client_id": "s@", "action": "block", "reason": "maybe", "mode": "shadow"},
            {"client_id": "e@", "action": "block", "reason": "old", "expires_at": past},
            {"client_id": "a@", "action": "allow", "reason": "vip", "expires_at": future},
        ],
        allowances={"h@": {"requests_per_minute": 8, "reason": "heavy user"}},
    )
    doc["targets"]["abuse"]["mode"] = "enforce"
    clients = [Client(n) for n in ("b", "c", "t", "s", "e", "h")] + [Client("a", score=0.97)]
    steps = [Step(n) for n in ("b", "c", "s", "e")] + [Step("t")] * 3 + [Step("h")] * 9
    steps += [Step("a")] * 2
    rows = assert_parity(plane, Scenario(clients, doc, steps))
    labels = [py.label for _, py, _ in rows]
    assert labels[:4] == ["block", "challenge", "shadow_block", "allow"]
    assert labels[4:7] == ["allow", "allow", "throttle"]
    assert labels[7:15] == ["allow"] * 8 and labels[15] == "throttle"
    assert labels[16:] == ["allow", "allow"]  # the allow override silences the model


def test_bands_shadow_then_enforce_mid_sequence(plane):
    shadow = policy_doc()
    enforce = policy_doc()
    enforce["targets"]["abuse"]["mode"] = "enforce"
    exempt = policy_doc(
        exemptions=[{"target": "abuse", "attribute": "region", "value": "ap-south", "reason": "b"}]
    )
    exempt["targets"]["abuse"]["mode"] = "enforce"
    clients = [
        Client("hi", score=0.95),
        Client("mid", score=0.6, tier="pro"),
        Client("low", score=0.1),
        Client("ap", score=0.99, region="ap-south"),
        Client("new"),
    ]
    steps = [Step(n) for n in ("hi", "mid", "low", "ap", "new")]
    steps += [Step("hi", policy=enforce), Step("mid"), Step("mid"), Step("mid"), Step("low")]
    steps += [Step("ap"), Step("new", scores={"new": 0.93}), Step("ap", policy=exempt)]
    rows = assert_parity(plane, Scenario(clients, shadow, steps))
    labels = [py.label for _, py, _ in rows]
    assert labels[:5] == ["shadow_block", "shadow_throttle", "allow", "shadow_block", "allow"]
    # enforce: block at 0.95; the pro client (burst 4) keeps half its limit: 2 then refused
    assert labels[5:10] == ["block", "allow", "allow", "throttle", "allow"]
    assert labels[10:] == ["block", "block", "allow"]


def test_scoring_unavailable_fails_closed_where_enforced(plane):
    doc = policy_doc()
    doc["targets"]["abuse"].update(mode="enforce", failure_mode="closed")
    s, r, admin = plane
    sc = Scenario([Client("x")], doc, [Step("x")])

    async def main() -> tuple[int, int]:
        from gateway.app import create_app
        from gateway.dataplane.sync import DataPlaneSync

        keys = _write_consumers(s, sc)
        _publish(s, sc, doc)
        assert DataPlaneSync(s, admin, r.root).sync_once(force=True)
        admin.clear_scores()  # no feed: unavailable
        app = create_app(
            s,
            transport=httpx.MockTransport(lambda q: httpx.Response(200)),
            scoring_transport=httpx.MockTransport(FakeScorer(mode="down").handler),
        )
        gw = app.state.gateway
        await gw.start()
        try:
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://gw"
                ) as py,
                httpx.AsyncClient(base_url=r.url) as ng,
            ):
                h = {"x-api-key": keys["x"]}
                return (await py.get("/v1/search", headers=h)).status_code, (
                    await ng.get("/v1/search", headers=h)
                ).status_code
        finally:
            await gw.stop()

    assert asyncio.run(main()) == (503, 503)


# property-generated sequences -----------------------------------------------------------------
_NAMES = ("c0", "c1", "c2", "c3")
_band = st.sampled_from(
    [
        [],
        [{"min_score": 0.5, "action": "throttle", "limit_factor": 0.5}],
        [{"min_score": 0.5, "action": "throttle", "requests_per_minute": 2}],
        [
            {"min_score": 0.3, "action": "log"},
            {"min_score": 0.7, "action": "challenge"},
            {"min_score": 0.9, "action": "block"},
        ],
    ]
)


@st.composite
def scenarios(draw: Any) -> Scenario:
    def rpm() -> int:
        return draw(st.integers(1, 6))

    tiers = {
        "free": {"requests_per_minute": rpm()},
        "pro": {"requests_per_minute": rpm(), "burst": draw(st.integers(1, 6))},
        "enterprise": {"requests_per_minute": 6},
    }
    smallest = min(t.get("burst") or t["requests_per_minute"] for t in tiers.values())
    routes = {}
    if draw(st.booleans()):
        routes["GET /v1/reports/export"] = {"cost": draw(st.integers(1, smallest))}
    if draw(st.booleans()):
        routes["* /v1/search"] = {"requests_per_minute": rpm()}
    overrides = []
    for n in _NAMES:
        kind = draw(st.sampled_from([None, None, "block", "challenge", "throttle", "allow"]))
        if kind:
            o: dict[str, Any] = {"client_id": f"{n}@", "action": kind, "reason": "r"}
            if kind == "throttle":
                o["requests_per_minute"] = rpm()
            o["mode"] = draw(st.sampled_from(["enforce", "shadow"]))
            overrides.append(o)
    allowances = {
        f"{n}@": {"requests_per_minute": rpm() + 2, "reason": "heavy"}
        for n in _NAMES
        if draw(st.booleans()) and draw(st.booleans())
    }
    target = {
        "mode": draw(st.sampled_from(["shadow", "enforce", "off"])),
        "bands": draw(_band),
    }
    doc = {
        "tiers": tiers,
        "routes": routes,
        "overrides": overrides,
        "allowances": allowances,
        "targets": {"abuse": target},
        "exemptions": (
            [{"target": "abuse", "attribute": "tier", "value": "pro", "reason": "bias"}]
            if draw(st.booleans())
            else []
        ),
    }
    clients = [
        Client(
            n,
            tier=draw(st.sampled_from(["free", "pro", "enterprise", "gold"])),
            roles=draw(st.sampled_from([("consumer",), ("reader",)])),
            score=draw(st.one_of(st.none(), st.floats(0, 1))),
        )
        for n in _NAMES
    ]
    who = st.sampled_from([*_NAMES, *_NAMES, "none", "bad"])
    path = st.sampled_from(PLAIN)
    method = st.sampled_from(["GET", "GET", "GET", "POST"])
    steps = [Step(draw(who), draw(method), draw(path)) for _ in range(draw(st.integers(5, 25)))]
    if draw(st.booleans()):  # a policy change mid-sequence: the target switches mode
        at = draw(st.integers(0, len(steps) - 1))
        new = json.loads(json.dumps(doc))
        new["targets"]["abuse"]["mode"] = draw(st.sampled_from(["shadow", "enforce", "off"]))
        steps[at].policy = new
    return Scenario(clients, doc, steps)


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sc=scenarios())
def test_property_sequences_match(plane, sc):
    assert_parity(plane, sc)
