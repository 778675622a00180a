"""The ``simulator:`` and ``history:`` sections of ``gatewise.yaml``: labelled traffic of
one or more days, and months of consumer lifecycles for cohort analytics.

``SimulatorSettings(clients=500, days=1, seed=7)``
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from config._base import Strict as _Strict
from config.demo_api import ROUTES

__all__ = [
    "DriftKnobs",
    "LifecycleSettings",
    "LookalikeShares",
    "ScenarioShares",
    "SimulatorSettings",
    "SkewKnobs",
]


class ScenarioShares(_Strict):
    """Share of clients in each labelled abuse scenario (0..1 each)."""

    credential_stuffing: float = Field(0.015, ge=0, le=0.5)
    scraping: float = Field(0.015, ge=0, le=0.5)
    flood: float = Field(0.01, ge=0, le=0.5)
    key_sharing: float = Field(0.015, ge=0, le=0.5)
    low_and_slow: float = Field(0.025, ge=0, le=0.5)
    # styles added after the labelling functions were fixed (issue 21): off unless asked for
    carding: float = Field(
        0.0, ge=0, le=0.5, description="card testing: bursts of declined payments"
    )
    scalping: float = Field(
        0.0, ge=0, le=0.5, description="polling a few hot items for hours, then ordering"
    )

    @model_validator(mode="after")
    def _total(self) -> ScenarioShares:
        total = sum(self.model_dump().values())
        if total > 0.5:
            raise ValueError(
                f"scenario shares add up to {total:.3f}; at most 0.5 of clients may be abusive"
            )
        return self


class LookalikeShares(_Strict):
    """Share of clients whose legitimate behaviour resembles an abuse style."""

    heavy_enterprise: float = Field(
        0.25, ge=0, le=1, description="share of enterprise clients that exceed naive static limits"
    )
    mistypers: float = Field(0.03, ge=0, le=0.5)
    catalog_sync: float = Field(0.015, ge=0, le=0.5)
    batch_bursts: float = Field(0.015, ge=0, le=0.5)
    multi_server_partners: float = Field(0.02, ge=0, le=0.5)
    analysts: float = Field(0.02, ge=0, le=0.5)


class DriftKnobs(_Strict):
    """Changes that start ``after_day`` days into the simulation (drift tests)."""

    after_day: float = Field(0.0, ge=0)
    client_mix_shift: float = Field(
        0.0, ge=0, le=1, description="extra share of mobile clients signing up"
    )
    latency_regression: float = Field(
        1.0, ge=0.1, le=50, description="latency multiplier on one service"
    )
    latency_service: str = "search"
    new_route: bool = False


class SkewKnobs(_Strict):
    """A group whose legitimate behaviour differs (fairness checks)."""

    column: Literal["region", "device_type", "tier"] = "region"
    value: str = "ap-south"
    factor: float = Field(
        1.0, ge=1.0, le=10.0, description="1 = no skew; >1 = more errors and addresses"
    )


class SimulatorSettings(_Strict):
    clients: int = Field(2000, ge=1, le=5_000_000)
    days: float = Field(1.0, gt=0, le=400)
    seed: int = 7
    traffic_seed: int | None = Field(
        None, description="another seed for the traffic only: the same clients, a new day"
    )
    start: datetime = datetime(2026, 11, 2, tzinfo=UTC)
    mean_requests_per_client_day: float = Field(400.0, gt=0)
    label_window_minutes: int = Field(5, ge=1, le=1440)
    through_gateway: bool = Field(
        True,
        description="`gatewise simulate` records the history as a gateway with the initial"
        " policy would have: refusals as 429/403, clients that back off (gateway/history.py)",
    )
    scenarios: ScenarioShares = ScenarioShares()
    lookalikes: LookalikeShares = LookalikeShares()
    drift: DriftKnobs = DriftKnobs()
    skew: SkewKnobs = SkewKnobs()

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class LifecycleSettings(_Strict):
    """Knobs of the lifecycle simulation; the defaults give ~26 weeks of 2,500 consumers."""

    consumers: int = Field(2500, ge=10, le=1_000_000)
    weeks: int = Field(26, ge=4, le=104)
    end: datetime = datetime(2026, 11, 2, tzinfo=UTC)  # exclusive; start = end - weeks
    seed: int = 11
    policy_week: int = 18  # week (from start) when the stricter free-tier policy starts
    launch_week: int = 20  # week when GET /v2/recommendations/{id} launches
    throttle_hazard_ratio: float = Field(2.0, ge=1.0)  # planted effect of throttling on churn
    mean_requests_per_active_day: float = Field(12.0, gt=0)
    base_churn_per_day: float = Field(0.01, gt=0, lt=1)
    slo_breach_route: str = "/v1/search"  # latency x3 in the last 7 days
    incident_route: str = "/v1/payments"  # 5xx incident days
    incident_days: int = Field(2, ge=0, le=28)

    @field_validator("end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> LifecycleSettings:
        if self.end != self.end.replace(hour=0, minute=0, second=0, microsecond=0):
            raise ValueError("end must be a UTC midnight (the simulation counts whole days)")
        if not 1 <= self.policy_week < self.weeks:
            raise ValueError("policy_week must be in [1, weeks)")
        if not 0 <= self.launch_week < self.weeks:
            raise ValueError("launch_week must be in [0, weeks)")
        templates = {r.template for r in ROUTES}
        for name in ("slo_breach_route", "incident_route"):
            if getattr(self, name) not in templates:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a route template")
        return self

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=self.weeks)
