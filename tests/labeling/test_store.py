"""The labels table: written atomically per batch, re-import replaces, late labels hidden."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from labeling.store import LABELS_SCHEMA, LabelStore

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def _batch(n: int, label: int = 0) -> pa.Table:
    return pa.table(
        {
            "client_id": [f"c{i}" for i in range(n)],
            "event_timestamp": [T0 + timedelta(minutes=5 * i) for i in range(n)],
            "label": [label] * n,
            "source": ["import"] * n,
        }
    )


def test_write_read_and_reimport_replaces(tmp_path):
    store = LabelStore(tmp_path / "labels")
    assert store.read().num_rows == 0
    store.write(_batch(3), "team-a")
    store.write(_batch(2, label=1), "team-b")
    assert store.read().num_rows == 5
    store.write(_batch(3), "team-a")  # the same batch again: replaced, not added
    got = store.read()
    assert got.num_rows == 5
    assert got.schema.equals(LABELS_SCHEMA)
    assert got.column("scenario").null_count == 5  # optional column filled with nulls


def test_labels_arrive_late(tmp_path):
    store = LabelStore(tmp_path / "labels")
    store.write(_batch(6), "b")
    known = store.read(available_at=T0 + timedelta(minutes=20), delay=timedelta(minutes=10))
    assert known.num_rows == 3  # windows at 0, 5 and 10 minutes started 10+ minutes before


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (_batch(2, label=2), "column 'label'"),
        (_batch(2).drop_columns(["client_id"]), "client_id"),
    ],
)
def test_bad_batches_are_refused_naming_the_column(tmp_path, table, match):
    store = LabelStore(tmp_path / "labels")
    with pytest.raises(ValueError, match=match):
        store.write(table, "bad")
    assert store.read().num_rows == 0


def test_batch_names_are_plain(tmp_path):
    with pytest.raises(ValueError, match="letters, digits"):
        LabelStore(tmp_path).write(_batch(1), "../escape")
