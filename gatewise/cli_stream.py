"""``gatewise stream``: the stream processor. Registered by ``register(app)``."""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]


def stream(
    partitions: Annotated[
        str | None,
        typer.Option(help="partitions this process owns, e.g. 0,1 or 0-1 (default: all)"),
    ] = None,
    once: Annotated[
        bool, typer.Option(help="consume what is in the stream, checkpoint and exit")
    ] = False,
    push: Annotated[bool, typer.Option(help="write rows to the Feast online store")] = True,
    bootstrap: Annotated[
        bool,
        typer.Option(help="without a checkpoint, seed windows from the stored telemetry"),
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="HTTP /metrics and /status (default stream.metrics_port; 0: none)"),
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="also POST alerts here")] = None,
    config: ConfigOpt = None,
) -> None:
    """Live telemetry → the same window features in the online store within seconds, and
    event-pattern alerts. Scale out with one process per share of the partitions."""
    from features.stream_service import StreamService, parse_partitions
    from monitoring.alerts import engine_for

    s = _settings(config)
    try:
        parts = parse_partitions(partitions, s.stream.partitions)
    except ValueError as exc:
        _fail(str(exc))
    console = _console()
    svc = StreamService(
        s,
        parts,
        push=push,
        bootstrap=bootstrap,
        metrics_port=metrics_port,
        alerts=engine_for(s, webhook),
    )
    try:
        with console.status("restoring state"):
            svc.start()
    except Exception as exc:
        _fail(f"stream processor did not start: {exc}")
    console.print(
        f"stream processor {svc.processor.consumer}: partitions {parts} of {s.stream.partitions}"
        f" on {s.stream.backend}; started from {svc.started_from}"
    )
    try:
        if once:
            n = svc.drain()
            st = svc.status()
            console.print(
                f"applied {n} events; too late {st['too_late']}, duplicates {st['duplicates']},"
                f" rows pushed {st['pushed_rows']}, alerts {st['alerts']}"
            )
            return
        _run_live(console, svc)
    finally:
        svc.close()


def _run_live(console: Any, svc: Any) -> None:
    from rich.live import Live
    from rich.table import Table

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def view() -> Table:
        st = svc.status()
        t = Table(title=f"gatewise stream {st['consumer']}", show_header=False)
        for k in (
            "events",
            "out_of_order",
            "too_late",
            "duplicates",
            "pushed_rows",
            "alerts",
            "lag_events",
            "seconds_behind",
            "watermark_age_s",
            "last_batch_s",
            "events_per_busy_s",
            "push_failures",
            "checkpoints",
        ):
            t.add_row(k, str(st.get(k)))
        return t

    worker = threading.Thread(target=svc.run, args=(stop,), name="stream", daemon=True)
    worker.start()
    with Live(view(), console=console, refresh_per_second=2) as live:
        while worker.is_alive() and not stop.is_set():
            time.sleep(0.5)
            live.update(view())
    stop.set()
    worker.join(timeout=30)


def register(app: typer.Typer) -> None:
    app.command()(stream)
