"""A user's own gateway log and a labels CSV to a trained model, with the README's commands
only, on a fresh data dir (issue 20's done-when)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pandas as pd
import pytest

from models.tracking import version_info

pytestmark = pytest.mark.integration


def _gw(*args: str) -> Any:
    """The real command in its own process, as a user runs it (on the session's Prefect
    test API, so no process pays Prefect's start-up)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "COLUMNS": "400", "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run(
        [sys.executable, "-m", "gatewise", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _elsewhere(tmp_path, monkeypatch):
    """What a user brings: a combined access log, a consumers CSV and a labels CSV, written
    by a gateway and a labelling team we stand in for (the simulator, in another dir)."""
    from config.settings import load_settings
    from telemetry.simulator.output import run_simulation
    from tests.conftest import REPO

    other = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "elsewhere")
    other = other.model_copy(
        update={
            "simulator": other.simulator.model_copy(
                update={"clients": 150, "days": 1.0, "seed": 21}
            )
        }
    )
    run = run_simulation(other, emit="combined", emit_path=tmp_path / "access.log")
    consumers = tmp_path / "consumers.csv"
    run.result.consumers.to_pandas().to_csv(consumers, index=False)
    truth = run.result.labels.to_pandas()
    labels = tmp_path / "labels.csv"
    truth.assign(
        label=truth["label"].map({1: "abusive", 0: "legitimate"}),
        window_start=truth["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )[["client_id", "window_start", "label"]].to_csv(labels, index=False)
    return tmp_path / "access.log", consumers, labels, len(truth)


def test_own_log_and_labels_csv_to_a_trained_model(prefect_harness, env, tmp_path, monkeypatch):
    log, consumers, labels, n_labels = _elsewhere(tmp_path, monkeypatch)
    assert not env.exists()  # a fresh data dir

    res = _gw("train")
    assert res.returncode == 2 and "gatewise labels import" in res.stderr

    res = _gw("ingest", "-f", "combined", str(log), "--consumers", str(consumers))
    assert res.returncode == 0, res.stderr
    assert "rejected 0" in res.stdout and "added 150" in res.stdout

    res = _gw("labels", "import", str(labels))
    assert res.returncode == 0, res.stderr
    assert f"labels: {n_labels:,} window(s)" in res.stdout

    res = _gw("train")  # features are still missing: one error says so
    assert res.returncode == 2 and "gatewise features build" in res.stderr
    assert res.stderr.count("error:") == 1 and "Traceback" not in res.stderr

    res = _gw("features", "build")
    assert res.returncode == 0, res.stderr

    res = _gw("train", "--target", "abuse", "--budget", "40", "--trials", "3")
    assert res.returncode == 0, res.stderr
    assert "training" in res.stdout
    from config.settings import load_settings
    from tests.conftest import REPO

    s = load_settings(REPO / "gatewise.yaml")
    info = version_info(s, "abuse")
    assert info["challenger"] is not None
    assert info["challenger"]["tags"]["feature_service"] == "abuse_v1"
    stored = pd.read_parquet(env / "consumers.parquet")
    assert len(stored) == 150
