"""``gatewise ingest``: access logs a user already has, in any format, batch or followed live.
Registered by ``register(app)``."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]

FORMAT_HELP = (
    "auto (detect per file), a built-in name (nginx:main, combined, apache:common, "
    "apache:vhost_combined, haproxy, envoy:default, alb, nginx-json, kong, envoy-json, caddy, "
    "traefik), or your server's definition: nginx:'<log_format>', apache:'<LogFormat>', "
    "envoy:'<format>', haproxy:'<log-format>'"
)


def ingest(
    files: Annotated[list[Path], typer.Argument(help="log files (plain or gzip)")],
    format: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    nginx_conf: Annotated[
        Path | None, typer.Option(help="read the format from this NGINX config (--log-format)")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="the log_format name in --nginx-conf")
    ] = None,
    max_reject_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="exit 1 when more than this share of records is rejected"
        ),
    ] = 0.1,
    consumers: Annotated[
        Path | None,
        typer.Option(help="consumers table (CSV/Parquet: client_id, tier, region, device_type)"),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            help="follow the files as they grow and rotate; events go to the telemetry stream "
            "and the store, with a checkpoint per file"
        ),
    ] = False,
    with_stream: Annotated[
        bool,
        typer.Option(
            help="--follow: also run the stream processor here (online features without a "
            "second process; the default memory/embedded set-up)"
        ),
    ] = False,
    idle_exit: Annotated[
        float | None,
        typer.Option(help="--follow: stop after this many seconds without a new line"),
    ] = None,
    fast: Annotated[bool, typer.Option(help="parse text logs with the columnar fast path")] = True,
    config: ConfigOpt = None,
) -> None:
    """Ingest gateway access logs; prints accepted, rejected and duplicate counts and the
    reasons of rejects. Exits 1 when more than --max-reject-share is rejected."""
    from telemetry.ingest.formats import FormatError, from_nginx_conf, resolve

    if (nginx_conf is None) != (log_format is None):
        _fail("--nginx-conf and --log-format go together")
    fmt: Any = format
    try:
        if nginx_conf is not None and log_format is not None:
            fmt = from_nginx_conf(nginx_conf, log_format)
        elif format != "auto":
            fmt = resolve(format)
    except FormatError as exc:
        _fail(str(exc))
    s = _settings(config)
    if follow:
        _follow(s, files, fmt, consumers, with_stream, idle_exit)
        return
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _fail(f"no such file: {', '.join(missing)}")
    from gatewise import report
    from telemetry.ingest.detect import DetectionError

    try:
        rep = report.ingest(_console(), s, files, fmt, consumers, fast=fast)
    except DetectionError as exc:
        _fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if rep.read and rep.reject_share > max_reject_share:
        typer.echo(
            f"error: {rep.rejected:,} of {rep.read:,} records rejected "
            f"({rep.reject_share:.1%} > --max-reject-share {max_reject_share:.0%}); "
            f"the {rep.accepted:,} accepted are kept.{_suggest(files, rep)}",
            err=True,
        )
        raise typer.Exit(1)


def _suggest(files: list[Path], rep: Any) -> str:
    """What --format auto would pick for the worst file, when it is not what was used."""
    from telemetry.ingest.detect import DetectionError, detect_format

    worst = max(rep.files, key=lambda f: f.rejected / max(f.read, 1))
    try:
        found = detect_format(Path(worst.path))
    except (DetectionError, OSError):
        return " No known format parses it: give your server's definition (--format nginx:'...')."
    if found.format.name == worst.format:
        return ""
    return f" {worst.path} looks like {found.format.name}: try --format {found.format.name}."


def _follow(
    s: Any,
    files: list[Path],
    fmt: Any,
    consumers_path: Path | None,
    with_stream: bool,
    idle_exit: float | None,
    *,
    checkpoint: Path | None = None,
    caption: Any = None,
) -> None:
    """Follow ``files`` until Ctrl-C (or ``idle_exit`` seconds without a line); ``caption()``
    adds a line to the live table (the data plane's sync status)."""
    from rich.live import Live
    from rich.table import Table

    from telemetry.consumers import load_consumers
    from telemetry.ingest.detect import DetectionError, detect_format
    from telemetry.ingest.follow import Follower
    from telemetry.store import TelemetryStore
    from telemetry.stream import make_broker, publish_table

    console = _console()
    if consumers_path is not None:
        _fail("--consumers with --follow: merge the table first with a batch ingest")
    if fmt == "auto":
        present = [f for f in files if f.is_file() and f.stat().st_size]
        if not present:
            _fail(
                "--format auto needs lines to look at; none of the files has any yet: give --format"
            )
        try:
            found = detect_format(present[0])
        except DetectionError as exc:
            _fail(str(exc))
        console.print(found.describe())
        fmt = found.format
    consumers = load_consumers(s.consumers_path) if s.consumers_path.exists() else None
    svc = None
    if with_stream:
        from features.stream_service import StreamService

        s = s.model_copy(update={"stream": s.stream.model_copy(update={"enabled": True})})
        svc = StreamService(s, None, push=True, bootstrap=True, metrics_port=0)
        with console.status("starting the stream processor"):
            svc.start()
    broker = make_broker(s.stream)
    parts = s.stream.partitions
    try:
        follower = Follower(
            files,
            fmt,
            TelemetryStore(s.telemetry_dir),
            checkpoint=checkpoint or s.data_dir / "follow" / "checkpoint.json",
            rejects_dir=s.rejects_dir,
            publish=lambda t: publish_table(broker, t, parts),
            consumers=consumers,
        )
    except ValueError as exc:
        _fail(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workers = []
    if svc is not None:
        workers.append(threading.Thread(target=svc.run, args=(stop,), daemon=True))
        workers[-1].start()
    started = time.monotonic()

    def view() -> Table:
        st = follower.stats
        t = Table(title=f"following {len(files)} file(s) as {fmt.name}", show_header=True)
        for col in ("file", "read", "accepted", "rejected", "duplicate"):
            t.add_column(col)
        for f in st.files.values():
            t.add_row(
                f.path,
                *(f"{getattr(f, k):,}" for k in ("read", "accepted", "rejected", "duplicate")),
            )
        t.caption = (
            f"published {st.published:,} to the {s.stream.backend} stream"
            f"{f' ({st.publish_failures} failed publishes)' if st.publish_failures else ''}; "
            f"{time.monotonic() - started:,.0f}s"
            + (f"; online rows pushed {svc.status().get('pushed_rows')}" if svc else "")
            + (f"\n{caption()}" if caption is not None else "")
        )
        return t

    try:
        with Live(view(), console=console, refresh_per_second=2, transient=False) as live:
            follower.run(stop, on_step=lambda _st: live.update(view()), idle_exit_s=idle_exit)
            live.update(view())
    finally:
        follower.close()
        stop.set()
        for w in workers:
            w.join(timeout=30)
        if svc is not None:
            svc.close()
        broker.close()
    st = follower.stats
    console.print(
        f"read {st.read:,}: accepted {st.accepted:,}, rejected {st.rejected:,}, duplicate "
        f"{st.duplicate:,}; published {st.published:,}"
    )
    if follower.quarantine.reasons:
        for reason, n in sorted(follower.quarantine.reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  rejected {n:,}: {reason}")


def register(app: typer.Typer) -> None:
    app.command()(ingest)
