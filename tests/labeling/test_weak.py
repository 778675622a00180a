"""Labelling functions over real client windows, and the weak labels they give."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from config.labeling import LabelingFunction
from labeling.functions import _glob_regex, apply_functions, window_table
from labeling.store import LabelStore
from labeling.weak import weak_labels


@pytest.fixture()
def day(unlabelled_day, tmp_path):
    """The shared day with a labels table of this test's own."""
    s, truth, clients = unlabelled_day
    s = s.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(unlabelled_day[0].data_dir, s.data_dir)
    return s, truth, clients


def test_window_table_is_the_labels_grid_with_the_function_columns(unlabelled_day):
    s, truth, _ = unlabelled_day
    w = window_table(s)
    assert set(zip(w.client_id, w.event_timestamp, strict=True)) == set(
        zip(truth.client_id, truth.event_timestamp, strict=True)
    )
    for c in (
        "n_401_5m",
        "automation_share_5m",
        "canary_hits_5m",
        "scan_attacks_5m",
        "network_failing_clients_5m",
        "tier",
        "tier_limit_per_minute",
        "anomaly_score",
        "request_count_5m",
        "distinct_networks_24h",
    ):
        assert c in w, c
    # the window's own 5-minute count: what the telemetry holds for it
    from telemetry.store import TelemetryStore

    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    ev["w"] = ev["timestamp"].dt.floor("5min")
    n = ev.groupby(["client_id", "w"]).size()
    row = w.iloc[len(w) // 2]
    assert row.request_count_5m == n[(row.client_id, row.event_timestamp)]
    fails = ev[ev["http_response_status_code"] == 401].groupby(["client_id", "w"]).size()
    got = w.set_index(["client_id", "event_timestamp"])["n_401_5m"]
    assert (got.reindex(fails.index) == fails).all()


def test_canary_patterns_match_like_the_shell():
    import re

    rx = re.compile(_glob_regex(["/.env", "/wp-admin/*", "/admin*"]))
    assert rx.match("/.env") and rx.match("/wp-admin/setup.php") and rx.match("/administrator")
    assert not rx.match("/v1/admin") and not rx.match("/.envx")


def test_a_function_that_does_not_run_is_named(unlabelled_day):
    s, _, _ = unlabelled_day
    bad = s.labeling.model_copy(
        update={
            "functions": [
                LabelingFunction(name="ok", vote="abusive", where="n_401_5m > 3"),
                LabelingFunction(name="typo", vote="abusive", where="n_402_5m > 3"),
            ]
        }
    )
    w = window_table(s).head(50)
    with pytest.raises(ValueError, match=r"labeling.functions\[1\] \(typo\).*n_402_5m"):
        apply_functions(s.model_copy(update={"labeling": bad}), w)


def test_python_functions_from_a_module(unlabelled_day, tmp_path, monkeypatch):
    s, _, _ = unlabelled_day
    (tmp_path / "my_lfs.py").write_text(
        "import numpy as np\n"
        "def lf_busy(w):\n"
        "    '''many requests'''\n"
        "    return np.where(w['request_count_5m'] > 100, 1, -1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    s2 = s.model_copy(update={"labeling": s.labeling.model_copy(update={"module": "my_lfs"})})
    w = window_table(s).head(500)
    v = apply_functions(s2, w)
    assert "busy" in v and set(np.unique(v["busy"])) <= {-1, 1}


def test_weak_labels_are_written_and_useful(day):
    s, truth, _ = day
    rep = weak_labels(s, truth=truth)
    assert rep.path is not None and rep.windows == len(truth)
    from sklearn.metrics import roc_auc_score

    y = (
        rep.windows_frame[["client_id", "event_timestamp"]]
        .merge(truth, how="left")["label"]
        .to_numpy()
    )
    assert roc_auc_score(y, rep.probability) > 0.75
    stored = LabelStore(s.labels_dir).read().to_pandas()
    assert set(stored["source"]) == {"weak"} and stored["probability"].between(0, 1).all()
    assert {f.name for f in rep.functions} >= {"failed_logins_burst", "quiet_clean"}
    assert rep.stats_path is not None and rep.stats_path.exists()
    again = weak_labels(s)  # a rerun over the same range replaces its batch
    assert LabelStore(s.labels_dir).read().num_rows == again.windows


def test_reviewed_windows_anchor_and_win(day, tmp_path):
    from labeling.io import import_labels
    from models.data import labelled_windows

    s, truth, clients = day
    picked = clients.sample(40, random_state=0)["client_id"]
    answers = truth[truth.client_id.isin(picked)].groupby("client_id")["label"].max()
    f = tmp_path / "answers.csv"
    answers.rename("label").reset_index().to_csv(f, index=False)
    import_labels(s, f, source="review", level="client", labelled_by="oracle")
    rep = weak_labels(s)
    assert rep.anchored_windows == int(truth.client_id.isin(picked).sum())
    weak = LabelStore(s.labels_dir).read().to_pandas()
    assert not weak[weak.source == "weak"].client_id.isin(picked).any()
    every = labelled_windows(s, labels="all")
    assert set(every.loc[every.client_id.isin(picked), "source"]) == {"review"}
    reviewed = labelled_windows(s, labels="reviewed")
    assert set(reviewed["source"]) == {"review"}
    only_weak = labelled_windows(s, labels="weak")
    conf = s.labeling.confident
    p = only_weak["probability"]
    assert set(only_weak["source"]) == {"weak"} and ((p >= conf) | (p <= 1 - conf)).all()
    with pytest.raises(ValueError, match="is not one of"):
        labelled_windows(s, labels="some")


def test_anomaly_votes_when_scored(day):
    s, _, _ = day
    rep = weak_labels(s, anomaly=lambda w: np.where(w["request_count_5m"] > 200, 0.999, 0.5))
    anomalous = next(f for f in rep.functions if f.name == "anomalous")
    assert anomalous.coverage == pytest.approx(
        float((rep.windows_frame["request_count_5m"] > 200).mean())
    )
    assert pd.notna(anomalous.estimated_accuracy)
