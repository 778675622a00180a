"""The policy document: what the gateway enforces, as versioned JSON.

One schema (``Policy``), written by people (``gatewise policy push``, the admin
API) and by monitoring (the closed loop), read by the gateway, the backtest
and the exporters. Where documents are kept and published: ``gateway/policy_store.py``.

    policy = parse_policy(text)                # PolicyError names the bad field
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ACTIONS",
    "Allowance",
    "Band",
    "Exemption",
    "Override",
    "Policy",
    "PolicyError",
    "RouteBands",
    "RouteRule",
    "TargetPolicy",
    "TierLimit",
    "default_policy",
    "initial_policy",
    "parse_policy",
    "policy_diff",
]

Action = Literal["allow", "log", "throttle", "challenge", "block"]
ACTIONS: tuple[str, ...] = ("allow", "log", "throttle", "challenge", "block")
Mode = Literal["enforce", "shadow", "off"]
UnscannedAction = Literal["log", "challenge", "block"]
# the payload scanner's target (gateway.scanning.target) acts per request, not per client
SCAN_TARGET = "payload"
SCAN_ACTIONS: tuple[str, ...] = ("allow", "log", "challenge", "block")
_ROUTE_KEY = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|\*) /\S*$")


class PolicyError(ValueError):
    """An invalid policy document; the message names the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierLimit(_Strict):
    """Requests per minute for every consumer of a tier; ``burst`` requests at once."""

    requests_per_minute: int = Field(gt=0)
    burst: int | None = Field(None, gt=0, description="default: requests_per_minute")

    @property
    def capacity(self) -> int:
        return self.burst or self.requests_per_minute


class RouteRule(_Strict):
    """Cost of one call (in units of the tier limit) and an optional per-route limit."""

    cost: int = Field(1, ge=1)
    requests_per_minute: int | None = Field(None, gt=0, description="per consumer, on this route")


class Override(_Strict):
    """A per-client action, usually written by monitoring from model scores."""

    client_id: str = Field(min_length=1)
    action: Action
    requests_per_minute: int | None = Field(None, gt=0, description="the limit when throttled")
    reason: str = Field(min_length=1)
    expires_at: datetime | None = None
    model_version: str | None = None
    mode: Literal["enforce", "shadow"] = Field(
        "enforce", description="shadow: recorded as shadow_<action>, not enforced"
    )

    @model_validator(mode="after")
    def _throttle_has_limit(self) -> Override:
        if self.action == "throttle" and self.requests_per_minute is None:
            raise ValueError("a throttle override needs requests_per_minute")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at must carry a time zone")
        return self

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at.timestamp() > now


class Allowance(_Strict):
    """A client's own, higher limit: its normal heavy use plus headroom, so a static tier limit
    does not punish it (written by monitoring from trusted traffic; model action still applies)."""

    requests_per_minute: int = Field(gt=0)
    reason: str = Field(min_length=1)
    expires_at: datetime | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at.timestamp() > now


class Band(_Strict):
    """Scores at or above ``min_score`` (up to the next band) get ``action``."""

    min_score: float = Field(ge=0, le=1)
    action: Action
    limit_factor: float = Field(
        0.25, gt=0, le=1, description="throttle: share of the tier limit the client keeps"
    )
    requests_per_minute: int | None = Field(
        None,
        gt=0,
        description="throttle: an absolute rate instead (a share of a tier limit does nothing "
        "to a client already running under it)",
    )

    def throttled(self, rpm: int) -> int:
        """The limit a throttle band leaves a client whose limit is ``rpm``."""
        if self.requests_per_minute is not None:
            return min(rpm, self.requests_per_minute)
        return max(1, int(rpm * self.limit_factor))


def _check_bands(bands: list[Band]) -> None:
    cuts = [b.min_score for b in bands]
    if cuts != sorted(cuts) or len(set(cuts)) != len(cuts):
        raise ValueError("bands must have strictly increasing min_score")


def _band(bands: list[Band], score: float | None) -> Band | None:
    if score is None:
        return None
    hit = None
    for b in bands:
        if score >= b.min_score:
            hit = b
    return hit


class RouteBands(_Strict):
    """A route's own mode and/or bands for a target (e.g. enforce the payload scanner on
    login first, keep it in shadow elsewhere); unset fields fall back to the target's."""

    mode: Mode | None = None
    bands: list[Band] | None = None
    unscanned: UnscannedAction | None = Field(
        None, description="payload scanner: a request it could not read in full (see TargetPolicy)"
    )

    @model_validator(mode="after")
    def _bands_ascending(self) -> RouteBands:
        _check_bands(self.bands or [])
        return self


class TargetPolicy(_Strict):
    """How a model target acts on requests: which version, which bands, which mode."""

    mode: Mode = "shadow"
    model_version: str | None = Field(None, description="None: whatever serving's alias returns")
    alias: str = "champion"
    bands: list[Band] = Field(default_factory=list)
    raised: bool = Field(
        False, description="bands raised by monitoring after drift (not raised twice)"
    )
    routes: dict[str, RouteBands] = Field(
        default_factory=dict, description="'METHOD /template' (or '* /template') -> its own"
    )
    unscanned: UnscannedAction | None = Field(
        None,
        description="payload scanner only: what a request gets when a budget ran out before "
        "it was read in full and no attack was found (log, challenge, block; the mode still "
        "decides whether it acts); None: gateway.scanning.unscanned_action",
    )
    failure_mode: Literal["open", "closed"] | None = Field(
        None,
        description="no score (service down, slow, breaker open, no stale score): open lets "
        "the limits judge, closed refuses (503) where the target enforces; None: "
        "gateway.scoring.failure_mode",
    )

    @model_validator(mode="after")
    def _bands_ascending(self) -> TargetPolicy:
        _check_bands(self.bands)
        for key in self.routes:
            if not _ROUTE_KEY.match(key):
                raise ValueError(f"routes: {key!r} is not 'METHOD /path/{{param}}'")
        return self

    def band(self, score: float | None) -> Band | None:
        return _band(self.bands, score)

    def for_route(self, method: str, template: str) -> tuple[Mode, list[Band]]:
        """The mode and bands in force on one route."""
        r = self.routes.get(f"{method} {template}") or self.routes.get(f"* {template}")
        if r is None:
            return self.mode, self.bands
        return r.mode or self.mode, self.bands if r.bands is None else r.bands

    def unscanned_for(self, method: str, template: str, default: str) -> tuple[Mode, str]:
        """The mode and the unscanned action in force on one route."""
        r = self.routes.get(f"{method} {template}") or self.routes.get(f"* {template}")
        mode = (r.mode if r is not None else None) or self.mode
        action = (r.unscanned if r is not None else None) or self.unscanned or default
        return mode, action

    def route_band(
        self, method: str, template: str, score: float | None
    ) -> tuple[Mode, Band | None]:
        mode, bands = self.for_route(method, template)
        return mode, _band(bands, score)


class Exemption(_Strict):
    """A group that model-based action must not touch (a bias finding); static limits still apply."""

    target: str
    attribute: Literal["tier", "region", "device_type"]
    value: str
    reason: str = Field(min_length=1)
    expires_at: datetime | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at.timestamp() > now


class Policy(_Strict):
    """The whole document. ``version`` is assigned by ``PolicyStore.publish``."""

    schema_version: Literal[1] = 1
    version: int = Field(0, ge=0)
    parent_version: int | None = None
    created_at: datetime | None = None
    author: str = "gatewise"
    reason: str = "initial policy"
    default_tier: str = "free"
    tiers: dict[str, TierLimit]
    routes: dict[str, RouteRule] = Field(default_factory=dict)
    overrides: list[Override] = Field(default_factory=list)
    allowances: dict[str, Allowance] = Field(
        default_factory=dict, description="client_id -> its own limit above the tier's"
    )
    targets: dict[str, TargetPolicy] = Field(default_factory=dict)
    exemptions: list[Exemption] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not one of tiers")
        for key, rule in self.routes.items():
            if not _ROUTE_KEY.match(key):
                raise ValueError(f"routes: {key!r} is not 'METHOD /path/{{param}}'")
            smallest = min(t.capacity for t in self.tiers.values())
            if rule.cost > smallest:
                raise ValueError(
                    f"routes.{key}.cost {rule.cost} exceeds the smallest tier burst ({smallest}):"
                    " no request could ever pass"
                )
        scan = self.targets.get(SCAN_TARGET)
        if scan is not None:
            for where, bands in [("bands", scan.bands)] + [
                (f"routes.{k}.bands", r.bands or []) for k, r in scan.routes.items()
            ]:
                for b in bands:
                    if b.action not in SCAN_ACTIONS:
                        raise ValueError(
                            f"targets.{SCAN_TARGET}.{where}: action {b.action!r} does not apply"
                            f" to request content (use one of {list(SCAN_ACTIONS)})"
                        )
        for e in self.exemptions:
            if e.target not in self.targets:
                raise ValueError(f"exemptions: target {e.target!r} is not one of targets")
        seen: set[str] = set()
        for o in self.overrides:
            if o.client_id in seen:
                raise ValueError(f"overrides: client {o.client_id!r} appears twice")
            seen.add(o.client_id)
        return self

    # lookups the decision core makes on every request
    def tier(self, name: str | None) -> TierLimit:
        return self.tiers.get(name or self.default_tier) or self.tiers[self.default_tier]

    def route(self, method: str, template: str) -> RouteRule:
        return (
            self.routes.get(f"{method} {template}")
            or self.routes.get(f"* {template}")
            or _DEFAULT_RULE
        )

    def override(self, client_id: str, now: float) -> Override | None:
        for o in self.overrides:
            if o.client_id == client_id and o.active(now):
                return o
        return None

    def allowance(self, client_id: str, now: float) -> Allowance | None:
        a = self.allowances.get(client_id)
        return a if a is not None and a.active(now) else None

    def exempt(self, target: str, attrs: dict[str, str | None], now: float) -> Exemption | None:
        for e in self.exemptions:
            if e.target == target and attrs.get(e.attribute) == e.value and e.active(now):
                return e
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "author": self.author,
            "reason": self.reason,
            "tiers": len(self.tiers),
            "routes": len(self.routes),
            "overrides": len(self.overrides),
            "allowances": len(self.allowances),
            "exemptions": len(self.exemptions),
            "targets": {k: t.mode for k, t in self.targets.items()},
        }


_DEFAULT_RULE = RouteRule()


def _field_path(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "<document>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_policy(data: dict[str, Any] | str | bytes, source: str = "policy") -> Policy:
    """Validate a document; raises ``PolicyError`` naming the offending field."""
    try:
        raw = json.loads(data) if isinstance(data, (str, bytes)) else data
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: a policy is a JSON object, got {type(raw).__name__}")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_field_path(exc)}") from None


def default_policy(
    static_limits_per_minute: dict[str, int],
    route_costs: dict[str, int] | None = None,
    bands: list[dict[str, Any]] | None = None,
    scan_bands: list[dict[str, Any]] | None = None,
) -> Policy:
    """Version 0: the static per-tier limits, route costs, and the abuse and payload
    targets in shadow."""
    tiers = {t: TierLimit(requests_per_minute=n) for t, n in static_limits_per_minute.items()}
    default_tier = "free" if "free" in tiers else next(iter(tiers))
    routes = {k: RouteRule(cost=c) for k, c in (route_costs or {}).items()}
    b = [Band.model_validate(x) for x in (bands or [])]
    return Policy(
        default_tier=default_tier,
        tiers=tiers,
        routes=routes,
        targets={
            "abuse": TargetPolicy(mode="shadow", bands=b),
            "payload": TargetPolicy(
                mode="shadow", bands=[Band.model_validate(x) for x in (scan_bands or [])]
            ),
        },
    )


def initial_policy(settings: Any) -> Policy:
    """Version 0 as ``gatewise.yaml`` describes it (``settings``: ``config.Settings``): the
    static limits, the abuse and payload targets, and each anomaly target (day one), all in
    shadow."""
    g = settings.gateway
    p = default_policy(
        settings.static_limits_per_minute, g.route_costs, g.score_bands, g.scan_bands
    )
    anomaly = [n for n, t in settings.targets.items() if t.task == "anomaly"]
    if not anomaly:
        return p
    bands = [Band.model_validate(x) for x in g.anomaly_bands]
    return p.model_copy(
        update={
            "targets": {
                **p.targets,
                **{n: TargetPolicy(mode="shadow", bands=bands) for n in anomaly},
            }
        }
    )


_META = {"version", "parent_version", "created_at", "author", "reason"}


def policy_diff(old: Policy, new: Policy) -> list[dict[str, Any]]:
    """What changed between two documents, field by field: ``[{path, old, new}]``. Overrides
    are keyed by client and exemptions by target/attribute/value (not by list position);
    bookkeeping fields (version, author, reason, ...) are left out."""

    def flat(doc: Policy) -> dict[str, Any]:
        d = doc.model_dump(mode="json")
        out: dict[str, Any] = {}

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            else:
                out[prefix] = v

        for k, v in d.items():
            if k in _META:
                continue
            if k == "overrides":
                for o in v:
                    out[f"overrides[{o.pop('client_id')}]"] = o
            elif k == "allowances":
                for cid, a in v.items():
                    out[f"allowances[{cid}]"] = a
            elif k == "exemptions":
                for e in v:
                    key = f"{e.pop('target')}/{e.pop('attribute')}={e.pop('value')}"
                    out[f"exemptions[{key}]"] = e
            elif k == "targets":
                for name, t in v.items():
                    bands = t.pop("bands")
                    walk(f"targets.{name}", t)
                    out[f"targets.{name}.bands"] = bands
            else:
                walk(k, v)
        return out

    a, b = flat(old), flat(new)
    return [
        {"path": k, "old": a.get(k), "new": b.get(k)}
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]
