"""The ``gateway:`` section of ``gatewise.yaml`` (part of the one project config): listeners,
authentication and roles, services and routes (default: the demo API), scoring, scanning,
cache and the telemetry sink.

gateway:
  port: 8080
  services: {catalog: {instances: ["http://127.0.0.1:9101"]}}
  routes: [{route: "GET /v1/products/{id}", service: catalog}]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from config._base import Strict as _Strict
from config.demo_api import ROUTES, SERVICES

__all__ = [
    "HMAC_ALGS",
    "PUBLIC_ALGS",
    "BreakerSettings",
    "GatewaySettings",
    "JwtSettings",
    "RoleRule",
    "RouteSettings",
    "ScanningSettings",
    "ScoringSettings",
    "ServiceSettings",
]

_ROUTE = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /\S*$")


HMAC_ALGS = {"HS256", "HS384", "HS512"}
PUBLIC_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}


class JwtSettings(_Strict):
    """Bearer tokens: who may issue them, for whom, signed how."""

    enabled: bool = False
    issuer: str = "https://auth.gatewise.local"
    audience: str = "gatewise-api"
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    jwks_file: Path | None = None
    jwks_url: str | None = None
    secret_env: str | None = Field(
        None, description="HMAC secret's environment variable (HS* algorithms only)"
    )
    leeway_s: float = Field(30.0, ge=0)
    client_claim: str = "sub"
    roles_claim: str = "roles"
    tier_claim: str = "tier"

    @field_validator("algorithms")
    @classmethod
    def _one_family(cls, v: list[str]) -> list[str]:
        unknown = set(v) - HMAC_ALGS - PUBLIC_ALGS
        if unknown:
            raise ValueError(f"unsupported algorithms {sorted(unknown)} ('none' is never allowed)")
        if set(v) & HMAC_ALGS and set(v) & PUBLIC_ALGS:
            raise ValueError("mixing HMAC and public-key algorithms invites algorithm confusion")
        if not v:
            raise ValueError("at least one algorithm is required")
        return v


class RoleRule(_Strict):
    """Methods allowed on route templates (shell patterns, e.g. ``/v1/orders*``)."""

    methods: list[str] = Field(default_factory=lambda: ["*"])
    routes: list[str] = Field(default_factory=lambda: ["*"])


class BreakerSettings(_Strict):
    """Open after ``failure_threshold`` consecutive failures; probe again after ``reset_timeout_s``."""

    failure_threshold: int = Field(5, ge=1)
    reset_timeout_s: float = Field(10.0, gt=0)
    half_open_probes: int = Field(1, ge=1)


class ServiceSettings(_Strict):
    instances: list[str] = Field(min_length=1)
    timeout_s: float = Field(5.0, gt=0)
    connect_timeout_s: float = Field(1.0, gt=0)
    retries: int = Field(1, ge=0, le=5, description="idempotent methods only")
    health_path: str | None = "/healthz"
    health_interval_s: float = Field(5.0, gt=0)
    breaker: BreakerSettings = BreakerSettings()

    @field_validator("instances")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not re.match(r"^https?://[^/\s]+$", u):
                raise ValueError(f"instance {u!r} is not http(s)://host:port")
        return v


class RouteSettings(_Strict):
    route: str
    service: str
    cacheable: bool = False

    @field_validator("route")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _ROUTE.match(v):
            raise ValueError(f"{v!r} is not 'METHOD /path/{{param}}'")
        return v


class ScoringSettings(_Strict):
    """The gateway's client of the BentoML ``/score`` endpoint."""

    enabled: bool = False
    url: str = "http://127.0.0.1:3000"
    target: str = "abuse"
    alias: str = "champion"
    timeout_ms: float = Field(50.0, gt=0)
    cache_ttl_s: float = Field(5.0, ge=0, description="a score this young is used without a call")
    unknown_ttl_s: float = Field(
        1.0,
        ge=0,
        description="a client the online store does not know yet is asked again this soon: a"
        " new client is scored as soon as the stream has its first requests",
    )
    max_stale_s: float = Field(
        60.0,
        ge=0,
        description="when a call fails, a cached score up to this old still counts (reason"
        " 'stale'): enforcement does not flicker with the scoring service; 0 = never",
    )
    batch_window_ms: float = Field(
        2.0,
        ge=0,
        description="lookups arriving within this window go out as one /score call",
    )
    max_batch: int = Field(256, ge=1, description="most ids in one /score call")
    failure_mode: Literal["open", "closed"] = Field(
        "open", description="open: no score, limits still apply; closed: refuse with 503"
    )
    breaker: BreakerSettings = BreakerSettings(failure_threshold=3, reset_timeout_s=5.0)


class ScanningSettings(_Strict):
    """Payload scanning of every request with parameters or a body (gateway/scan.py)."""

    enabled: bool = True
    target: str = "payload"
    mode: Literal["local", "remote"] = Field(
        "local",
        description="local: the champion's compact export in process; remote: POST /scan on"
        " the serving service (champions that are not linear)",
    )
    url: str = "http://127.0.0.1:3000"
    alias: str = "champion"
    timeout_ms: float = Field(20.0, gt=0, description="remote: the most a scan may add")
    failure_mode: Literal["open", "closed"] = Field(
        "open",
        description="remote scanner down, slow or open: open = pass with scan_label"
        " 'unavailable'; closed = refuse with 503",
    )
    max_values: int = Field(
        256, ge=1, description="values scanned per request; beyond: the verdict is unscanned"
    )
    max_value_bytes: int = Field(
        4096, ge=128, description="longer values are scanned in overlapping windows this long"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=0, description="body bytes read; a longer body is a gap (unscanned)"
    )
    max_scan_bytes: int = Field(
        256 * 1024, ge=1, description="bytes of values scored per request; beyond: unscanned"
    )
    max_scan_ms: float = Field(
        25.0, gt=0, description="local: scoring time per request; beyond: unscanned"
    )
    scan_headers: bool = Field(True, description="scan header and cookie values too")
    skip_headers: list[str] = Field(
        default_factory=list, description="header names never scanned (lower case)"
    )
    unscanned_action: Literal["log", "challenge", "block"] = Field(
        "log",
        description="a request the scanner could not read in full (a budget ran out) and found"
        " no attack in; a policy route's 'unscanned' overrides it. Shadow still only records",
    )
    cache_entries: int = Field(
        100_000, ge=0, description="local: verdicts remembered by value (0: no cache)"
    )
    poll_s: float = Field(2.0, gt=0, description="local: how often the export is checked")
    breaker: BreakerSettings = BreakerSettings(failure_threshold=3, reset_timeout_s=5.0)

    @field_validator("skip_headers")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [h.strip().lower() for h in v]


class CacheSettings(_Strict):
    enabled: bool = True
    max_entries: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1)


class TelemetrySink(_Strict):
    flush_interval_s: float = Field(1.0, gt=0)
    max_batch: int = Field(5_000, ge=1)
    max_buffer: int = Field(500_000, ge=1, description="events held before the oldest are dropped")


def _default_services() -> dict[str, ServiceSettings]:
    """The demo API's services (``config/demo_api.py``), all on ``gatewise upstreams``."""
    return {s: ServiceSettings(instances=["http://127.0.0.1:9101"]) for s in SERVICES}


def _default_routes() -> list[RouteSettings]:
    return [
        RouteSettings(route=f"{r.method} {r.template}", service=r.service, cacheable=r.cacheable)
        for r in ROUTES
    ]


def _default_roles() -> dict[str, list[RoleRule]]:
    return {
        "consumer": [RoleRule(routes=["/v1/*", "/v2/*"])],
        "admin": [RoleRule(routes=["*"])],
    }


class GatewaySettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    consumers_file: Path | None = Field(
        None, description="default: <data_dir>/gateway/consumers.yaml"
    )
    jwt: JwtSettings = JwtSettings()
    anonymous_routes: list[str] = Field(
        default_factory=lambda: ["GET /v1/health"], description="served without credentials"
    )
    roles: dict[str, list[RoleRule]] = Field(default_factory=_default_roles)
    admin_role: str = "admin"
    ratelimit_backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    route_costs: dict[str, int] = Field(
        default_factory=lambda: {
            "GET /v1/reports/export": 10,
            "POST /v1/auth/password-reset": 3,
            "POST /v1/auth/login": 2,
        },
        description="initial policy: an export costs more than a read",
    )
    score_bands: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"min_score": 0.5, "action": "throttle", "limit_factor": 0.25},
            {"min_score": 0.9, "action": "block"},
        ],
        description="initial policy: score bands of the abuse target (shadow mode)",
    )
    services: dict[str, ServiceSettings] = Field(default_factory=_default_services)
    routes: list[RouteSettings] = Field(default_factory=_default_routes)
    scoring: ScoringSettings = ScoringSettings()
    scanning: ScanningSettings = ScanningSettings()
    scan_bands: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"min_score": 0.5, "action": "log"},
            {"min_score": 0.9, "action": "challenge"},
            {"min_score": 0.99, "action": "block"},
        ],
        description="initial policy: score bands of the payload target (shadow mode)",
    )
    anomaly_bands: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"min_score": 0.995, "action": "throttle", "limit_factor": 0.25},
            {"min_score": 0.9995, "action": "block"},
        ],
        description="initial policy: score bands of an anomaly target (day one, shadow mode;"
        " its score is a cohort CDF, so 0.995 = the most unusual 0.5 %)",
    )
    cache: CacheSettings = CacheSettings()
    compression_min_bytes: int = Field(1024, ge=0)
    telemetry: TelemetrySink = TelemetrySink()
    policy_poll_s: float = Field(1.0, gt=0)
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="networks (CIDR) whose X-Forwarded-For / Forwarded headers are believed;"
        " from any other peer the headers are ignored and the peer is the client",
    )
    client_id_header: str | None = Field(
        None, description="trusted header naming the consumer for anonymous routes"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for i, c in enumerate(v):
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies[{i}]: {c!r} is not an address or CIDR") from None
        return v

    @model_validator(mode="after")
    def _routes_have_services(self) -> GatewaySettings:
        for i, r in enumerate(self.routes):
            if r.service not in self.services:
                raise ValueError(f"routes.{i}.service {r.service!r} is not one of services")
        return self
