"""The day-one anomaly model: ranks abuse above ordinary use without labels, registered and
served like any target."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
