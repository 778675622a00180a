"""The ``stream:`` section of ``gatewise.yaml``: the live path from the gateway to the online
store (``telemetry/stream.py``, ``features/stream.py``), and the event-pattern alert rules the
stream processor evaluates (``monitoring/alerts.py``).

``AlertRule(name="s5xx", kind="threshold", key="upstream_service", window_s=60,
where="http_response_status_code >= 500", min_count=20)``
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AlertRule", "AlertStep", "ScorePushSettings", "StreamSettings"]


class AlertStep(BaseModel):
    """One step of a sequence: ``AlertStep(where="http_response_status_code = 401", min_count=5)``."""

    model_config = ConfigDict(extra="forbid")

    where: str
    min_count: int = Field(1, ge=1)


class AlertRule(BaseModel):
    """A pattern over one key's events in a sliding event-time window.

    ``AlertRule(name="s5xx", kind="threshold", key="upstream_service", window_s=60,
    where="http_response_status_code >= 500", min_count=20)``
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["threshold", "sequence"]
    key: str = Field("client_id", pattern=r"^[a-z][a-z0-9_]*$")
    window_s: float = Field(300, gt=0)
    severity: Literal["info", "warning", "high", "critical"] = "warning"
    description: str = ""
    where: str | None = None
    min_count: int = Field(1, ge=1)
    first: AlertStep | None = None
    then: AlertStep | None = None

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> AlertRule:
        if self.kind == "threshold":
            if self.where is None:
                raise ValueError(f"threshold rule {self.name!r} needs `where`")
            if self.first is not None or self.then is not None:
                raise ValueError(f"threshold rule {self.name!r} takes `where`, not `first`/`then`")
        else:
            for step in ("first", "then"):
                if getattr(self, step) is None:
                    raise ValueError(f"sequence rule {self.name!r} needs `{step}`")
            if self.where is not None or self.min_count != 1:
                raise ValueError(
                    f"sequence rule {self.name!r} takes `first`/`then`, not `where`/`min_count`"
                )
            if self.then is not None and self.then.min_count != 1:
                # the pattern completes at one `then` event; more would need a second count
                raise ValueError(f"sequence rule {self.name!r}: `then.min_count` must be 1")
        return self

    def predicates(self) -> dict[str, str]:
        """The SQL fields of the rule, by their config path."""
        if self.kind == "threshold":
            return {"where": self.where or ""}
        assert self.first is not None and self.then is not None
        return {"first.where": self.first.where, "then.where": self.then.where}

    def fingerprint(self) -> str:
        """Hash of what the stored matches mean: kind, key and predicates.

        Counts, window and severity may change without dropping the window state.
        """
        spec = {"kind": self.kind, "key": self.key, **self.predicates()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class ScorePushSettings(BaseModel):
    """``stream.score_push``: after each online push, the processor asks the scoring service
    about the clients whose features it just wrote and pushes the scores that moved to the
    gateways (``POST /admin/scores``), so a gateway acts on a new score within a micro-batch
    instead of when its cached score expires (``gateway.scoring.cache_ttl_s``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    scoring_url: str | None = Field(None, description="None: serving's own URL")
    gateway_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8080"],
        description="every gateway instance gets the moved scores",
    )
    api_key_env: str = Field(
        "GATEWISE_ADMIN_KEY",
        description="environment variable holding an API key with the gateway's admin role",
    )
    target: str = "abuse"
    alias: str = "champion"
    min_change: float = Field(
        0.05, ge=0, le=1, description="a score is pushed when it moved at least this much"
    )
    max_batch: int = Field(256, ge=1, description="most ids in one /score call")
    timeout_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _gateways(self) -> ScorePushSettings:
        if self.enabled and not self.gateway_urls:
            raise ValueError("score_push.gateway_urls: at least one gateway when enabled")
        return self


class StreamSettings(BaseModel):
    """``stream:`` in gatewise.yaml: the live path from the gateway to the online store."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="the gateway publishes its events to the stream")
    backend: Literal["redis", "nats", "memory"] = Field(
        "redis",
        description="memory: inside one process (gateway and processor together; demo, tests)",
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    name: str = Field(
        "gatewise-telemetry",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Redis key prefix / JetStream stream name",
    )
    partitions: int = Field(4, ge=1, le=256, description="clients are split by hash into these")
    max_len: int = Field(
        100_000, ge=10, description="entries (batches) kept per partition; older are trimmed"
    )
    publish_interval_s: float = Field(0.2, gt=0)
    max_batch: int = Field(5_000, ge=1, description="events per published entry, at most")
    max_buffer: int = Field(
        200_000, ge=1, description="events held while the broker is away before the oldest drop"
    )
    # the processor
    group: str = Field("gatewise-stream", pattern=r"^[A-Za-z0-9_-]+$")
    batch_interval_s: float = Field(1.0, gt=0, description="micro-batch period")
    allowed_lateness_s: float = Field(
        120.0, ge=0, description="events this late (event time) still update their window"
    )
    checkpoint_interval_s: float = Field(5.0, ge=0)
    bootstrap_hours: float = Field(
        24.0,
        ge=0,
        description="a fresh processor seeds its windows from this much stored telemetry",
    )
    metrics_port: int = Field(9300, ge=0, le=65535, description="0: no HTTP metrics endpoint")
    webhook_url: str | None = Field(None, description="alerts are POSTed here as well")
    score_push: ScorePushSettings = Field(default_factory=ScorePushSettings)
    alerts: list[AlertRule] = Field(
        default_factory=list,
        description="event-pattern rules (monitoring/alerts.py); empty: the default rules",
    )
