"""Comparisons between cohorts and the effect of a policy change on retention.

- ``compare``: every pair of groups on every metric with the test that suits the
  metric (chi-square for yes/no metrics; Welch's t-test for roughly symmetric numbers
  with 30+ per group; Mann–Whitney U otherwise), an effect size and a 95 % interval
  for the difference, and p-values corrected for the number of comparisons (Holm by
  default, Benjamini–Hochberg on request).
- ``propensity_match``: consumers exposed to a policy (throttled in the weeks after
  it took effect) against comparable consumers who were not: a logistic propensity
  model on pre-change behaviour and attributes, 1:1 nearest-neighbour matching on its
  logit within a caliper, the matched difference in retention (ATT) with a paired
  interval, and balance diagnostics (standardised mean differences, variance ratios)
  before and after matching.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from analytics.source import Filters, Source

__all__ = ["adjust_pvalues", "compare", "propensity_match", "smd"]

_REFUSED = "ratelimit_decision IN ('throttle', 'block', 'challenge')"


def adjust_pvalues(p: np.ndarray | list[float], method: str = "holm") -> np.ndarray:
    """Holm (step-down, family-wise error) or Benjamini–Hochberg ("bh", false
    discovery rate) adjusted p-values, in the input's order."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((n - np.arange(n)) * ranked)
    elif method == "bh":
        adj = np.minimum.accumulate(n / np.arange(n, 0, -1) * ranked[::-1])[::-1]
    else:
        raise ValueError(f"correction {method!r}: expected holm or bh")
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


def _binary(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    from scipy.stats import chi2_contingency

    table = np.array([[a.sum(), len(a) - a.sum()], [b.sum(), len(b) - b.sum()]])
    if (table.sum(axis=0) == 0).any():
        chi2, p = 0.0, 1.0
    else:
        chi2, p, _, _ = chi2_contingency(table)
    pa, pb = a.mean(), b.mean()
    diff = pa - pb
    se = np.sqrt(pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b))
    phi = float(np.sqrt(chi2 / table.sum())) if table.sum() else 0.0
    return {
        "test": "chi-square",
        "statistic": float(chi2),
        "p_value": float(p),
        "estimate_a": float(pa),
        "estimate_b": float(pb),
        "difference": float(diff),
        "ci_low": float(diff - 1.96 * se),
        "ci_high": float(diff + 1.96 * se),
        "effect_size": phi,
        "effect": "phi",
    }


def _continuous(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu, skew, t, ttest_ind

    symmetric = len(a) >= 30 and len(b) >= 30 and abs(skew(a)) <= 1 and abs(skew(b)) <= 1
    if symmetric:
        res = ttest_ind(a, b, equal_var=False)
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        diff = a.mean() - b.mean()
        half = t.ppf(0.975, df) * np.sqrt(va + vb)
        pooled = np.sqrt(
            ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
        )
        return {
            "test": "welch t-test",
            "statistic": float(res.statistic),
            "p_value": float(res.pvalue),
            "estimate_a": float(a.mean()),
            "estimate_b": float(b.mean()),
            "difference": float(diff),
            "ci_low": float(diff - half),
            "ci_high": float(diff + half),
            "effect_size": float(diff / pooled) if pooled else 0.0,
            "effect": "cohen_d",
        }
    res = mannwhitneyu(a, b, alternative="two-sided")
    diff = float(np.median(a) - np.median(b))
    # bootstrap interval of the difference in medians (seeded: reproducible)
    boots = [
        np.median(rng.choice(a, len(a))) - np.median(rng.choice(b, len(b))) for _ in range(400)
    ]
    return {
        "test": "mann-whitney u",
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "estimate_a": float(np.median(a)),
        "estimate_b": float(np.median(b)),
        "difference": diff,
        "ci_low": float(np.quantile(boots, 0.025)),
        "ci_high": float(np.quantile(boots, 0.975)),
        # rank-biserial correlation: P(a > b) - P(a < b)
        "effect_size": float(2 * res.statistic / (len(a) * len(b)) - 1),
        "effect": "rank_biserial",
    }


def compare(
    people: pd.DataFrame,
    by: str,
    metrics: dict[str, Literal["binary", "continuous"]] | None = None,
    correction: str = "holm",
    min_size: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Each pair of ``by`` groups on each metric: test, statistic, raw and adjusted
    p-values, estimates, difference with 95 % interval, effect size."""
    metrics = metrics or {
        "churned": "binary",
        "requests_per_active_day": "continuous",
        "active_days": "continuous",
    }
    rng = np.random.default_rng(seed)
    sizes = people.groupby(by).size()
    groups = [g for g in sizes.index if sizes[g] >= min_size]
    rows = []
    for metric, kind in metrics.items():
        if metric not in people:
            raise ValueError(f"metric {metric!r} is not a consumer column")
        for ga, gb in itertools.combinations(groups, 2):
            a = people.loc[people[by] == ga, metric].dropna().to_numpy(dtype=float)
            b = people.loc[people[by] == gb, metric].dropna().to_numpy(dtype=float)
            res = _binary(a, b) if kind == "binary" else _continuous(a, b, rng)
            rows.append(
                {"metric": metric, "a": str(ga), "b": str(gb), "n_a": len(a), "n_b": len(b), **res}
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["p_adjusted"] = adjust_pvalues(df["p_value"].to_numpy(), correction)
    df["correction"] = correction
    df["significant"] = df["p_adjusted"] < 0.05
    return df


def smd(x_t: pd.DataFrame, x_c: pd.DataFrame, pooled_sd: pd.Series | None = None) -> pd.Series:
    """Standardised mean differences (treated - control) / sqrt((var_t + var_c) / 2);
    ``pooled_sd`` fixes the denominator (the pre-matching one, so before and after are
    on one scale)."""
    if pooled_sd is None:
        pooled_sd = np.sqrt((x_t.var(ddof=1) + x_c.var(ddof=1)) / 2)
    return (x_t.mean() - x_c.mean()) / pooled_sd.replace(0, np.nan)


def policy_cohort(
    src: Source,
    change_at: datetime,
    treatment_days: int = 7,
    outcome_after_days: int = 42,
    outcome_days: int = 14,
    pre_days: int = 28,
) -> pd.DataFrame:
    """One row per consumer active in the 14 days before ``change_at`` and again in the
    week after the treatment window (a landmark: nobody is a control merely for having
    left before a throttle could reach it): behaviour in the ``pre_days`` before the
    change (covariates), whether it was refused (throttled/blocked/challenged) in the
    ``treatment_days`` after it (treated), and whether it was active in the outcome
    window (retained). Windows are whole UTC days from the day of the change."""
    p = pd.Timestamp(change_at)
    p_day = int(p.value // 86_400_000_000_000)  # windows are whole UTC days from the change's
    pre0, e0, t1, t2 = (
        p_day - pre_days,
        p_day - 14,
        p_day + treatment_days,
        p_day + 2 * treatment_days,
    )
    o0, o1 = p_day + outcome_after_days, p_day + outcome_after_days + outcome_days
    pre = f"day >= {pre0} AND day < {p_day}"
    # consumer-days first (one row per client and active day), then one row per client
    return src.df(
        f""", f AS (SELECT client_id, min(timestamp) AS first_seen FROM ev GROUP BY 1)
        , d AS (SELECT client_id, epoch_us(timestamp) // 86400000000 AS day, count(*) AS n,
                   count_if(http_response_status_code BETWEEN 400 AND 499) AS n4,
                   count_if(http_response_status_code >= 500) AS n5,
                   count_if({_REFUSED}) AS nr, arg_max(tier, timestamp) AS tier,
                   any_value(region) AS region, any_value(device_type) AS device_type
                FROM ev WHERE timestamp >= ? AND timestamp < ? GROUP BY 1, 2)
        , a AS (SELECT client_id,
          sum(n) FILTER (WHERE {pre}) AS pre_requests,
          count(*) FILTER (WHERE {pre}) AS pre_active_days,
          sum(n4) FILTER (WHERE {pre}) / sum(n) FILTER (WHERE {pre}) AS pre_rate_4xx,
          sum(n5) FILTER (WHERE {pre}) / sum(n) FILTER (WHERE {pre}) AS pre_rate_5xx,
          arg_max(tier, day) FILTER (WHERE day < {p_day}) AS tier,
          any_value(region) AS region, any_value(device_type) AS device_type,
          count(*) FILTER (WHERE day >= {p_day} AND day < {t1}) AS window_active_days,
          coalesce(sum(nr) FILTER (WHERE day >= {p_day} AND day < {t1}), 0) > 0 AS treated,
          count(*) FILTER (WHERE day >= {o0} AND day < {o1}) > 0 AS retained
        FROM d GROUP BY client_id
        HAVING count(*) FILTER (WHERE day >= {e0} AND day < {p_day}) > 0
           AND count(*) FILTER (WHERE day >= {t1} AND day < {t2}) > 0)
        SELECT a.*, epoch(?::TIMESTAMPTZ - f.first_seen) / 86400.0 AS tenure_days
        FROM a JOIN f USING (client_id) ORDER BY client_id""",
        Filters(),
        time=False,
        params=[
            pd.Timestamp(pre0 * 86_400_000_000, unit="us", tz="UTC"),
            pd.Timestamp(o1 * 86_400_000_000, unit="us", tz="UTC"),
            p,
        ],
    )


def propensity_match(
    frame: pd.DataFrame,
    covariates: list[str] | None = None,
    caliper_sd: float = 0.2,
    seed: int = 0,
    replace: bool = False,
    exact: tuple[str, ...] = ("tier",),
) -> dict[str, Any]:
    """1:1 nearest-neighbour propensity matching without replacement on the logit of a
    logistic model, within ``caliper_sd`` standard deviations of the logit (Austin's
    0.2). Returns the ATT on ``retained`` with its paired 95 % interval, the naive
    difference, balance before/after, and the scores (for overlap plots)."""
    from sklearn.linear_model import LogisticRegression

    df = frame.copy()
    df["log_pre_requests_per_day"] = np.log1p(df["pre_requests"] / df["pre_active_days"].clip(1))
    covariates = covariates or [
        "log_pre_requests_per_day",
        "pre_active_days",
        "window_active_days",
        "pre_rate_4xx",
        "pre_rate_5xx",
        "tenure_days",
        "tier",
        "region",
        "device_type",
    ]
    x = df[covariates].copy()
    cats = [c for c in covariates if x[c].dtype == object]
    x = pd.get_dummies(x, columns=cats, drop_first=True, dtype=float).astype(float).fillna(0.0)
    # exposure to a tier's limit depends on volume within the tier: let the model see it
    design = x.copy()
    if "log_pre_requests_per_day" in x:
        for c in [c for c in x.columns if c.startswith("tier_")]:
            design[f"{c}:log_pre_requests_per_day"] = x[c] * x["log_pre_requests_per_day"]
    strata = (
        df[list(exact)].astype(str).agg("|".join, axis=1).to_numpy()
        if exact
        else np.zeros(len(df), dtype=object)
    )
    t = df["treated"].astype(bool).to_numpy()
    y = df["retained"].astype(float).to_numpy()
    if t.sum() < 5 or (~t).sum() < 5:
        raise ValueError(f"too few treated ({t.sum()}) or control ({(~t).sum()}) consumers")
    z = (design - design.mean()) / design.std(ddof=0).replace(0, 1)
    model = LogisticRegression(C=1e4, max_iter=5000).fit(z.to_numpy(), t)
    ps = model.predict_proba(z.to_numpy())[:, 1].clip(1e-6, 1 - 1e-6)
    logit = np.log(ps / (1 - ps))
    caliper = caliper_sd * float(np.std(logit, ddof=1))
    rng = np.random.default_rng(seed)
    treated_idx = rng.permutation(np.flatnonzero(t))
    control_idx = np.flatnonzero(~t)
    free = np.ones(len(control_idx), dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in treated_idx:
        dist = np.abs(logit[control_idx] - logit[i])
        dist[strata[control_idx] != strata[i]] = np.inf
        if not replace:
            dist[~free] = np.inf
        j = int(np.argmin(dist))
        if dist[j] <= caliper:
            pairs.append((int(i), int(control_idx[j])))
            free[j] = False
    if not pairs:
        raise ValueError("no treated consumer has a control within the caliper")
    ti = np.array([p[0] for p in pairs])
    ci = np.array([p[1] for p in pairs])
    diffs = y[ti] - y[ci]
    att = float(diffs.mean())
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    from scipy.stats import binomtest

    # McNemar's exact test on the discordant pairs
    n10 = int(((y[ti] == 1) & (y[ci] == 0)).sum())
    n01 = int(((y[ti] == 0) & (y[ci] == 1)).sum())
    p_value = float(binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
    pooled = np.sqrt((x[t].var(ddof=1) + x[~t].var(ddof=1)) / 2)
    balance = pd.DataFrame(
        {
            "smd_before": smd(x[t], x[~t], pooled),
            "smd_after": smd(x.iloc[ti], x.iloc[ci], pooled),
            "variance_ratio_before": x[t].var(ddof=1) / x[~t].var(ddof=1).replace(0, np.nan),
            "variance_ratio_after": x.iloc[ti].var(ddof=1)
            / x.iloc[ci].var(ddof=1).replace(0, np.nan),
        }
    )
    balance.index.name = "covariate"
    return {
        "att": att,
        "ci_low": att - 1.96 * se,
        "ci_high": att + 1.96 * se,
        "p_value": p_value,
        "naive_difference": float(y[t].mean() - y[~t].mean()),
        "retained_treated": float(y[ti].mean()),
        "retained_matched_controls": float(y[ci].mean()),
        "n_treated": int(t.sum()),
        "n_control": int((~t).sum()),
        "n_matched": len(pairs),
        "caliper": caliper,
        "balance": balance.reset_index(),
        "max_abs_smd_after": float(balance["smd_after"].abs().max()),
        "scores": pd.DataFrame({"client_id": df["client_id"], "treated": t, "propensity": ps}),
        "matched": pd.DataFrame(
            {"treated": df["client_id"].to_numpy()[ti], "control": df["client_id"].to_numpy()[ci]}
        ),
    }


def policy_change_time(src: Source, policy_version: str) -> datetime:
    """When ``policy_version`` first appears in the telemetry."""
    (row,) = src.rows(
        "SELECT min(timestamp) FROM ev WHERE policy_version = ?",
        Filters(),
        time=False,
        params=[policy_version],
    )
    if row[0] is None:
        raise ValueError(f"policy version {policy_version!r} does not appear in the telemetry")
    return pd.Timestamp(row[0]).tz_convert("UTC").to_pydatetime()
