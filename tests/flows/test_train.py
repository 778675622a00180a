"""The real Prefect flow train on Feast features, then the CLI's promote."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from features.store import apply_definitions, feature_store
from flows.train import train_flow
from gatewise.cli import app
from models.tracking import version_info
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_train_flow_registers_a_challenger_and_promote_moves_champion(
    prefect_harness, built, tmp_path, monkeypatch
):
    s0, _ = built
    s = s0.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    apply_definitions(feature_store(s), s)
    out = train_flow(
        target="load",
        budget=60,
        n_trials=3,
        config_path=str(REPO / "gatewise.yaml"),
        data_dir=str(s.data_dir),
    )
    assert out["model_name"] == "gatewise-load" and out["metric"] == "mae" and out["trials"] == 3
    assert out["eligible"] and out["champion_version"] is None
    info = version_info(s, "load")
    assert info["challenger"]["version"] == out["version"] and info["champion"] is None
    assert info["challenger"]["tags"]["feature_service"] == "load_v1"

    monkeypatch.setenv("GATEWISE_DATA_DIR", str(s.data_dir))
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    res = runner.invoke(app, ["promote", "--target", "load"])
    assert res.exit_code == 0, res.output
    assert f"champion is now version {out['version']}" in res.output
    res = runner.invoke(app, ["rollback", "--target", "load"])
    assert res.exit_code == 2 and "no earlier champion" in res.output
    res = runner.invoke(app, ["promote", "--target", "nosuch"])
    assert res.exit_code == 2 and "no registered model 'gatewise-nosuch'" in res.output


def test_train_is_a_deployable_flow(built):
    from flows.train import train_deployment

    s, _ = built
    dep = train_deployment(s, REPO / "gatewise.yaml", "abuse", 90.0, 2)
    assert dep.name == "abuse" and dep.flow_name == "train"
    assert dep.parameters["target"] == "abuse" and dep.parameters["workers"] == 2
    assert dep.parameters["data_dir"] == str(s.data_dir.resolve())
