"""simulate --emit FORMAT, then ingest: the events come back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from config.simulator import SimulatorSettings
from telemetry.ingest import ingest_files
from telemetry.ingest.emit import CARRIED, emit_table
from telemetry.simulator import simulate
from telemetry.store import TelemetryStore


@pytest.fixture(scope="module")
def small_sim():
    return simulate(SimulatorSettings(clients=60, days=0.25, seed=3))


def _floor_seconds(t: pa.Table) -> pa.Table:
    i = t.schema.get_field_index("timestamp")
    return t.set_column(i, "timestamp", pc.floor_temporal(t.column("timestamp"), unit="second"))


SECOND_RESOLUTION = ("combined", "nginx:main", "apache:common", "apache:vhost_combined")


@pytest.mark.parametrize(
    "fmt", [*SECOND_RESOLUTION, "nginx:gatewise", "nginx-json", "kong", "envoy"]
)
def test_round_trip(small_sim, tmp_path, fmt):
    events = small_sim.events
    log = tmp_path / f"traffic.{fmt}.log.gz"
    emit_table(events, fmt, log)
    store = TelemetryStore(tmp_path / "telemetry")
    rep = ingest_files([log], fmt, store, rejects_dir=tmp_path / "rejects")
    assert (rep.read, rep.accepted, rep.rejected, rep.duplicate) == (
        events.num_rows,
        events.num_rows,
        0,
        0,
    )
    cols = list(CARRIED[fmt])
    want, got = events.select(cols), store.read().select(cols)
    if fmt in SECOND_RESOLUTION:  # one-second resolution and no request id
        want = _floor_seconds(want)
        key = [(c, "ascending") for c in cols]
    else:
        key = [("request_id", "ascending")]
    want, got = want.sort_by(key), got.sort_by(key)
    for c in cols:
        assert got.column(c).equals(want.column(c)), c
    # ingesting the same log again adds nothing
    rep2 = ingest_files([log], fmt, store, rejects_dir=tmp_path / "rejects")
    assert (rep2.accepted, rep2.duplicate) == (0, events.num_rows)
