"""The policy document: validation names the field; versions, history, rollback."""

from __future__ import annotations

import json

import pytest

from gateway.policy import Override, PolicyError, default_policy, parse_policy
from gateway.policy_store import PolicyStore


def _policy():
    return default_policy(
        {"free": 60, "pro": 600, "enterprise": 6000},
        {"GET /v1/reports/export": 10},
        [{"min_score": 0.5, "action": "throttle"}, {"min_score": 0.9, "action": "block"}],
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda d: d["tiers"]["free"].update(requests_per_minute=0),
            "tiers.free.requests_per_minute",
        ),
        (lambda d: d.update(default_tier="gold"), "default_tier"),
        (lambda d: d["routes"].update({"FETCH /x": {"cost": 1}}), "FETCH /x"),
        (
            lambda d: d["routes"]["GET /v1/reports/export"].update(cost=100),
            "exceeds the smallest tier burst",
        ),
        (lambda d: d["targets"]["abuse"].update(mode="sometimes"), "targets.abuse.mode"),
        (lambda d: d["targets"]["abuse"]["bands"].reverse(), "strictly increasing"),
        (
            lambda d: d["overrides"].append(
                {"client_id": "x", "action": "throttle", "reason": "r"}
            ),
            "requests_per_minute",
        ),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_invalid_documents_name_the_field(mutate, field):
    d = json.loads(_policy().model_dump_json())
    mutate(d)
    with pytest.raises(PolicyError, match=field.replace(".", r"\.").replace("(", r"\(")):
        parse_policy(d)


def test_not_json_is_refused():
    with pytest.raises(PolicyError, match="not JSON"):
        parse_policy(b"{tiers:")


def test_publish_numbers_versions_keeps_history_and_rolls_back(tmp_path):
    store = PolicyStore(tmp_path / "policy")
    v1 = store.publish_if_absent(_policy(), author="t", reason="first")
    assert (
        v1.version == 1 and store.publish_if_absent(_policy(), author="t", reason="x").version == 1
    )
    block = Override(client_id="mallory", action="block", reason="credential stuffing, score 0.97")
    v2 = store.publish(
        v1.model_copy(update={"overrides": [block]}), author="monitor", reason="scores"
    )
    assert (
        v2.version == 2
        and v2.parent_version == 1
        and store.load().overrides[0].client_id == "mallory"
    )
    v3 = store.rollback(1)
    assert v3.version == 3 and v3.overrides == [] and "rollback to v1" in v3.reason
    assert [h["version"] for h in store.history()] == [1, 2, 3]
    assert store.get(2).overrides[0].reason.startswith("credential")
    with pytest.raises(PolicyError, match="does not exist"):
        store.get(9)


def test_lookups():
    p = _policy()
    assert p.route("GET", "/v1/reports/export").cost == 10 and p.route("GET", "/v1/x").cost == 1
    assert p.tier("gold").requests_per_minute == 60  # unknown tier: the default tier
    band = p.targets["abuse"].band(0.95)
    assert band is not None and band.action == "block"
    assert p.targets["abuse"].band(0.2) is None and p.targets["abuse"].band(None) is None


def test_shadow_override_is_recorded_not_enforced():
    from gateway.auth import Principal
    from gateway.decision import DecisionCore
    from gateway.ratelimit import MemoryLimiter

    shadow = Override(client_id="eve", action="block", reason="score 0.97", mode="shadow")
    enforced = Override(client_id="mallory", action="block", reason="score 0.99")
    core = DecisionCore(
        _policy().model_copy(update={"overrides": [shadow, enforced]}), MemoryLimiter()
    )
    d = core.decide(Principal("eve", tier="free"), "GET", "/v1/orders/{id}", None, 1e9)
    assert d.allowed and d.label == "shadow_block" and "shadow override" in d.reason
    d = core.decide(Principal("mallory", tier="free"), "GET", "/v1/orders/{id}", None, 1e9)
    assert not d.allowed and d.status == 403 and d.label == "block"
