"""The monitor flow on two simulated days: drift and bias reports, history, label delay."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture()
def data(built, tmp_path):
    s0, _ = built
    s = s0.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    return s


def test_monitor_flow_writes_reports_and_history(data, prefect_harness):
    from flows.monitor import monitor_flow
    from monitoring.record import read_history
    from tests.conftest import REPO

    s = data
    out = monitor_flow(
        hours=6,
        label_delay_minutes=30,
        config_path=str(REPO / "gatewise.yaml"),
        data_dir=str(s.data_dir),
    )
    rep = json.loads(
        (s.data_dir / "monitoring" / "checks" / out["check_id"] / "findings.json").read_text()
    )
    assert rep["drift"] is not None and len(rep["drift"]["columns"]) > 40
    assert (s.data_dir / "monitoring" / "checks" / out["check_id"] / "drift.html").exists()
    # no champion and no recorded scores: no model decisions to judge, said, not invented
    assert out["bias"] == {} and out["bias_requests"] == 0
    hist = read_history(s.data_dir / "monitoring" / "history").to_pandas()
    assert set(hist.kind) == {"drift"} and hist.check_id.nunique() == 1
    # the default policy has the model in shadow: drift alone changes no enforcement
    assert all(c["kind"] != "target_mode" for c in out["policy"]["changes"])


def test_monitor_never_reads_labels_before_they_arrive(data, prefect_harness):
    from flows.monitor import monitor_flow
    from tests.conftest import REPO

    out = monitor_flow(
        hours=1,
        label_delay_minutes=90,
        publish_policy=False,
        config_path=str(REPO / "gatewise.yaml"),
        data_dir=str(data.data_dir),
    )
    assert out["bias_requests"] == 0 and out["bias"] == {}
    assert out["drift_share"] is not None  # drift needs no labels


def test_champion_scores_become_client_overrides_in_the_published_policy(
    champion, tmp_path, prefect_harness
):
    from datetime import timedelta

    from flows.monitor import monitor_flow
    from gateway.policy_store import PolicyStore
    from serving.batch import score_entities_at, score_windows
    from tests.conftest import REPO

    s0, _ = champion
    s = s0.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    out = monitor_flow(hours=2, config_path=str(REPO / "gatewise.yaml"), data_dir=str(s.data_dir))
    pol = out["policy"]
    assert pol["scored_clients"] > 0
    # the model's decisions (champion score >= 0.5) judged by every sensitive column
    assert set(out["bias"]) == {"tier", "region", "device_type"}
    assert out["bias_requests"] > 1000
    # independently: the clients of the period, each scored for the window starting at as_of
    # (features of the windows closed by then), through the default bands
    from telemetry.store import as_utc

    at = as_utc(out["as_of"], "as_of")
    period, _ = score_windows(s, "abuse", "champion", since=at - timedelta(hours=2), until=at)
    scores, _ = score_entities_at(s, "abuse", sorted(set(period["client_id"])), at)
    assert len(scores) == period["client_id"].nunique()
    flagged = set(scores[scores["score"] >= 0.5]["client_id"])
    got = {c["detail"].split(":")[0] for c in pol["changes"] if c["kind"] == "override"}
    assert got == flagged
    if flagged:  # shadow target: shadow overrides harm no one, so the gate lets them through
        assert pol["verdict"]["accepted"] and pol["published"] is not None
        active = PolicyStore(s.policy_dir).load()
        assert {o.client_id for o in active.overrides} == flagged
        assert {o.mode for o in active.overrides} == {"shadow"}


def test_each_policy_stage_is_gated_on_its_own(data):
    """Overrides that would block legitimate clients are refused by the gate; the limits stage
    is judged separately, so a refused override list does not take sound changes with it."""
    import pandas as pd

    from flows.monitor import policy_task
    from gateway.policy import initial_policy
    from gateway.policy_store import PolicyStore
    from labeling.store import LabelStore
    from telemetry.store import TelemetryStore

    rules = data.monitoring.policy.model_copy(update={"adapt_limits": True})
    s = data.model_copy(update={"monitoring": data.monitoring.model_copy(update={"policy": rules})})
    store = PolicyStore(s.policy_dir)
    p0 = initial_policy(s)
    t = p0.targets["abuse"].model_copy(update={"mode": "enforce"})
    before = store.publish(
        p0.model_copy(update={"targets": {"abuse": t}}), author="test", reason="enforce"
    )
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    as_of = pd.Timestamp(ev["timestamp"].max()).to_pydatetime()
    lab = LabelStore(s.labels_dir).read().to_pandas()
    bad = set(lab.loc[lab["label"] == 1, "client_id"])
    legit = ev[~ev["client_id"].isin(bad)]["client_id"].value_counts().index[:20]
    scores = pd.DataFrame({"client_id": legit, "event_timestamp": as_of, "score": 0.99})
    out = policy_task.fn(s, "abuse", as_of, None, [], True, scores, "1", 60.0, 1.0)
    stages = {x["stage"]: x for x in out["stages"]}
    assert not stages["overrides"]["accepted"]
    assert stages["overrides"]["reason"].startswith("refused: it would harm")
    ov = [c for c in out["changes"] if c["stage"] == "overrides"]
    assert len(ov) == 20 and not any(c["accepted"] for c in ov)
    active = store.load()
    assert not active.overrides
    if stages.get("limits", {}).get("accepted"):
        assert out["published"] == active.version > before.version
        assert active.tiers != before.tiers or active.routes != before.routes
        assert "[" in active.reason and "overrides: refused" in active.reason
    else:
        assert out["published"] is None and active.version == before.version
