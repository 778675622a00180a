"""Ensembles of the search's best configurations, chosen greedily on out-of-fold scores.

Caruana et al. (2004) ensemble selection: start from nothing, add (with replacement)
whichever of the best trials' out-of-fold predictions most improves the metric of the
weighted mean, stop when nothing improves. The trials' predictions are free (the search
made them); the cost is refitting the chosen members. ``MeanEnsemble`` is the fitted
result: a weighted mean of full pipelines' probabilities (or numbers), so it reads the
same frame any one pipeline does. This module imports only scikit-learn's base at import
time: a served model unpickles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

__all__ = ["MeanEnsemble", "select"]


class MeanEnsemble(BaseEstimator):
    """A weighted mean of fitted pipelines: ``predict_proba`` for classifiers (the mean
    of the members' class probabilities), ``predict`` (argmax, or the mean number). An
    sklearn estimator (tags, scorers, permutation importance); fitted by its members."""

    def __init__(self, members: Sequence[Any], weights: Sequence[float], task: str) -> None:
        self.members = list(members)
        w = np.asarray(weights, dtype=float)
        self.weights = w / w.sum()
        self.task = task
        first = self.members[0]
        if hasattr(first, "classes_"):
            self.classes_ = first.classes_
        if hasattr(first, "feature_names_in_"):
            self.feature_names_in_ = first.feature_names_in_

    def __sklearn_tags__(self) -> Any:
        tags = self.members[0].__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X: Any, y: Any = None) -> MeanEnsemble:
        """Members come fitted (``models.train._fit_members``); refitting is theirs."""
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        out: np.ndarray | None = None
        for m, w in zip(self.members, self.weights, strict=True):
            p = np.asarray(m.predict_proba(X), dtype=float) * w
            out = p if out is None else out + p
        assert out is not None
        return out

    def predict(self, X: Any) -> np.ndarray:
        if self.task == "regression":
            return np.sum(
                [
                    np.asarray(m.predict(X), dtype=float) * w
                    for m, w in zip(self.members, self.weights, strict=True)
                ],
                axis=0,
            )
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]

    def __repr__(self) -> str:
        fams = ", ".join(
            f"{type(m.steps[-1][1]).__name__ if hasattr(m, 'steps') else type(m).__name__}×{w:.2f}"
            for m, w in zip(self.members, self.weights, strict=True)
        )
        return f"MeanEnsemble({fams})"


def select(
    preds: Sequence[np.ndarray],
    y: np.ndarray,
    metric: str,
    rounds: int = 20,
    max_members: int = 5,
) -> tuple[dict[int, int], float, float]:
    """Greedy ensemble selection with replacement over candidate out-of-fold predictions
    (best first). Returns ({candidate index: times chosen}, the ensemble's score, the
    best single candidate's score). At most ``max_members`` distinct candidates."""
    from models.search import HIGHER_IS_BETTER, score

    higher = HIGHER_IS_BETTER[metric]

    def better(a: float, b: float) -> bool:
        return a > b + 1e-9 if higher else a < b - 1e-9

    singles = [score(metric, y, p) for p in preds]
    first = int(np.argmax(singles) if higher else np.argmin(singles))
    counts = {first: 1}
    total = np.asarray(preds[first], dtype=float).copy()
    current = singles[first]
    for _ in range(rounds - 1):
        best_i, best_s = None, current
        n = sum(counts.values()) + 1
        for i, p in enumerate(preds):
            if i not in counts and len(counts) >= max_members:
                continue
            s = score(metric, y, (total + p) / n)
            if better(s, best_s):
                best_i, best_s = i, s
        if best_i is None:
            break
        counts[best_i] = counts.get(best_i, 0) + 1
        total += preds[best_i]
        current = best_s
    return counts, current, singles[first]
