"""``gatewise labels``: bring labels in, look at them, take them out (``labeling/io.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]

labels_app = typer.Typer(
    help="The labels table: import your labels, list, show one client, export.",
    no_args_is_help=True,
)


@labels_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV, JSON lines or Parquet (gzip too)")],
    source: Annotated[
        str, typer.Option(help="import (a labels file), review (a reviewer's answers)")
    ] = "import",
    level: Annotated[
        str,
        typer.Option(
            help="window: one row per client window (needs a time column); client: one row per"
            " client, expanded to its windows with traffic; auto: window if there is a time"
            " column"
        ),
    ] = "auto",
    by: Annotated[
        str | None, typer.Option("--by", help="who labelled (kept with each label)")
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(help="import the valid rows; bad rows go to the rejects folder"),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Validate a labels file and add it to the labels table (the same file again replaces
    its earlier import)."""
    from labeling.io import LabelImportError, import_labels

    s = _settings(config)
    if not file.is_file():
        _fail(f"no such file: {file}")
    try:
        r = import_labels(
            s,
            file,
            source=source,
            level=level,  # type: ignore[arg-type]
            labelled_by=by,
            skip_invalid=skip_invalid,
        )
    except LabelImportError as exc:
        _fail(str(exc))
    c = _console()
    c.print(
        f"read {r.rows:,} row(s) from {file}: imported {r.imported_rows:,}, rejected {r.rejected:,}"
        + (f", not answered yet {r.unanswered:,}" if r.unanswered else "")
    )
    if r.level == "client":
        c.print(
            f"client-level labels of {len(r.expanded) + len(r.clients_without_traffic):,} "
            f"client(s) expanded to {r.windows:,} window(s) of "
            f"{s.simulator.label_window_minutes} min with traffic"
        )
        if r.clients_without_traffic:
            shown = ", ".join(r.clients_without_traffic[:10])
            c.print(
                f"[yellow]{len(r.clients_without_traffic)} client(s) have no traffic in the "
                f"range: no windows to label[/] ({shown})"
            )
    else:
        if r.floored:
            c.print(
                f"{r.floored:,} time(s) moved to the start of their "
                f"{s.simulator.label_window_minutes}-minute window"
            )
        if r.no_traffic:
            c.print(f"[yellow]{r.no_traffic:,} labelled window(s) have no telemetry[/]")
    c.print(
        f"labels: {r.windows:,} window(s) of {r.clients:,} client(s), {r.abusive_windows:,} "
        f"abusive; source {r.source}; batch {r.batch}"
        + (" (replaced the earlier import of this file)" if r.replaced else "")
    )
    if r.rejects_path:
        c.print(f"rejected rows and reasons: {r.rejects_path}")
    c.print("next: `gatewise features build`, then `gatewise train --target abuse`")


@labels_app.command("list")
def list_(config: ConfigOpt = None) -> None:
    """The stored label batches."""
    from demo.steps import table
    from labeling.io import list_batches

    s = _settings(config)
    rows = list_batches(s)
    c = _console()
    if not rows:
        c.print(f"no labels in {s.labels_dir}: `gatewise labels import FILE`")
        return
    c.print(table(f"labels ({s.labels_dir})", rows))


@labels_app.command("show")
def show(
    client_id: Annotated[str, typer.Argument(help="a client id")],
    config: ConfigOpt = None,
) -> None:
    """Every label of one client, from every source; `counts` marks the one used."""
    from demo.steps import table
    from labeling.io import client_labels

    s = _settings(config)
    df = client_labels(s, client_id)
    c = _console()
    if df.empty:
        c.print(f"no labels for client {client_id!r}")
        raise typer.Exit(1)
    cols = ["event_timestamp", "label", "source", "scenario", "labelled_by", "labelled_at"]
    rows: list[dict[str, Any]] = [
        {k: r[k] for k in cols} | {"counts": "yes" if r["counts"] else "no"}
        for r in df.to_dict("records")
    ]
    c.print(table(f"labels of {client_id}", rows))


@labels_app.command("export")
def export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="file to write (default: stdout)")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="csv, parquet or jsonl")] = "csv",
    source: Annotated[str | None, typer.Option(help="only this source's labels")] = None,
    config: ConfigOpt = None,
) -> None:
    """The labels that count, one per client window, in a form `labels import` reads back."""
    from labeling.io import export_labels

    if format not in ("csv", "parquet", "jsonl"):
        _fail(f"--format: {format!r} is not csv, parquet or jsonl")
    if format == "parquet" and out is None:
        _fail("--format parquet needs --out FILE")
    s = _settings(config)
    df, data = export_labels(s, out, format, source)  # type: ignore[arg-type]
    if out is None:
        sys.stdout.buffer.write(data)
    else:
        typer.echo(f"wrote {len(df):,} label(s) to {out}", err=True)


@labels_app.command("weak")
def weak(
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive")] = None,
    anomaly: Annotated[
        bool, typer.Option(help="let the day-one anomaly model vote (when one is trained)")
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """Weak labels from the labelling functions (gatewise.yaml `labeling.functions`),
    weighed by the label model; reviewed labels anchor it and win over them."""
    from demo.steps import weak_labels

    s = _settings(config)
    from models.data import DataQualityError, check_ready

    try:
        check_ready(s, "anomaly" if "anomaly" in s.targets else "abuse", "all")
    except DataQualityError as exc:
        if "no features" in str(exc):
            _fail(str(exc).split("; ")[-1])
    try:
        weak_labels(_console(), s, config, since, until, anomaly)
    except (LookupError, ValueError) as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels")
