"""Months of API consumers as telemetry, with the facts analytics must recover planted.

Consumers sign up (more of them as time goes on), call routes, sometimes reach the
funnel step ``POST /v1/orders``, upgrade, adopt a newly launched route, get throttled by
a stricter free-tier policy and churn. Churn is confounded on purpose: heavy users are
throttled more *and* churn less, so a naive throttled-vs-not comparison is biased and a
propensity-matched estimate has something to beat.

Every per-day draw comes from a generator seeded by ``(seed, day)`` (common random
numbers), so the same history is replayed without the throttle effect on churn; the
difference between the two worlds is the true effect (``truth["psm_truth"]["att"]``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config.demo_api import ROUTES, SERVICES, route_id
from config.simulator import LifecycleSettings
from telemetry.schema import conform
from telemetry.simulator.surface import DEVICE_TYPES, REGIONS, USER_AGENTS, region_blocks
from telemetry.simulator.traffic import _hex_ids, _ip_strings, _queries

__all__ = ["LifecycleResult", "simulate_lifecycle", "write_lifecycle"]

DAY_US = 86_400_000_000
TIERS = ("free", "pro", "enterprise")
FREE, PRO = 0, 1  # indices into TIERS
POLICIES = ("static-v1", "free-tightened-v2")
LAUNCH_ROUTE = "/v2/recommendations/{id}"
TIER_P = np.array([0.7, 0.25, 0.05])
TIER_MEDIAN = np.array([8.0, 20.0, 60.0])  # requests per active day, before scaling
TIER_CHURN = np.array([1.0, 0.6, 0.35])
DEVICE_P = {"server": 0.45, "browser": 0.25, "mobile": 0.2, "iot": 0.1}
SIGMA = 0.9  # lognormal spread of latent intensity
INTENSITY_CHURN = -0.35  # hazard x (intensity / tier median) ** this: heavy users stay
UPGRADE_HAZARD, ORDERED_UPGRADE_X = 0.003, 3.0
ADOPT_P, REC_SHARE = 0.02, 0.15
# free-tier policy: a consumer is exposed to the new limit (its traffic pattern exceeds it)
# with P = sigmoid(SLOPE * log(intensity / quota)), drawn once (a trait, so consumers
# not exposed stay untouched: a clean comparison); exposed consumers are throttled on
# an active day with P = DAY_P (some days stay under the limit)
SLOPE, FREE_QUOTA_X, PRO_QUOTA_X, PRO_MAX_P, DAY_P = 1.5, 2.0, 3.0, 0.05, 0.75
INCIDENT_5XX, SLO_FACTOR = 0.15, 3.0


@dataclass
class LifecycleResult:
    events: pa.Table  # EVENT_SCHEMA, sorted by timestamp
    consumers: pa.Table  # one row per consumer (tier at signup, lifecycle timestamps)
    truth: dict[str, Any]  # JSON-serialisable ground truth


@dataclass
class _Population:
    signup_day: np.ndarray
    tier0: np.ndarray
    region: np.ndarray
    device: np.ndarray
    lam: np.ndarray  # latent requests per active day
    activity: np.ndarray  # weekday probability of being active
    p_orders: np.ndarray  # share of requests that are POST /v1/orders
    hazard: np.ndarray  # churn hazard without tier and throttle factors
    u_exposed: np.ndarray  # uniform draw deciding exposure to the stricter limit
    scale: float  # tier medians x scale = medians of lam


@dataclass
class _World:
    """Active consumer-days (cells) and per-consumer outcomes of one replay."""

    cons: np.ndarray
    day: np.ndarray
    n: np.ndarray
    k_orders: np.ndarray
    k_recs: np.ndarray
    k_throttled: np.ndarray
    tier: np.ndarray
    churn_day: np.ndarray  # -1: never
    upgrade_day: np.ndarray


def _population(cfg: LifecycleSettings) -> _Population:
    r = np.random.default_rng([cfg.seed, 0])
    n, span = cfg.consumers, cfg.weeks * 7 - 7
    # signup density grows linearly to 2x: inverse CDF of (1 + x/span) on [0, span)
    signup = np.minimum(np.floor(span * (np.sqrt(1 + 3 * r.random(n)) - 1)), span - 1)
    tier0 = r.choice(3, n, p=TIER_P)
    shares = np.array([s for s, _ in REGIONS.values()])
    region = r.choice(len(REGIONS), n, p=shares / shares.sum())
    device = r.choice(len(DEVICE_TYPES), n, p=[DEVICE_P[d] for d in DEVICE_TYPES])
    scale = cfg.mean_requests_per_active_day / (TIER_P @ TIER_MEDIAN * np.exp(SIGMA**2 / 2))
    median = TIER_MEDIAN[tier0] * scale
    lam = median * np.exp(SIGMA * r.standard_normal(n))
    activity = r.beta(6.0, 4.0, n)  # mean 0.6
    weights = np.array([rt.weight for rt in ROUTES])
    base_orders = weights[route_id("POST", "/v1/orders")] / weights.sum()
    # 30% of integrations are read-only and never reach the funnel step
    p_orders = np.minimum(base_orders * r.exponential(1.0, n) * (r.random(n) > 0.3) / 0.7, 0.5)
    hazard = (
        cfg.base_churn_per_day
        * np.where(device == DEVICE_TYPES.index("iot"), 0.7, 1.0)
        * np.where(region == list(REGIONS).index("ap-south"), 1.3, 1.0)
        * (lam / median) ** INTENSITY_CHURN
    )
    u_exposed = r.random(n)
    args = (signup.astype(np.int64), tier0, region, device, lam, activity, p_orders, hazard)
    return _Population(*args, u_exposed=u_exposed, scale=float(scale))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _replay(cfg: LifecycleSettings, pop: _Population, hazard_ratio: float) -> _World:
    """Walk the days; draws depend only on (seed, day), so worlds share their luck."""
    n, days = cfg.consumers, cfg.weeks * 7
    policy, launch = cfg.policy_week * 7, cfg.launch_week * 7
    first_wd = cfg.start.weekday()
    churn_day = np.full(n, -1, np.int64)
    upgrade_day = np.full(n, -1, np.int64)
    first_throttle = np.full(n, -1, np.int64)
    ordered = np.zeros(n, bool)
    adopter = np.zeros(n, bool)
    log_lam = np.log(pop.lam)
    log_quota = np.log(np.array([FREE_QUOTA_X, PRO_QUOTA_X]) * TIER_MEDIAN[:2] * pop.scale)
    cells: list[np.ndarray] = []
    for d in range(days):
        r = np.random.default_rng([cfg.seed, 1, d])
        u_churn, u_up, u_act, u_adopt, u_thr = r.random((5, n))
        burst = r.gamma(4.0, 0.25, n)  # day-to-day variation of intensity
        count = np.maximum(r.poisson(pop.lam * burst), 1)
        k_thr = np.maximum(r.binomial(count, r.uniform(0.05, 0.4, n)), 1)
        k_ord = r.binomial(count, pop.p_orders)
        k_rec = r.binomial(count - k_ord, REC_SHARE)
        # start of the day: churn, then upgrades, of consumers signed up before today
        tier = np.where(upgrade_day >= 0, PRO, pop.tier0)
        throttled_before = (first_throttle >= 0) & (first_throttle < d)
        h = pop.hazard * TIER_CHURN[tier] * np.where(throttled_before, hazard_ratio, 1.0)
        existing = (pop.signup_day < d) & (churn_day < 0)
        churn_now = existing & (u_churn < np.minimum(h, 0.99))
        churn_day[churn_now] = d
        existing &= ~churn_now
        up_h = UPGRADE_HAZARD * np.where(ordered, ORDERED_UPGRADE_X, 1.0)
        upgrade_day[existing & (tier == FREE) & (u_up < up_h)] = d
        tier = np.where(upgrade_day >= 0, PRO, pop.tier0)
        weekend = (first_wd + d) % 7 >= 5
        p_act = pop.activity * (0.35 / 0.6 if weekend else 1.0)
        signing = pop.signup_day == d
        active = signing | (existing & (u_act < p_act))
        if d >= launch:
            adopter |= active & (u_adopt < ADOPT_P)
        throttle = np.zeros(n, bool)
        if d >= policy:
            p_free = _sigmoid(SLOPE * (log_lam - log_quota[0]))
            p_pro = PRO_MAX_P * _sigmoid(SLOPE * (log_lam - log_quota[1])) * (tier == PRO)
            exposed = pop.u_exposed < np.where(tier == FREE, p_free, p_pro)
            throttle = active & exposed & (u_thr < DAY_P)
            first_throttle[throttle & (first_throttle < 0)] = d
        ordered |= active & (k_ord > 0)
        k_rec, k_thr = np.where(adopter, k_rec, 0), np.where(throttle, k_thr, 0)
        i = np.flatnonzero(active)
        cells.append(
            np.stack([i, np.full(len(i), d), count[i], k_ord[i], k_rec[i], k_thr[i], tier[i]])
        )
    cons, day, n_req, k_o, k_r, k_t, tier_c = np.concatenate(cells, axis=1)
    return _World(cons, day, n_req, k_o, k_r, k_t, tier_c, churn_day, upgrade_day)


def _take(values: list[str], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(idx))


def _events(
    cfg: LifecycleSettings, pop: _Population, w: _World, incident: np.ndarray
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Cells -> events (sorted), plus per-event consumer, time (us) and throttle flag."""
    r = np.random.default_rng([cfg.seed, 2])
    n_cons, days = cfg.consumers, cfg.weeks * 7
    # stable per-consumer attributes: user agent, a few client addresses
    ua_flat = [ua for d in DEVICE_TYPES for ua in USER_AGENTS[d]]
    ua_len = np.array([len(USER_AGENTS[d]) for d in DEVICE_TYPES])
    ua_of = (np.cumsum(ua_len) - ua_len)[pop.device] + r.integers(0, ua_len[pop.device])
    n_addr = r.integers(1, 5, n_cons)
    block = region_blocks(pop.region, np.array([0, 1, 2, 1])[pop.device])
    addr = block[:, None] + (
        (r.integers(256, 60_000, n_cons)[:, None] + np.arange(4) * 1_237) % 65_536
    ).astype(np.uint32)
    addr_str = _ip_strings(addr.ravel())

    cell = np.repeat(np.arange(len(w.n)), w.n)
    total = len(cell)
    rank = np.arange(total) - np.repeat(np.cumsum(w.n) - w.n, w.n)
    offset = np.array([o for _, o in REGIONS.values()])[pop.region[w.cons]][cell]
    prof = 1 + 0.95 * np.cos(2 * np.pi * (np.arange(24) + 0.5 - 15) / 24)  # local mid-afternoon
    local_h = r.choice(24, total, p=prof / prof.sum()) + r.random(total)
    ms = np.floor(((local_h - offset) % 24) * 3_600_000).astype(np.int64)
    ts = int(cfg.start.timestamp() * 1_000_000) + w.day[cell] * DAY_US + ms * 1000
    order = np.argsort(ts, kind="stable")
    cell, rank, ts = cell[order], rank[order], ts[order]
    c, day = w.cons[cell], w.day[cell]

    orders_i, recs_i = route_id("POST", "/v1/orders"), route_id("GET", LAUNCH_ROUTE)
    other = np.array([i for i in range(len(ROUTES)) if i not in (orders_i, recs_i)])
    ow = np.array([ROUTES[i].weight for i in other])
    k_ord, k_rec = w.k_orders[cell], w.k_recs[cell]
    route = other[r.choice(len(other), total, p=ow / ow.sum())]
    route = np.where(rank < k_ord, orders_i, np.where(rank < k_ord + k_rec, recs_i, route))
    throttled = rank >= (w.n - w.k_throttled)[cell]

    e4xx = r.choice([400, 401, 404], total, p=[0.4, 0.2, 0.4])
    e5xx = r.choice([500, 502, 503, 504], total, p=[0.3, 0.3, 0.3, 0.1])
    status = np.where(r.random(total) < 0.03, e4xx, 200)
    on_incident = np.array([x.template == cfg.incident_route for x in ROUTES])[route]
    p5 = np.where(on_incident & np.isin(day, incident), INCIDENT_5XX, 0.003)
    status = np.where(throttled, 429, np.where(r.random(total) < p5, e5xx, status))
    cacheable = np.array([x.cacheable and x.method == "GET" for x in ROUTES])[route]
    cacheable &= status == 200
    hit = cacheable & (r.random(total) < 0.35)
    cache = _take(["", "MISS", "HIT"], cacheable.astype(np.int64) + hit)
    cache = pc.if_else(pa.array(cacheable), cache, pa.scalar(None, pa.string()))

    svc = [x.service for x in ROUTES]
    med = np.array([SERVICES[s][0] for s in svc])[route]
    sig = np.array([SERVICES[s][1] for s in svc])[route]
    up = med * np.exp(sig * r.standard_normal(total))
    up = np.where(status >= 500, up * r.uniform(2, 4, total), up)
    breach = np.array([x.template == cfg.slo_breach_route for x in ROUTES])[route]
    up = np.where(breach & (day >= days - 7), up * SLO_FACTOR, up)
    no_upstream = throttled | hit | (status == 401)
    duration = np.where(no_upstream, 0, up) + 2.0 * np.exp(0.3 * r.standard_normal(total))
    resp = np.array([x.resp_median for x in ROUTES])[route] * np.exp(0.6 * r.standard_normal(total))
    resp = np.where(status >= 400, 120 + r.integers(0, 60, total), np.round(resp))
    writes = np.array([x.method in ("POST", "PUT") for x in ROUTES])[route]
    req = np.round(np.where(writes, 1_400, 420) * np.exp(0.35 * r.standard_normal(total)))
    space = np.array([x.id_space for x in ROUTES])[route]
    ids = np.floor(r.random(total) * np.maximum(space, 1)).astype(np.int64) + 1
    tmpl = _take([x.template for x in ROUTES], route)
    id_str = pc.if_else(pa.array(space > 0), pc.cast(pa.array(ids), pa.string()), "")
    names = [f"acct-{i + 1:05d}" for i in range(n_cons)]
    table = pa.table(
        {
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "request_id": _hex_ids(r, total),
            "client_id": _take(names, c),
            "api_key_id": _take([f"key-{x}" for x in names], c),
            "client_address": pc.take(addr_str, pa.array(c * 4 + r.integers(0, n_addr[c]))),
            "user_agent": _take(ua_flat, ua_of[c]),
            "http_request_method": _take([x.method for x in ROUTES], route),
            "url_path": pc.binary_join_element_wise(
                pc.replace_substring(tmpl, "{id}", ""), id_str, ""
            ),
            "url_query": _queries(route, r),
            "http_route": tmpl,
            "http_response_status_code": pa.array(status, pa.int16()),
            "duration_ms": pa.array(np.round(duration, 3), pa.float32()),
            "upstream_duration_ms": pa.array(np.round(up, 3), pa.float32(), mask=no_upstream),
            "request_bytes": pa.array(req.astype(np.int64)),
            "response_bytes": pa.array(resp.astype(np.int64)),
            "upstream_service": _take(svc, route),
            "cache_status": cache,
            "auth_result": _take(["ok", "invalid_key"], (status == 401).astype(np.int64)),
            "ratelimit_decision": _take(["allow", "throttle"], throttled.astype(np.int64)),
            "policy_version": _take(list(POLICIES), (day >= cfg.policy_week * 7).astype(np.int64)),
            "tier": _take(list(TIERS), w.tier[cell]),
            "region": _take(list(REGIONS), pop.region[c]),
            "device_type": _take(list(DEVICE_TYPES), pop.device[c]),
        }
    )
    return conform(table), c, ts, throttled


def _seen(w: _World, n: int, a: int, b: int, *, throttled: bool = False) -> np.ndarray:
    """Per consumer: any request (or any throttled one) on days [a, b)."""
    sel = (w.day >= a) & (w.day < b) & ((w.k_throttled > 0) | (not throttled))
    out = np.zeros(n, bool)
    out[w.cons[sel]] = True
    return out


def _psm_truth(
    cfg: LifecycleSettings, actual: _World, counter: _World
) -> tuple[dict[str, Any], dict[str, list[int]], str | None]:
    """Eligible/treated/retained as defined for the propensity analysis, and the true ATT."""
    n, days, p = cfg.consumers, cfg.weeks * 7, cfg.policy_week * 7
    ret, note = (p + 42, p + 56), None
    if ret[1] > days:
        ret = (days - 14, days)
        note = "history too short for [P+42d, P+56d): retention uses the last 14 days"
    # landmark design: active before the change and still active in the week after the
    # treatment week (so nobody is a control merely for having left before a throttle)
    wins = {"eligibility": [max(p - 14, 0), p], "treatment": [p, min(p + 7, days)]}
    wins["landmark"] = [min(p + 7, days), min(p + 14, days)]
    wins["retention"] = list(ret)
    eligible = _seen(actual, n, *wins["eligibility"]) & _seen(actual, n, *wins["landmark"])
    treated = eligible & _seen(actual, n, *wins["treatment"], throttled=True)
    retained, retained_cf = _seen(actual, n, *ret), _seen(counter, n, *ret)
    untreated = eligible & ~treated
    n_t = int(treated.sum())
    att = float((retained[treated].astype(float) - retained_cf[treated]).mean()) if n_t else 0.0
    naive = float(retained[treated].mean() - retained[untreated].mean()) if n_t else 0.0
    psm = {
        "n_eligible": int(eligible.sum()),
        "n_treated": n_t,
        "retained_treated": int(retained[treated].sum()),
        "retained_treated_counterfactual": int(retained_cf[treated].sum()),
        "retained_untreated": int(retained[untreated].sum()),
        "att": att,
        "naive_difference": naive,
    }
    return psm, wins, note


def _incident_days(cfg: LifecycleSettings) -> np.ndarray:
    days = cfg.weeks * 7
    r = np.random.default_rng([cfg.seed, 4])
    pool = np.arange(max(days - 56, 0), days)
    return np.sort(r.choice(pool, cfg.incident_days, replace=False)).astype(np.int64)


def _consumers(
    cfg: LifecycleSettings,
    pop: _Population,
    w: _World,
    c: np.ndarray,
    ts: np.ndarray,
    throttled: np.ndarray,
) -> pa.Table:
    n, start_us = cfg.consumers, int(cfg.start.timestamp() * 1_000_000)
    r = np.random.default_rng([cfg.seed, 3])
    first = np.zeros(n, np.int64)
    who, at = np.unique(c, return_index=True)
    first[who] = ts[at]  # everyone is active on their signup day
    day0 = start_us + pop.signup_day * DAY_US
    signup = np.maximum(day0, first - r.integers(60, 1_800, n) * 1_000_000)
    thr = np.zeros(n, np.int64)
    who_t, at_t = np.unique(c[throttled], return_index=True)
    thr[who_t] = ts[throttled][at_t]
    has_thr = np.zeros(n, bool)
    has_thr[who_t] = True

    def col(us: np.ndarray, present: np.ndarray) -> pa.Array:
        return pa.array(us, pa.timestamp("us", tz="UTC"), mask=~present)

    return pa.table(
        {
            "client_id": pa.array([f"acct-{i + 1:05d}" for i in range(n)]),
            "tier": _take(list(TIERS), pop.tier0),
            "region": _take(list(REGIONS), pop.region),
            "device_type": _take(list(DEVICE_TYPES), pop.device),
            "signup": col(signup, np.ones(n, bool)),
            "upgraded_at": col(start_us + w.upgrade_day * DAY_US, w.upgrade_day >= 0),
            "churned_at": col(start_us + w.churn_day * DAY_US, w.churn_day >= 0),
            "throttled_first_at": col(thr, has_thr),
        }
    )


def simulate_lifecycle(cfg: LifecycleSettings) -> LifecycleResult:
    """Simulate the history; same settings, same output (byte for byte)."""
    pop = _population(cfg)
    actual = _replay(cfg, pop, cfg.throttle_hazard_ratio)
    counter = actual if cfg.throttle_hazard_ratio == 1.0 else _replay(cfg, pop, 1.0)
    incident = _incident_days(cfg)
    events, c, ts, throttled = _events(cfg, pop, actual, incident)
    consumers = _consumers(cfg, pop, actual, c, ts, throttled)
    psm, wins, note = _psm_truth(cfg, actual, counter)

    def iso(day: int) -> str:
        return (cfg.start + timedelta(days=int(day))).isoformat()

    truth: dict[str, Any] = {
        "seed": cfg.seed,
        "start": cfg.start.isoformat(),
        "end": cfg.end.isoformat(),
        "policy_start": iso(cfg.policy_week * 7),
        "policy_versions": list(POLICIES),
        "launch": iso(cfg.launch_week * 7),
        "launch_route": LAUNCH_ROUTE,
        "funnel_route": "POST /v1/orders",
        "slo_breach_route": cfg.slo_breach_route,
        "breach_start": iso(cfg.weeks * 7 - 7),
        "slo_latency_factor": SLO_FACTOR,
        "incident_route": cfg.incident_route,
        "incident_days": [iso(d)[:10] for d in incident],
        "incident_5xx_share": INCIDENT_5XX,
        "throttle_hazard_ratio": float(cfg.throttle_hazard_ratio),
        "counts": {
            "consumers": cfg.consumers,
            "events": events.num_rows,
            "churned": int((actual.churn_day >= 0).sum()),
            "upgraded": int((actual.upgrade_day >= 0).sum()),
            "throttled": int(cfg.consumers - consumers.column("throttled_first_at").null_count),
            "churned_counterfactual": int((counter.churn_day >= 0).sum()),
        },
        "windows": {k: [iso(a), iso(b)] for k, (a, b) in wins.items()},
        "retention_note": note,
        "psm_truth": psm,
        "naive_difference": psm["naive_difference"],
        "churn_model": {
            "base_per_day": cfg.base_churn_per_day,
            "tier_factor": dict(zip(TIERS, TIER_CHURN.tolist(), strict=True)),
            "device_factor": {"iot": 0.7},
            "region_factor": {"ap-south": 1.3},
            "intensity_exponent": INTENSITY_CHURN,
            "throttle_effect": "hazard x throttle_hazard_ratio from the day after the first 429",
        },
        "upgrade_model": {"hazard_per_day": UPGRADE_HAZARD, "after_orders_x": ORDERED_UPGRADE_X},
    }
    return LifecycleResult(events=events, consumers=consumers, truth=truth)


def write_lifecycle(cfg: LifecycleSettings, root: Path) -> LifecycleResult:
    """Simulate and store: events in ``root/telemetry``, consumers and truth beside them."""
    from telemetry.simulator.output import _atomic_parquet
    from telemetry.store import TelemetryStore

    result = simulate_lifecycle(cfg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    TelemetryStore(root / "telemetry").append(result.events)
    _atomic_parquet(result.consumers, root / "consumers.parquet")
    tmp = root / ".truth.json.tmp"
    tmp.write_text(json.dumps(result.truth, indent=2))
    os.replace(tmp, root / "truth.json")
    return result
