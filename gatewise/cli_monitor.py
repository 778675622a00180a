"""``gatewise monitor ...``: drift and bias checks. Registered by ``register(app)``."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

if TYPE_CHECKING:
    from config.settings import Settings
    from monitoring.summary import CheckSummary

__all__ = ["register"]

monitor_app = typer.Typer(help="Drift and bias checks.", no_args_is_help=True)


def _read(path: Path, what: str) -> Any:
    import pandas as pd

    if not path.exists():
        _fail(f"{what} {path} does not exist")
    try:
        with path.open("rb") as fh:
            parquet = fh.read(4) == b"PAR1"  # by content: .pq, .parquet or no suffix at all
        if parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, skipinitialspace=True)
    except Exception as exc:
        _fail(f"{what} {path} is not a readable CSV or Parquet table: {exc}")


def _names(csv: str | None) -> list[str]:
    return [c.strip() for c in csv.split(",") if c.strip()] if csv else []


def _drift_share_from(s: Settings, config: Path | None) -> str:
    """Where ``monitoring.policy.drift_share`` came from, in words."""
    if "drift_share" not in s.monitoring.policy.model_fields_set:
        return "monitoring.policy.drift_share, its default: the config does not set it"
    env = "GATEWISE_MONITORING__POLICY__DRIFT_SHARE"
    if any(k.upper() == env for k in os.environ):
        return f"${env}"
    path = config or Path(os.environ.get("GATEWISE_CONFIG") or "gatewise.yaml")
    return f"monitoring.policy.drift_share in {path}"


def _say(console: Any, text: str) -> None:
    """A sentence as it is: group and column names may hold brackets, lines stay whole."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@monitor_app.command("check")
def check(
    reference: Annotated[Path, typer.Option(help="reference table (CSV or Parquet)")],
    current: Annotated[Path, typer.Option(help="current table (CSV or Parquet)")],
    sensitive: Annotated[
        str | None, typer.Option(help="comma-separated group columns for the bias check")
    ] = None,
    label: Annotated[str | None, typer.Option(help="true outcome column (0/1)")] = None,
    prediction: Annotated[
        str | None, typer.Option(help="decision column (0/1) for the bias check")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="comma-separated columns for drift, judged as given (default: the shared "
            "columns less identifier and time columns)"
        ),
    ] = None,
    keep_columns: Annotated[
        str | None,
        typer.Option(
            help="comma-separated identifier or time columns to judge for drift anyway "
            "(by default they are left out, and the output says which and why)"
        ),
    ] = None,
    drift_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="dataset drift at this share of drifted columns (default "
            "monitoring.policy.drift_share)",
        ),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option(help="rows sampled per side (default monitoring.drift_max_rows)")
    ] = None,
    min_group_size: Annotated[
        int | None,
        typer.Option(help="smaller groups are unjudgeable (default monitoring.min_group_size)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default <data_dir>/monitoring/checks/…)")
    ] = None,
    log_to: Annotated[
        str | None,
        typer.Option(help="log the reports and metrics to this target's champion run in MLflow"),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Drift (Evidently) of CURRENT against REFERENCE, and bias (Fairlearn) of the decisions
    in CURRENT by each sensitive column; writes JSON + HTML and prints the findings.

    Identifier and time columns are left out of drift unless named in --keep-columns or
    --columns; the dataset-drift threshold is monitoring.policy.drift_share unless
    --drift-share is given; groups over monitoring.policy.max_fpr_ratio are named."""
    from models.tracking import champion_run_id
    from monitoring.bias import breaches, check_bias
    from monitoring.columns import leave_out_id_time
    from monitoring.drift import check_drift, save_report
    from monitoring.record import append_history, log_to_run, new_check_id
    from monitoring.summary import CheckSummary, add_to_report, summary_html

    s = _settings(config)
    rules = s.monitoring.policy
    max_rows = max_rows or s.monitoring.drift_max_rows
    min_group_size = min_group_size or s.monitoring.min_group_size
    share, share_from = (
        (drift_share, "--drift-share")
        if drift_share is not None
        else (rules.drift_share, _drift_share_from(s, config))
    )
    console = _console()
    ref, cur = _read(reference, "--reference"), _read(current, "--current")
    groups = _names(sensitive)
    if groups and not prediction:
        _fail("--sensitive needs --prediction (the decisions to judge)")
    skip = {*groups, *(c for c in (label, prediction) if c)}
    keep = _names(keep_columns)
    unknown = [c for c in keep if c not in ref.columns or c not in cur.columns]
    if unknown:
        _fail(f"--keep-columns: {', '.join(unknown)} not in both tables")
    cols = _names(columns) or None
    left_out: dict[str, str] = {}
    if cols is None:
        shared = [c for c in ref.columns if c in cur.columns and c not in skip]
        cols, left_out = leave_out_id_time(ref, cur, shared, keep=[*keep, *skip])
        if shared and not cols:
            _fail(
                "every shared column is an identifier or time column ("
                + "; ".join(f"{c}: {why}" for c, why in left_out.items())
                + "); name the ones to judge with --keep-columns or --columns"
            )
    at = datetime.now(UTC)
    check_id = new_check_id(at)
    out = out or s.data_dir / "monitoring" / "checks" / check_id
    run_id = None
    if log_to:
        if log_to not in s.targets:
            _fail(f"--log-to: {log_to!r} is not a target of the config ({', '.join(s.targets)})")
        run_id = champion_run_id(s, log_to)
        if run_id is None:
            _fail(f"--log-to {log_to}: the target has no champion yet (gatewise promote)")
    try:
        with console.status(f"drift over {len(cols)} columns (Evidently)"):
            drift = check_drift(ref, cur, cols, max_rows=max_rows, drift_share=share)
        bias = (
            check_bias(cur, prediction, groups, label, min_group_size=min_group_size)
            if groups and prediction
            else []
        )
    except ValueError as exc:
        _fail(str(exc))
    over = [x for b in bias for x in breaches(b, rules.max_fpr_ratio, rules.min_fpr_gap)]
    paths = save_report(drift.snapshot, out)
    summary = CheckSummary(drift, share_from, left_out, bias, over, rules.max_fpr_ratio)
    add_to_report(paths["html"], summary_html(summary))
    findings = {
        "drift": drift.to_dict() | {"drift_share_from": share_from},
        "left_out": left_out,
        "bias": [b.to_dict() for b in bias],
        "bias_breaches": [x.to_dict() for x in over],
    }
    (out / "findings.json").write_text(json.dumps(findings, indent=1, default=str))
    source = f"files {reference.name} vs {current.name}"
    hist = append_history(
        s.data_dir / "monitoring" / "history",
        check_id,
        at,
        source,
        drift,
        bias,
        rules.max_fpr_ratio,
    )
    if run_id is not None:
        log_to_run(
            s,
            run_id,
            check_id,
            at,
            [paths["json"], paths["html"], out / "findings.json"],
            drift,
            bias,
        )
    _print_check(console, summary, min_group_size, rules.min_fpr_gap)
    console.print(f"report (drift and bias): {paths['html']} ; findings: {out / 'findings.json'}")
    console.print(f"history: {hist.parent.parent} (one row per check and feature)")
    if run_id is not None:
        console.print(f"logged to MLflow run {run_id} under monitoring/{check_id}")


def _print_check(console: Any, s: CheckSummary, min_group_size: int, min_fpr_gap: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    drift = s.drift
    if s.left_out:
        _say(
            console,
            f"left out of drift: {len(s.left_out)} identifier/time column(s) "
            "(--keep-columns to judge them):",
        )
        for col, why in s.left_out.items():
            _say(console, f"  {col}: {why}")
    _say(
        console,
        f"drift share threshold {drift.drift_share:g} (from {s.drift_share_from}): dataset "
        f"drift {'yes' if drift.dataset_drift else 'no'}, {drift.share:.0%} of columns drifted",
    )
    t = Table(
        title=f"drift: {len(drift.drifted)} of {len(drift.columns)} columns "
        f"({drift.share:.0%}; dataset drift: {drift.dataset_drift})"
    )
    for name in ("column", "method", "value", "threshold", "drifted"):
        t.add_column(name)
    for c in sorted(drift.columns, key=lambda c: not c.drifted):
        t.add_row(
            escape(c.column),
            c.method,
            f"{c.value:.4g}",
            f"{c.threshold:g}",
            "yes" if c.drifted else "",
        )
    console.print(t)
    flagged = {(x.feature, x.group) for x in s.breaches}
    for b in s.bias:
        bt = Table(
            title=escape(
                f"bias by {b.feature}: FPR worst/best "
                + (f"{b.fpr_ratio:.2f} ({b.worst_fpr_group})" if b.fpr_ratio is not None else "n/a")
                + (f", selection {b.selection_ratio:.2f}" if b.selection_ratio is not None else "")
            )
        )
        for name in ("group", "n", "selection rate", "FPR", "FNR", "judgeable", "over bound"):
            bt.add_column(name)
        for g in b.groups:
            bt.add_row(
                escape(g.group),
                str(g.n),
                f"{g.selection_rate:.3f}",
                "-" if g.fpr is None else f"{g.fpr:.3f}",
                "-" if g.fnr is None else f"{g.fnr:.3f}",
                "yes" if g.judgeable else f"no (< {min_group_size})",
                "yes" if (b.feature, g.group) in flagged else "",
            )
        console.print(bt)
    if s.bias:
        bound = (
            f"FPR over {s.max_fpr_ratio:g}x the lowest judgeable group's and at least "
            f"{min_fpr_gap:g} above it (monitoring.policy.max_fpr_ratio, min_fpr_gap)"
        )
        if s.breaches:
            _say(console, f"bias: {len(s.breaches)} group(s) over the bound, {bound}:")
            for x in s.breaches:
                _say(console, f"  {x.sentence()}")
        else:
            _say(console, f"bias: no group over the bound, {bound}")


@monitor_app.command("run")
def run(
    target: Annotated[str, typer.Option(help="the target whose traffic is judged")] = "abuse",
    hours: Annotated[float, typer.Option(help="the latest period checked")] = 1.0,
    label_delay: Annotated[
        float, typer.Option(help="minutes before a window's label is known")
    ] = 30.0,
    as_of: Annotated[
        str | None, typer.Option(help="ISO time (default: the newest recorded event)")
    ] = None,
    publish: Annotated[
        bool, typer.Option(help="publish a changed policy when the backtest accepts it")
    ] = True,
    retrain: Annotated[
        bool, typer.Option(help="run the train flow now when drift asks for a new model")
    ] = False,
    adapt_limits: Annotated[
        bool | None,
        typer.Option(
            "--adapt-limits/--no-adapt-limits",
            help="limits follow normal traffic (default: monitoring.policy.adapt_limits)",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the Prefect flow monitor: drift + bias on the latest traffic → the next policy."""
    from flows.monitor import monitor_flow

    s = _settings(config)
    try:
        out = monitor_flow(
            target=target,
            hours=hours,
            label_delay_minutes=label_delay,
            as_of=as_of,
            publish_policy=publish,
            retrain=retrain,
            adapt_limits=adapt_limits,
            config_path=str(config) if config else None,
            data_dir=str(s.data_dir.resolve()),
        )
    except ValueError as exc:
        _fail(str(exc))
    from demo.steps import print_monitor

    print_monitor(_console(), out, target)


def schedule(
    port: Annotated[int, typer.Option(help="Prefect server port when one is started")] = 4200,
    target: Annotated[str, typer.Option(help="target of the monitor and train flows")] = "abuse",
    config: ConfigOpt = None,
) -> None:
    """Serve build_features (hourly), monitor (every 15 min) and train (nightly) on a real
    Prefect server (connected to, or started); the Prefect UI shows them. Ctrl-C stops."""
    from flows.schedule import ensure_server, serve_all

    s = _settings(config)
    if target not in s.targets:
        _fail(f"--target: unknown target {target!r}")
    console = _console()
    try:
        with console.status("connecting to (or starting) the Prefect server"):
            url, proc = ensure_server(s, port)
    except RuntimeError as exc:
        _fail(str(exc))
    console.print(
        f"Prefect API {url} ({'started here' if proc else 'already running'}); UI at "
        f"{url.removesuffix('/api')} — serving build_features/hourly, monitor/every-15-min, "
        "train/nightly"
    )
    try:
        serve_all(s, config, target)
    finally:
        if proc is not None:
            proc.terminate()


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
    app.command()(schedule)
