"""Cohort analysis: who the consumers are, whether they stay, and how they convert.

Consumers are grouped by the week they were first seen (or any attribute). The
per-consumer and per-week aggregation is DuckDB's; retention, Kaplan–Meier curves
and Cox regression run on those small tables (one row per consumer).

A consumer has **churned** when it has been silent for ``churn_after_days`` before
the end of the data (it may come back; survival analysis treats the others as
censored at the data's end).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analytics.source import Filters, Source, bucket_sql
from config.analytics import FunnelStep

__all__ = [
    "MILESTONES",
    "consumers",
    "cox",
    "exposure_hazard",
    "funnel",
    "kaplan_meier",
    "retention",
]

# retention milestones in weeks since the first week
MILESTONES = {"week 1": 1, "month 1": 4, "month 3": 13, "month 6": 26, "month 12": 52}
_REFUSED = "ratelimit_decision IN ('throttle', 'block', 'challenge')"
COHORT_ATTRIBUTES = ("first_week", "first_tier", "tier", "region", "device_type")


def consumers(src: Source, f: Filters, churn_after_days: int = 14) -> pd.DataFrame:
    """One row per consumer first seen in the range (attribute filters apply; its
    activity is followed to the end of the data): first/last seen, first and current
    tier, region, device, requests, active days, error and refusal shares, and
    ``duration_days`` / ``churned`` for survival analysis."""
    f = src.resolve(f)
    df = src.df(
        f""", c AS (SELECT client_id, min(timestamp) AS first_seen, max(timestamp) AS last_seen,
               arg_min(tier, timestamp) AS first_tier, arg_max(tier, timestamp) AS tier,
               any_value(region) AS region, any_value(device_type) AS device_type,
               count(*) AS requests, count(DISTINCT epoch_us(timestamp) // 86400000000) AS active_days,
               avg((http_response_status_code >= 500)::DOUBLE) AS rate_5xx,
               avg(({_REFUSED})::DOUBLE) AS refused_share,
               min(timestamp) FILTER (WHERE {_REFUSED}) AS first_refused
             FROM ev GROUP BY client_id)
        SELECT *, (SELECT max(timestamp) FROM all_ev) AS data_end FROM c
        WHERE first_seen >= ? AND first_seen < ? ORDER BY first_seen""",
        f,
        time=False,
        params=[f.start, f.end],
    )
    if df.empty:
        return df
    for col in ("first_seen", "last_seen", "first_refused", "data_end"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["first_week"] = df["first_seen"].dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
    df["first_week"] = df["first_week"].dt.tz_localize("UTC")
    df["churned"] = df["last_seen"] < df["data_end"] - pd.Timedelta(days=churn_after_days)
    df["duration_days"] = (df["last_seen"] - df["first_seen"]).dt.total_seconds() / 86400 + 1.0
    df["requests_per_active_day"] = df["requests"] / df["active_days"]
    df["throttled"] = df["first_refused"].notna()
    return df


def _weekly_activity(src: Source, f: Filters) -> pd.DataFrame:
    return src.df(
        f"""SELECT DISTINCT client_id, {bucket_sql("week")} AS week FROM ev""",
        f.with_(start=None, end=None),
        time=False,
    )


def retention(
    src: Source,
    f: Filters,
    by: str = "first_week",
    churn_after_days: int = 14,
    people: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Share of each cohort active in week k after its first week.

    Returns ``table`` (cohort x week offset, NaN where the cohort is not old enough
    yet), ``sizes``, ``milestones`` (week 1, month 1/3/6/12 per cohort, and
    ``all`` weighted over cohorts old enough) and ``by``.
    """
    if by not in COHORT_ATTRIBUTES:
        raise ValueError(f"cohort attribute {by!r}: expected one of {list(COHORT_ATTRIBUTES)}")
    people = consumers(src, f, churn_after_days) if people is None else people
    if people.empty:
        return {"table": pd.DataFrame(), "sizes": pd.Series(dtype=int), "milestones": {}, "by": by}
    act = _weekly_activity(src, f)
    act["week"] = pd.to_datetime(act["week"], utc=True)
    act = act.merge(people[list(dict.fromkeys(["client_id", "first_week", by]))], on="client_id")
    act["k"] = ((act["week"] - act["first_week"]).dt.days // 7).astype(int)
    end = people["data_end"].iloc[0]
    # offsets a consumer can be observed at: weeks wholly before the data's end (a
    # partial last week would understate retention)
    elapsed = (end - people["first_week"]).dt.total_seconds() // (7 * 86400)
    people = people.assign(max_k=elapsed.astype(int) - 1)
    max_k = max(int(people["max_k"].max()), 0)
    # count a consumer only in the weeks it can be observed in: activity in its partial
    # last week would otherwise push retention (and the milestones) above 100 %
    act = act.merge(people[["client_id", "max_k"]], on="client_id")
    act = act[act["k"] <= act["max_k"]]
    active = act.groupby([by, "k"])["client_id"].nunique().unstack(fill_value=0)
    active = active.reindex(
        index=sorted(people[by].unique()), columns=range(max_k + 1), fill_value=0
    )
    eligible = pd.DataFrame(
        {k: people[people["max_k"] >= k].groupby(by).size() for k in range(max_k + 1)}
    ).reindex(active.index)
    table = (active / eligible).where(eligible > 0)
    sizes = people.groupby(by).size()
    labels = {i: str(i.date()) if hasattr(i, "date") else str(i) for i in table.index}
    milestones: dict[str, dict[str, float | None]] = {}
    for name, k in MILESTONES.items():
        if k > max_k:
            milestones[name] = {"all": None}
            continue
        col = table[k]
        elig = eligible[k]
        overall = float(active[k].sum() / elig.sum()) if elig.sum() else None
        milestones[name] = {"all": overall, **{labels[i]: _num(v) for i, v in col.items()}}
    table.index = [labels[i] for i in table.index]
    sizes.index = [labels[i] for i in sizes.index]
    return {"table": table, "sizes": sizes, "milestones": milestones, "by": by}


def _num(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def kaplan_meier(people: pd.DataFrame, by: str | None = "first_tier") -> dict[str, Any]:
    """Kaplan–Meier survival of consumer activity (lifelines), per group of ``by``:
    curves with 95 % bands, median survival, survival at 30/90/180 days, and a
    log-rank test across the groups."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    groups = people.groupby(by) if by else [("all", people)]
    out: dict[str, Any] = {"groups": {}, "by": by}
    for name, g in groups:
        km = KaplanMeierFitter().fit(g["duration_days"], g["churned"], label=str(name))
        ci = km.confidence_interval_survival_function_
        at = {f"day_{d}": float(km.survival_function_at_times(d).iloc[0]) for d in (30, 90, 180)}
        median = km.median_survival_time_
        out["groups"][str(name)] = {
            "n": len(g),
            "churned": int(g["churned"].sum()),
            "median_days": None if np.isinf(median) else float(median),
            **at,
            "timeline": km.survival_function_.index.tolist(),
            "survival": km.survival_function_.iloc[:, 0].tolist(),
            "lower": ci.iloc[:, 0].tolist(),
            "upper": ci.iloc[:, 1].tolist(),
        }
    if by and people[by].nunique() > 1:
        lr = multivariate_logrank_test(people["duration_days"], people[by], people["churned"])
        out["logrank"] = {"statistic": float(lr.test_statistic), "p_value": float(lr.p_value)}
    return out


def cox_frame(people: pd.DataFrame, covariates: list[str]) -> pd.DataFrame:
    """The design matrix Cox regression sees: categoricals one-hot (first level
    dropped), ``requests_per_active_day`` as its log, plus duration and event."""
    x = people[covariates].copy()
    if "requests_per_active_day" in x:
        x["log_requests_per_active_day"] = np.log(x.pop("requests_per_active_day"))
    cats = [c for c in x.columns if x[c].dtype == object or str(x[c].dtype) == "category"]
    x = pd.get_dummies(x, columns=cats, drop_first=True, dtype=float)
    x = x.astype(float)
    x["duration_days"] = people["duration_days"].to_numpy()
    x["churned"] = people["churned"].astype(int).to_numpy()
    return x


def cox(
    people: pd.DataFrame,
    covariates: list[str] | None = None,
    penalizer: float = 0.01,
) -> dict[str, Any]:
    """Cox proportional-hazards regression of churn on consumer attributes (lifelines):
    hazard ratios with 95 % intervals and p-values, concordance, and the number of
    consumers and churn events."""
    from lifelines import CoxPHFitter

    covariates = covariates or ["first_tier", "region", "device_type", "requests_per_active_day"]
    frame = cox_frame(people, covariates)
    cph = CoxPHFitter(penalizer=penalizer)
    cph.fit(frame, duration_col="duration_days", event_col="churned")
    s = cph.summary
    table = pd.DataFrame(
        {
            "covariate": s.index,
            "hazard_ratio": s["exp(coef)"].to_numpy(),
            "lower_95": s["exp(coef) lower 95%"].to_numpy(),
            "upper_95": s["exp(coef) upper 95%"].to_numpy(),
            "p_value": s["p"].to_numpy(),
        }
    )
    return {
        "table": table,
        "concordance": float(cph.concordance_index_),
        "n": len(frame),
        "events": int(frame["churned"].sum()),
        "penalizer": penalizer,
    }


def _step_sql(step: FunnelStep, alias: str) -> tuple[str, list[Any]]:
    conds, params = ["TRUE"], []
    if step.route:
        conds.append(f"{alias}.http_route = ?")
        params.append(step.route)
    if step.method:
        conds.append(f"{alias}.http_request_method = ?")
        params.append(step.method.upper())
    if step.tiers:
        conds.append(f"{alias}.tier IN ({', '.join('?' * len(step.tiers))})")
        params += list(step.tiers)
    return " AND ".join(conds), params


def funnel(src: Source, f: Filters, steps: list[FunnelStep]) -> pd.DataFrame:
    """Ordered conversion: consumers whose first step falls in the range, then each
    later step's first matching request after the previous step's. Per step:
    consumers, conversion from the previous step and from the first, and the median
    hours it took from the previous step."""
    if len(steps) < 2:
        raise ValueError("a funnel needs at least two steps")
    f = src.resolve(f)
    ctes, params = [], []
    cond, p = _step_sql(steps[0], "e")
    ctes.append(
        f"s0 AS (SELECT client_id, min(timestamp) AS t FROM ev e WHERE {cond} GROUP BY 1 "
        "HAVING min(timestamp) >= ? AND min(timestamp) < ?)"
    )
    params += [*p, f.start, f.end]
    for i, step in enumerate(steps[1:], start=1):
        cond, p = _step_sql(step, "e")
        ctes.append(
            f"s{i} AS (SELECT e.client_id, min(e.timestamp) AS t, "
            f"epoch(min(e.timestamp) - any_value(s.t)) / 3600.0 AS hours "
            f"FROM ev e JOIN s{i - 1} s USING (client_id) WHERE e.timestamp > s.t AND {cond} "
            f"GROUP BY 1)"
        )
        params += p
    selects = " UNION ALL ".join(
        f"SELECT {i} AS step, count(*) AS consumers, "
        + ("NULL::DOUBLE" if i == 0 else "median(hours)")
        + f" AS median_hours_from_previous FROM s{i}"
        for i in range(len(steps))
    )
    df = src.df(", " + ", ".join(ctes) + f" {selects} ORDER BY step", f, time=False, params=params)
    df.insert(1, "name", [s.name for s in steps])
    first = df["consumers"].iloc[0]
    df["from_previous"] = df["consumers"] / df["consumers"].shift(1)
    df["from_first"] = df["consumers"] / first if first else np.nan
    return df


def exposure_hazard(
    people: pd.DataFrame,
    exposure: str = "first_refused",
    covariates: list[str] | None = None,
    penalizer: float = 0.01,
    max_consumers: int = 3000,
    seed: int = 0,
) -> dict[str, Any]:
    """Churn hazard ratio after a time-varying exposure (default: a consumer's first
    refused request), adjusted for attributes: Cox regression on (start, stop]
    intervals (lifelines' CoxTimeVaryingFitter). Each consumer is unexposed from its
    first request to the exposure and exposed afterwards, so consumers who left before
    any policy could reach them are not counted as "never throttled" survivors.

    The fitter's cost grows about with the square of the consumers (75 s for 24,000
    here), so above ``max_consumers`` a seeded random sample of them is fitted
    (``sampled`` says how many)."""
    from lifelines import CoxTimeVaryingFitter

    if len(people) > max_consumers:
        people = people.sample(max_consumers, random_state=seed)
    covariates = covariates or ["first_tier", "region", "device_type", "requests_per_active_day"]
    x = cox_frame(people, covariates)
    dur = x.pop("duration_days").to_numpy()
    event = x.pop("churned").to_numpy()
    at = ((people[exposure] - people["first_seen"]).dt.total_seconds() / 86400).to_numpy()
    exposed = ~np.isnan(at) & (at < dur)
    at = np.where(exposed, np.maximum(at, 1e-3), np.nan)
    x["id"] = np.arange(len(x))
    before = x.assign(
        start=0.0, stop=np.where(exposed, at, dur), event=np.where(exposed, 0, event), exposed=0.0
    )
    after = x[exposed].assign(
        start=at[exposed], stop=dur[exposed], event=event[exposed], exposed=1.0
    )
    long = pd.concat([before, after], ignore_index=True)
    if len(after) < 5 or event.sum() < 5:
        raise ValueError(
            f"too little to fit: {len(after)} consumer(s) exposed ({exposure}) before their "
            f"last request, {int(event.sum())} churned"
        )
    fit = CoxTimeVaryingFitter(penalizer=penalizer).fit(
        long, id_col="id", start_col="start", stop_col="stop", event_col="event"
    )
    row = fit.summary.loc["exposed"]
    return {
        "hazard_ratio": float(row["exp(coef)"]),
        "lower_95": float(row["exp(coef) lower 95%"]),
        "upper_95": float(row["exp(coef) upper 95%"]),
        "p_value": float(row["p"]),
        "exposed": int(exposed.sum()),
        "n": len(people),
        "sampled": len(people) == max_consumers,
        "events": int(event.sum()),
        "table": fit.summary.reset_index(),
    }
