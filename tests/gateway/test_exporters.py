"""The exporters against the documented config shapes of Kong, envoyproxy/ratelimit and NGINX.

Kong: the schemas are transcribed from Kong's ``kong/plugins/rate-limiting/schema.lua`` and
``kong/plugins/request-termination/schema.lua`` (3.x), the plugin reference at
docs.konghq.com/hub/kong-inc/rate-limiting/configuration (``config.redis`` record, ``limit_by``
values) and ``kong/db/schema/typedefs.lua`` (names, tags). Envoy: ``src/config/config_impl.go``
of envoyproxy/ratelimit (``validKeys``, units, matching) and its README. NGINX: the real
``nginx`` binary, ``nginx -t`` and a running instance, skipped when nginx is not installed.
"""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.exporters import (
    EXPORTERS,
    export,
    kong_path,
    to_envoy_ratelimit,
    to_kong,
    to_nginx,
)
from gateway.policy import Policy, default_policy, parse_policy
from tests.conftest import free_port, nginx_binary

ROUTE = "GET /v1/reports/export"
BANDS = [{"min_score": 0.5, "action": "throttle"}, {"min_score": 0.9, "action": "block"}]


def make_policy(**update: Any) -> Policy:
    base = default_policy({"free": 60, "pro": 600, "enterprise": 6000}, {ROUTE: 10}, BANDS)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    overrides = [
        {"client_id": "c1", "action": "block", "reason": "card testing"},
        {"client_id": "c2", "action": "throttle", "requests_per_minute": 30, "reason": "scraping"},
        {"client_id": "c3", "action": "challenge", "reason": "odd", "model_version": "7"},
        {"client_id": "c4", "action": "allow", "reason": "partner"},
        {"client_id": "c5", "action": "block", "reason": "stale", "expires_at": past},
    ]
    doc = {**base.model_dump(mode="json"), "version": 3, "parent_version": 2}
    return parse_policy({**doc, "overrides": overrides, **update})


@pytest.fixture()
def policy() -> Policy:
    return make_policy()


# ---------------------------------------------------------------- Kong

PERIODS = ["second", "minute", "hour", "day", "month", "year"]
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9._~-]+$"}  # typedefs utf8_name (ASCII part)
TAGS = {"type": "array", "items": {"type": "string", "pattern": r"^[ !-+\-.0-~]+$"}}  # no , or /
RATE_LIMITING = {
    "type": "object",
    "properties": {
        **{p: {"type": "number", "exclusiveMinimum": 0} for p in PERIODS},
        "limit_by": {
            "enum": ["consumer", "consumer-group", "credential", "ip", "service", "header", "path"]
        },
        "header_name": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "policy": {"enum": ["local", "redis"]},  # "cluster" is refused in DB-less mode
        "fault_tolerant": {"type": "boolean"},
        "hide_client_headers": {"type": "boolean"},
        "error_code": {"type": "number", "minimum": 0},
        "error_message": {"type": "string"},
        "sync_rate": {"type": "number"},
        "redis": {
            "type": "object",
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "database": {"type": "integer"},
                "username": {"type": "string"},
                "password": {"type": "string"},
                "ssl": {"type": "boolean"},
                "ssl_verify": {"type": "boolean"},
                "server_name": {"type": "string"},
                "timeout": {"type": "integer"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
    "anyOf": [{"required": [p]} for p in PERIODS],  # entity_checks at_least_one_of
    "allOf": [
        {
            "if": {"required": ["policy"], "properties": {"policy": {"const": "redis"}}},
            "then": {"required": ["redis"], "properties": {"redis": {"required": ["host"]}}},
        },
        {
            "if": {"required": ["limit_by"], "properties": {"limit_by": {"const": "header"}}},
            "then": {"required": ["header_name"]},
        },
        {
            "if": {"required": ["limit_by"], "properties": {"limit_by": {"const": "path"}}},
            "then": {"required": ["path"]},
        },
    ],
}
REQUEST_TERMINATION = {
    "type": "object",
    "properties": {
        "status_code": {"type": "integer", "minimum": 100, "maximum": 599},
        "message": {"type": "string"},
        "content_type": {"type": "string"},
        "body": {"type": "string"},
        "echo": {"type": "boolean"},
        "trigger": {"type": "string"},
    },
    "additionalProperties": False,
    "dependentRequired": {"content_type": ["body"]},
    "not": {
        "anyOf": [{"required": ["message", "body"]}, {"required": ["message", "content_type"]}]
    },
}


def plugin_schema(foreign: bool) -> dict[str, Any]:
    refs = {k: {"type": "string"} for k in ("consumer", "route", "service")} if foreign else {}
    return {
        "type": "object",
        "required": ["name", "config"],
        "properties": {
            "name": {"enum": ["rate-limiting", "request-termination"]},
            "config": {"type": "object"},
            "enabled": {"type": "boolean"},
            "instance_name": NAME,
            "tags": TAGS,
            **refs,
        },
        "additionalProperties": False,
        "allOf": [
            {
                "if": {"properties": {"name": {"const": n}}},
                "then": {"properties": {"config": s}},
            }
            for n, s in (
                ("rate-limiting", RATE_LIMITING),
                ("request-termination", REQUEST_TERMINATION),
            )
        ],
    }


METHOD = {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]}
KONG_SCHEMA = {
    "type": "object",
    "required": ["_format_version"],
    "properties": {
        "_format_version": {"const": "3.0"},
        "_transform": {"type": "boolean"},
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "url"],
                "properties": {
                    "name": NAME,
                    "url": {"type": "string", "pattern": r"^https?://[^/\s]+"},
                    "tags": TAGS,
                    "plugins": {"type": "array", "items": plugin_schema(False)},
                    "routes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "paths"],
                            "properties": {
                                "name": NAME,
                                "methods": {"type": "array", "items": METHOD, "minItems": 1},
                                # 3.0 format: a regex path starts with "~", every path with "/"
                                "paths": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "string", "pattern": "^~?/"},
                                },
                                "strip_path": {"type": "boolean"},
                                "preserve_host": {"type": "boolean"},
                                "regex_priority": {"type": "integer"},
                                "tags": TAGS,
                                "plugins": {"type": "array", "items": plugin_schema(False)},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "consumers": {
            "type": "array",
            "items": {
                "type": "object",
                "anyOf": [{"required": ["username"]}, {"required": ["custom_id"]}],
                "properties": {
                    "username": {"type": "string", "minLength": 1},
                    "custom_id": {"type": "string", "minLength": 1},
                    "tags": TAGS,
                    "plugins": {"type": "array", "items": plugin_schema(False)},
                },
                "additionalProperties": False,
            },
        },
        "plugins": {"type": "array", "items": plugin_schema(True)},
    },
    "additionalProperties": False,
}


def kong_plugins(doc: dict[str, Any]) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    """Every plugin with its (consumer, route) scope, nested or top-level."""
    out = [(p.get("consumer"), p.get("route"), p) for p in doc.get("plugins", [])]
    for s in doc["services"]:
        out += [(None, r["name"], p) for r in s.get("routes", []) for p in r.get("plugins", [])]
    out += [
        (c["username"], None, p) for c in doc.get("consumers", []) for p in c.get("plugins", [])
    ]
    return out


def check_kong(text: str) -> dict[str, Any]:
    assert text.startswith("# gatewise policy v")
    doc = yaml.safe_load(text)
    jsonschema.Draft202012Validator(KONG_SCHEMA).validate(doc)
    routes = [r["name"] for s in doc["services"] for r in s["routes"]]
    consumers = [c["username"] for c in doc.get("consumers", [])]
    assert len(routes) == len(set(routes)) and len(consumers) == len(set(consumers))
    scopes = []
    for consumer, route, p in kong_plugins(doc):
        assert consumer is None or consumer in consumers
        assert route is None or route in routes
        scopes.append((p["name"], consumer, route))
        if p["name"] == "rate-limiting":  # schema.lua validate_periods_order
            values = [p["config"][k] for k in PERIODS if k in p["config"]]
            assert values == sorted(values), p
    assert len(scopes) == len(set(scopes)), "Kong allows one plugin of a name per scope"
    return doc


def kong_runs(doc: dict[str, Any], name: str, consumer: str, route: str) -> dict[str, Any] | None:
    """The instance Kong runs: consumer+route > consumer > route > global (plugin precedence)."""
    found = {(c, r): p for c, r, p in kong_plugins(doc) if p["name"] == name}
    for key in ((consumer, route), (consumer, None), (None, route), (None, None)):
        if key in found:
            return found[key]["config"]
    return None


def kong_config(doc: dict[str, Any], name: str, consumer: str, route: str) -> dict[str, Any]:
    config = kong_runs(doc, name, consumer, route)
    assert config is not None, (name, consumer, route)
    return config


def test_kong_path_matches_the_template() -> None:
    assert kong_path("/v1/orders/{id}") == "~/v1/orders/[^/]+$"
    rx = re.compile(kong_path("/v1/orders/{id}/items.json")[1:])
    assert rx.match("/v1/orders/42/items.json")
    assert not rx.match("/v1/orders/42/itemsXjson") and not rx.match("/v1/orders/4/2/items.json")


def test_kong_config_is_valid_and_limits_follow_the_policy(policy: Policy) -> None:
    consumers = {"alice": "free", "carol": "pro", "bob": "enterprise", "c2": "pro"}
    text = to_kong(policy, consumers=consumers, routes=[("POST", "/v1/orders", "create-order")])
    assert "gatewise policy v3 (parent v2)" in text.splitlines()[0]
    doc = check_kong(text)
    route = "gatewise-get-v1-reports-export"
    assert {r["name"] for r in doc["services"][0]["routes"]} == {
        route,
        "create-order",
        "gatewise-default",
    }
    minute = {
        (c, r): kong_config(doc, "rate-limiting", c, r)["minute"]
        for c in ("alice", "carol", "bob", "c2", "anon")
        for r in (route, "create-order")
    }
    assert minute == {
        ("alice", route): 6,  # free 60 / cost 10
        ("alice", "create-order"): 60,
        ("carol", route): 60,
        ("carol", "create-order"): 600,
        ("bob", route): 600,
        ("bob", "create-order"): 6000,
        ("c2", route): 3,  # throttled to 30 (below pro's 600) / cost 10
        ("c2", "create-order"): 30,
        ("anon", route): 6,
        ("anon", "create-order"): 60,
    }
    for c, r in minute:
        assert kong_config(doc, "rate-limiting", c, r)["limit_by"] == "consumer"
    for denied in ("c1", "c3"):  # block and challenge: decision.py answers both 403
        assert kong_runs(doc, "request-termination", denied, route) == {
            "status_code": 403,
            "message": "Forbidden",
        }
    assert kong_runs(doc, "request-termination", "c2", route) is None
    usernames = {c["username"] for c in doc["consumers"]}
    assert "c4" not in usernames and "c5" not in usernames  # allow; expired


def test_kong_redis_policy_and_burst(policy: Policy) -> None:
    tiers = {"free": {"requests_per_minute": 60, "burst": 10}, "pro": {"requests_per_minute": 600}}
    burst = {"tiers": tiers}
    doc = check_kong(
        to_kong(make_policy(**burst), kong_policy="redis", redis_host="redis.internal")
    )
    config = kong_runs(doc, "rate-limiting", "anon", "gatewise-get-v1-reports-export")
    assert config == {
        "second": 1,  # burst 10 / cost 10
        "minute": 6,
        "limit_by": "consumer",
        "policy": "redis",
        "redis": {"host": "redis.internal", "port": 6379},
    }
    assert kong_config(doc, "rate-limiting", "anon", "x")["second"] == 10
    for text in (to_kong(policy, kong_policy="redis"), to_envoy_ratelimit(policy)):
        assert "&id" not in text and "*id" not in text  # no YAML anchors / aliases
    with pytest.raises(ValueError, match="cluster"):
        to_kong(policy, kong_policy="cluster")
    with pytest.raises(ValueError, match="gold"):
        to_kong(policy, consumers={"x": "gold"})


def test_kong_schema_rejects_what_kong_rejects() -> None:
    """The transcribed schema is not vacuous: Kong's own refusals fail it too."""
    good = {
        "_format_version": "3.0",
        "plugins": [{"name": "rate-limiting", "config": {"minute": 5}}],
    }
    jsonschema.validate(good, KONG_SCHEMA)
    for config in (
        {"limit_by": "consumer"},  # no period
        {"minute": 5, "policy": "redis"},  # redis without host
        {"minute": 5, "limit_by": "tier"},
        {"minute": 0},
        {"minute": 5, "burst": 3},
    ):
        bad = {"_format_version": "3.0", "plugins": [{"name": "rate-limiting", "config": config}]}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, KONG_SCHEMA)


# ---------------------------------------------------------------- Envoy ratelimit

# config_impl.go validKeys
VALID_KEYS = {"domain", "key", "value", "descriptors", "rate_limit", "unit", "requests_per_unit"}
VALID_KEYS |= {"unlimited", "shadow_mode", "name", "replaces", "detailed_metric"}
UNITS = {"second", "minute", "hour", "day"}


def check_envoy_keys(node: Any) -> None:
    """config_impl.go validateYamlKeys: known keys only; leaves are str, int or bool."""
    if isinstance(node, dict):
        for k, v in node.items():
            assert isinstance(k, str) and k in VALID_KEYS, k
            check_envoy_keys(v)
    elif isinstance(node, list):
        for e in node:
            assert isinstance(e, dict)
            check_envoy_keys(e)
    else:
        assert node is None or isinstance(node, str | int | bool), node


def check_envoy_level(descriptors: list[dict[str, Any]]) -> None:
    """config_impl.go loadDescriptors: key set, no duplicate key_value, valid unit."""
    seen = set()
    for d in descriptors:
        assert d["key"]
        final = d["key"] + ("_" + d["value"] if d.get("value") else "")
        assert final not in seen, f"duplicate descriptor composite key {final}"
        seen.add(final)
        if "rate_limit" in d:
            rl = d["rate_limit"]
            if rl.get("unlimited"):
                assert "unit" not in rl
            else:
                assert rl["unit"] in UNITS
                assert isinstance(rl["requests_per_unit"], int) and rl["requests_per_unit"] >= 0
        else:
            assert "shadow_mode" not in d, "shadow_mode only acts beside a rate_limit"
        check_envoy_level(d.get("descriptors") or [])


def envoy_limit(doc: dict[str, Any], *entries: tuple[str, str]) -> dict[str, Any] | None:
    """config_impl.go GetLimit: key_value before key; a limit only at the request's depth."""
    level, found = doc["descriptors"], None
    for i, (key, value) in enumerate(entries):
        by_key = {d["key"] + ("_" + d["value"] if d.get("value") else ""): d for d in level}
        node = by_key.get(f"{key}_{value}") or by_key.get(key)
        if node is not None and "rate_limit" in node and i == len(entries) - 1:
            found = {**node["rate_limit"], "shadow": node.get("shadow_mode", False)}
        if node is None or not node.get("descriptors"):
            break
        level = node["descriptors"]
    return found


def check_envoy(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    check_envoy_keys(doc)
    assert set(doc) == {"domain", "descriptors"} and doc["domain"]
    check_envoy_level(doc["descriptors"])
    return doc


def test_envoy_config_is_valid_and_limits_follow_the_policy(policy: Policy) -> None:
    doc = check_envoy(to_envoy_ratelimit(policy, "gw"))
    assert doc["domain"] == "gw"

    def rpu(*e: tuple[str, str]) -> tuple[int, bool] | None:
        got = envoy_limit(doc, *e)
        return None if got is None else (got["requests_per_unit"], got["shadow"])

    assert rpu(("tier", "pro"), ("client_id", "x")) == (600, False)
    assert rpu(("tier", "pro"), ("client_id", "x"), ("route", ROUTE)) == (60, False)
    assert rpu(("tier", "free"), ("client_id", "x"), ("route", ROUTE)) == (6, False)
    assert rpu(("tier", "gold"), ("client_id", "x")) == (60, False)  # unknown tier: default
    assert rpu(("tier", "pro"), ("client_id", "x"), ("route", "GET /v1/other")) is None
    assert rpu(("tier", "pro")) is None  # wrong depth: no limit
    assert rpu(("client_id", "c1")) == (0, False)  # block: always over the limit
    assert rpu(("client_id", "c3")) == (0, False)  # challenge: 403 in gatewise too
    assert rpu(("client_id", "c2")) == (30, False)
    assert rpu(("client_id", "c2"), ("route", ROUTE)) == (3, False)
    assert rpu(("client_id", "c4")) is None and rpu(("client_id", "c5")) is None
    # the abuse target is in shadow: band descriptors are shadow, nothing else is
    band = ("band", "abuse:0.5")
    assert rpu(band, ("tier", "pro"), ("client_id", "x")) == (150, True)  # limit_factor 0.25
    assert rpu(("band", "abuse:0.9"), ("tier", "free"), ("client_id", "x")) == (0, True)


def shadow_paths(node: Any, path: str = "") -> set[str]:
    out = set()
    for d in node:
        here = f"{path}/{d['key']}={d.get('value', '*')}"
        if d.get("shadow_mode"):
            out.add(here)
        out |= shadow_paths(d.get("descriptors") or [], here)
    return out


@pytest.mark.parametrize("mode", ["shadow", "enforce", "off"])
def test_envoy_shadow_mode_iff_the_target_is_in_shadow(mode: str) -> None:
    targets = {"abuse": {"mode": mode, "bands": BANDS}}
    exemptions = [{"target": "abuse", "attribute": "tier", "value": "enterprise", "reason": "bias"}]
    p = make_policy(targets=targets, exemptions=exemptions)
    doc = check_envoy(to_envoy_ratelimit(p))
    bands = {d["value"] for d in doc["descriptors"] if d["key"] == "band"}
    assert bands == (set() if mode == "off" else {"abuse:0.5", "abuse:0.9"})
    expected = {
        f"/band={b}/tier={t}/client_id=*"
        for b in ("abuse:0.5", "abuse:0.9")
        for t in ("free", "pro", "*")  # enterprise is exempt from model action
    }
    assert shadow_paths(doc["descriptors"]) == (expected if mode == "shadow" else set())
    # the exempt tier must not fall through to the value-less "tier" entry
    exempt = envoy_limit(doc, ("band", "abuse:0.9"), ("tier", "enterprise"), ("client_id", "x"))
    other = envoy_limit(doc, ("band", "abuse:0.9"), ("tier", "gold"), ("client_id", "x"))
    assert exempt is None
    assert other == (None if mode == "off" else {**other, "requests_per_unit": 0})


def test_envoy_checker_catches_what_ratelimit_rejects() -> None:
    for descriptors in (
        [{"key": "a", "rate_limit": {"unit": "week", "requests_per_unit": 1}}],
        [{"key": "a"}, {"key": "a"}],
        [{"key": "a", "shadow": True}],
        [{"key": "a", "rate_limit": {"unit": "minute", "requests_per_unit": 1.5}}],
        [{"key": "a", "shadow_mode": True}],
    ):
        with pytest.raises(AssertionError):
            check_envoy(yaml.safe_dump({"domain": "d", "descriptors": descriptors}))


# ---------------------------------------------------------------- NGINX


def nginx_conf(tmp: Path, parts: dict[str, str], port: int, upstream: str, extra: str = "") -> Path:
    (tmp / "gatewise_http.conf").write_text(parts["http"])
    (tmp / "gatewise_location.conf").write_text(parts["location"])
    temp = " ".join(
        f"{k}_temp_path {tmp / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\n{extra}\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log off;\n  {temp}\n  include {tmp / 'gatewise_http.conf'};\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        f"    location / {{\n      include {tmp / 'gatewise_location.conf'};\n"
        f"      proxy_pass http://{upstream};\n    }}\n  }}\n"
        + (
            f"  server {{ listen {upstream}; return 200 ok; }}\n"
            if upstream != "127.0.0.1:9"
            else ""
        )
        + "}\n"
    )
    return conf


@pytest.mark.parametrize("dry_run", [False, True])
def test_nginx_accepts_the_config(policy: Policy, tmp_path: Path, dry_run: bool) -> None:
    nginx = nginx_binary()
    parts = to_nginx(policy, dry_run=dry_run)
    conf = nginx_conf(tmp_path, parts, 18080, "127.0.0.1:9")
    run = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert ("limit_req_dry_run on;" in parts["location"]) is dry_run


def test_nginx_snippets_follow_the_policy(policy: Policy) -> None:
    parts = to_nginx(policy, zone_size="1m")
    http, location = parts["http"], parts["location"]
    assert http.startswith("# gatewise policy v3 (parent v2)")
    zones = dict(re.findall(r"zone=(gatewise_\w+):1m rate=(\d+)r/m;", http))
    assert zones == {
        "gatewise_t0_free": "60",
        "gatewise_t0_free_r1": "6",
        "gatewise_t1_pro": "600",
        "gatewise_t1_pro_r1": "60",
        "gatewise_t2_enterprise": "6000",
        "gatewise_t2_enterprise_r1": "600",
        "gatewise_o30": "30",
        "gatewise_o30_r1": "3",
    }
    assert set(re.findall(r"limit_req zone=(gatewise_\w+)", location)) == set(zones)
    assert "limit_req zone=gatewise_t0_free burst=59 nodelay;" in location  # capacity 60
    blocked = re.search(r"map \$http_x_consumer_id \$gatewise_blocked \{(.*?)\}", http, re.S)
    assert blocked and re.findall(r"^\s+(\S+) 1;$", blocked.group(1), re.M) == ["c1", "c3"]
    assert "limit_req_status 429;" in http and "limit_req_dry_run" not in location
    with pytest.raises(ValueError, match="map"):
        to_nginx(make_policy(overrides=[{"client_id": "a b", "action": "block", "reason": "r"}]))
    with pytest.raises(ValueError, match="zone_size"):
        to_nginx(policy, zone_size="lots")


@pytest.mark.integration
def test_nginx_enforces_the_policy(tmp_path: Path) -> None:
    """A real NGINX with the snippets: 429 past each limit, 403 for denied clients."""
    nginx = nginx_binary()
    p = parse_policy(
        {
            "tiers": {"free": {"requests_per_minute": 3}, "pro": {"requests_per_minute": 6}},
            "routes": {ROUTE: {"cost": 3}},
            "overrides": [
                {"client_id": "c1", "action": "block", "reason": "r"},
                {"client_id": "c2", "action": "throttle", "requests_per_minute": 2, "reason": "r"},
            ],
        }
    )
    port, upstream = free_port(), f"127.0.0.1:{free_port()}"
    extra = "daemon off;\nmaster_process off;"
    conf = nginx_conf(tmp_path, to_nginx(p, zone_size="1m"), port, upstream, extra)
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)

        def codes(n: int, path: str = "/v1/items", **headers: str) -> list[int]:
            out = []
            for _ in range(n):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
                out.append(c.getresponse().status)
                c.close()
            return out

        assert codes(4, x_consumer_id="u1", x_consumer_tier="free") == [200] * 3 + [429]
        assert codes(7, x_consumer_id="u2", x_consumer_tier="pro") == [200] * 6 + [429]
        assert codes(4, x_consumer_id="u3", x_consumer_tier="gold") == [200] * 3 + [429]
        assert codes(2, "/v1/reports/export", x_consumer_id="u4") == [200, 429]  # 3 // cost 3
        assert codes(3, x_consumer_id="c2", x_consumer_tier="pro") == [200, 200, 429]
        assert codes(2, x_consumer_id="c1", x_consumer_tier="pro") == [403, 403]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- dispatcher


def test_export_dispatches_and_names_the_choices(policy: Policy) -> None:
    assert EXPORTERS == ("kong", "envoy", "nginx")
    check_kong(export(policy, "kong"))
    check_envoy(export(policy, "envoy"))
    text = export(policy, "nginx")
    assert "part 1: include inside http { }" in text and "part 2:" in text
    parts = to_nginx(policy)
    assert parts["http"] in text and parts["location"] in text
    with pytest.raises(ValueError, match="kong, envoy, nginx"):
        export(policy, "haproxy")


def test_kong_gives_a_client_with_an_allowance_its_own_limit(policy: Policy) -> None:
    from gateway.policy import Allowance

    later = datetime.now(UTC) + timedelta(days=1)
    p = policy.model_copy(
        update={
            "allowances": {
                "dana": Allowance(requests_per_minute=900, reason="heavy", expires_at=later),
                "old": Allowance(
                    requests_per_minute=900, reason="x", expires_at=later - timedelta(days=3)
                ),
            }
        }
    )
    doc = check_kong(to_kong(p, consumers={"dana": "free"}, routes=[("POST", "/v1/orders", "o")]))
    assert kong_config(doc, "rate-limiting", "dana", "o")["minute"] == 900  # not free's 60
    assert kong_config(doc, "rate-limiting", "anon", "o")["minute"] == 60
    assert "old" not in {c["username"] for c in doc["consumers"]}  # expired
    # Envoy and NGINX say they leave allowances out
    assert "allowances are not exported" in to_envoy_ratelimit(p)
    assert "allowances are not exported" in to_nginx(p)["http"]
