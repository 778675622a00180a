"""The day-one anomaly model: ranks abuse above ordinary use without labels, registered and
served like any target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.anomaly import CohortAnomalyModel


def _frame(unlabelled_day):
    from features.windows import CLIENT_FEATURES
    from labeling.functions import window_table

    s, truth, _ = unlabelled_day
    w = window_table(s)
    y = w[["client_id", "event_timestamp"]].merge(truth, how="left")["label"].to_numpy()
    return w[list(CLIENT_FEATURES)].astype(float), y


def test_ranks_abusive_windows_above_ordinary_ones(unlabelled_day):
    from sklearn.metrics import roc_auc_score

    X, y = _frame(unlabelled_day)
    m = CohortAnomalyModel().fit(X)
    s = m.predict_proba(X)[:, 1]
    assert s.min() >= 0 and s.max() <= 1
    assert roc_auc_score(y, s) > 0.65
    top = s >= np.quantile(s, 0.995)
    assert y[top].mean() > 3 * y.mean()  # its top half-percent is mostly abuse
    # every cohort is calibrated on itself: the share above 0.99 is ~1 % in each
    for c in np.unique(m._cohort(X)):
        sel = m._cohort(X) == c
        if sel.sum() >= 2000:
            assert (s[sel] > 0.99).mean() < 0.03


def test_explains_with_the_features_that_stand_out(unlabelled_day):
    X, _ = _frame(unlabelled_day)
    m = CohortAnomalyModel().fit(X)
    i = int(np.argmax(X["distinct_addresses_1h"].to_numpy()))
    names = [f for f, _ in m.explain(X.iloc[[i]])[0]]
    assert any("address" in n or "network" in n for n in names)


def test_columns_by_name_and_missing_values(unlabelled_day):
    X, _ = _frame(unlabelled_day)
    m = CohortAnomalyModel().fit(X)
    shuffled = X.iloc[:50][list(reversed(X.columns))]
    assert np.allclose(m.predict_proba(shuffled), m.predict_proba(X.iloc[:50]))
    holes = X.iloc[:50].copy()
    holes.iloc[:, :5] = np.nan
    assert np.isfinite(m.predict_proba(holes)).all()
    assert isinstance(m.predict(pd.DataFrame(X.iloc[:3])), np.ndarray)


@pytest.mark.integration
def test_trained_registered_and_served_like_any_target(unlabelled_day, tmp_path):
    """``train --target anomaly`` on unlabelled windows: an MLflow run and a registered
    challenger that says it is unvalidated; serving's runtime and batch scoring use it."""
    import shutil

    from features.store import apply_definitions, feature_store
    from models.registry import promote
    from models.tracking import version_info
    from models.train import train_target
    from serving.batch import score_windows

    s0, truth, _ = unlabelled_day
    s = s0.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    r = train_target(s, "anomaly")
    assert r.eligible and r.metric == "none" and r.warnings  # no labels: not measured
    info = version_info(s, "anomaly")
    tags = info["challenger"]["tags"]
    assert tags["validated"] == "false" and "shadow" in tags["gate.reason"]
    promote(s, "anomaly", r.version)
    apply_definitions(feature_store(s), s)
    scores, version = score_windows(s, "anomaly", "champion")
    assert version == r.version and scores["score"].dropna().between(0, 1).all()
    from sklearn.metrics import roc_auc_score

    m = scores.merge(truth, on=["client_id", "event_timestamp"]).dropna(subset=["score"])
    assert roc_auc_score(m["label"], m["score"]) > 0.6  # point in time: the previous window's


def test_the_initial_policy_has_the_anomaly_target_in_shadow(unlabelled_day):
    from gateway.policy import initial_policy

    s, _, _ = unlabelled_day
    p = initial_policy(s)
    assert p.targets["anomaly"].mode == "shadow"
    assert [b.min_score for b in p.targets["anomaly"].bands] == [0.995, 0.9995]
