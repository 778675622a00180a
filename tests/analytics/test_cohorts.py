"""Cohorts by hand on a five-consumer fixture; survival and Cox against lifelines
directly; comparisons against scipy; corrections against statsmodels."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from analytics.source import Filters, Source
from config.analytics import FunnelStep
from tests.analytics.conftest import T0, event, store_of

DAY = 1440  # minutes


def _cohort_events() -> list:
    e = []
    # a: weeks 0, 1 (the key route), 3 (upgraded to pro)
    e.append(event("a", 0, "/v1/search", 200, 10))
    e.append(event("a", 7 * DAY, "/v1/orders", 200, 10, http_request_method="POST"))
    e.append(event("a", 21 * DAY, "/v1/search", 200, 10, tier="pro"))
    # b: week 0 only
    e.append(event("b", 60, "/v1/search", 200, 10))
    # d: first seen in week 1; upgraded, then the key route as pro (no upgrade after it)
    e.append(event("d", 7 * DAY + 60, "/v1/search", 200, 10))
    e.append(event("d", 8 * DAY, "/v1/search", 200, 10, tier="pro"))
    e.append(
        event(
            "d",
            14 * DAY + 60 + 24 * 60,
            "/v1/orders",
            200,
            10,
            http_request_method="POST",
            tier="pro",
        )
    )
    # e: a pro consumer first seen in week 4 (its week is not over: no observable offset)
    e.append(event("e", 28 * DAY, "/v1/search", 200, 10, tier="pro"))
    return e


@pytest.fixture()
def cohort_src(tmp_path):
    src = Source([store_of(tmp_path / "t", _cohort_events())])
    yield src
    src.close()


def test_consumers_churn_and_duration(cohort_src) -> None:
    from analytics.cohorts import consumers

    people = consumers(cohort_src, Filters(), churn_after_days=14).set_index("client_id")
    # data end 4 weeks after T0: silent since before week 2 = churned
    assert people["churned"].to_dict() == {"a": False, "b": True, "d": False, "e": False}
    assert people.loc["b", "duration_days"] == pytest.approx(1.0)
    assert people.loc["a", "duration_days"] == pytest.approx(22.0)
    assert people.loc["a", "first_tier"] == "free" and people.loc["a", "tier"] == "pro"


def test_retention_table_by_hand(cohort_src) -> None:
    from analytics.cohorts import retention

    r = retention(cohort_src, Filters(), by="first_week")
    t = r["table"]
    w0, w1, w4 = (str((T0 + timedelta(days=d)).date()) for d in (0, 7, 28))
    assert t.loc[w0, [0, 1, 2, 3]].tolist() == [1.0, 0.5, 0.0, 0.5]
    assert t.loc[w1, [0, 1, 2]].tolist() == [1.0, 1.0, 0.0]
    assert np.isnan(t.loc[w1, 3]) and t.loc[w4].isna().all()
    assert r["sizes"].to_dict() == {w0: 2, w1: 1, w4: 1}
    assert r["milestones"]["week 1"]["all"] == pytest.approx(2 / 3)
    assert r["milestones"]["month 1"]["all"] is None


def test_funnel_ordered_steps(cohort_src) -> None:
    from analytics.cohorts import funnel

    steps = [
        FunnelStep(name="first call", tiers=["free"]),
        FunnelStep(name="orders", route="/v1/orders", method="POST"),
        FunnelStep(name="upgraded", tiers=["pro", "enterprise"]),
    ]
    df = funnel(cohort_src, Filters(), steps)
    assert df["consumers"].tolist() == [3, 2, 1]  # d upgraded before the key route
    assert df["from_previous"].iloc[1] == pytest.approx(2 / 3)
    assert df["from_first"].iloc[2] == pytest.approx(1 / 3)
    # a: 7 days to the key route; d: 7 days 1 hour... from its first free call
    assert df["median_hours_from_previous"].iloc[1] == pytest.approx((168 + 168 + 24) / 2)
    assert df["median_hours_from_previous"].iloc[2] == pytest.approx(14 * 24)


def _people(n: int = 300, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tier = rng.choice(["free", "pro", "enterprise"], n, p=[0.6, 0.3, 0.1])
    rate = rng.lognormal(2, 0.7, n)
    hazard = 0.02 * np.where(tier == "free", 1.0, np.where(tier == "pro", 0.5, 0.3))
    duration = rng.exponential(1 / hazard).clip(1, 180)
    churned = duration < 180
    return pd.DataFrame(
        {
            "first_tier": tier,
            "region": rng.choice(["eu", "us"], n),
            "device_type": rng.choice(["server", "mobile"], n),
            "requests_per_active_day": rate,
            "active_days": rng.poisson(20, n),
            "duration_days": duration,
            "churned": churned,
        }
    )


def test_kaplan_meier_matches_lifelines() -> None:
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    from analytics.cohorts import kaplan_meier

    people = _people()
    km = kaplan_meier(people, by="first_tier")
    g = people[people["first_tier"] == "pro"]
    ref = KaplanMeierFitter().fit(g["duration_days"], g["churned"])
    ours = km["groups"]["pro"]
    np.testing.assert_allclose(ours["survival"], ref.survival_function_.iloc[:, 0].to_numpy())
    assert ours["day_90"] == pytest.approx(float(ref.survival_function_at_times(90).iloc[0]))
    lr = multivariate_logrank_test(people["duration_days"], people["first_tier"], people["churned"])
    assert km["logrank"]["p_value"] == pytest.approx(lr.p_value)
    assert km["logrank"]["p_value"] < 0.01  # the tiers were given different hazards


def test_cox_matches_lifelines_and_finds_the_planted_hazards() -> None:
    from lifelines import CoxPHFitter

    from analytics.cohorts import cox, cox_frame

    people = _people(600)
    res = cox(people, ["first_tier", "requests_per_active_day"], penalizer=0.0)
    frame = cox_frame(people, ["first_tier", "requests_per_active_day"])
    ref = CoxPHFitter().fit(frame, "duration_days", "churned")
    table = res["table"].set_index("covariate")
    np.testing.assert_allclose(table["hazard_ratio"], ref.summary["exp(coef)"].to_numpy())
    # enterprise (first level) is the baseline: free 1/0.3 and pro 0.5/0.3 were planted
    for level, planted in (("free", 1 / 0.3), ("pro", 0.5 / 0.3)):
        row = table.loc[f"first_tier_{level}"]
        assert row["lower_95"] < planted < row["upper_95"]
    assert table.loc["first_tier_free", "p_value"] < 0.001


def test_compare_picks_the_test_and_matches_scipy() -> None:
    from scipy.stats import chi2_contingency, mannwhitneyu, ttest_ind

    from analytics.stats import compare

    rng = np.random.default_rng(5)
    people = pd.DataFrame(
        {
            "g": ["x"] * 200 + ["y"] * 200,
            "churned": np.r_[rng.random(200) < 0.3, rng.random(200) < 0.5],
            "skewed": np.r_[rng.lognormal(0, 1.5, 200), rng.lognormal(0.5, 1.5, 200)],
            "normal": np.r_[rng.normal(10, 2, 200), rng.normal(10.8, 2, 200)],
        }
    )
    res = compare(
        people, "g", {"churned": "binary", "skewed": "continuous", "normal": "continuous"}
    ).set_index("metric")
    a, b = people[people.g == "x"], people[people.g == "y"]
    assert res.loc["churned", "test"] == "chi-square"
    tab = pd.crosstab(people.g, people.churned).to_numpy()[:, ::-1]
    assert res.loc["churned", "p_value"] == pytest.approx(chi2_contingency(tab)[1])
    assert res.loc["skewed", "test"] == "mann-whitney u"
    assert res.loc["skewed", "p_value"] == pytest.approx(mannwhitneyu(a.skewed, b.skewed).pvalue)
    assert res.loc["normal", "test"] == "welch t-test"
    assert res.loc["normal", "p_value"] == pytest.approx(
        ttest_ind(a.normal, b.normal, equal_var=False).pvalue
    )
    lo, hi = res.loc["normal", ["ci_low", "ci_high"]]
    assert lo < -0.8 < hi  # the planted difference x - y
    assert (res["p_adjusted"] >= res["p_value"]).all()


def test_corrections_match_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    from analytics.stats import adjust_pvalues

    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.5])
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), multipletests(p, method="holm")[1])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), multipletests(p, method="fdr_bh")[1])
    with pytest.raises(ValueError, match="correction 'bonf'"):
        adjust_pvalues(p, "bonf")


def test_smd_by_hand() -> None:
    from analytics.stats import smd

    t = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    c = pd.DataFrame({"x": [2.0, 3.0, 4.0]})
    assert smd(t, c)["x"] == pytest.approx(-1.0)  # means 2 vs 3, both sd 1


def test_retention_by_attribute_never_above_one(cohort_src) -> None:
    from analytics.cohorts import retention

    # mixed first weeks in one group: only weeks each consumer can be seen in count
    r = retention(cohort_src, Filters(), by="first_tier")
    t = r["table"]
    assert (t.fillna(0) <= 1).all().all()
    # free: a, b (weeks 0-3 observable) and d (weeks 0-2): week 1 = a and d of 3
    assert t.loc["free", 1] == pytest.approx(2 / 3)
    assert t.loc["free", 3] == pytest.approx(1 / 2)  # only a and b reach week 3; a is active


def test_exposure_hazard_splits_each_consumer_at_its_exposure() -> None:
    from lifelines import CoxTimeVaryingFitter

    from analytics.cohorts import exposure_hazard

    people = _people(400, seed=9)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    rng = np.random.default_rng(2)
    people["first_seen"] = t0
    at = rng.uniform(0, 60, len(people))
    at[rng.random(len(people)) < 0.5] = np.nan
    people["first_refused"] = t0 + pd.to_timedelta(at, unit="D")
    res = exposure_hazard(people, covariates=["first_tier"], penalizer=0.0)
    # the same intervals built by hand
    rows = []
    for i, r in enumerate(people.itertuples()):
        base = {"id": i, "pro": float(r.first_tier == "pro"), "free": float(r.first_tier == "free")}
        a = at[i]
        if np.isnan(a) or a >= r.duration_days:
            rows.append({**base, "start": 0, "stop": r.duration_days, "e": int(r.churned), "x": 0})
        else:
            rows.append({**base, "start": 0, "stop": a, "e": 0, "x": 0})
            rows.append({**base, "start": a, "stop": r.duration_days, "e": int(r.churned), "x": 1})
    ref = CoxTimeVaryingFitter().fit(
        pd.DataFrame(rows), id_col="id", start_col="start", stop_col="stop", event_col="e"
    )
    assert res["hazard_ratio"] == pytest.approx(float(ref.summary.loc["x", "exp(coef)"]), rel=1e-4)
    assert res["exposed"] == int(((~np.isnan(at)) & (at < people["duration_days"])).sum())
