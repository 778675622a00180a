"""Prefect flow ``build_features``: telemetry → window features → Feast.

Tasks: check the telemetry → aggregate windows (incremental, idempotent) →
``feast apply`` → materialize to the online store. Transient failures (a
locked file, a busy Redis) are retried; reruns are safe because every step is
idempotent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from config.settings import Settings, settings_for_flow
from features.build import BuildReport

__all__ = ["FeatureBuildSummary", "build_features_flow", "run_build_features"]


@dataclass
class FeatureBuildSummary:
    days_built: list[str]
    days_unchanged: list[str]
    rows: dict[str, int]
    events: int
    first: str | None
    last: str | None
    feature_views: list[str] = field(default_factory=list)
    materialized_until: str | None = None
    feature_lag_seconds: float | None = (
        None  # newest telemetry event not yet covered by a feature row
    )
    telemetry_rejects: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count_lines(files: Any) -> int:
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            n += sum(1 for _ in fh)
    return n


@task(name="check-telemetry", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def check_telemetry(settings: Settings) -> dict[str, Any]:
    """Fail early, with the reason, when there is nothing to build from."""
    from features.build import telemetry_days
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty():
        raise RuntimeError(
            f"the telemetry store {settings.telemetry_dir} is empty: run `gatewise simulate` or `gatewise ingest` first"
        )
    con = store.connect()
    n, last = con.sql("SELECT count(*), max(timestamp) FROM events").fetchall()[0]
    rejects = _count_lines(settings.rejects_dir.glob("*.jsonl"))
    days = [d.isoformat() for d in telemetry_days(store)]
    get_run_logger().info(
        "telemetry: %s events over %s day(s), newest %s; %s quarantined record(s)",
        f"{n:,}",
        len(days),
        last,
        rejects,
    )
    return {"events": n, "last": last, "days": days, "rejects": rejects}


@task(name="aggregate-windows", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def aggregate(
    settings: Settings, since: date | None, until: date | None, force: bool
) -> BuildReport:
    from features.build import build_windows

    log = get_run_logger()
    report = build_windows(
        settings, since, until, force=force, on_day=lambda d, what: log.info("day %s: %s", d, what)
    )
    log.info(
        "built %s day(s), %s unchanged; rows %s in %.1fs",
        len(report.built_days),
        len(report.skipped_days),
        report.rows,
        report.seconds,
    )
    return report


@task(name="feast-apply", retries=2, retry_delay_seconds=3, cache_policy=NONE)
def feast_apply(settings: Settings) -> list[str]:
    from features.store import apply_definitions, feature_store

    names = apply_definitions(feature_store(settings), settings)
    get_run_logger().info("feast apply: %s", ", ".join(names))
    return names


@task(name="materialize", retries=2, retry_delay_seconds=3, cache_policy=NONE)
def materialize(settings: Settings, end: datetime) -> datetime:
    """Bring the online store up to ``end`` (the newest feature row).

    A view never materialized starts at ``end - ttl`` (Feast's own default is
    the wall clock minus ttl, which misses replayed or backfilled traffic);
    afterwards it continues from where it stopped.
    """
    from features.store import feature_store

    store = feature_store(settings)
    views = [v for v in store.list_feature_views() if v.online]  # as-of views: training only
    fresh = [v for v in views if not v.materialization_intervals]
    if fresh:
        ttl = max((v.ttl for v in fresh if v.ttl), default=timedelta(days=1))
        store.materialize(start_date=end - ttl, end_date=end, feature_views=[v.name for v in fresh])
    done = [v.name for v in views if v.materialization_intervals]
    if done:
        store.materialize_incremental(end_date=end, feature_views=done)
    get_run_logger().info("materialized %s view(s) up to %s", len(views), end)
    return end


@flow(name="build_features", log_prints=True)
def build_features_flow(
    config_path: str | None = None,
    data_dir: str | None = None,
    since: date | None = None,
    until: date | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Telemetry → window features (Parquet) → Feast registry → online store."""
    import time

    t0 = time.perf_counter()
    settings = settings_for_flow(config_path, data_dir)
    info = check_telemetry(settings)
    report = aggregate(settings, since, until, force)
    names = feast_apply(settings)
    end = report.last
    if end is None:  # nothing new built: materialize up to the newest day there is
        last_day = date.fromisoformat(info["days"][-1])
        end = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC) + timedelta(days=1)
    until_ts = materialize(settings, end)
    last_event = info["last"]
    summary = FeatureBuildSummary(
        days_built=report.built_days,
        days_unchanged=report.skipped_days,
        rows=report.rows,
        events=report.events,
        first=report.first.isoformat() if report.first else None,
        last=report.last.isoformat() if report.last else None,
        feature_views=[
            n
            for n in names
            if n.startswith(("client_", "route_")) and not n.endswith(("_source", "_push"))
        ],
        materialized_until=until_ts.isoformat(),
        feature_lag_seconds=max(0.0, (last_event - until_ts).total_seconds())
        if last_event
        else None,
        telemetry_rejects=info["rejects"],
        seconds=time.perf_counter() - t0,
    )
    return summary.as_dict()


def run_build_features(
    settings_path: Path | None, data_dir: Path | None, **kw: Any
) -> dict[str, Any]:
    """Run the flow (Prefect's ephemeral API if no server is configured)."""
    return build_features_flow(
        config_path=str(settings_path) if settings_path else None,
        data_dir=str(data_dir.resolve()) if data_dir else None,
        **kw,
    )
