"""Bias of decisions across groups: Fairlearn ``MetricFrame`` per sensitive feature.

For every sensitive column: per group its size, selection rate (share predicted positive), and,
where labels exist, false-positive and false-negative rates. A group smaller than
``min_group_size`` (or, for FPR, with fewer than ``min_negatives`` true negatives; for FNR,
fewer than ``min_positives`` positives) is reported as unjudgeable rather than fair. The
finding per feature is the worst/best ratio of FPR (and selection rate) among judgeable
groups: 1.0 is parity; the closed loop exempts a group whose ratio exceeds its bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BiasFinding", "Breach", "GroupRates", "breaches", "check_bias"]


@dataclass
class GroupRates:
    feature: str
    group: str
    n: int
    selection_rate: float
    fpr: float | None  # None: no labels, or too few negatives to judge
    fnr: float | None
    judgeable: bool


@dataclass
class BiasFinding:
    feature: str
    groups: list[GroupRates]
    fpr_ratio: float | None  # worst / best FPR among judgeable groups (None: < 2 of them)
    selection_ratio: float | None
    worst_fpr_group: str | None
    unjudgeable: list[str]
    overall_fpr: float | None = None  # over every row with labels, whatever its group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(values: dict[str, float]) -> tuple[float | None, str | None]:
    if len(values) < 2:
        return None, None
    worst = max(values, key=lambda g: values[g])
    best = min(values.values())
    if values[worst] == 0:
        return 1.0, worst
    return (float("inf") if best == 0 else values[worst] / best), worst


def check_bias(
    df: pd.DataFrame,
    prediction: str,
    sensitive: list[str],
    label: str | None = None,
    *,
    min_group_size: int = 30,
    min_negatives: int = 10,
    min_positives: int = 10,
) -> list[BiasFinding]:
    """One finding per sensitive column of ``df`` (decisions in ``prediction``, 0/1)."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        false_negative_rate,
        false_positive_rate,
        selection_rate,
    )

    need = [prediction, *sensitive] + ([label] if label else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    if df.empty:
        raise ValueError("the table has no rows")
    y_pred = df[prediction].astype(int)
    y_true = df[label].astype(int) if label else y_pred
    out = []
    for feat in sensitive:
        metrics: dict[str, Any] = {"n": count, "selection_rate": selection_rate}
        if label:
            metrics |= {"fpr": false_positive_rate, "fnr": false_negative_rate}
        mf = MetricFrame(
            metrics=metrics,
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=df[feat].astype(str),
        )
        by = mf.by_group
        negatives = (1 - y_true).groupby(df[feat].astype(str)).sum()
        positives = y_true.groupby(df[feat].astype(str)).sum()
        groups = []
        for g, row in by.iterrows():
            n = int(row["n"])
            big = n >= min_group_size
            fpr = fnr = None
            if label:
                if big and negatives.get(g, 0) >= min_negatives:
                    fpr = float(row["fpr"])
                if big and positives.get(g, 0) >= min_positives:
                    fnr = float(row["fnr"])
            groups.append(GroupRates(feat, str(g), n, float(row["selection_rate"]), fpr, fnr, big))
        fpr_ratio, worst = _ratio({g.group: g.fpr for g in groups if g.fpr is not None})
        sel_ratio, _ = _ratio({g.group: g.selection_rate for g in groups if g.judgeable})
        out.append(
            BiasFinding(
                feature=feat,
                groups=groups,
                fpr_ratio=fpr_ratio,
                selection_ratio=sel_ratio,
                worst_fpr_group=worst,
                unjudgeable=[g.group for g in groups if not g.judgeable],
                overall_fpr=float(mf.overall["fpr"]) if label else None,
            )
        )
    return out


@dataclass
class Breach:
    """A judgeable group whose false-positive rate is over the bound against the lowest."""

    feature: str
    group: str
    fpr: float
    best_group: str
    best_fpr: float
    overall_fpr: float | None
    ratio: float  # fpr / best_fpr (inf when the lowest is 0)
    max_fpr_ratio: float
    min_fpr_gap: float

    def sentence(self) -> str:
        overall = "" if self.overall_fpr is None else f"; {self.overall_fpr:.3f} overall"
        ratio = "infinite" if math.isinf(self.ratio) else f"{self.ratio:.2f}x"
        return (
            f"{self.feature}={self.group}: false-positive rate {self.fpr:.3f} vs "
            f"{self.best_fpr:.3f} for {self.best_group} (the lowest{overall}), {ratio}, "
            f"above the bound {self.max_fpr_ratio:g}x"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sentence": self.sentence()}


def breaches(finding: BiasFinding, max_fpr_ratio: float, min_fpr_gap: float) -> list[Breach]:
    """Every judgeable group of ``finding`` whose FPR is more than ``max_fpr_ratio`` times the
    lowest judgeable group's and at least ``min_fpr_gap`` above it, worst first."""
    rates = {g.group: g.fpr for g in finding.groups if g.fpr is not None}
    if len(rates) < 2:
        return []
    best = min(rates, key=lambda k: rates[k])
    out = []
    for group, fpr in sorted(rates.items(), key=lambda kv: -kv[1]):
        low = rates[best]
        ratio = fpr / low if low > 0 else (float("inf") if fpr > 0 else 1.0)
        if ratio > max_fpr_ratio and fpr - low >= min_fpr_gap:
            out.append(
                Breach(
                    finding.feature,
                    group,
                    fpr,
                    best,
                    low,
                    finding.overall_fpr,
                    ratio,
                    max_fpr_ratio,
                    min_fpr_gap,
                )
            )
    return out
