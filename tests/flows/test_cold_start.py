"""From a gateway's unlabelled log to a model that may enforce only under a bounded harm
estimate, with the README's commands only (issue 21's done-when)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.flows.test_labels_to_model import _gw

pytestmark = pytest.mark.integration


def test_unlabelled_log_to_a_bounded_model(prefect_harness, env, tmp_path):
    from config.settings import load_settings
    from labeling.store import LabelStore
    from telemetry.simulator.output import run_simulation
    from tests.conftest import REPO

    # what the user has: a combined log and a consumers table; the truth stays elsewhere,
    # for the oracle reviewer only
    other = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "elsewhere")
    other = other.model_copy(
        update={
            "simulator": other.simulator.model_copy(
                update={"clients": 200, "days": 1.0, "seed": 31}
            )
        }
    )
    run = run_simulation(
        other, emit="combined", emit_path=tmp_path / "access.log", truth_dir=tmp_path / "truth"
    )
    consumers = tmp_path / "consumers.csv"
    run.result.consumers.to_pandas().to_csv(consumers, index=False)
    truth = run.result.labels.to_pandas()
    truth["event_timestamp"] = pd.to_datetime(truth["event_timestamp"], utc=True)

    assert (
        _gw(
            "ingest", "-f", "combined", str(tmp_path / "access.log"), "--consumers", str(consumers)
        ).returncode
        == 0
    )
    assert not (env / "labels").exists()
    res = _gw("features", "build")
    assert res.returncode == 0, res.stderr
    # day one: the anomaly target needs no labels
    res = _gw("train", "--target", "anomaly")
    assert res.returncode == 0, res.stderr
    assert _gw("promote", "--target", "anomaly").returncode == 0
    res = _gw("labels", "weak")
    assert res.returncode == 0, res.stderr
    assert "labelling functions" in res.stdout and "anomaly model: v1" in res.stdout

    queue = tmp_path / "queue.csv"
    res = _gw("review", "export", "--n", "20", "--out", str(queue))
    assert res.returncode == 0, res.stderr
    q = pd.read_csv(queue)
    assert len(q) == 20 and q["label"].isna().all()
    # the oracle answers, as a reviewer would fill in the file
    since, until = pd.Timestamp(q["since"].iloc[0]), pd.Timestamp(q["until"].iloc[0])
    period = truth[(truth.event_timestamp >= since) & (truth.event_timestamp < until)]
    abusive = set(period.loc[period.label == 1, "client_id"])
    q["label"] = ["abusive" if c in abusive else "legitimate" for c in q["client_id"]]
    q.loc[q.index[-2:], "label"] = None  # two not answered yet
    q.to_csv(queue, index=False)
    res = _gw("labels", "import", "--source", "review", "--by", "oracle", str(queue))
    assert res.returncode == 0, res.stderr
    assert "not answered yet 2" in res.stdout

    s = load_settings(REPO / "gatewise.yaml")
    lab = LabelStore(s.labels_dir).read().to_pandas()
    # before training: people's reviews and the label model's guesses, no truth
    assert set(lab["source"]) == {"review", "weak"}
    assert set(lab.loc[lab.source == "review", "client_id"]) == set(q["client_id"][:-2])
    assert set(lab.loc[lab.source == "review", "labelled_by"]) == {"oracle"}

    res = _gw("train", "--target", "abuse", "--labels", "all", "--budget", "30", "--trials", "3")
    assert res.returncode == 0, res.stderr
    assert _gw("promote", "--target", "abuse", "--force").returncode == 0
    res = _gw("harm", "check")
    assert res.returncode in (0, 1), res.stderr  # 1: does not clear yet
    assert "bound = (" in res.stdout and "Clopper-Pearson" in res.stdout
    if res.returncode == 1:
        assert "reviews that would settle it" in res.stdout or "refused" in res.stdout
