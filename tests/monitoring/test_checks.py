"""Drift (real Evidently) and bias (real Fairlearn) checks, and `gatewise monitor check`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from monitoring.bias import check_bias
from monitoring.drift import check_drift, save_report


def _tables(n: int = 3000, shift: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame(
        {
            "rate": rng.normal(0, 1, n),
            "count": rng.poisson(5, n).astype(float),
            "tier": rng.choice(["free", "pro"], n),
        }
    )
    cur = pd.DataFrame(
        {
            "rate": rng.normal(shift, 1, n),  # moved
            "count": rng.poisson(5, n).astype(float),  # same
            "tier": rng.choice(["free", "pro"], n),
        }
    )
    return ref, cur


def test_drift_names_the_column_that_moved_and_not_the_others(tmp_path):
    ref, cur = _tables()
    r = check_drift(ref, cur)
    assert r.drifted == ["rate"]
    by = {c.column: c for c in r.columns}
    assert set(by) == {"rate", "count", "tier"}
    assert abs(r.share - 1 / 3) < 1e-9 and not r.dataset_drift
    paths = save_report(r.snapshot, tmp_path)
    assert paths["html"].stat().st_size > 10_000
    assert "ValueDrift" in paths["json"].read_text()
    # the same tables, no shift: nothing drifts
    ref2, cur2 = _tables(shift=0.0, seed=1)
    assert check_drift(ref2, cur2).drifted == []


def test_drift_samples_large_tables_and_rejects_bad_input():
    ref, cur = _tables(n=20_000)
    r = check_drift(ref, cur, max_rows=2_000)
    assert r.sampled and r.reference_rows == r.current_rows == 2_000
    assert "rate" in r.drifted
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        check_drift(ref, cur, ["rate", "nope"])
    with pytest.raises(ValueError, match="current table has no rows"):
        check_drift(ref, cur.iloc[:0])


def _decisions(seed: int = 0) -> pd.DataFrame:
    """Region b's legitimate clients are flagged three times as often as region a's; region c
    is too small to judge."""
    rng = np.random.default_rng(seed)
    rows = []
    for region, n, fpr in (("a", 2000, 0.02), ("b", 2000, 0.06), ("c", 12, 0.02)):
        y = (rng.random(n) < 0.2).astype(int)
        pred = np.where(y == 1, rng.random(n) < 0.8, rng.random(n) < fpr).astype(int)
        rows.append(pd.DataFrame({"region": region, "label": y, "blocked": pred}))
    return pd.concat(rows, ignore_index=True)


def test_bias_finds_the_group_with_the_higher_false_positive_rate():
    df = _decisions()
    (f,) = check_bias(df, "blocked", ["region"], "label", min_group_size=30)
    rates = {g.group: g for g in f.groups}
    neg = df[df.label == 0]
    for region in ("a", "b"):
        want = neg[neg.region == region].blocked.mean()
        assert abs(rates[region].fpr - want) < 1e-12
        assert rates[region].n == int((df.region == region).sum())
    assert f.worst_fpr_group == "b" and 2.0 < f.fpr_ratio < 4.5
    assert f.unjudgeable == ["c"] and rates["c"].fpr is None and not rates["c"].judgeable
    with pytest.raises(ValueError, match="not in the table"):
        check_bias(df, "blocked", ["device"], "label")


def test_monitor_check_command_writes_reports_and_prints_findings(env, tmp_path):
    from gatewise.cli import app

    ref, cur = _tables()
    dec = _decisions()
    cur = pd.concat([cur, dec.iloc[: len(cur)].reset_index(drop=True)], axis=1)
    ref = pd.concat([ref, dec.iloc[: len(ref)].reset_index(drop=True)], axis=1)
    ref.to_parquet(tmp_path / "ref.parquet")
    cur.to_csv(tmp_path / "cur.csv", index=False)
    out = tmp_path / "report"
    r = CliRunner().invoke(
        app,
        [
            "monitor",
            "check",
            "--reference",
            str(tmp_path / "ref.parquet"),
            "--current",
            str(tmp_path / "cur.csv"),
            "--sensitive",
            "region",
            "--label",
            "label",
            "--prediction",
            "blocked",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "drift: 1 of 3 columns" in r.output and "bias by region" in r.output
    findings = json.loads((out / "findings.json").read_text())
    assert findings["drift"]["drifted"] == ["rate"]
    assert findings["bias"][0]["worst_fpr_group"] == "b"
    assert (out / "drift.html").exists()
    from monitoring.record import read_history

    hist = read_history(env / "monitoring" / "history")
    assert set(hist.column("kind").to_pylist()) == {"drift", "bias"}
    no_champ = CliRunner().invoke(
        app,
        [
            "monitor",
            "check",
            "--reference",
            str(tmp_path / "ref.parquet"),
            "--current",
            str(tmp_path / "cur.csv"),
            "--log-to",
            "abuse",
        ],
    )
    assert no_champ.exit_code == 2 and "has no champion" in no_champ.output
    bad = CliRunner().invoke(
        app, ["monitor", "check", "--reference", str(tmp_path / "nope.csv"), "--current", "x"]
    )
    assert bad.exit_code == 2 and "nope.csv does not exist" in bad.output


def test_history_keeps_one_row_per_check_and_feature_and_mlflow_gets_the_reports(
    settings, tmp_path
):
    from datetime import UTC, datetime, timedelta

    from models.tracking import client, ensure_experiment
    from monitoring.record import append_history, log_to_run, new_check_id, read_history

    root = tmp_path / "history"
    ref, cur = _tables()
    drift = check_drift(ref, cur)
    bias = check_bias(_decisions(), "blocked", ["region"], "label")
    t0 = datetime(2026, 11, 27, 10, tzinfo=UTC)
    for i in range(2):
        at = t0 + timedelta(days=i)
        append_history(root, new_check_id(at), at, "test", drift, bias, max_fpr_ratio=1.25)
    h = read_history(root).to_pandas()
    assert len(h) == 2 * (3 + 3) and h["check_id"].nunique() == 2
    d = h[(h.kind == "drift") & h.flagged]
    assert sorted(d.feature.unique()) == ["rate"] and len(d) == 2
    b = h[(h.kind == "bias") & h.flagged]
    assert list(b.group) == ["b", "b"] and (b.share > 1.25).all()
    assert h[(h.kind == "bias") & (h.group == "c")].judgeable.eq(False).all()

    c = client(settings)
    exp = ensure_experiment(settings, "monitor-test")
    run = c.create_run(exp)
    paths = save_report(drift.snapshot, tmp_path / "rep")
    log_to_run(settings, run.info.run_id, "chk1", t0, list(paths.values()), drift, bias)
    arts = [a.path for a in c.list_artifacts(run.info.run_id, "monitoring/chk1")]
    assert sorted(arts) == ["monitoring/chk1/drift.html", "monitoring/chk1/drift.json"]
    m = c.get_run(run.info.run_id).data.metrics
    assert abs(m["monitor_drift_share"] - 1 / 3) < 1e-9 and m["monitor_fpr_ratio_region"] > 2
