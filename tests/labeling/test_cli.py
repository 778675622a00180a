"""The commands a user with their own gateway runs first: clear errors, nothing half done."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from gatewise.cli import app

runner = CliRunner(env={"COLUMNS": "400"})  # rich wraps at the terminal width

LOG = (
    '10.0.0.{i} - {user} [02/Nov/2026:10:{m:02d}:00 +0000] "GET /v1/orders/{i} HTTP/1.1" 200 '
    '512 "-" "curl/8.5.0"\n'
)


def _log(path, users):
    path.write_text("".join(LOG.format(i=i, user=u, m=(7 * i) % 60) for i, u in enumerate(users)))
    return path


def test_train_without_labels_consumers_or_features_is_one_error_line(env):
    res = runner.invoke(app, ["train", "--target", "abuse"])
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    for fix in (
        "gatewise labels import FILE",
        "gatewise ingest --consumers",
        "gatewise features build",
    ):
        assert fix in errors[0]


def test_policy_show_on_a_fresh_data_dir_shows_the_initial_policy(env):
    res = runner.invoke(app, ["policy", "show"])
    assert res.exit_code == 0
    doc = json.loads(res.output[: res.output.index("note:")])
    assert doc["targets"]["abuse"]["mode"] == "shadow" and doc["tiers"]["free"]
    assert "not yet published" in res.output and "gatewise policy init" in res.output
    assert not (env / "policy").exists()  # showing publishes nothing


def test_ingest_consumers_persists_and_merges_newer_wins(env, tmp_path):
    log = _log(tmp_path / "access.log", ["c1", "c2", "c3"])
    a = tmp_path / "a.csv"
    a.write_text("client_id,tier,region\nc1,free,eu-west\nc2,pro,us-east\n")
    res = runner.invoke(app, ["ingest", "-f", "combined", str(log), "--consumers", str(a)])
    assert res.exit_code == 0, res.output
    assert "added 2" in res.output
    stored = pd.read_parquet(env / "consumers.parquet").set_index("client_id")
    assert stored.loc["c2", "tier"] == "pro"
    b = tmp_path / "b.csv"
    b.write_text("client_id,tier\nc1,pro\nc3,enterprise\n")
    res = runner.invoke(app, ["ingest", "-f", "combined", str(log), "--consumers", str(b)])
    assert res.exit_code == 0, res.output
    assert "added 1, changed 1" in res.output and "c1: tier free → pro" in res.output
    stored = pd.read_parquet(env / "consumers.parquet").set_index("client_id")
    assert stored["tier"].to_dict() == {"c1": "pro", "c2": "pro", "c3": "enterprise"}
    assert stored.loc["c1", "region"] == "eu-west"  # a column the file left out is kept
    assert (env / "consumers.csv").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("client_id,tier\nc1,pro\nc1,free\n")
    res = runner.invoke(app, ["ingest", "-f", "combined", str(log), "--consumers", str(bad)])
    assert res.exit_code == 2 and "c1 (row 2)" in res.output


def test_labels_commands(env, tmp_path):
    log = _log(tmp_path / "access.log", ["c1", "c2", "c3", "c1"])
    assert runner.invoke(app, ["ingest", "-f", "combined", str(log)]).exit_code == 0
    f = tmp_path / "labels.csv"
    f.write_text("client_id,label\nc1,abusive\nc2,legitimate\n")
    res = runner.invoke(app, ["labels", "import", str(f), "--level", "window"])
    assert res.exit_code == 2 and "--level client" in res.output
    res = runner.invoke(app, ["labels", "import", str(f), "--by", "ops"])  # auto: client level
    assert res.exit_code == 0, res.output
    assert "expanded to 3 window(s)" in res.output
    res = runner.invoke(app, ["labels", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "import-" in res.output
    res = runner.invoke(app, ["labels", "show", "c1"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "ops" in res.output
    assert runner.invoke(app, ["labels", "show", "c9"]).exit_code == 1
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["labels", "export", "--format", "jsonl", "--out", str(out)])
    assert res.exit_code == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted((r["client_id"], r["label"]) for r in rows) == [
        ("c1", 1),
        ("c1", 1),
        ("c2", 0),
    ]
