"""Evaluation: cost-based threshold, holdout metrics, fairness by group, and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config.targets import Costs, FairnessBounds

__all__ = [
    "FairnessReport",
    "choose_threshold",
    "classification_metrics",
    "fairness_report",
    "write_plots",
]


def choose_threshold(y: np.ndarray, score: np.ndarray, costs: Costs) -> tuple[float, float]:
    """The score threshold that minimises FP·cost_fp + FN·cost_fn on these rows.

    Returns (threshold, expected cost per row).
    """
    order = np.argsort(-score)
    s, yy = score[order], y[order].astype(int)
    tp = np.cumsum(yy)
    fp = np.cumsum(1 - yy)
    fn = yy.sum() - tp
    cost = fp * costs.false_positive + fn * costs.false_negative
    # a threshold flags every row with score >= it: only the end of a run of ties is a real cut
    cut = np.r_[s[:-1] != s[1:], True]
    cost = np.where(cut, cost, np.inf)
    # flagging nothing is also an option
    best = int(np.argmin(cost))
    if yy.sum() * costs.false_negative <= cost[best]:
        return float(s[0]) + 1e-9, float(yy.sum() * costs.false_negative / len(y))
    # the threshold sits at the score of the last flagged row (ties flagged together)
    return float(s[best]), float(cost[best] / len(y))


def threshold_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold that flags at most ``max_fpr`` of these rows' negatives
    (ties flagged together): the most recall the false-positive budget allows."""
    neg = np.sort(score[np.asarray(y).astype(int) == 0])[::-1]
    allowed = int(np.floor(max_fpr * len(neg)))
    if len(neg) == 0:
        return float(np.min(score))
    if allowed >= len(neg):
        return float(np.min(score))
    # flag strictly above the (allowed+1)-th highest negative score
    return float(np.nextafter(neg[allowed], np.inf))


def rate_upper_bound(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """A rate ``k / n`` and its one-sided upper (Clopper–Pearson) bound."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), 1.0
    upper = 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))
    return k / n, upper


def rate_lower_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided lower (Clopper–Pearson) bound of a rate ``k / n``."""
    from scipy.stats import beta

    return 0.0 if k == 0 else float(beta.ppf(1 - confidence, k, n - k + 1))


def classification_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn import metrics as m

    pred = score >= threshold
    tn, fp, fn, tp = m.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "roc_auc": float(m.roc_auc_score(y, score)),
        "average_precision": float(m.average_precision_score(y, score)),
        "precision": float(tp / max(tp + fp, 1)),
        "recall": float(tp / max(tp + fn, 1)),
        "fpr": float(fp / max(fp + tn, 1)),
        "brier": float(m.brier_score_loss(y, score)),
        "positives": float(y.sum()),
        "rows": float(len(y)),
    }


def multiclass_metrics(
    y: np.ndarray, proba: np.ndarray, classes: list[str]
) -> tuple[dict[str, float], pd.DataFrame]:
    """Macro scores of a multiclass model (the most probable class decides) and a row per
    class: rows, precision, recall, F1, one-against-the-rest ROC AUC."""
    from sklearn import metrics as m

    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    labels = np.arange(k)
    prec, rec, f1, support = m.precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    auc = [
        float(m.roc_auc_score((y == c).astype(int), proba[:, c]))
        if 0 < int((y == c).sum()) < len(y)
        else float("nan")
        for c in labels
    ]
    names = [classes[c] if c < len(classes) else str(c) for c in labels]
    per = pd.DataFrame(
        {
            "class": names,
            "rows": support,
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "roc_auc_vs_rest": auc,
        }
    )
    present = support > 0
    return {
        "accuracy": float(m.accuracy_score(y, pred)),
        "macro_f1": float(np.mean(f1[present])),
        "macro_precision": float(np.mean(prec[present])),
        "macro_recall": float(np.mean(rec[present])),
        "macro_roc_auc": float(np.nanmean(auc)),
        "rows": float(len(y)),
    }, per


@dataclass
class FairnessReport:
    table: (
        pd.DataFrame
    )  # feature, group, n, negatives, positives, selection_rate, fpr, fnr, judgeable
    passed: bool
    reasons: list[str] = field(default_factory=list)  # everything the gate saw and said
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the reasons that refuse


def fairness_report(
    y: np.ndarray,
    pred: np.ndarray,
    sensitive: pd.DataFrame,
    bounds: FairnessBounds,
    units: np.ndarray | None = None,
) -> FairnessReport:
    """Fairlearn ``MetricFrame`` per sensitive feature: selection rate, FPR, FNR, group sizes,
    and the gate's verdict on them.

    The gate judges harm: every group with at least ``min_group_size`` rows and
    ``min_group_negatives`` legitimate rows must keep its false-positive rate under
    ``max_group_fpr`` at 95 % confidence (Clopper-Pearson upper bound), and the FPR gap
    between such groups must stay under ``max_fpr_difference``. FNR gaps are gated only
    between groups with ``min_group_positives`` positives each, and, given ``units`` (the
    sampling unit of each row, e.g. its client), ``min_group_positive_units`` distinct abusive
    units each; otherwise they are reported as not judged. A group too small to judge is reported as such, never counted as fair; the
    report says which share of groups could not be judged.
    """
    from fairlearn.metrics import (
        MetricFrame,
        false_negative_rate,
        false_positive_rate,
        selection_rate,
    )

    rows = []
    reasons: list[str] = []
    gaps: dict[str, dict[str, float]] = {}
    for col in sensitive.columns:
        mf = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "fpr": false_positive_rate,
                "fnr": false_negative_rate,
                "n": lambda yt, yp: len(yt),
                "negatives": lambda yt, yp: int((np.asarray(yt) == 0).sum()),
                "positives": lambda yt, yp: int((np.asarray(yt) == 1).sum()),
                "false_positives": lambda yt, yp: int(
                    ((np.asarray(yt) == 0) & (np.asarray(yp) == 1)).sum()
                ),
            },
            y_true=y,
            y_pred=pred.astype(int),
            sensitive_features=sensitive[col].to_numpy(),
        )
        g = mf.by_group.reset_index().rename(columns={"sensitive_feature_0": "group"})
        g.insert(0, "feature", col)
        g["judgeable"] = (g["n"] >= bounds.min_group_size) & (
            g["negatives"] >= bounds.min_group_negatives
        )
        g["fpr_upper"] = [
            rate_upper_bound(int(fp), int(n))[1]
            for fp, n in zip(g["false_positives"], g["negatives"], strict=True)
        ]
        g["fnr_judgeable"] = g["judgeable"] & (g["positives"] >= bounds.min_group_positives)
        if units is not None:
            pos = pd.DataFrame({"group": sensitive[col].to_numpy(), "unit": units})[y == 1]
            per = pos.groupby("group")["unit"].nunique()
            g["positive_units"] = g["group"].map(per).fillna(0).astype(int)
            g["fnr_judgeable"] &= g["positive_units"] >= bounds.min_group_positive_units
        rows.append(g)
        ok = g[g["judgeable"]]
        for _, r in ok[ok["fpr_upper"] > bounds.max_group_fpr].iterrows():
            reasons.append(
                f"{col}={r['group']}: harm bound, FPR {int(r['false_positives'])}/"
                f"{int(r['negatives'])} upper bound {r['fpr_upper']:.3f} > {bounds.max_group_fpr}"
            )
        if len(ok) < 2:
            reasons.append(f"{col}: fewer than two groups large enough to judge")
            continue
        fpr_gap = float(ok["fpr"].max() - ok["fpr"].min())
        ok_fnr = g[g["fnr_judgeable"]]
        fnr_gap = (
            float(ok_fnr["fnr"].max() - ok_fnr["fnr"].min()) if len(ok_fnr) >= 2 else float("nan")
        )
        gaps[col] = {"fpr_difference": fpr_gap, "fnr_difference": fnr_gap}
        if fpr_gap > bounds.max_fpr_difference:
            worst = ok.loc[ok["fpr"].idxmax(), "group"]
            reasons.append(
                f"{col}: FPR gap {fpr_gap:.3f} > {bounds.max_fpr_difference} (highest for {worst})"
            )
        if np.isfinite(fnr_gap) and fnr_gap > bounds.max_fnr_difference:
            reasons.append(f"{col}: FNR gap {fnr_gap:.3f} > {bounds.max_fnr_difference}")
        elif not np.isfinite(fnr_gap):
            need = f"{bounds.min_group_positives}+ positives"
            if units is not None:
                need += f" from {bounds.min_group_positive_units}+ abusive clients"
            reasons.append(f"{col}: FNR not judged (fewer than two groups with {need})")
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    failed = [r for r in reasons if ("gap" in r and "not judged" not in r) or "harm bound" in r]
    if len(table):
        share = float(1 - table["judgeable"].mean())
        reasons.append(f"{share:.0%} of groups too small to judge")
    return FairnessReport(
        table=table, passed=not failed, reasons=reasons, gaps=gaps, failures=failed
    )


def write_plots(
    out: Path,
    task: str,
    y: np.ndarray,
    score: np.ndarray,
    threshold: float | None,
    importance: pd.Series | None,
    study: Any | None,
    classes: list[str] | None = None,
) -> list[Path]:
    """PNG plots a reviewer wants in the MLflow UI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn import metrics as m

    out.mkdir(parents=True, exist_ok=True)
    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(out / name)

    if task == "binary":
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        m.RocCurveDisplay.from_predictions(y, score, ax=ax[0])
        m.PrecisionRecallDisplay.from_predictions(y, score, ax=ax[1])
        ax[0].set_title("ROC (holdout)")
        ax[1].set_title("precision-recall (holdout)")
        save(fig, "roc_pr.png")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        m.ConfusionMatrixDisplay.from_predictions(
            y, (score >= (threshold or 0.5)).astype(int), ax=ax, colorbar=False
        )
        ax.set_title(f"confusion at threshold {threshold:.3f}")
        save(fig, "confusion_matrix.png")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        from sklearn.calibration import CalibrationDisplay

        CalibrationDisplay.from_predictions(y, score, n_bins=10, strategy="quantile", ax=ax)
        ax.set_title("calibration (holdout)")
        save(fig, "calibration.png")
    elif task == "multiclass":
        k = score.shape[1]
        names = [str(c) for c in (classes or [])][:k] or [str(c) for c in range(k)]
        fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * k + 2), max(4, 0.6 * k + 1.5)))
        m.ConfusionMatrixDisplay.from_predictions(
            y,
            score.argmax(axis=1),
            labels=list(range(k)),
            display_labels=names,
            ax=ax,
            colorbar=False,
            xticks_rotation=45,
        )
        ax.set_title("confusion (holdout, most probable class)")
        save(fig, "confusion_matrix.png")
    else:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(y, score, s=4, alpha=0.4)
        lim = [min(y.min(), score.min()), max(y.max(), score.max())]
        ax.plot(lim, lim, "k--", lw=1)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
        ax.set_title("holdout: predicted vs actual")
        save(fig, "predicted_vs_actual.png")
    if importance is not None and len(importance):
        top = importance.sort_values().tail(20)
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1))
        top.plot.barh(ax=ax)
        ax.set_title("permutation importance (holdout)")
        save(fig, "feature_importance.png")
    if study is not None:
        vals = [(t.number, t.value) for t in study.trials if t.value is not None]
        if vals:
            fig, ax = plt.subplots(figsize=(6, 4))
            n, v = zip(*vals, strict=True)
            ax.scatter(n, v, s=10)
            best = (
                np.maximum.accumulate(v)
                if study.direction.name == "MAXIMIZE"
                else np.minimum.accumulate(v)
            )
            ax.plot(n, best, "r-")
            ax.set_xlabel("trial")
            ax.set_ylabel("validation score")
            ax.set_title("Optuna optimisation history")
            save(fig, "optuna_history.png")
    return files
