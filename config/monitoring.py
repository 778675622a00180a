"""The ``monitoring:`` section of ``gatewise.yaml``: what the drift and bias checks judge,
and the rules that turn their findings into the next policy (``monitoring/policy.py``).

``MonitoringSettings(policy=PolicyRules(drift_mode="shadow"))``
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EXEMPTABLE", "MonitoringSettings", "PolicyRules", "Sensitive"]

Sensitive = Literal["tier", "region", "device_type"]
EXEMPTABLE: tuple[Sensitive, ...] = ("tier", "region", "device_type")


class PolicyRules(BaseModel):
    """How findings become policy (``monitoring.policy`` in gatewise.yaml)."""

    model_config = ConfigDict(extra="forbid")

    drift_share: float = Field(0.3, gt=0, le=1, description="drifted feature share that acts")
    drift_mode: Literal["shadow", "off", "raise"] = Field(
        "shadow",
        description="shadow: record, not enforce; off: no model action; raise: keep enforcing "
        "but only at higher scores (each band's distance to 1 times drift_band_factor)",
    )
    drift_band_factor: float = Field(0.2, gt=0, lt=1, description="raise: 0.5 -> 0.9, 0.9 -> 0.98")
    max_fpr_ratio: float = Field(1.25, ge=1, description="worst/best group FPR that acts")
    min_fpr_gap: float = Field(
        0.005,
        ge=0,
        description="and the worst FPR exceeds the best by at least this (tiny rates make "
        "ratios noise: 1 false positive in 2,000 against 0 is an infinite ratio)",
    )
    exemption_hours: float = Field(24.0, gt=0)
    harm_tolerance: float = Field(
        0.0, ge=0, description="extra legitimate-harm share a candidate may add"
    )
    adapt_limits: bool = Field(
        False, description="tier and per-route limits follow normal traffic (adapt_limits)"
    )
    limit_quantile: float = Field(
        1.0, gt=0.5, le=1, description="of trusted clients' per-minute use; 1 = the busiest minute"
    )
    limit_headroom: float = Field(1.5, ge=1, description="multiplier on that quantile")
    limit_min_minutes: int = Field(
        200, ge=1, description="client-minutes a tier or route needs before its limit adapts"
    )
    adapt_tiers: bool = Field(
        False,
        description="also move whole tier limits (one heavy client raises everyone's); by "
        "default heavy trusted clients get allowances of their own instead",
    )
    allowance_days: float = Field(7.0, gt=0, description="how long an allowance lasts")
    choose_bands: bool = Field(
        True,
        description="score bands follow what they do to labelled traffic (monitoring/bands.py)",
    )
    band_cuts: list[float] = Field(
        default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
        description="the score cuts the band search tries",
    )
    band_throttle_rates: list[int] = Field(
        default_factory=lambda: [2, 10],
        description="absolute throttle rates (requests per minute) the band search tries",
    )


class MonitoringSettings(BaseModel):
    """``monitoring:`` in gatewise.yaml: what the drift and bias checks judge, and how their
    findings become policy."""

    model_config = ConfigDict(extra="forbid")

    sensitive: list[Sensitive] = Field(
        default_factory=lambda: list(EXEMPTABLE),
        description="group columns of the bias check",
    )
    min_group_size: int = Field(30, ge=1, description="smaller groups are unjudgeable")
    drift_max_rows: int = Field(50_000, ge=100, description="rows sampled per side")
    policy: PolicyRules = Field(default_factory=PolicyRules)
