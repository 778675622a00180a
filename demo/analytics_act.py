"""The demo's last act: the analytics answers over both data sets, the weekly review
logged to MLflow, and where the dashboard is."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from config.settings import Settings

__all__ = ["analytics_demo"]


def _answers_table(title: str, ans: dict[str, Any], churn_days: int) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("question", style="bold")
    t.add_column("answer")
    slo = ans["slo_breaching"]
    t.add_row(
        "which routes are breaking SLO?",
        "\n".join(
            f"{r['route']}: availability {r['availability']:.3%} (objective "
            f"{r['availability_objective']:.1%}), within latency {r['latency_good']:.1%} "
            f"(objective {r['latency_objective']:.0%})"
            for r in slo
        )
        or "none",
    )
    t.add_row(
        "which consumers did we lose?",
        f"{ans['lost']:,} of {ans['consumers']:,} silent {churn_days}+ days; by first tier "
        + ", ".join(f"{k} {v}" for k, v in ans["lost_by_tier"].items())
        if ans["lost"]
        else "none (no consumer silent for the churn window yet)",
    )
    pe = ans["policy_effect"]
    t.add_row(
        "was it our policy?",
        f"{pe['policy_version']} from {pe['at'][:10]}: throttled consumers kept "
        f"{pe['retained_treated']:.1%} vs {pe['retained_matched_controls']:.1%} of matched "
        f"comparable ones, ATT {pe['att']:+.3f} (95% CI {pe['ci_low']:+.3f} to "
        f"{pe['ci_high']:+.3f}; naive {pe['naive_difference']:+.3f}; {pe['n_matched']} pairs)"
        if "att" in pe
        else f"not measurable here: {pe.get('error', '')}",
    )
    hz = ans.get("throttle_hazard") or {}
    if "hazard_ratio" in hz:
        t.add_row(
            "... over every consumer's life",
            f"churn hazard after a first refusal x{hz['hazard_ratio']:.2f} (95% CI "
            f"{hz['lower_95']:.2f} to {hz['upper_95']:.2f}, p={hz['p_value']:.2g}; time-varying "
            f"Cox adjusted for tier, region, device, volume; {hz['exposed']:,} consumers refused)",
        )
    return t


def analytics_demo(console: Console, s: Settings) -> dict[str, Any]:
    """Simulate the consumer history if absent, answer the three questions over it and
    over the gateway's own telemetry, write both reviews and log them to MLflow."""
    import json

    from analytics.report import log_report, write_report
    from analytics.source import Source
    from telemetry.simulator.lifecycle import write_lifecycle

    hist_root = s.history_dir / "telemetry"
    if not any(hist_root.glob("hour=*/*.parquet")):
        t0 = time.perf_counter()
        with console.status(
            f"simulating {s.history.weeks} weeks of {s.history.consumers:,} consumers ..."
        ):
            res = write_lifecycle(s.history, s.history_dir)
        console.print(
            f"consumer history: {res.events.num_rows:,} events in {time.perf_counter() - t0:.0f} s "
            f"-> {s.history_dir} (planted: {res.truth['slo_breach_route']} slow in the last week, "
            f"a stricter free-tier policy from {res.truth['policy_start'][:10]} that doubles "
            f"the churn hazard of those it throttles: true effect on retention "
            f"{res.truth['psm_truth']['att']:+.3f}; .gatewise/history/truth.json)"
        )
    out: dict[str, Any] = {}
    for name, roots, period in (
        ("history", [hist_root], "7d"),
        ("gateway", [s.telemetry_dir], "24h"),
    ):
        src = Source(roots)
        if src.is_empty():
            console.print(f"no {name} telemetry under {roots[0]}: nothing to review")
            continue
        path = s.data_dir / "reports" / f"review-{name}-{period}.html"
        t0 = time.perf_counter()
        with console.status(f"weekly review of the {name} data ..."):
            summary = write_report(src, s.analytics, path, period)
            run = log_report(s, summary)
        src.close()
        console.print(
            _answers_table(
                f"{name} data, last {period} (review in {time.perf_counter() - t0:.0f} s)",
                summary["answers"],
                s.analytics.churn_after_days,
            )
        )
        console.print(f"review: {path} (MLflow experiment gatewise-analytics, run {run})")
        out[name] = {"report": str(path), "run": run, "answers": summary["answers"]}
    (s.data_dir / "reports" / "answers.json").write_text(json.dumps(out, default=str, indent=2))
    d = s.analytics.dashboard
    console.print(
        f"dashboard: `.venv/bin/gatewise dashboard` then http://{d.host}:{d.port} "
        "(traffic, SLOs, security, models and policies, cohorts; both data sets)"
    )
    return out
