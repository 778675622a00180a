"""Project settings: one ``gatewise.yaml``, every field overridable by env.

The composite of every room's section, its loader and the data-dir paths. It is the
ground floor: every room may import it, and it imports no room (each section's model is a
leaf module beside this one). Environment variables are ``GATEWISE_<FIELD>``; nested fields use ``__``
(``GATEWISE_SIMULATOR__CLIENTS=500``). Settings are built at the entry point
(``load_settings()``) and passed down; nothing here runs at import time.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from config._base import Strict as _Strict
from config.analytics import AnalyticsSettings
from config.gateway import GatewaySettings
from config.labeling import LabelingSettings
from config.monitoring import MonitoringSettings
from config.serving import ServingSettings
from config.simulator import LifecycleSettings, SimulatorSettings
from config.stream import StreamSettings
from config.targets import TargetSettings, default_targets

__all__ = [
    "TIERS",
    "ConfigError",
    "FeatureSettings",
    "IngestSettings",
    "Settings",
    "TrackingSettings",
    "load_settings",
    "settings_for_flow",
]

TIERS = ("free", "pro", "enterprise")
# the YAML file that the Settings being built should read (set by load_settings)
_YAML_PATH: ContextVar[Path | None] = ContextVar("gatewise_yaml_path", default=None)


class ConfigError(ValueError):
    """An invalid project config; the message names each offending field."""


class IngestSettings(_Strict):
    batch_lines: int = Field(50_000, ge=100)
    client_id_header: str | None = Field(
        None, description="request header that names the consumer, if any"
    )


class AsOfSettings(_Strict):
    """Training rows as the online store held them (features/asof.py): the stream processor
    replays each built day and its rows at a grid of instants inside windows are kept."""

    enabled: bool = True
    every_minutes: int = Field(
        30, ge=5, le=1440, description="one as-of instant per this many minutes of each day"
    )
    offsets_s: list[int] = Field(
        [60, 150, 240],
        min_length=1,
        description="seconds into its 5-minute window of each instant, cycled over the grid",
    )

    @field_validator("offsets_s")
    @classmethod
    def _inside_window(cls, v: list[int]) -> list[int]:
        bad = [o for o in v if not 0 < o < 300]
        if bad:
            raise ValueError(f"offsets {bad} must be inside a 5-minute window: 1..299 s")
        return v


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
    asof: AsOfSettings = AsOfSettings()
    training_chunk_rows: int = Field(
        50_000,
        ge=1,
        description="entity rows per point-in-time join: Feast's DuckDB/ibis join holds ~30 KB"
        " per entity row (292k rows: 9.2 GB), so training sets are joined in chunks",
    )


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
    targets: dict[str, TargetSettings] = Field(default_factory=default_targets)
    tracking: TrackingSettings = TrackingSettings()
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    history: LifecycleSettings = Field(default_factory=LifecycleSettings)
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)

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

    def scanner_path(self, target: str = "payload") -> Path:
        """Where the payload champion's compact export lives (the gateway watches it)."""
        return self.data_dir / "scanner" / f"{target}.npz"

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
