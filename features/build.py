"""Build the window feature sets from the telemetry store, one UTC day at a time.

Each day's rows are computed from that day's events plus the 24 hours before
(the longest rolling window), and written as one Parquet file per dataset and
day, replaced atomically: rebuilding a day is idempotent. A manifest records
which telemetry files each day was built from, so a build touches only days
that are new or whose telemetry changed (new ingest), never the rest of
history.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from config.settings import Settings
from features.asof import ASOF_DATASET
from features.asof_replay import replay_asof
from features.stream import STATE_COLUMNS
from features.windows import client_windows_sql, route_windows_sql
from telemetry.store import HOUR_FMT, TelemetryStore

__all__ = ["BuildReport", "build_windows", "telemetry_days"]

DATASETS = ("client_windows", "route_windows", "client_windows_asof")
LOOKBACK = timedelta(hours=24)


@dataclass
class BuildReport:
    built_days: list[str] = field(default_factory=list)
    skipped_days: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATASETS, 0))
    events: int = 0
    first: datetime | None = None
    last: datetime | None = None
    seconds: float = 0.0


def telemetry_days(store: TelemetryStore) -> list[date]:
    hours = sorted(
        p.name.split("=", 1)[1] for p in store.root.glob("hour=*") if any(p.glob("*.parquet"))
    )
    return sorted({datetime.strptime(h, HOUR_FMT).date() for h in hours})


def _day_inputs(store: TelemetryStore, day: date) -> list[str]:
    """Telemetry part files a day's features depend on (the day and its lookback)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - LOOKBACK
    files = []
    for h in range(48):
        hour = (start + timedelta(hours=h)).strftime(HOUR_FMT)
        files += sorted(f.name for f in (store.root / f"hour={hour}").glob("*.parquet"))
    return files


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _every_eighth(key: str, on_day: Callable[[str, str], None]) -> Callable[[int, int], None]:
    def progress(k: int, n: int) -> None:
        if k == n or k % max(1, n // 8) == 0:
            on_day(key, f"as-of snapshots {k}/{n} instants")

    return progress


def build_windows(
    settings: Settings,
    since: date | None = None,
    until: date | None = None,
    *,
    force: bool = False,
    on_day: Callable[[str, str], None] | None = None,
) -> BuildReport:
    """Build client and route window features for days in ``[since, until)``.

    Without a range, every day that has telemetry. Days whose inputs did not
    change since their last build are skipped unless ``force``.
    """
    import duckdb

    t0 = time.perf_counter()
    store = TelemetryStore(settings.telemetry_dir)
    out_dir = settings.features_dir
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
    days = [
        d
        for d in telemetry_days(store)
        if (since is None or d >= since) and (until is None or d < until)
    ]
    report = BuildReport()
    asof = settings.features.asof
    state_path = out_dir / "state" / "first_seen.parquet"
    for day in days:
        key = day.isoformat()
        inputs = _day_inputs(store, day)
        asof_cfg = asof.model_dump() if asof.enabled else None
        entry = manifest.get(key, {})
        if not force and entry.get("inputs") == inputs and entry.get("asof") == asof_cfg:
            report.skipped_days.append(key)
            if on_day:
                on_day(key, "unchanged")
            continue
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        day_end = day_start + timedelta(days=1)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE TEMP TABLE ev AS {store.relation_sql(day_start - LOOKBACK, day_end)}")
        seen = (
            pq.read_table(state_path)
            if state_path.exists()
            else pa.table(
                {
                    "client_id": pa.array([], pa.string()),
                    "first_seen": pa.array([], pa.timestamp("us", tz="UTC")),
                }
            )
        )
        con.register("seen_state", seen)
        con.execute("""CREATE TEMP TABLE first_seen AS
            SELECT client_id, min(first_seen) AS first_seen FROM (
              SELECT client_id, first_seen FROM seen_state
              UNION ALL SELECT client_id, min(timestamp) FROM ev GROUP BY client_id) GROUP BY client_id""")
        keep = f"event_timestamp > TIMESTAMPTZ '{day_start.isoformat()}' AND event_timestamp <= TIMESTAMPTZ '{day_end.isoformat()}'"
        n_events = int(
            con.sql(
                f"SELECT count(*) FROM ev WHERE timestamp >= TIMESTAMPTZ '{day_start.isoformat()}'"
            ).fetchall()[0][0]
        )
        schemas: dict[str, pa.Schema] = {}
        for name, sql in (
            ("client_windows", client_windows_sql()),
            ("route_windows", route_windows_sql()),
        ):
            table = con.sql(
                f"SELECT * FROM ({sql}) WHERE {keep} ORDER BY event_timestamp, 1"
            ).to_arrow_table()
            _write_atomic(table, out_dir / name / f"date={key}" / "part-0.parquet")
            schemas[name] = table.schema
            report.rows[name] += table.num_rows
            if table.num_rows:
                ts = table.column("event_timestamp")
                lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
                report.first = lo if report.first is None else min(report.first, lo)
                report.last = hi if report.last is None else max(report.last, hi)
        first_seen = con.sql("SELECT * FROM first_seen ORDER BY client_id").to_arrow_table()
        asof_path = out_dir / ASOF_DATASET / f"date={key}" / "part-0.parquet"
        if asof.enabled:
            # what the online store held inside the day's windows: the stream processor's
            # replay (features/asof.py)
            cols = ", ".join(STATE_COLUMNS)
            events = con.sql(
                f"SELECT {cols} FROM ev ORDER BY timestamp, request_id"
            ).to_arrow_table()
            rows = replay_asof(
                settings,
                events,
                day_start,
                day_end,
                first_seen=first_seen,
                progress=_every_eighth(key, on_day) if on_day else None,
            )
            del events
            if rows is not None:
                # the Feast source reads these files with the closed-window ones: one schema
                rows = rows.select(schemas["client_windows"].names).cast(schemas["client_windows"])
                rows = rows.sort_by([("event_timestamp", "ascending"), ("client_id", "ascending")])
                _write_atomic(rows, asof_path)
                report.rows[ASOF_DATASET] += rows.num_rows
            elif asof_path.exists():
                asof_path.unlink()
        elif asof_path.exists():
            asof_path.unlink()  # switched off: no stale rows behind the Feast source
        _write_atomic(first_seen, state_path)
        con.close()
        manifest[key] = {
            "inputs": inputs,
            "asof": asof_cfg,
            "events": n_events,
            "built_at": datetime.now(UTC).isoformat(),
        }
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest_path.with_name(".manifest.json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, manifest_path)
        report.built_days.append(key)
        report.events += n_events
        if on_day:
            on_day(key, "built")
    report.seconds = time.perf_counter() - t0
    return report
