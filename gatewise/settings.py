"""Project settings: one ``gatewise.yaml``, every field overridable by env.

Environment variables are ``GATEWISE_<FIELD>``; nested fields use ``__``
(``GATEWISE_SIMULATOR__CLIENTS=500``). Settings are built at the entry point
(``load_settings()``) and passed down; nothing here runs at import time.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from analytics.config import AnalyticsSettings
from gateway.config import GatewaySettings
from monitoring.policy import MonitoringSettings
from serving.config import ServingSettings
from telemetry.simulator.lifecycle import LifecycleSettings
from telemetry.stream import StreamSettings

__all__ = [
    "ConfigError",
    "DriftKnobs",
    "FeatureSettings",
    "IngestSettings",
    "ScenarioShares",
    "Settings",
    "SimulatorSettings",
    "SkewKnobs",
    "TargetSettings",
    "load_settings",
]

TIERS = ("free", "pro", "enterprise")
# the YAML file that the Settings being built should read (set by load_settings)
_YAML_PATH: ContextVar[Path | None] = ContextVar("gatewise_yaml_path", default=None)


class ConfigError(ValueError):
    """An invalid project config; the message names each offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScenarioShares(_Strict):
    """Share of clients in each labelled abuse scenario (0..1 each)."""

    credential_stuffing: float = Field(0.015, ge=0, le=0.5)
    scraping: float = Field(0.015, ge=0, le=0.5)
    flood: float = Field(0.01, ge=0, le=0.5)
    key_sharing: float = Field(0.015, ge=0, le=0.5)
    low_and_slow: float = Field(0.025, ge=0, le=0.5)

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
    scenarios: ScenarioShares = ScenarioShares()
    lookalikes: LookalikeShares = LookalikeShares()
    drift: DriftKnobs = DriftKnobs()
    skew: SkewKnobs = SkewKnobs()

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class IngestSettings(_Strict):
    batch_lines: int = Field(50_000, ge=100)
    client_id_header: str | None = Field(
        None, description="request header that names the consumer, if any"
    )


class FeatureSettings(_Strict):
    """Where Feast keeps its registry and online store (offline: DuckDB over Parquet)."""

    project: str = Field("gatewise", pattern=r"^[a-z][a-z0-9_]*$")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = Field(
        "127.0.0.1:6379", description="host:port[,db=N,...] (Feast's connection_string)"
    )
    redis_key_ttl_seconds: int | None = Field(None, ge=1)
    registry: Literal["file", "sql"] = "file"
    registry_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        description="SQLAlchemy URL of the SQL registry",
    )
    label_delay_minutes: int = Field(
        0, ge=0, description="labels become usable this long after their window"
    )


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

    task: Literal["binary", "regression"]
    entity: Literal["client", "route", "request"]
    feature_service: str
    label_source: Literal["labels", "next_window_requests", "payloads"] = Field(
        "labels",
        description="labels: the labels table; next_window_requests: the route's next 5-minute"
        " request count; payloads: labelled request content (``data``), attack vs benign",
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
    metric: Literal["average_precision", "roc_auc", "f1", "log_loss", "mae", "rmse", "r2"]
    sensitive_features: list[str] = Field(default_factory=list)
    time_budget_s: float = Field(120.0, gt=0)
    n_trials: int | None = Field(
        None, ge=1, description="stop after this many trials (else the time budget)"
    )
    promotion_margin: float = Field(
        0.005, ge=0, description="a challenger must beat the champion by this much"
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

    @model_validator(mode="after")
    def _consistent(self) -> TargetSettings:
        binary_metrics = {"average_precision", "roc_auc", "f1", "log_loss"}
        if (self.task == "binary") != (self.metric in binary_metrics):
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}")
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


def _default_targets() -> dict[str, TargetSettings]:
    return {
        "abuse": TargetSettings(
            task="binary",
            entity="client",
            feature_service="abuse_v1",
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


class TrackingSettings(_Strict):
    mlflow_uri: str | None = Field(None, description="default: sqlite:///<data_dir>/mlflow.db")
    optuna_storage: str | None = Field(
        None, description="default: sqlite:///<data_dir>/optuna.db; a PostgreSQL URL for N workers"
    )
    registered_model_prefix: str = "gatewise"


class Settings(BaseSettings):
    """The whole project config.

    ``load_settings(Path("gatewise.yaml")).data_dir``
    """

    model_config = SettingsConfigDict(
        env_prefix="GATEWISE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path(".gatewise")
    static_limits_per_minute: dict[str, int] = Field(
        default_factory=lambda: {"free": 60, "pro": 300, "enterprise": 1200},
        description="naive per-tier static limits, the baseline ML policies must beat",
    )
    simulator: SimulatorSettings = SimulatorSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    targets: dict[str, TargetSettings] = Field(default_factory=_default_targets)
    tracking: TrackingSettings = TrackingSettings()
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    history: LifecycleSettings = Field(default_factory=LifecycleSettings)

    @field_validator("static_limits_per_minute")
    @classmethod
    def _tiers(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = set(v) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown tier(s) {sorted(unknown)}; tiers are {list(TIERS)}")
        if any(n <= 0 for n in v.values()):
            raise ValueError("limits must be positive")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _YAML_PATH.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    # derived locations -------------------------------------------------
    @property
    def telemetry_dir(self) -> Path:
        return self.data_dir / "telemetry"

    @property
    def labels_dir(self) -> Path:
        return self.data_dir / "labels"

    @property
    def rejects_dir(self) -> Path:
        return self.data_dir / "rejects"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def policy_dir(self) -> Path:
        return self.data_dir / "policy"

    @property
    def history_dir(self) -> Path:
        """The simulated consumer history (``gatewise history``): a store of its own."""
        return self.data_dir / "history"

    @property
    def gateway_consumers_path(self) -> Path:
        return self.gateway.consumers_file or self.data_dir / "gateway" / "consumers.yaml"

    @property
    def feast_dir(self) -> Path:
        return self.data_dir / "feast"

    @property
    def mlflow_uri(self) -> str:
        return self.tracking.mlflow_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def optuna_storage(self) -> str:
        return (
            self.tracking.optuna_storage or f"sqlite:///{(self.data_dir / 'optuna.db').resolve()}"
        )

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    def target(self, name: str) -> TargetSettings:
        if name not in self.targets:
            raise ConfigError(
                f"unknown target {name!r}; gatewise.yaml defines {', '.join(sorted(self.targets))}"
            )
        return self.targets[name]

    def registered_model(self, target: str) -> str:
        return f"{self.tracking.registered_model_prefix}-{target}"

    @property
    def consumers_path(self) -> Path:
        return self.data_dir / "consumers.parquet"


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(
            f"  {loc}: {msg} (got {err.get('input')!r})"
            if err["type"] != "missing"
            else f"  {loc}: {msg}"
        )
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read ``gatewise.yaml`` (or ``path``; ``GATEWISE_CONFIG`` names one), then env.

    Raises ``ConfigError`` naming every invalid field.
    """
    if path is None:
        env_path = os.environ.get("GATEWISE_CONFIG")
        path = Path(env_path) if env_path else Path("gatewise.yaml")
    path = Path(path)
    if not path.exists() and "GATEWISE_CONFIG" in os.environ:
        raise ConfigError(f"config file {path} (from GATEWISE_CONFIG) does not exist")
    token = _YAML_PATH.set(path if path.exists() else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {path}:\n{_describe(exc)}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    finally:
        _YAML_PATH.reset(token)


def settings_for_flow(config_path: str | None, data_dir: str | None) -> Settings:
    """A flow's settings from its (JSON-friendly) parameters: the config file, if any, and a
    data dir overriding the config's (flows run in other processes: paths come absolute)."""
    return load_settings(
        Path(config_path) if config_path else None,
        **({"data_dir": Path(data_dir)} if data_dir else {}),
    )
