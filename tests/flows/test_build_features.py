"""The real Prefect flow build_features on a simulated day."""

from __future__ import annotations

import pytest

from features.training import online_features
from flows.build_features import build_features_flow
from telemetry.store import TelemetryStore

pytestmark = pytest.mark.integration


def test_flow_builds_applies_and_materializes_and_reruns_safely(prefect_harness, tmp_path):
    from config.settings import load_settings
    from labeling.simulated import simulate_labelled
    from tests.conftest import REPO

    s = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "data")
    s = s.model_copy(
        update={"simulator": s.simulator.model_copy(update={"clients": 80, "days": 1.0, "seed": 5})}
    )
    simulate_labelled(s)
    out = build_features_flow(config_path=str(REPO / "gatewise.yaml"), data_dir=str(s.data_dir))
    assert out["days_built"] == ["2026-11-02"]
    assert out["rows"]["client_windows"] > 0 and out["rows"]["route_windows"] > 0
    served = {"client_5m", "client_1h", "client_24h", "client_profile"}
    assert set(out["feature_views"]) == served | {"route_5m"} | {f"{v}_asof" for v in served}
    assert out["rows"]["client_windows_asof"] > 0
    assert out["events"] == TelemetryStore(s.telemetry_dir).count()
    # the online store is served
    busiest = (
        TelemetryStore(s.telemetry_dir)
        .connect()
        .sql(
            "SELECT client_id FROM events WHERE timestamp >= TIMESTAMPTZ '2026-11-02 23:50:00+00' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        )
        .fetchall()[0][0]
    )
    res = online_features(s, [busiest])
    assert res["request_count_24h"][0] > 0
    # a rerun changes nothing and still succeeds
    again = build_features_flow(config_path=str(REPO / "gatewise.yaml"), data_dir=str(s.data_dir))
    assert again["days_built"] == [] and again["days_unchanged"] == ["2026-11-02"]


def test_flow_fails_clearly_on_an_empty_store(prefect_harness, tmp_path):
    from tests.conftest import REPO

    with pytest.raises(RuntimeError, match=r"telemetry store .* is empty"):
        build_features_flow(
            config_path=str(REPO / "gatewise.yaml"), data_dir=str(tmp_path / "empty")
        )
