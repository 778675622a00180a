"""`gatewise analytics`, `report` and `history` driven in process."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gatewise.cli import app
from tests.analytics.conftest import SMALL, event, store_of

runner = CliRunner()


def test_usage_json_matches_the_hand_figures(tmp_path, env) -> None:
    root = store_of(tmp_path / "t", [event(*row) for row in SMALL])
    res = runner.invoke(app, ["analytics", "usage", "--store", str(root), "--by", "tier", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["key"]: r["requests"] for r in json.loads(res.output)}
    assert rows == {"free": 6, "pro": 3}
    res = runner.invoke(
        app, ["analytics", "usage", "--store", str(root), "--tier", "pro", "--json"]
    )
    assert [r["requests"] for r in json.loads(res.output)] == [3]


def test_bad_options_are_named(tmp_path, env) -> None:
    root = store_of(tmp_path / "t", [event(*row) for row in SMALL])
    res = runner.invoke(app, ["analytics", "usage", "--dataset", "lake"])
    assert res.exit_code == 2 and "--dataset 'lake'" in res.output
    res = runner.invoke(app, ["analytics", "usage", "--store", str(root), "--by", "colour"])
    assert res.exit_code == 2 and "dimension 'colour'" in res.output
    res = runner.invoke(app, ["analytics", "slo", "--store", str(root), "--period", "7x"])
    assert res.exit_code == 2 and "period '7x'" in res.output
    res = runner.invoke(app, ["analytics", "usage", "--store", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.output
    res = runner.invoke(app, ["analytics", "policy-effect", "--store", str(root)])
    assert res.exit_code == 2 and "fewer than two policy versions" in res.output


def test_report_without_mlflow(tmp_path, env) -> None:
    root = store_of(tmp_path / "t", [event(*row) for row in SMALL])
    out = tmp_path / "r.html"
    res = runner.invoke(
        app, ["report", "--store", str(root), "--period", "1d", "--out", str(out), "--no-mlflow"]
    )
    assert res.exit_code == 0, res.output
    assert "routes breaking SLO: /v1/search" in res.output
    assert out.exists() and "weekly review" in out.read_text()


def test_history_writes_its_own_store(tmp_path, env) -> None:
    res = runner.invoke(app, ["history", "--consumers", "40", "--weeks", "6"])
    assert res.exit_code == 2 and "policy_week must be in [1, weeks)" in res.output
    res = runner.invoke(app, ["history", "--consumers", "40", "--seed", "0"])
    assert res.exit_code == 0, res.output
    truth = json.loads((env / "history" / "truth.json").read_text())
    assert truth["seed"] == 0  # a zero is a value, not "not given"
    res = runner.invoke(app, ["analytics", "consumers", "--dataset", "history", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)) == 20  # the top 20 of 40
