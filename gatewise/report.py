"""What the commands print: rich tables and progress over the rooms' functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gatewise.settings import Settings

__all__ = ["demo", "ingest", "parse_range", "simulation", "summary"]


def parse_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    def one(v: str | None, name: str) -> datetime | None:
        if v is None:
            return None
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--{name}: {v!r} is not an ISO date or time") from None
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)

    start, end = one(since, "since"), one(until, "until")
    if start and end and end <= start:
        raise ValueError("--until must be after --since")
    return start, end


def parse_days(since: str | None, until: str | None) -> tuple[Any, Any]:
    from datetime import date

    def one(v: str | None, name: str) -> date | None:
        if v is None:
            return None
        try:
            return date.fromisoformat(v)
        except ValueError:
            raise ValueError(f"--{name}: {v!r} is not a date (YYYY-MM-DD)") from None

    start, end = one(since, "since"), one(until, "until")
    if start and end and end <= start:
        raise ValueError("--until must be after --since")
    return start, end


def features_build(
    console: Console, s: Settings, config: Path | None, since: Any, until: Any, force: bool
) -> dict[str, Any]:
    from flows.build_features import run_build_features

    console.print(
        "running Prefect flow [bold]build_features[/] (the first flow in a process starts Prefect's API, ~25 s)"
    )
    out = run_build_features(config, s.data_dir, since=since, until=until, force=force)
    rows = [{"dataset": k, "rows": v} for k, v in out["rows"].items()]
    console.print(_table("feature build", rows))
    console.print(
        f"days built {len(out['days_built'])} ({', '.join(out['days_built']) or '-'}), unchanged {len(out['days_unchanged'])}; "
        f"{out['events']:,} events; features {out['first']} → {out['last']}; online store up to {out['materialized_until']}; "
        f"lag behind telemetry {out['feature_lag_seconds']}s; {out['seconds']:.1f}s"
    )
    console.print(f"feature views: {', '.join(out['feature_views'])}; services abuse_v1, load_v1")
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
    console.print(_table(f"online features ({service})", rows))
    return res


def _trial_progress(console: Console, budget: float) -> Any:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("AutoML search", total=budget)
    import time

    t0 = time.perf_counter()
    best: list[float] = []

    def on_trial(t: Any) -> None:
        if t.value is not None:
            best.append(t.value)
        progress.update(
            task,
            completed=min(budget, time.perf_counter() - t0),
            description=f"trial {t.number} {t.params.get('family', '')} {t.state.name.lower()} {'' if t.value is None else f'{t.value:.4f}'}",
        )

    return progress, on_trial


def _train_result(console: Console, r: Any, s: Settings) -> None:
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
    console.print(_table("training", rows))
    best = r.best_params if isinstance(r.best_params, dict) else {}
    console.print(
        "best: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
    )
    for w in r.warnings:
        console.print(f"[yellow]data:[/] {w}")
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
) -> Any:
    from types import SimpleNamespace

    from flows.train import train_flow

    console.print(
        f"running Prefect flow [bold]train[/] for target {target} (budget {budget or s.target(target).time_budget_s:g}s, {workers} worker(s))"
    )
    out = train_flow(
        target=target,
        budget=budget,
        n_trials=trials,
        workers=workers,
        seed=seed,
        config_path=str(config) if config else None,
        data_dir=str(s.data_dir.resolve()),
    )
    r = SimpleNamespace(**out)
    _train_result(console, r, s)
    return r


def automl_fit(
    console: Console,
    s: Settings,
    table: Path,
    label: str,
    budget: float,
    sensitive: list[str] | None,
    time_col: str | None,
    group_col: str | None,
    metric: str | None,
    name: str | None,
    workers: int,
    seed: int,
) -> Any:
    from pydantic import ValidationError

    from models.data import DataQualityError
    from models.train import fit_table

    progress, on_trial = _trial_progress(console, budget)
    try:
        with progress:
            r = fit_table(
                s,
                table,
                label,
                name=name,
                metric=metric,
                sensitive=sensitive,
                time_col=time_col,
                group_col=group_col,
                budget=budget,
                workers=workers,
                seed=seed,
                on_trial=on_trial,
            )
    except (DataQualityError, FileNotFoundError, ValidationError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    _train_result(console, r, s)
    return r


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    if not rows:
        t.add_column("(none)")
        return t
    for k in rows[0]:
        t.add_column(k, justify="right" if isinstance(rows[0][k], int | float) else "left")
    for r in rows:
        t.add_row(*(_fmt(v) for v in r.values()))
    return t


def simulation(console: Console, s: Settings, emit: str | None) -> Any:
    from telemetry.simulator.output import run_simulation

    cfg = s.simulator
    with console.status(
        f"simulating {cfg.clients:,} clients over {cfg.days:g} day(s) (seed {cfg.seed})..."
    ):
        run = run_simulation(s, emit=emit)
    ev = run.result.events
    console.print(
        f"generated [bold]{ev.num_rows:,}[/] events in {run.seconds_generate:.1f}s "
        f"({ev.num_rows / max(run.seconds_generate, 1e-9):,.0f} events/s); stored {run.appended.written:,} "
        f"(duplicate {run.appended.duplicates:,}) in {run.seconds_write:.1f}s"
    )
    console.print(
        f"telemetry: {s.telemetry_dir}   labels: {run.labels_path}   consumers: {run.consumers_path}"
    )
    if run.emitted:
        console.print(f"emitted {emit} log: {run.emitted}")
    return run


def ingest(
    console: Console, s: Settings, files: list[Path], fmt: str, consumers_path: Path | None
) -> Any:
    from telemetry.ingest import ingest_files, load_consumers
    from telemetry.store import TelemetryStore

    consumers = load_consumers(consumers_path) if consumers_path else None
    total = sum(f.stat().st_size for f in files)
    with Progress(
        SpinnerColumn(),
        TextColumn("ingesting {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{len(files)} file(s), {total / 1e6:,.1f} MB", total=None)
        rep = ingest_files(
            files,
            fmt,
            TelemetryStore(s.telemetry_dir),
            rejects_dir=s.rejects_dir,
            consumers=consumers,
            batch_size=s.ingest.batch_lines,
            on_progress=lambda n: progress.advance(task, n),
        )
    rows = [
        {
            "file": f.path,
            "read": f.read,
            "accepted": f.accepted,
            "rejected": f.rejected,
            "duplicate": f.duplicate,
        }
        for f in rep.files
    ]
    console.print(_table(f"ingest ({fmt})", rows))
    console.print(f"accepted {rep.accepted}")
    console.print(f"rejected {rep.rejected}")
    console.print(f"duplicate {rep.duplicate}")
    console.print(
        f"read {rep.read} in {rep.seconds:.1f}s ({rep.read / max(rep.seconds, 1e-9):,.0f} records/s)"
    )
    if rep.rejects_path:
        reasons = ", ".join(
            f"{k}: {v}" for k, v in sorted(rep.reasons.items(), key=lambda kv: -kv[1])
        )
        console.print(f"rejects (line, reason, raw): {rep.rejects_path}  [{reasons}]")
    return rep


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
        _table(
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
        _table(
            "quality",
            [{k: o[k] for k in ("error_rate_4xx", "error_rate_5xx", "p50_ms", "p95_ms", "p99_ms")}],
        )
    )
    console.print(_table("busiest routes", sm.routes))
    console.print(_table("by tier", sm.tiers))
    console.print(_table("status classes", sm.statuses))
    return sm


def static_baseline(console: Console, s: Settings, run: Any) -> dict[str, dict[str, float]]:
    """How the naive static per-tier limit fares on the labelled simulation."""
    from telemetry.simulator.checks import (
        client_aggregates,
        single_aggregate_aucs,
        static_limit_outcomes,
    )

    agg = client_aggregates(run.result.events, run.result.clients)
    outcomes = static_limit_outcomes(agg, s.static_limits_per_minute)
    rows = [
        {
            "role": k,
            "abusive": k in _abusive_roles(),
            "clients": int(v["clients"]),
            "limited": int(v["limited"]),
            "share_limited": v["share_limited"],
        }
        for k, v in sorted(outcomes.items())
    ]
    limits = ", ".join(f"{k} {v}/min" for k, v in s.static_limits_per_minute.items())
    console.print(_table(f"naive static limits ({limits}) vs. the truth", rows))
    aucs = single_aggregate_aucs(agg)
    best = sorted(aucs.items(), key=lambda kv: -kv[1])[:5]
    console.print(
        "best single-aggregate ROC AUC (abusive vs legitimate clients): "
        + ", ".join(f"{k} {v:.2f}" for k, v in best)
    )
    return outcomes


def _abusive_roles() -> tuple[str, ...]:
    from telemetry.simulator.population import ABUSE_SCENARIOS

    return ABUSE_SCENARIOS


def demo(console: Console, s: Settings, config: Path | None = None) -> None:
    # the simulated history ends now, so the live replay at the end continues it (its clients'
    # 1 h and 24 h features have context) instead of arriving weeks after it
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sim = s.simulator.model_copy(update={"start": now - timedelta(days=s.simulator.days)})
    s = s.model_copy(update={"simulator": sim})
    console.rule("[bold]gatewise demo[/]: simulate → store → summarize")
    run = simulation(console, s, emit=None)
    summary(console, s)
    console.rule("why static limits are not enough")
    static_baseline(console, s, run)
    console.rule("features: Prefect flow build_features → Feast")
    features_build(console, s, config, None, None, False)
    sample = run.result.labels.column("client_id").to_pylist()[-3:]
    features_online(console, s, sample, "abuse_v1")
    console.rule("AutoML: Prefect flow train → MLflow → challenger with a gate verdict")
    r = train(console, s, config, "abuse", min(60.0, s.target("abuse").time_budget_s), None, 1, 0)
    console.print(
        "next: `.venv/bin/gatewise promote --target abuse` moves champion to an eligible challenger; "
        f"browse runs with `.venv/bin/mlflow ui --backend-store-uri {s.mlflow_uri}`"
    )
    if not r.eligible:
        console.print(
            "the gate refused this challenger (see above); `gatewise promote --force` overrides it"
        )
    console.rule("payload scanning: AutoML on real attack payloads → gate → compact champion")
    from gatewise.demo_payload import payload_demo

    payload_demo(console, s, config)
    console.rule("deploy: Prefect flow deploy → BentoML service → champion → gateway policy")
    scoring_url = deploy_demo(console, s, config, r)
    console.rule("gateway: backtest policies, then real HTTP through the gateway")
    from gatewise.demo_gateway import gateway_demo

    try:
        gateway_demo(console, s, scoring_url=scoring_url)
    finally:
        if scoring_url:
            from serving.process import stop_service

            stop_service(s)
            console.print("stopped the demo's BentoML service (`.venv/bin/gatewise serve` runs it)")
    console.rule(
        "[bold]the closed loop[/]: fresh traffic through the gateway → monitor → policy → again"
    )
    from gatewise.closed_loop import run_closed_loop

    loop = run_closed_loop(console, s, config, minutes=1.5)
    console.rule(
        "[bold]analytics[/]: which routes break SLO, which consumers we lost, was it our policy?"
    )
    from gatewise.demo_analytics import analytics_demo

    analytics_demo(console, s)
    console.rule("done")
    console.print(
        f"data under {s.data_dir}/ ; try `.venv/bin/gatewise telemetry summary` or `.venv/bin/gatewise ingest --help`"
    )
    console.print(
        f"where to look: the closed-loop report {loop['report']}; MLflow UI "
        f"`.venv/bin/mlflow ui --backend-store-uri {s.mlflow_uri}` (champion run: artifacts "
        "monitoring/ and closed_loop/); Prefect UI `.venv/bin/gatewise schedule` (serves the "
        "flows on a Prefect server, http://127.0.0.1:4200); policy history "
        "`.venv/bin/gatewise policy history`"
    )


def deploy_demo(console: Console, s: Settings, config: Path | None, r: Any) -> str | None:
    """Deploy the new challenger (forced, and said so, when the gate refused it)."""
    from flows.deploy import DeployError, deploy_flow

    force = not r.eligible
    if force:
        console.print(
            f"[yellow]the gate refused v{r.version}; the demo deploys it anyway with --force so the "
            "loop can be seen end to end (the version is tagged deploy.forced=true)[/]"
        )
    try:
        out = deploy_flow(
            target="abuse",
            version=r.version,
            force=force,
            config_path=str(config) if config else None,
            data_dir=str(s.data_dir.resolve()),
        )
    except DeployError as exc:
        console.print(f"[red]{exc}[/]; compensated: {exc.result.compensated if exc.result else []}")
        return None
    console.print(
        f"{s.registered_model('abuse')} v{out['version']} is champion behind {out['url']} "
        f"(steps: {' → '.join(out['steps'])}); gateway policy v{out['policy_version']} names it"
    )
    return str(out["url"])


def backtest_report(console: Console, r: Any) -> None:
    """The backtest: decisions, and with labels what they would have done to whom."""
    console.print(
        f"policy v{r.policy_version}: {r.events:,} recorded requests judged in event time "
        f"in {r.seconds:.1f}s ({r.events_per_second:,.0f}/s)"
    )
    console.print(_table("decisions", r.summary.to_dict("records")))
    if r.outcome:
        o = r.outcome
        console.print(
            f"abusive requests stopped: {o['abusive_stopped']:,} of {o['abusive_requests']:,} "
            f"({o['abusive_stopped_share']:.1%}); legitimate requests harmed: "
            f"{o['legitimate_harmed']:,} of {o['legitimate_requests']:,} ({o['legitimate_harmed_share']:.2%})"
        )
        if o["shadow_would_stop_abusive"] or o["shadow_would_harm_legitimate"]:
            console.print(
                f"shadow mode would also have stopped {o['shadow_would_stop_abusive']:,} abusive and "
                f"harmed {o['shadow_would_harm_legitimate']:,} legitimate requests"
            )
        console.print(_table("by group", r.by_group.to_dict("records")))


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
