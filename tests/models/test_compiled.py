"""Compiled champions (models/compiled.py): the ONNX form gives the pipeline's answers, or
it is refused with the reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.compiled import CompiledModel, export, load_dir, verify
from models.search import build_model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n = 1500
    X = pd.DataFrame(rng.lognormal(size=(n, 12)), columns=[f"f{i}" for i in range(12)])
    X.iloc[::9, 2] = np.nan  # the imputer's work must survive the export
    X["f5"] = -X["f5"]  # negative values through the signed log
    y = pd.Series((X.f0 + X.f1 * rng.random(n) - 0.2 * X.f5 > 3.0).astype(int))
    return X.iloc[:1200], y.iloc[:1200], X.iloc[1200:]


FAMILIES = {
    "random_forest": dict(
        family="random_forest",
        n_estimators=40,
        max_depth=10,
        min_samples_leaf=2,
        max_features=0.5,
        log_transform=True,
    ),
    "xgboost": dict(
        family="xgboost",
        max_depth=5,
        learning_rate=0.1,
        subsample=0.8,
        colsample_bytree=0.8,
        min_child_weight=1,
        reg_lambda=1.0,
        n_rounds=80,
    ),
    "linear+selection": dict(
        family="linear",
        C=1.0,
        scale=True,
        log_transform=True,
        selection="mutual_info",
        keep_fraction=0.5,
    ),
    "extra_trees+l1": dict(
        family="extra_trees",
        n_estimators=30,
        max_depth=None,
        min_samples_leaf=1,
        max_features=0.5,
        selection="l1",
        keep_fraction=0.5,
    ),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_matches_the_pipeline(data, name, tmp_path):
    X, y, holdout = data
    model = build_model(FAMILIES[name], "binary", X, y)
    e = export(model, list(X.columns), holdout, "binary", 0.5)
    assert e.status == "exported", e.reason
    assert e.info["max_abs_diff"] <= 1e-5 and e.info["decisions_differ"] == 0
    # written and read back as serving does, then scored from a plain matrix
    meta, blob, check = load_dir(e.write(tmp_path / "compiled"))
    assert meta["status"] == "exported" and blob is not None and check is not None
    fast = CompiledModel(blob, list(X.columns))
    got = fast.predict_matrix(holdout.to_numpy(dtype=float))
    ref = model.predict_proba(holdout)[:, 1]
    assert np.allclose(got, ref, atol=1e-5)
    # column order is the model's, whatever order the frame arrives in
    assert np.allclose(fast.predict_frame(holdout[list(X.columns)[::-1]]), ref, atol=1e-5)


def test_a_broken_export_is_refused(data):
    """The ONNX of another model (same inputs, other answers): verify names the difference."""
    X, y, holdout = data
    model = build_model(FAMILIES["random_forest"], "binary", X, y)
    other = build_model(FAMILIES["linear+selection"], "binary", X, 1 - y)
    wrong = export(other, list(X.columns), holdout, "binary", 0.5)
    assert wrong.onnx is not None
    v = verify(CompiledModel(wrong.onnx, list(X.columns)), model, holdout, 0.5)
    assert not v.ok and v.decisions_differ > 0 and "decisions" in v.reason
    # no threshold: the probabilities alone refuse it
    v2 = verify(CompiledModel(wrong.onnx, list(X.columns)), model, holdout, None)
    assert not v2.ok and "probabilities differ" in v2.reason
    assert not verify(CompiledModel(wrong.onnx, list(X.columns)), model, holdout.iloc[:0], 0.5).ok


def test_what_does_not_convert_is_refused_with_the_reason(data):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y, holdout = data
    model = build_model(FAMILIES["linear+selection"], "binary", X, y)
    odd = Pipeline([("sqrt", FunctionTransformer(np.sqrt)), *model.steps])
    e = export(odd, list(X.columns), holdout, "binary", 0.5)
    assert e.status == "refused" and e.onnx is None and "FunctionTransformer" in e.reason
    cats = holdout.assign(f3=holdout["f3"].map(lambda v: "a" if v > 1 else "b"))
    e2 = export(model, list(X.columns), cats, "binary", 0.5)
    assert e2.status == "refused" and "'f3'" in e2.reason
    assert export(model, list(X.columns), holdout, "regression", None).status == "refused"
