"""The policy, consumers and routes, compiled into the one JSON document a data plane enforces.

The NGINX data plane's Lua (``gatewise.lua``) runs the decision core of
``gateway/decision.py`` on this *bundle*: everything it needs, with the lookups the
Python gateway does per request done once here (shell patterns of the roles resolved to
the configured routes, route templates to anchored regexes, expiries to epoch seconds,
the effective failure mode of the scored target). It holds key digests, never keys.

    doc = compile_bundle(policy, ConsumersFile.load(path), settings.gateway)
    text = bundle_text(doc)       # what ``PUT /admin/bundle`` takes
"""

from __future__ import annotations

import hashlib
import json
import re
from fnmatch import fnmatchcase
from typing import Any

from config.gateway import GatewaySettings
from gateway.auth import ConsumersFile
from gateway.policy import Band, Policy

__all__ = ["BUNDLE_SCHEMA", "bundle_text", "compile_bundle", "route_regex", "upstream_name"]

BUNDLE_SCHEMA = 1
_PARAM = re.compile(r"\{[^/}]+\}")
_PCRE_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


def route_regex(template: str) -> str:
    """``/v1/orders/{id}`` -> ``^/v1/orders/[^/]+$`` (PCRE, as ``gateway/routing.py`` matches)."""
    return "^" + "[^/]+".join(_PCRE_SPECIAL.sub(r"\\\1", p) for p in _PARAM.split(template)) + "$"


def upstream_name(service: str) -> str:
    """The NGINX ``upstream {}`` block of a service."""
    return "gw_svc_" + re.sub(r"[^A-Za-z0-9_]", "_", service)


def _epoch(dt: Any) -> float | None:
    return None if dt is None else dt.timestamp()


def _band(b: Band) -> dict[str, Any]:
    return {
        "min": b.min_score,
        "action": b.action,
        "factor": b.limit_factor,
        "rpm": b.requests_per_minute,
        "repr": str(b.min_score),  # as decision.py formats it in reasons
        "g": f"{b.min_score:g}",  # as band_name() formats it
    }


def _table(g: GatewaySettings) -> dict[str, Any]:
    """Routes as ``gateway/routing.Router`` matches them: exact templates, then patterns with
    the most literal characters first."""
    routes: list[dict[str, Any]] = []
    exact: dict[str, int] = {}
    patterns: list[tuple[int, list[Any]]] = []
    for i, r in enumerate(g.routes):
        method, template = r.route.split(" ", 1)
        entry: dict[str, Any] = {
            "key": r.route,
            "method": method,
            "template": template,
            "service": r.service,
            "upstream": upstream_name(r.service),
        }
        if _PARAM.search(template):
            rx = route_regex(template)
            entry["regex"] = rx
            patterns.append((len(_PARAM.sub("", r.route)), [method, rx, i]))
        else:
            exact.setdefault(r.route, i)
        routes.append(entry)
    patterns.sort(key=lambda x: -x[0])  # stable: configuration order among equals
    return {"routes": routes, "exact": exact, "patterns": [p for _, p in patterns]}


def _rbac(g: GatewaySettings) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for role, rules in g.roles.items():
        allowed: dict[str, bool] = {}
        for r in g.routes:
            method, template = r.route.split(" ", 1)
            if any(
                ("*" in rule.methods or method in rule.methods)
                and any(fnmatchcase(template, pat) for pat in rule.routes)
                for rule in rules
            ):
                allowed[r.route] = True
        out[role] = allowed
    return out


def compile_bundle(policy: Policy, consumers: ConsumersFile, g: GatewaySettings) -> dict[str, Any]:
    """The bundle for one policy version (``policy.version``) and one consumers file."""
    people: list[dict[str, Any]] = []
    keys: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(consumers.consumers):
        people.append(
            {
                "id": c.client_id,
                "tier": c.tier,
                "region": c.region,
                "device_type": c.device_type,
                "roles": list(c.roles),
            }
        )
        for k in c.api_keys:
            keys[k.id] = {"sha256": k.sha256, "revoked": k.revoked, "c": i}
    name = g.scoring.target
    t = policy.targets.get(name)
    target = None
    if t is not None:
        target = {
            "name": name,
            "mode": t.mode,
            "bands": [_band(b) for b in t.bands],
            "routes": {
                k: {
                    "mode": r.mode,
                    "bands": None if r.bands is None else [_band(b) for b in r.bands],
                }
                for k, r in t.routes.items()
            },
            "failure_mode": t.failure_mode or g.scoring.failure_mode,
        }
    header = g.client_id_header.lower().replace("-", "_") if g.client_id_header else None
    return {
        "bundle_schema": BUNDLE_SCHEMA,
        "version": policy.version,
        "reason": policy.reason,
        "default_tier": policy.default_tier,
        "tiers": {n: [tl.requests_per_minute, tl.capacity] for n, tl in policy.tiers.items()},
        "routes": {k: [r.cost, r.requests_per_minute or 0] for k, r in policy.routes.items()},
        "overrides": {
            o.client_id: {
                "action": o.action,
                "rpm": o.requests_per_minute,
                "reason": o.reason,
                "expires": _epoch(o.expires_at),
                "mode": o.mode,
            }
            for o in policy.overrides
        },
        "allowances": {
            cid: {"rpm": a.requests_per_minute, "expires": _epoch(a.expires_at)}
            for cid, a in policy.allowances.items()
        },
        "target": target,
        "exemptions": [
            {
                "attribute": e.attribute,
                "value": e.value,
                "reason": e.reason,
                "expires": _epoch(e.expires_at),
            }
            for e in policy.exemptions
            if e.target == name
        ],
        "scoring": g.scoring.enabled,
        "max_stale_s": g.scoring.max_stale_s,
        "consumers": people,
        "keys": keys,
        "table": _table(g),
        "rbac": _rbac(g),
        "anonymous": {k: True for k in g.anonymous_routes},
        "client_id_header": header,
        "admin_role": g.admin_role,
    }


def bundle_text(doc: dict[str, Any]) -> str:
    """Compact JSON; empty objects stay objects (Lua's cjson reads ``{}`` as a table)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def bundle_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
