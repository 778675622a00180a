"""The weekly review: the three questions answered, with charts, as one HTML file
logged to MLflow.

``answers`` is the short form (which routes break their SLO, which consumers we lost,
whether the policy did it); ``write_report`` renders it with the traffic, SLO,
forecast, anomaly, retention, survival, funnel and policy-effect charts into a
self-contained page (Plotly inlined: it opens offline).
"""

from __future__ import annotations

import html
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analytics import cohorts, series, stats, usage
from analytics.source import Filters, Source, parse_period
from config.analytics import AnalyticsSettings

__all__ = ["answers", "default_policy_change", "log_report", "period_filters", "write_report"]


def period_filters(src: Source, period: str, until: Any = None) -> Filters:
    """``[end - period, end)`` where end is ``until`` or just after the newest event."""
    span = parse_period(period)
    if until is None:
        _, last = src.span()
        if last is None:
            return Filters()
        # just after the newest event, rounded up to the hour: a readable review window
        until = pd.Timestamp(last + timedelta(microseconds=1)).ceil("h").to_pydatetime()
    end = Filters(end=until).end
    assert end is not None
    return Filters(start=end - span, end=end)


def default_policy_change(src: Source, follow_days: int = 56) -> tuple[str, Any] | None:
    """The newest policy version whose first appearance leaves ``follow_days`` of data
    after it (else the newest after the first one), with that time."""
    rows = src.rows(
        """SELECT policy_version, min(timestamp) AS first FROM ev
           WHERE policy_version IS NOT NULL GROUP BY 1 ORDER BY first""",
        Filters(),
        time=False,
    )
    _, last = src.span()
    if len(rows) < 2 or last is None:
        return None
    changes = rows[1:]  # the first version seen is where the data starts, not a change
    fits = [r for r in changes if pd.Timestamp(r[1]) + pd.Timedelta(days=follow_days) <= last]
    version, first = (fits or changes)[-1]
    return str(version), pd.Timestamp(first).tz_convert("UTC").to_pydatetime()


def answers(
    src: Source, cfg: AnalyticsSettings, f: Filters, people: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Routes breaking their SLO in ``f``; consumers lost (churned, first seen any
    time); the matched effect of the newest policy change on retention."""
    slo = usage.slo(src, f, cfg.slo)
    breaking = slo[slo["status"] == "breaching"] if not slo.empty else slo
    if people is None:
        people = cohorts.consumers(src, Filters(), cfg.churn_after_days)
    lost = people[people["churned"]] if not people.empty else people
    out: dict[str, Any] = {
        "range": [str(f.start), str(f.end)],
        "slo_breaching": [
            {
                "route": r.route,
                "availability": r.availability,
                "availability_objective": r.availability_objective,
                "latency_good": r.latency_good,
                "latency_objective": r.latency_objective,
                "budget_consumed": r.budget_consumed,
                "latency_budget_consumed": r.latency_budget_consumed,
            }
            for r in breaking.itertuples()
        ],
        "consumers": len(people),
        "lost": len(lost),
        "lost_share": float(len(lost) / len(people)) if len(people) else None,
        "lost_by_tier": lost.groupby("first_tier").size().to_dict() if len(lost) else {},
        "lost_top": lost.sort_values("requests", ascending=False)
        .head(10)[["client_id", "first_tier", "region", "requests", "last_seen"]]
        .astype({"last_seen": str})
        .to_dict("records")
        if len(lost)
        else [],
    }
    try:
        hz = cohorts.exposure_hazard(people) if len(people) else None
    except (ValueError, ArithmeticError) as exc:  # nobody refused, or a fit that fails
        hz = {"error": str(exc)}
    if hz is not None:
        hz.pop("table", None)
    out["throttle_hazard"] = hz
    change = default_policy_change(src)
    if change is None:
        out["policy_effect"] = {"error": "fewer than two policy versions in the telemetry"}
        return out
    version, at = change
    try:
        frame = stats.policy_cohort(src, at)
        if frame.empty:
            raise ValueError(
                "no consumer is in the data both in the 14 days before the change and "
                "7-14 days after it (the analysis also needs 56 days after it)"
            )
        psm = stats.propensity_match(frame)
    except ValueError as exc:
        out["policy_effect"] = {"policy_version": version, "at": str(at), "error": str(exc)}
        return out
    out["policy_effect"] = {
        "policy_version": version,
        "at": str(at),
        **{k: v for k, v in psm.items() if not isinstance(v, pd.DataFrame)},
        "balance": psm["balance"].to_dict("records"),
    }
    return out


def _fig_html(fig: Any, first: bool) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False))


def _table(df: pd.DataFrame, cols: list[str], n: int = 20) -> str:
    if df.empty:
        return "<p><em>no data</em></p>"
    d = df[[c for c in cols if c in df]].head(n).copy()
    for c in d.columns:
        if d[c].dtype.kind == "f":
            d[c] = d[c].map(lambda v: "" if pd.isna(v) else f"{v:,.4g}")
    return str(d.to_html(index=False, border=0, classes="t", escape=True))


def write_report(
    src: Source, cfg: AnalyticsSettings, out: Path, period: str = "7d", until: Any = None
) -> dict[str, Any]:
    """Render the weekly review of the ``period`` ending at ``until`` (default: the
    newest event) into ``out``; returns the answers and the headline figures."""
    import plotly.graph_objects as go

    f = period_filters(src, period, until)
    if src.is_empty():
        raise ValueError("the telemetry store is empty: nothing to report")
    ov = usage.overview(src, f).iloc[0]
    people = cohorts.consumers(src, Filters(), cfg.churn_after_days)
    ans = answers(src, cfg, f, people)
    tr = usage.traffic(src, f, "auto", by="route", top=6)
    slo = usage.slo(src, f, cfg.slo)
    fc = series.forecast(src, Filters(), by=None, horizons=cfg.forecast_horizons)
    an = series.anomalies(src, f, threshold=cfg.anomaly_threshold)
    ret = cohorts.retention(src, Filters(), people=people)
    km = cohorts.kaplan_meier(people, by="first_tier") if len(people) else {"groups": {}}
    fun = cohorts.funnel(src, Filters(), cfg.funnel)
    parts: list[str] = []

    fig = go.Figure()
    for key, g in tr.groupby("key"):
        fig.add_trace(go.Scatter(x=g["bucket"], y=g["requests"], name=str(key), mode="lines"))
    fig.update_layout(title="Requests by route", height=360, margin={"t": 40})
    parts.append(_fig_html(fig, True))
    if not slo.empty:
        fig = go.Figure(
            go.Bar(
                x=slo["route"],
                y=slo["budget_consumed"],
                marker_color=[
                    "#c0392b" if s == "breaching" else "#e67e22" if s == "at risk" else "#27ae60"
                    for s in slo["status"]
                ],
            )
        )
        fig.add_hline(y=1.0, line_dash="dash")
        fig.update_layout(title="Error budget consumed (1 = all of it)", height=360)
        parts.append(_fig_html(fig, False))
    if not ret["table"].empty:
        t = ret["table"]
        fig = go.Figure(
            go.Heatmap(
                z=t.to_numpy(), x=[f"w{k}" for k in t.columns], y=list(t.index), zmin=0, zmax=1
            )
        )
        fig.update_layout(title="Weekly retention by first-seen week", height=480)
        parts.append(_fig_html(fig, False))
    if km["groups"]:
        fig = go.Figure()
        for name, g in km["groups"].items():
            fig.add_trace(go.Scatter(x=g["timeline"], y=g["survival"], name=name, line_shape="hv"))
        fig.update_layout(title="Kaplan–Meier: consumers still active", height=360)
        parts.append(_fig_html(fig, False))
    fig = go.Figure(go.Funnel(y=fun["name"], x=fun["consumers"]))
    fig.update_layout(title="Conversion funnel", height=320)
    parts.append(_fig_html(fig, False))
    pe = ans["policy_effect"]
    if "balance" in pe:
        bal = pd.DataFrame(pe["balance"])
        fig = go.Figure(
            [
                go.Scatter(
                    x=bal["smd_before"].abs(), y=bal["covariate"], mode="markers", name="before"
                ),
                go.Scatter(
                    x=bal["smd_after"].abs(), y=bal["covariate"], mode="markers", name="after"
                ),
            ]
        )
        fig.add_vline(x=0.1, line_dash="dash")
        fig.update_layout(title="Covariate balance |SMD| before/after matching", height=380)
        parts.append(_fig_html(fig, False))

    head = (
        f"<h1>gatewise weekly review</h1><p>{html.escape(str(f.start))} – "
        f"{html.escape(str(f.end))} · {int(ov['requests']):,} requests · "
        f"{int(ov['consumers']):,} consumers · 5xx {ov['rate_5xx']:.3%} · p95 "
        f"{(ov['p95_ms'] or 0):.0f} ms</p>"
    )
    q1 = ", ".join(r["route"] for r in ans["slo_breaching"]) or "none"
    q3 = (
        f"{pe['policy_version']} (from {pe['at'][:10]}): consumers it throttled kept "
        f"{pe['retained_treated']:.1%} vs {pe['retained_matched_controls']:.1%} of matched "
        f"comparable ones — ATT {pe['att']:+.3f} (95% CI {pe['ci_low']:+.3f} to "
        f"{pe['ci_high']:+.3f}, p={pe['p_value']:.3g}; naive {pe['naive_difference']:+.3f}; "
        f"{pe['n_matched']} pairs, max |SMD| after {pe['max_abs_smd_after']:.3f})"
        if "att" in pe
        else pe.get("error", "")
    )
    hz = ans.get("throttle_hazard") or {}
    if "hazard_ratio" in hz:
        q3 += (
            f". Over all consumers, churn hazard after a first refusal x{hz['hazard_ratio']:.2f} "
            f"(95% CI {hz['lower_95']:.2f} to {hz['upper_95']:.2f}; time-varying Cox, "
            f"{hz['exposed']:,} exposed)"
        )
    qa = (
        "<h2>The three questions</h2><ol>"
        f"<li><b>Which routes are breaking SLO?</b> {html.escape(q1)}</li>"
        f"<li><b>Which consumers did we lose?</b> {ans['lost']:,} of {ans['consumers']:,} "
        f"({(ans['lost_share'] or 0):.1%}) silent for {cfg.churn_after_days}+ days; by first "
        f"tier {html.escape(json.dumps(ans['lost_by_tier']))}</li>"
        f"<li><b>Was it our policy?</b> {html.escape(q3)}</li></ol>"
    )
    tables = (
        "<h2>SLOs</h2>"
        + _table(
            slo,
            usage.SLO_COLUMNS,
        )
        + "<h2>Consumers lost (busiest first)</h2>"
        + _table(
            pd.DataFrame(ans["lost_top"]),
            ["client_id", "first_tier", "region", "requests", "last_seen"],
        )
        + "<h2>Usage forecast (all traffic)</h2>"
        + _table(fc, [c for c in fc.columns if c != "key"])
        + f"<h2>Anomalies (|robust z| > {cfg.anomaly_threshold:g})</h2>"
        + _table(an, ["key", "hour", "value", "baseline", "z"])
        + "<h2>Funnel</h2>"
        + _table(
            fun, ["name", "consumers", "from_previous", "from_first", "median_hours_from_previous"]
        )
    )
    style = (
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th"
        "{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}</style>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>gatewise weekly review"
        f"</title>{style}</head><body>{head}{qa}{''.join(parts)}{tables}</body></html>"
    )
    return {
        "path": str(out),
        "range": ans["range"],
        "requests": int(ov["requests"]),
        "consumers": int(ov["consumers"]),
        "rate_5xx": float(ov["rate_5xx"] or 0.0),
        "p95_ms": float(ov["p95_ms"] or np.nan),
        "answers": ans,
    }


def log_report(settings: Any, summary: dict[str, Any], experiment: str = "analytics") -> str:
    """Log the report and its headline figures as an MLflow run; returns the run id."""
    from models.tracking import client, ensure_experiment

    exp_id = ensure_experiment(settings, experiment)
    c = client(settings)
    ans = summary["answers"]
    run = c.create_run(exp_id, run_name=f"weekly review to {summary['range'][1][:10]}")
    rid = run.info.run_id
    metrics = {
        "requests": summary["requests"],
        "consumers": summary["consumers"],
        "rate_5xx": summary["rate_5xx"],
        "slo_breaching_routes": len(ans["slo_breaching"]),
        "consumers_lost": ans["lost"],
    }
    pe = ans.get("policy_effect", {})
    if "att" in pe:
        metrics |= {"policy_att": pe["att"], "policy_att_ci_low": pe["ci_low"]}
        metrics |= {"policy_att_ci_high": pe["ci_high"]}
    for k, v in metrics.items():
        if v is not None and np.isfinite(v):
            c.log_metric(rid, k, float(v))
    c.log_param(rid, "range", " to ".join(summary["range"]))
    c.log_artifact(rid, summary["path"], "report")
    c.log_text(rid, json.dumps(ans, default=str, indent=2), "report/answers.json")
    c.set_terminated(rid)
    return str(rid)
