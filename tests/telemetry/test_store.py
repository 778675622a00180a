from __future__ import annotations

import multiprocessing as mp
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.schema import EVENT_SCHEMA
from telemetry.store import TelemetryStore


def _events(n: int, start: datetime, step_s: float, prefix: str = "r") -> pa.Table:
    rows = [
        {
            "timestamp": start + timedelta(seconds=i * step_s),
            "request_id": f"{prefix}{i}",
            "client_id": f"c{i % 3}",
            "http_request_method": "GET",
            "url_path": "/v1/x",
            "http_route": "/v1/x",
            "http_response_status_code": 200,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


T0 = datetime(2026, 11, 2, 22, 30, tzinfo=UTC)


def test_partitions_by_hour_and_reads_any_range(tmp_path: Path):
    store = TelemetryStore(tmp_path)
    res = store.append(_events(240, T0, 60))  # 4 hours, crossing midnight
    assert res.written == 240
    hours = sorted(p.name for p in tmp_path.glob("hour=*"))
    assert hours == [
        "hour=2026-11-02T22",
        "hour=2026-11-02T23",
        "hour=2026-11-03T00",
        "hour=2026-11-03T01",
        "hour=2026-11-03T02",
    ]
    got = store.read(
        datetime(2026, 11, 2, 23, 15, tzinfo=UTC), datetime(2026, 11, 3, 0, 15, tzinfo=UTC)
    )
    assert got.num_rows == 60
    ts = got.column("timestamp").to_pylist()
    assert min(ts) == datetime(2026, 11, 2, 23, 15, tzinfo=UTC) and max(ts) < datetime(
        2026, 11, 3, 0, 15, tzinfo=UTC
    )
    con = store.connect()
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 240


def test_reingest_is_deduplicated_by_request_id(tmp_path: Path):
    store = TelemetryStore(tmp_path)
    batch = _events(100, T0, 30)
    assert store.append(batch).written == 100
    again = store.append(batch)
    assert (again.written, again.duplicates) == (0, 100)
    # a new store object (a new process) sees the committed ids too
    fresh = TelemetryStore(tmp_path)
    mixed = pa.concat_tables([batch.slice(0, 10), _events(5, T0, 30, prefix="new")])
    res = fresh.append(mixed)
    assert (res.written, res.duplicates) == (5, 10)
    assert fresh.count() == 105


def test_duplicates_within_one_batch_keep_the_first(tmp_path: Path):
    store = TelemetryStore(tmp_path)
    b = _events(4, T0, 1)
    b = b.set_column(1, "request_id", pa.array(["a", "b", "a", "c"]))
    res = store.append(b)
    assert (res.written, res.duplicates) == (3, 1)
    ids = sorted(store.read().column("request_id").to_pylist())
    assert ids == ["a", "b", "c"]


def _crash_while_writing(root: str) -> None:
    import pyarrow.parquet as pq

    real = pq.write_table

    def write_then_die(table, where, **kw):
        # write a partial file, then die before the rename that publishes it
        real(table.slice(0, 5), where, **kw)
        os.kill(os.getpid(), signal.SIGKILL)

    pq.write_table = write_then_die
    TelemetryStore(root).append(_events(50, T0, 1, prefix="crash"))


def test_crashed_writer_leaves_no_visible_half_file(tmp_path: Path):
    store = TelemetryStore(tmp_path)
    store.append(_events(20, T0, 1))
    p = mp.get_context("fork").Process(target=_crash_while_writing, args=(str(tmp_path),))
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    leftovers = list(tmp_path.rglob(".part-*.tmp"))
    assert leftovers, "the crashed writer should have left its hidden temp file"
    assert TelemetryStore(tmp_path).read().num_rows == 20
    # every visible file is a complete Parquet file
    for f in tmp_path.glob("hour=*/*.parquet"):
        pq.read_metadata(f)


def test_empty_store_reads_empty(tmp_path: Path):
    store = TelemetryStore(tmp_path / "none")
    assert store.read().num_rows == 0
    assert store.connect().execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_store_written_before_the_scan_columns_reads_them_as_nulls(tmp_path):
    """Parts written before ``scan_*`` joined the contract stay readable (nulls), alone and
    beside new parts."""
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from telemetry.schema import TelemetryEvent, events_to_table
    from telemetry.store import TelemetryStore

    def event(rid: str, hour: int, **kw):
        return TelemetryEvent(
            timestamp=datetime(2026, 11, 2, hour, tzinfo=UTC),
            request_id=rid,
            client_id="c1",
            http_request_method="GET",
            url_path="/x",
            http_route="/x",
            http_response_status_code=200,
            **kw,
        )

    store = TelemetryStore(tmp_path / "t")
    old = events_to_table([event("r1", 1)]).drop_columns(
        ["scan_score", "scan_label", "scan_action"]
    )
    part = tmp_path / "t" / "hour=2026-11-02T01" / "part-old.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(old, part)
    assert store.read().column("scan_label").to_pylist() == [None]
    store.append(events_to_table([event("r2", 2, scan_score=0.97, scan_label="sqli")]))
    rows = sorted(store.read().select(["request_id", "scan_label"]).to_pylist(), key=str)
    assert rows == [
        {"request_id": "r1", "scan_label": None},
        {"request_id": "r2", "scan_label": "sqli"},
    ]
