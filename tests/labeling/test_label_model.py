"""The label model learns each function's accuracy and their correlations without ground
truth (issue 21, item 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labeling.label_model import LabelModel, function_stats


def _simulated_functions(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Functions that observe the simulator's window truth through noise: each fires with one
    rate on windows of the class it votes for and another on the rest (conditionally
    independent), plus a near-copy of one of them (a strongly correlated pair)."""
    rng = np.random.default_rng(seed)
    n = len(y)

    def lf(vote: int, on_match: float, on_other: float) -> np.ndarray:
        p = np.where(y == vote, on_match, on_other)
        return np.where(rng.random(n) < p, vote, -1)

    specs = [
        ("failed_logins", 1, 0.35, 0.002),
        ("many_addresses", 1, 0.30, 0.006),
        ("sequential_ids", 1, 0.40, 0.02),  # true accuracy well under 0.8
        ("sensitive_heavy", 1, 0.25, 0.015),  # and another
        ("quiet_clean", 0, 0.60, 0.05),
        ("steady_user", 0, 0.50, 0.10),
        ("night_owl", 0, 0.20, 0.50),  # a legitimate-side function of middling accuracy
    ]
    cols = [lf(v, a, b) for _, v, a, b in specs]
    names = [s[0] for s in specs]
    seq = cols[names.index("sequential_ids")]
    cols.append(np.where(rng.random(n) < 0.9, seq, lf(1, 0.40, 0.02)))
    names.append("sequential_ids_again")
    return np.stack(cols, axis=1), names


def test_estimated_accuracies_within_five_points(unlabelled_day):
    _, truth, _ = unlabelled_day
    y = truth["label"].to_numpy().astype(int)
    assert 0.01 < y.mean() < 0.3
    L, names = _simulated_functions(y)
    lm = LabelModel().fit(L, names)
    stats = function_stats(L, names, lm, y)
    assert len(stats) >= 6
    assert sum(s.true_accuracy <= 0.8 for s in stats) >= 2
    for s in stats:
        assert abs(s.estimated_accuracy - s.true_accuracy) <= 0.05, s
    merged = {frozenset((a, b)) for a, b, _ in lm.merges_}
    assert frozenset(("sequential_ids", "sequential_ids_again")) in merged
    assert abs(lm.prior_ - y.mean()) < 0.01


def test_without_the_correlation_the_copy_is_counted_twice(unlabelled_day):
    """The same functions, the pair not modelled jointly: the doubled witness skews the
    estimates, which is what the merge prevents."""
    _, truth, _ = unlabelled_day
    y = truth["label"].to_numpy().astype(int)
    L, names = _simulated_functions(y)
    naive = LabelModel(max_merges=0, jaccard=1.01).fit(L, names)
    errs = [abs(s.estimated_accuracy - s.true_accuracy) for s in function_stats(L, names, naive, y)]
    assert max(errs) > 0.1


def test_known_labels_anchor_and_are_kept(unlabelled_day):
    _, truth, _ = unlabelled_day
    y = truth["label"].to_numpy().astype(int)
    L, names = _simulated_functions(y, seed=1)
    known = np.where(np.random.default_rng(2).random(len(y)) < 0.05, y, -1)
    lm = LabelModel().fit(L, names, known=known)
    for s in function_stats(L, names, lm, y):
        assert abs(s.estimated_accuracy - s.true_accuracy) <= 0.05, s
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, lm.predict_proba(L)) > 0.7


def test_stats_count_overlaps_and_conflicts():
    L = np.array([[1, 0, -1], [1, 1, -1], [-1, -1, 0], [1, -1, -1]])
    lm = LabelModel(min_joint=1).fit(L, ["a", "b", "c"])
    a, b, c = function_stats(L, ["a", "b", "c"], lm)
    assert a.coverage == 0.75 and a.overlaps == pytest.approx(2 / 3)
    assert a.conflicts == pytest.approx(1 / 3) and a.vote == "abusive"
    assert b.vote == "both" and c.overlaps == 0


def test_bad_votes_are_refused():
    with pytest.raises(ValueError, match="1 \\(abusive\\), 0"):
        LabelModel().fit(np.array([[2, 0]]))
    with pytest.raises(ValueError, match="one entry per window"):
        LabelModel().fit(np.array([[1, 0]]), known=np.array([1, 0]))


def test_many_windows_fit_quickly_in_patterns():
    """250,000 windows collapse to the distinct vote patterns (no assertion on time: the
    number of patterns is what keeps it cheap)."""
    rng = np.random.default_rng(0)
    y = (rng.random(250_000) < 0.07).astype(int)
    L, names = _simulated_functions(y)
    assert len(np.unique(L, axis=0)) < 300
    lm = LabelModel().fit(L, names)
    assert pd.Series(lm.predict_proba(L)).between(0, 1).all()
