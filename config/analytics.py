"""The ``analytics:`` section of ``gatewise.yaml``: SLO targets, prices, cohort knobs.

``AnalyticsSettings(slo={"default": {"availability": 0.999}})``
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AnalyticsSettings",
    "CostModel",
    "DashboardSettings",
    "FunnelStep",
    "SloSettings",
    "SloTarget",
    "TierPrice",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SloTarget(_Strict):
    """Objectives of one route: availability (share of non-5xx answers) and latency
    (share of requests answered within ``latency_ms``)."""

    availability: float = Field(0.995, gt=0, lt=1)
    latency_ms: float = Field(500.0, gt=0)
    latency_objective: float = Field(0.95, gt=0, lt=1)


class SloSettings(_Strict):
    default: SloTarget = SloTarget()
    # keyed by route template ("/v1/search"); routes not named get ``default``
    routes: dict[str, SloTarget] = Field(default_factory=dict)

    def target(self, route: str) -> SloTarget:
        return self.routes.get(route) or self.default


class TierPrice(_Strict):
    monthly: float = Field(0.0, ge=0, description="subscription per consumer and 30 days")
    per_1k_requests: float = Field(0.0, ge=0)


class CostModel(_Strict):
    per_1k_requests: float = Field(0.0, ge=0, description="compute per 1,000 requests served")
    per_gb_out: float = Field(0.0, ge=0, description="egress per GB of response bytes")


class FunnelStep(_Strict):
    """One step of a conversion funnel: a consumer's first request matching every given
    field, at or after the previous step (fields left out match anything)."""

    name: str = Field(min_length=1)
    route: str | None = None
    method: str | None = None
    tiers: list[str] | None = None


def _default_funnel() -> list[FunnelStep]:
    return [
        FunnelStep(name="first call (free)", tiers=["free"]),
        FunnelStep(name="key route: POST /v1/orders", route="/v1/orders", method="POST"),
        FunnelStep(name="upgraded to a paid tier", tiers=["pro", "enterprise"]),
    ]


class DashboardSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8600, ge=1, le=65535)
    refresh_s: float = Field(15.0, ge=1, description="how often the page polls for new telemetry")


class AnalyticsSettings(_Strict):
    slo: SloSettings = SloSettings()
    tiers: dict[str, TierPrice] = Field(default_factory=dict)
    cost: CostModel = CostModel()
    churn_after_days: int = Field(
        14, ge=1, description="a consumer silent this long before the data's end has churned"
    )
    retention_period: Literal["week", "month"] = "week"
    forecast_horizons: list[int] = Field(default_factory=lambda: [7, 30, 90])
    anomaly_threshold: float = Field(4.0, gt=0, description="robust z-score that flags a point")
    funnel: list[FunnelStep] = Field(default_factory=_default_funnel)
    dashboard: DashboardSettings = DashboardSettings()

    @field_validator("forecast_horizons")
    @classmethod
    def _horizons(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 or h > 730 for h in v):
            raise ValueError("horizons are days between 1 and 730")
        return sorted(set(v))

    @field_validator("funnel")
    @classmethod
    def _funnel(cls, v: list[FunnelStep]) -> list[FunnelStep]:
        if len(v) < 2:
            raise ValueError("a funnel needs at least two steps")
        return v
