"""Steps of the loop, each run and shown: the demo's acts are built from them, and the
single commands (``gatewise simulate``, ``features build``, ``train``, ``backtest``,
``monitor run``) run one each and print the same thing.

    run = simulation(Console(), settings, emit=None)
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings

__all__ = [
    "backtest_report",
    "features_build",
    "features_online",
    "fmt",
    "print_monitor",
    "print_train_result",
    "simulation",
    "summary",
    "table",
    "train",
    "trial_progress",
]


def fmt(v: Any) -> str:
    if v is None or v is pd.NaT or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def table(title: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    if not rows:
        t.add_column("(none)")
        return t
    for k in rows[0]:
        t.add_column(k, justify="right" if isinstance(rows[0][k], int | float) else "left")
    for r in rows:
        t.add_row(*(fmt(v) for v in r.values()))
    return t


def simulation(console: Console, s: Settings, emit: str | None) -> Any:
    from labeling.simulated import simulate_labelled

    cfg = s.simulator
    with console.status(
        f"simulating {cfg.clients:,} clients over {cfg.days:g} day(s) (seed {cfg.seed})..."
    ):
        transform = None
        if s.simulator.through_gateway:
            from gateway.history import through_gateway_hook

            transform = through_gateway_hook(s)
        run, labels_path = simulate_labelled(s, emit=emit, transform=transform)
    ev = run.result.events
    how = " (through the initial policy: refusals, clients that back off)" if transform else ""
    console.print(
        f"generated [bold]{ev.num_rows:,}[/] events{how} in {run.seconds_generate:.1f}s "
        f"({ev.num_rows / max(run.seconds_generate, 1e-9):,.0f} events/s); stored {run.appended.written:,} "
        f"(duplicate {run.appended.duplicates:,}) in {run.seconds_write:.1f}s"
    )
    if transform:
        import pyarrow.compute as pc

        refused = pc.sum(pc.not_equal(ev.column("ratelimit_decision"), "allow")).as_py() or 0
        console.print(f"the initial policy refused {refused:,} of them (recorded as 429/403)")
    console.print(
        f"telemetry: {s.telemetry_dir}   labels: {labels_path}   consumers: {run.consumers_path}"
    )
    if run.emitted:
        console.print(f"emitted {emit} log: {run.emitted}")
    return run


def summary(
    console: Console, s: Settings, start: datetime | None = None, end: datetime | None = None
) -> Any:
    from telemetry.store import TelemetryStore
    from telemetry.summary import summarize

    store = TelemetryStore(s.telemetry_dir)
    if store.is_empty():
        console.print(
            f"the telemetry store {s.telemetry_dir} is empty: run `gatewise simulate` or `gatewise ingest` first"
        )
        return None
    sm = summarize(store, start, end)
    o = sm.overall
    console.print(
        table(
            "telemetry",
            [
                {
                    k: o[k]
                    for k in ("events", "clients", "routes", "first", "last", "peak_per_minute")
                }
            ],
        )
    )
    console.print(
        table(
            "quality",
            [{k: o[k] for k in ("error_rate_4xx", "error_rate_5xx", "p50_ms", "p95_ms", "p99_ms")}],
        )
    )
    console.print(table("busiest routes", sm.routes))
    console.print(table("by tier", sm.tiers))
    console.print(table("status classes", sm.statuses))
    return sm


def features_build(
    console: Console, s: Settings, config: Path | None, since: Any, until: Any, force: bool
) -> dict[str, Any]:
    from flows.build_features import run_build_features

    console.print(
        "running Prefect flow [bold]build_features[/] (the first flow in a process starts Prefect's API, ~25 s)"
    )
    out = run_build_features(config, s.data_dir, since=since, until=until, force=force)
    rows = [{"dataset": k, "rows": v} for k, v in out["rows"].items()]
    console.print(table("feature build", rows))
    console.print(
        f"days built {len(out['days_built'])} ({', '.join(out['days_built']) or '-'}), unchanged {len(out['days_unchanged'])}; "
        f"{out['events']:,} events; features {out['first']} → {out['last']}; online store up to {out['materialized_until']}; "
        f"lag behind telemetry {out['feature_lag_seconds']}s; {out['seconds']:.1f}s"
    )
    served = [v for v in out["feature_views"] if not v.endswith("_asof")]
    asof = [v for v in out["feature_views"] if v.endswith("_asof")]
    console.print(
        f"feature views: {', '.join(served)} (online); {', '.join(asof) or 'none'} (training"
        f" rows as served: {out['rows'].get('client_windows_asof', 0):,} as-of snapshots); "
        "services abuse_v1, abuse_asof_v1, load_v1"
    )
    console.print(
        f"feast CLI: .venv/bin/feast -c features -f {s.feast_dir / 'feature_store.yaml'} feature-views list"
    )
    return out


def features_online(
    console: Console, s: Settings, ids: list[str], service: str
) -> dict[str, list[Any]]:
    from features.training import online_features

    res = online_features(s, ids, service)
    keys = list(res)
    rows = [{"feature": k, **{ids[i]: res[k][i] for i in range(len(ids))}} for k in keys[1:]]
    console.print(table(f"online features ({service})", rows))
    return res


def trial_progress(
    console: Console, budget: float, metric: str | None = None, every: int = 10
) -> Any:
    """A progress bar over the budget that names the best score so far; when the output is
    not a terminal (a log, CI), one line every ``every`` trials instead."""
    import time

    from models.search import HIGHER_IS_BETTER

    higher = HIGHER_IS_BETTER.get(metric or "", True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task("AutoML search", total=budget)
    t0 = time.perf_counter()
    best: dict[str, Any] = {}
    seen = [0]

    def on_trial(t: Any) -> None:
        if t.user_attrs.get("budget_skip"):
            return
        seen[0] += 1
        fam = t.params.get("family", "")
        if t.value is not None and (
            "value" not in best or (t.value > best["value"] if higher else t.value < best["value"])
        ):
            best.update(value=t.value, family=fam, number=t.number)
        so_far = (
            f"best {metric or 'score'} {best['value']:.4f} ({best['family']}, trial {best['number']})"
            if best
            else "no trial finished yet"
        )
        elapsed = time.perf_counter() - t0
        progress.update(
            task,
            completed=min(budget, elapsed),
            description=f"trial {t.number} {fam} {t.state.name.lower()}"
            f"{'' if t.value is None else f' {t.value:.4f}'} · {so_far}",
        )
        if not console.is_terminal and seen[0] % every == 0:
            console.print(f"{seen[0]} trials, {elapsed:.0f}s: {so_far}", highlight=False)

    return progress, on_trial


def print_train_result(console: Console, r: Any, s: Settings) -> None:
    rows = [
        {
            "model": r.model_name,
            "version": r.version,
            "metric": r.metric,
            "holdout": r.holdout_score,
            "champion": r.champion_version or "-",
            "champion_holdout": r.champion_score,
            "threshold": r.threshold,
            "trials": r.trials,
            "eligible": "yes" if r.eligible else "NO",
        }
    ]
    console.print(table("training", rows))
    best = r.best_params if isinstance(r.best_params, dict) else {}
    console.print(
        "best: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
    )
    for w in r.warnings:
        console.print(f"[yellow]data:[/] {w}")
    budget = getattr(r, "budget", 0.0)
    if budget:
        within = "within" if r.seconds <= budget * 1.1 else "[red]over[/]"
        parts = ", ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}s"
            for k, v in getattr(r, "timings", {}).items()
        )
        console.print(
            f"registered in {r.seconds:.1f}s of wall clock, {within} the {budget:g}s budget ({parts})"
        )
    if getattr(r, "rows_refit", 0):
        refit = (
            f"the registered model is refit on all {r.rows_refit:,} rows"
            if r.rows_refit > r.rows_holdout_model
            else f"the registered model trained on {r.rows_refit:,} rows"
        )
        console.print(
            f"holdout {r.metric} from a model trained on {r.rows_holdout_model:,} rows, judged on"
            f" {r.rows_holdout:,} it never saw; {refit}"
        )
    if r.reasons:
        console.print("[red]gate:[/] " + "; ".join(r.reasons))
    console.print(f"MLflow run {r.run_id}: .venv/bin/mlflow ui --backend-store-uri {s.mlflow_uri}")


def train(
    console: Console,
    s: Settings,
    config: Path | None,
    target: str,
    budget: float | None,
    trials: int | None,
    workers: int,
    seed: int,
    labels: str = "all",
) -> Any:
    from types import SimpleNamespace

    from flows.train import train_flow

    console.print(
        f"running Prefect flow [bold]train[/] for target {target} (budget {budget or s.target(target).time_budget_s:g}s, {workers} worker(s), labels {labels})"
    )
    out = train_flow(
        target=target,
        budget=budget,
        n_trials=trials,
        workers=workers,
        seed=seed,
        config_path=str(config) if config else None,
        data_dir=str(s.data_dir.resolve()),
        labels=labels,
    )
    r = SimpleNamespace(**out)
    print_train_result(console, r, s)
    return r


def weak_labels(
    console: Console,
    s: Settings,
    config: Path | None,
    since: str | None = None,
    until: str | None = None,
    anomaly: bool = True,
) -> dict[str, Any]:
    """The Prefect flow weak_labels, and its function table."""
    from flows.weak import weak_labels_flow

    console.print(
        "running Prefect flow [bold]weak_labels[/]: labelling functions → label model → weak labels"
    )
    out = weak_labels_flow(
        since=since,
        until=until,
        anomaly=anomaly,
        config_path=str(config) if config else None,
        data_dir=str(s.data_dir.resolve()),
    )
    rows = [
        {
            "function": f["name"],
            "votes": f["vote"],
            "coverage": f["coverage"],
            "overlaps": f["overlaps"],
            "conflicts": f["conflicts"],
            "est. accuracy": f["estimated_accuracy"],
        }
        for f in out["functions"]
    ]
    console.print(table("labelling functions (the label model's estimates, no ground truth)", rows))
    merged = ", ".join(f"{a} + {b}" for a, b, _ in out["merges"]) or "none"
    console.print(
        f"{out['windows']:,} windows of {out['clients']:,} clients from {out['since'][:16]} to "
        f"{out['until'][:16]}; anchored by {out['anchored_windows']:,} reviewed windows; "
        f"modelled jointly (correlated): {merged}; anomaly model: "
        f"{'v' + out['anomaly_model'] if out['anomaly_model'] else 'none'}"
    )
    console.print(
        f"estimated abusive share {out['prior']:.2%}; confident labels: "
        f"{out['abusive_confident']:,} abusive, {out['legitimate_confident']:,} legitimate "
        f"windows (batch {out['batch']}); MLflow run {out['run_id']} (experiment "
        f"{s.tracking.registered_model_prefix}-labeling)"
    )
    return out


def backtest_report(console: Console, r: Any) -> None:
    """The backtest: decisions, and with labels what they would have done to whom."""
    console.print(
        f"policy v{r.policy_version}: {r.events:,} recorded requests judged in event time "
        f"in {r.seconds:.1f}s ({r.events_per_second:,.0f}/s)"
    )
    console.print(table("decisions", r.summary.to_dict("records")))
    if r.outcome:
        o = r.outcome
        console.print(
            f"abusive requests stopped: {o['abusive_stopped']:,} of {o['abusive_requests']:,} "
            f"({o['abusive_stopped_share']:.1%}); legitimate requests harmed: "
            f"{o['legitimate_harmed']:,} of {o['legitimate_requests']:,} ({o['legitimate_harmed_share']:.2%})"
        )
        e = o.get("if_enforced")
        if e and (o["shadow_would_stop_abusive"] or o["shadow_would_harm_legitimate"]):
            console.print(
                f"with its shadow rules enforced (replayed, not guessed): abusive stopped "
                f"{e['abusive_stopped']:,} ({e['abusive_stopped_share']:.1%}), legitimate harmed "
                f"{e['legitimate_harmed']:,} ({e['legitimate_harmed_share']:.2%}): "
                f"{o['shadow_would_stop_abusive']:,} abusive and "
                f"{o['shadow_would_harm_legitimate']:,} legitimate requests more"
            )
        if len(r.bands):
            console.print(
                table("per model rule, as it would act enforced", r.bands.to_dict("records"))
            )
        console.print(table("by group", r.by_group.to_dict("records")))


def print_monitor(console: Any, out: dict[str, Any], target: str) -> None:
    """What a monitor run found and did, in a few lines."""
    share = out["drift_share"]
    console.print(
        f"monitor {target} as of {out['as_of']}: "
        + ("no drift check (no rows)" if share is None else f"{share:.0%} of features drifted")
        + (f" {out['drifted'][:6]}" if out["drifted"] else "")
    )
    for feat, b in out["bias"].items():
        ratio = b["fpr_ratio"]
        console.print(
            f"  bias by {feat}: FPR worst/best "
            + ("n/a" if ratio is None else f"{ratio:.2f} ({b['worst']})")
        )
    pol = out["policy"]
    for c in pol["changes"][:10]:
        console.print(f"  policy change: {c['detail']} — {c['reason']}")
    if len(pol["changes"]) > 10:
        console.print(f"  … and {len(pol['changes']) - 10} more changes")
    for st in pol.get("stages") or []:
        console.print(f"  gate, {st['stage']}: {st['reason']}")
    if pol.get("trained"):
        t = pol["trained"]
        console.print(
            f"  retrained: v{t['version']} (holdout {t['holdout_score']}, "
            f"{'eligible' if t['eligible'] else 'refused by the gate'})"
        )
    if pol["published"]:
        console.print(f"  published policy v{pol['published']}")
    if pol.get("retrain_run"):
        console.print(f"  retraining: {pol['retrain_run']}")
    elif pol["retrain"] and not pol.get("trained"):
        console.print("  drift asks for a new model: `gatewise train --target " + target + "`")
    console.print(f"reports: {out['reports']}")
