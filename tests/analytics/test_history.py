"""The analytics recover what the lifecycle simulator planted: the SLO breach, the
consumers who left, and the throttling policy's effect on retention."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analytics.source import Filters, Source
from config.analytics import AnalyticsSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Source, dict, pd.DataFrame]:
    from config.simulator import LifecycleSettings
    from telemetry.simulator.lifecycle import write_lifecycle

    root = tmp_path_factory.mktemp("history")
    res = write_lifecycle(LifecycleSettings(), root)
    src = Source([root / "telemetry"])
    yield src, res.truth, res.consumers.to_pandas()
    src.close()


def test_policy_effect_recovers_the_planted_truth(history) -> None:
    from analytics.report import default_policy_change
    from analytics.stats import policy_cohort, propensity_match

    src, truth, _ = history
    version, at = default_policy_change(src)
    assert version == truth["policy_versions"][1]
    # its first request under the new version, seconds after the change
    start = pd.Timestamp(truth["policy_start"])
    assert pd.Timedelta(0) <= pd.Timestamp(at) - start < pd.Timedelta(hours=1)
    frame = policy_cohort(src, start.to_pydatetime())
    psm_truth = truth["psm_truth"]
    # the same eligible and treated consumers as the simulator's definition
    assert len(frame) == psm_truth["n_eligible"]
    assert int(frame["treated"].sum()) == psm_truth["n_treated"]
    res = propensity_match(frame)
    assert res["ci_low"] < psm_truth["att"] < res["ci_high"]
    assert res["ci_high"] < 0  # the harm is detected
    before = res["balance"]["smd_before"].abs().max()
    assert res["max_abs_smd_after"] < before / 3
    assert res["n_matched"] > 0.7 * res["n_treated"]


def test_slo_breach_and_lost_consumers(history, settings) -> None:
    from analytics.report import answers, period_filters

    src, truth, consumers = history
    cfg = settings.analytics  # the project's SLO targets (gatewise.yaml)
    f = period_filters(src, "7d")
    ans = answers(src, cfg, f)
    assert [r["route"] for r in ans["slo_breaching"]] == [truth["slo_breach_route"]]
    # lost = silent 14 days before the end: nearly all of them truly churned (a rare
    # consumer is silent that long by chance), and all who churned three weeks before
    # the end are among them
    end = pd.Timestamp(truth["end"])
    churned = consumers[consumers["churned_at"].notna()]
    lost_ids = set(_lost(src, cfg))
    assert len(lost_ids) == ans["lost"]
    assert len(lost_ids - set(churned["client_id"])) <= 0.01 * len(lost_ids)
    early = churned[pd.to_datetime(churned["churned_at"], utc=True) < end - pd.Timedelta(days=21)]
    assert set(early["client_id"]) <= lost_ids


def _lost(src: Source, cfg: AnalyticsSettings) -> list[str]:
    from analytics.cohorts import consumers

    people = consumers(src, Filters(), cfg.churn_after_days)
    return people.loc[people["churned"], "client_id"].tolist()


def test_incident_days_flagged_as_anomalies(history) -> None:
    from analytics.series import anomalies

    src, truth, _ = history
    flagged = anomalies(src, Filters(routes=(truth["incident_route"],)), metric="error_rate")
    days = {str(pd.Timestamp(h).date()) for h in flagged["hour"]}
    assert set(truth["incident_days"]) <= days
    # ... and nothing else: sampling noise of small routes is not an anomaly
    assert days <= set(truth["incident_days"])
    # the latency regression of the last week: its hours, and (almost) nothing else
    end = pd.Timestamp(truth["end"])
    two_weeks = Filters(start=end - pd.Timedelta(days=14), end=end)
    slow = anomalies(src, two_weeks, metric="p95_ms")
    on_route = slow[slow["key"] == truth["slo_breach_route"]]
    assert (pd.to_datetime(on_route["hour"]) >= pd.Timestamp(truth["breach_start"])).all()
    assert len(on_route) >= 0.9 * 7 * 24 and len(slow) - len(on_route) <= 5


def test_new_route_adoption(history) -> None:
    from analytics.usage import adoption

    src, truth, _ = history
    df = adoption(src, Filters()).set_index("route")
    launched = pd.Timestamp(df.loc[truth["launch_route"], "launched"])
    assert launched.date() == pd.Timestamp(truth["launch"]).date()
    assert 0 < df.loc[truth["launch_route"], "share_of_active"] < 0.5


def test_weekly_report_logged_to_mlflow(history, settings, tmp_path: Path) -> None:
    from analytics.report import log_report, write_report
    from models.tracking import client

    src, truth, _ = history
    out = tmp_path / "review.html"
    summary = write_report(src, settings.analytics, out, "7d")
    text = out.read_text()
    assert "Which routes are breaking SLO?" in text and truth["slo_breach_route"] in text
    assert "plotly" in text.lower() and "<script src=" not in text  # self-contained
    run_id = log_report(settings, summary)
    run = client(settings).get_run(run_id)
    assert run.data.metrics["slo_breaching_routes"] == 1
    assert run.data.metrics["consumers_lost"] == summary["answers"]["lost"]
    arts = {a.path for a in client(settings).list_artifacts(run_id, "report")}
    assert "report/review.html" in arts and "report/answers.json" in arts


def test_throttle_hazard_ratio_recovers_the_planted_one(history) -> None:
    from analytics.cohorts import consumers, exposure_hazard

    src, truth, _ = history
    res = exposure_hazard(consumers(src, Filters()))
    assert res["lower_95"] < truth["throttle_hazard_ratio"] < res["upper_95"]
    assert res["lower_95"] > 1.2  # clearly harmful
