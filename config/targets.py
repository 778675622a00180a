"""The ``targets:`` section of ``gatewise.yaml``: what AutoML learns, from which features,
judged how (metric, fairness bounds, error costs, model families).

``TargetSettings(task="binary", entity="client", feature_service="abuse_v1",
metric="average_precision")``
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from config._base import Strict as _Strict

__all__ = [
    "ALL_FAMILIES",
    "TEXT_FAMILIES",
    "Costs",
    "FairnessBounds",
    "Family",
    "TargetSettings",
    "default_targets",
]


class FairnessBounds(_Strict):
    """A challenger passes only if, among groups large enough to judge, these hold."""

    max_fpr_difference: float = Field(
        0.05, ge=0, le=1, description="largest FPR gap between groups"
    )
    max_fnr_difference: float = Field(
        0.25, ge=0, le=1, description="largest FNR gap between groups"
    )
    min_group_size: int = Field(
        30, ge=1, description="smaller groups are reported as unjudgeable, never as fair"
    )
    min_group_negatives: int = Field(
        10, ge=1, description="an FPR needs this many legitimate rows in the group"
    )
    max_group_fpr: float = Field(
        0.02,
        gt=0,
        le=1,
        description="legitimate harm per group: a judgeable group's false-positive rate must "
        "stay under this at 95 % confidence (its Clopper-Pearson upper bound)",
    )
    min_group_positives: int = Field(
        30,
        ge=1,
        description="an FNR gap is gated only between groups with this many positives each "
        "(fewer: reported, not gated; a handful of abusive windows is not a group's recall)",
    )
    min_group_positive_units: int = Field(
        8,
        ge=1,
        description="...and this many distinct abusive clients each: the windows of one client"
        " are not independent, so a group's recall from two clients is two observations",
    )


class Costs(_Strict):
    """What an error costs; the decision threshold minimises the expected total."""

    false_positive: float = Field(10.0, gt=0, description="blocking a legitimate client")
    false_negative: float = Field(1.0, gt=0, description="missing an abusive window")


Family = Literal[
    "linear", "random_forest", "extra_trees", "hist_gradient_boosting", "xgboost", "naive_bayes"
]
ALL_FAMILIES: tuple[Family, ...] = (
    "linear",
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "xgboost",
)
# families that take sparse hashed text features (the payload target)
TEXT_FAMILIES: tuple[Family, ...] = ("linear", "naive_bayes", "xgboost")


def _all_families() -> list[Family]:
    return list(ALL_FAMILIES)


class TargetSettings(_Strict):
    """One prediction target: what to learn, from which features, judged how."""

    task: Literal["binary", "multiclass", "regression", "anomaly"]
    entity: Literal["client", "route", "request"]
    feature_service: str
    training_feature_service: str | None = Field(
        None,
        description="the Feast service training rows are joined from when it differs from the"
        " served one: abuse_asof_v1 = the same features as the online store held them at"
        " instants inside windows (features/asof.py); default: feature_service",
    )
    label_source: Literal["labels", "next_window_requests", "payloads", "none"] = Field(
        "labels",
        description="labels: the labels table; next_window_requests: the route's next 5-minute"
        " request count; payloads: labelled request content (``data``), attack vs benign;"
        " none: unlabelled windows (task anomaly)",
    )
    data: Path | None = Field(
        None,
        description="payloads: a CSV of payload,attack_type (default: the bundled real sample)",
    )
    max_false_positive_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="binary: the threshold flags at most this share of negatives (out of fold),"
        " and a challenger whose holdout rate exceeds it is not eligible",
    )
    metric: Literal[
        "average_precision", "roc_auc", "f1", "log_loss", "accuracy", "mae", "rmse", "r2"
    ]
    sensitive_features: list[str] = Field(default_factory=list)
    time_budget_s: float = Field(120.0, gt=0)
    n_trials: int | None = Field(
        None, ge=1, description="stop after this many trials (else the time budget)"
    )
    promotion_margin: float = Field(
        0.005, ge=0, description="a challenger must beat the champion by this much"
    )
    refit_on_holdout: bool = Field(
        False,
        description="after the holdout verdict, the registered model is refit on every row,"
        " the holdout's too (tables: `automl fit`); off for gateway targets, whose next"
        " champion comparison needs a holdout the champion never trained on",
    )
    ensemble: int = Field(
        0,
        ge=0,
        le=10,
        description="up to this many of the search's best configurations averaged, chosen"
        " greedily on their out-of-fold scores, when that beats the best one and the budget"
        " holds the refits (tables: 5); 0 or 1: one model (gateway targets: one compiled model"
        " to serve fast)",
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="most recent share kept for the champion comparison"
    )
    max_rows: int = Field(
        300_000, ge=1000, description="training rows are sampled down to this (by whole clients)"
    )
    fairness: FairnessBounds = FairnessBounds()
    costs: Costs = Costs()
    families: list[Family] = Field(default_factory=_all_families)
    recent_days: float | None = Field(
        None, gt=0, description="train on the most recent days of windows only (anomaly: 2)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TargetSettings:
        class_metrics = {"average_precision", "roc_auc", "f1", "log_loss", "accuracy"}
        if (self.task != "regression") != (self.metric in class_metrics):
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}")
        if self.task == "multiclass" and self.entity != "client":
            raise ValueError("multiclass labels come from tables (`gatewise automl fit`)")
        if (self.task == "anomaly") != (self.label_source == "none"):
            raise ValueError("task anomaly learns from unlabelled windows: label_source none")
        if self.task == "anomaly" and self.entity != "client":
            raise ValueError("task anomaly scores client windows: entity client")
        if self.entity == "route" and self.label_source == "labels":
            raise ValueError("route targets take label_source next_window_requests")
        if (self.entity == "request") != (self.label_source == "payloads"):
            raise ValueError("label_source payloads goes with entity request (and only with it)")
        if self.label_source == "payloads":
            if self.task != "binary":
                raise ValueError("payload targets are binary (attack vs benign)")
            other = sorted(set(self.families) - set(TEXT_FAMILIES))
            if other:
                raise ValueError(
                    f"families {other} do not take sparse text features; use {list(TEXT_FAMILIES)}"
                )
        elif "naive_bayes" in self.families:
            raise ValueError("naive_bayes is for payload (text) targets")
        return self


def default_targets() -> dict[str, TargetSettings]:
    return {
        "abuse": TargetSettings(
            task="binary",
            entity="client",
            feature_service="abuse_v1",
            training_feature_service="abuse_asof_v1",
            label_source="labels",
            metric="average_precision",
            sensitive_features=["tier", "region", "device_type"],
        ),
        "load": TargetSettings(
            task="regression",
            entity="route",
            feature_service="load_v1",
            label_source="next_window_requests",
            metric="mae",
            time_budget_s=60.0,
            families=["linear", "hist_gradient_boosting", "xgboost"],
        ),
        "anomaly": TargetSettings(
            task="anomaly",
            entity="client",
            feature_service="abuse_v1",
            label_source="none",
            metric="average_precision",
            time_budget_s=30.0,
            recent_days=2.0,
            families=["linear"],
        ),
        "payload": TargetSettings(
            task="binary",
            entity="request",
            feature_service="",
            label_source="payloads",
            metric="average_precision",
            time_budget_s=90.0,
            max_false_positive_rate=0.001,
            families=list(TEXT_FAMILIES),
        ),
    }
