"""What the single commands print that no demo act shares: option parsing for time
ranges, ingest with its progress, AutoML on a table. The shared steps are ``demo/steps.py``."""

from __future__ import annotations

from datetime import UTC, datetime
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

from config.settings import Settings
from demo.steps import print_train_result, table, trial_progress

__all__ = ["automl_fit", "ingest", "parse_days", "parse_range"]


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


def automl_fit(
    console: Console,
    s: Settings,
    table_path: Path,
    label: str,
    budget: float,
    sensitive: list[str] | None,
    time_col: str | None,
    group_col: str | None,
    metric: str | None,
    name: str | None,
    workers: int,
    seed: int,
    task: str | None = None,
    positive: str | None = None,
) -> Any:
    """The budget is the wall clock from reading the table to registration; plots and
    permutation importance are logged after it, while the result is printed."""
    import time

    from pydantic import ValidationError

    from models.data import DataQualityError
    from models.train import fit_table, wait_for_reports

    started = time.perf_counter()
    progress, on_trial = trial_progress(console, budget, metric)

    def loaded(ds: Any) -> None:
        for note in ds.notes:
            console.print(f"[cyan]table:[/] {note}", highlight=False)
        if ds.classes and ds.task == "multiclass":
            console.print(f"[cyan]table:[/] classes {', '.join(map(str, ds.classes))}")

    try:
        with progress:
            r = fit_table(
                s,
                table_path,
                label,
                name=name,
                metric=metric,
                sensitive=sensitive,
                time_col=time_col,
                group_col=group_col,
                task=task,
                positive=positive,
                on_loaded=loaded,
                budget=budget,
                workers=workers,
                seed=seed,
                on_trial=on_trial,
                started=started,
                background_reports=True,
            )
    except (DataQualityError, FileNotFoundError, ValidationError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    print_train_result(console, r, s)
    if r.reports == "background":
        console.print(
            f"plots and permutation importance: being logged to run {r.run_id} after"
            " registration (not part of the budget) …",
            highlight=False,
        )
        t = time.perf_counter()
        wait_for_reports()
        console.print(f"plots logged in {time.perf_counter() - t:.1f}s more", highlight=False)
    return r


def ingest(
    console: Console,
    s: Settings,
    files: list[Path],
    fmt: Any,
    consumers_path: Path | None,
    *,
    fast: bool = True,
) -> Any:
    """Batch ingest with progress; ``fmt`` is ``auto``, a name, a definition or a LogFormat."""
    from telemetry.consumers import load_consumers, merge_consumers, read_consumers
    from telemetry.ingest import ingest_files
    from telemetry.store import TelemetryStore

    if consumers_path:  # validated and kept before the logs: a bad table costs no ingest
        merged = merge_consumers(s.consumers_path, read_consumers(consumers_path))
        console.print(
            f"consumers from {consumers_path.name}: added {merged.added:,}, changed "
            f"{merged.updated:,}, unchanged {merged.unchanged:,}; the table holds "
            f"{merged.total:,} client(s) ({s.consumers_path})"
        )
        for cid, col, old, new in merged.changes[:20]:
            console.print(f"  {cid}: {col} {old} → {new} (the file is the newer word)")
        if len(merged.changes) > 20:
            console.print(f"  … and {len(merged.changes) - 20} more changes")
    # the stored table gives every ingest the attributes its log lacks
    consumers = load_consumers(s.consumers_path) if s.consumers_path.exists() else None
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
            fast=fast,
        )
    for path, said in rep.detected.items():
        console.print(f"{path}: {said}")
    rows = [
        {
            "file": f.path,
            "format": f.format,
            "read": f.read,
            "accepted": f.accepted,
            "rejected": f.rejected,
            "duplicate": f.duplicate,
        }
        for f in rep.files
    ]
    console.print(table("ingest", rows))
    console.print(f"accepted {rep.accepted}")
    console.print(f"rejected {rep.rejected}")
    console.print(f"duplicate {rep.duplicate}")
    console.print(
        f"read {rep.read} in {rep.seconds:.1f}s ({rep.read / max(rep.seconds, 1e-9):,.0f} records/s"
        f"{f', {rep.fast / rep.read:.0%} by the fast path' if rep.read and rep.fast else ''})"
    )
    if rep.reasons:
        style = "red" if rep.reject_share > 0.1 else "yellow"
        console.print(f"[{style}]why records were rejected ({rep.reject_share:.1%} of them):[/]")
        for key, n in sorted(rep.reasons.items(), key=lambda kv: -kv[1])[:5]:
            ex = rep.examples[key]
            console.print(f"  {n:,} × {ex['reason']}", markup=False, highlight=False)
            console.print(
                f"      e.g. {ex['file']} line {ex['line']}: {ex['raw'][:160]}",
                markup=False,
                highlight=False,
            )
    if rep.rejects_path:
        console.print(
            f"rejects: {rep.rejects_path} (first {rep.rejects_kept:,} records; counts and "
            f"examples in {rep.rejects_path.with_suffix('.summary.json').name})"
        )
    return rep
