"""Labels in and out: files read by content, every bad value named, re-import idempotent,
client-level labels expanded to the client's windows with traffic."""

from __future__ import annotations

import gzip
from datetime import timedelta

import pandas as pd
import pytest

from labeling.io import LabelImportError, export_labels, import_labels, list_batches
from labeling.store import LabelStore
from telemetry.simulator.output import run_simulation


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """A data dir with telemetry and consumers only (the truth kept outside it)."""
    import os

    from config.settings import load_settings
    from tests.conftest import REPO

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWISE_")}
    try:
        root = tmp_path_factory.mktemp("labels-io")
        s = load_settings(REPO / "gatewise.yaml", data_dir=root / "data")
        s = s.model_copy(
            update={"simulator": s.simulator.model_copy(update={"clients": 60, "days": 0.1})}
        )
        run = run_simulation(s, truth_dir=root / "truth")
        yield s, run.result.labels.to_pandas()
    finally:
        os.environ.update(saved)


@pytest.fixture()
def s(unlabelled, tmp_path):
    """The shared telemetry, its truth, and a folder for this test's files (each test
    starts from an empty labels table)."""
    s0, truth = unlabelled
    return s0, truth, tmp_path


def _fresh_labels(s, tmp_path):
    import shutil

    shutil.rmtree(s.labels_dir, ignore_errors=True)
    shutil.rmtree(s.rejects_dir, ignore_errors=True)


def test_the_data_dir_holds_no_labels_until_imported(unlabelled):
    s, _ = unlabelled
    assert not list(s.data_dir.rglob("*windows.parquet"))
    assert LabelStore(s.labels_dir).read().num_rows == 0


def test_window_labels_from_csv_with_times_inside_windows(s):
    s, truth, tmp = s
    _fresh_labels(s, tmp)
    f = tmp / "labels.csv"
    t = truth.head(200).copy()
    t["event_timestamp"] = t["event_timestamp"] + pd.Timedelta(minutes=3, seconds=7)
    t["label"] = t["label"].map({1: "abusive", 0: "legitimate"})
    t[["client_id", "event_timestamp", "label"]].rename(columns={"event_timestamp": "time"}).to_csv(
        f, index=False
    )
    r = import_labels(s, f, labelled_by="team-a")
    assert (r.rows, r.imported_rows, r.windows, r.rejected) == (200, 200, 200, 0)
    assert r.floored == 200 and r.no_traffic == 0
    got = LabelStore(s.labels_dir).read().to_pandas()
    want = truth.head(200)
    assert sorted(zip(got.client_id, got.event_timestamp, got.label, strict=True)) == sorted(
        zip(want.client_id, want.event_timestamp, want.label, strict=True)
    )
    assert set(got.source) == {"import"} and set(got.labelled_by) == {"team-a"}
    again = import_labels(s, f)
    assert again.replaced and LabelStore(s.labels_dir).read().num_rows == 200


def test_every_bad_value_is_named_and_nothing_is_written(s):
    s, truth, tmp = s
    _fresh_labels(s, tmp)
    f = tmp / "bad.csv"
    t = truth.head(10)[["client_id", "event_timestamp", "label"]].astype(str)
    t.loc[2, "label"] = "maybe"
    t.loc[4, "client_id"] = "nobody-we-know"
    t.loc[6, "event_timestamp"] = "last tuesday"
    t.to_csv(f, index=False)
    with pytest.raises(LabelImportError) as e:
        import_labels(s, f)
    msg = str(e.value)
    assert "row 3, column 'label': 'maybe'" in msg
    assert "row 5, column 'client_id': unknown client 'nobody-we-know'" in msg
    assert "row 7, column 'event_timestamp': 'last tuesday'" in msg
    assert "nothing was imported" in msg
    assert LabelStore(s.labels_dir).read().num_rows == 0
    r = import_labels(s, f, skip_invalid=True)
    assert (r.imported_rows, r.rejected) == (7, 3)
    rejects = pd.read_json(r.rejects_path, lines=True)
    assert rejects["row"].tolist() == [3, 5, 7]


def test_missing_columns_say_what_the_file_has(s):
    s, _, tmp = s
    f = tmp / "x.csv"
    f.write_text("client,label\nc0000001,1\n")
    with pytest.raises(
        LabelImportError, match=r"missing column\(s\) event_timestamp .*--level client"
    ):
        import_labels(s, f)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "gzip-csv", "json-array"])
def test_files_are_read_by_content_not_suffix(s, kind):
    s, truth, tmp = s
    _fresh_labels(s, tmp)
    t = truth.head(30)[["client_id", "event_timestamp", "label"]]
    f = tmp / "labels.txt"  # the suffix says nothing
    if kind == "jsonl":
        t.to_json(f, orient="records", lines=True, date_format="iso")
    elif kind == "json-array":
        t.to_json(f, orient="records", date_format="iso")
    elif kind == "parquet":
        t.to_parquet(f)
    else:
        f.write_bytes(gzip.compress(t.to_csv(index=False).encode()))
    r = import_labels(s, f)
    assert r.windows == 30 and r.abusive_windows == int(t["label"].sum())


def test_client_level_labels_expand_to_windows_with_traffic(s):
    s, truth, tmp = s
    _fresh_labels(s, tmp)
    per_client = truth.groupby("client_id")["label"].max().reset_index().head(12)
    f = tmp / "clients.csv"
    per_client.to_csv(f, index=False)
    r = import_labels(s, f, level="client")
    windows = truth[truth.client_id.isin(per_client.client_id)].groupby("client_id").size()
    assert r.expanded == {k: int(v) for k, v in windows.items()}
    assert r.windows == int(windows.sum())
    # since/until restrict the windows
    start = truth["event_timestamp"].min() + timedelta(hours=1)
    per_client["since"] = start.isoformat()
    f2 = tmp / "clients-since.csv"
    per_client.to_csv(f2, index=False)
    r2 = import_labels(s, f2, level="client")
    late = truth[truth.client_id.isin(per_client.client_id) & (truth.event_timestamp >= start)]
    assert r2.windows == len(late)


def test_a_reviewers_label_overrides_an_import_and_export_round_trips(s):
    s, truth, tmp = s
    _fresh_labels(s, tmp)
    t = truth.head(20)[["client_id", "event_timestamp", "label"]].copy()
    t["label"] = 0
    f = tmp / "first.csv"
    t.to_csv(f, index=False)
    import_labels(s, f)
    fix = t.head(1).assign(label=1)
    f2 = tmp / "review.csv"
    fix.to_csv(f2, index=False)
    import_labels(s, f2, source="review", labelled_by="alice")
    df, _ = export_labels(s, None)
    assert len(df) == 20 and int(df["label"].sum()) == 1
    assert df.loc[df.label == 1, "source"].item() == "review"
    out = tmp / "export.csv"
    export_labels(s, out)
    _fresh_labels(s, tmp)
    r = import_labels(s, out)
    assert r.windows == 20 and r.abusive_windows == 1
    assert [b["windows"] for b in list_batches(s)] == [20]
