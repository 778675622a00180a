"""Turn a population into request events, vectorised.

Traffic is built from *episodes*: a client, a start, a duration, a number of
requests and a mode (everyday use, a stuffing burst, an enumeration run, ...).
Everyday use is one episode per client-hour with a Poisson count shaped by
diurnal and weekly seasonality; the scenarios add their own episodes. Every
per-event attribute is then drawn for all events at once (numpy), and strings
are assembled in Arrow, so there is no Python loop per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config.demo_api import ROUTES, SERVICE_NAMES, SERVICES, route_id
from telemetry.simulator.population import ROLE, UA_STRINGS, Population
from telemetry.simulator.surface import DEVICE_TYPES, REGION_NAMES, REGIONS, region_blocks

if TYPE_CHECKING:
    from config.simulator import SimulatorSettings

__all__ = ["MODES", "Episodes", "expand_events", "plan_episodes"]

MODES = (
    "normal",
    "stuff",
    "enum",
    "flood",
    "shared",
    "slow",
    "batch",
    "export",
    "retry",
    "card",  # card testing: declined payments from rotating addresses
    "scalp",  # scalping: a few hot items polled for hours, orders when they turn up
)
M = {m: i for i, m in enumerate(MODES)}
# modes whose requests are abusive
ABUSIVE_MODES = np.array(
    [m in ("stuff", "flood", "shared", "slow", "card", "scalp") for m in MODES]
)
DAY = 86_400.0


@dataclass
class Episodes:
    client: np.ndarray
    start: np.ndarray  # seconds since simulation start
    dur: np.ndarray  # seconds
    n: np.ndarray  # requests
    mode: np.ndarray
    abusive: np.ndarray  # bool: these requests are abuse (labels)
    route: np.ndarray  # fixed route for enum runs, -1 otherwise

    @staticmethod
    def concat(parts: list[Episodes]) -> Episodes:
        return Episodes(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Episodes.__dataclass_fields__)
        )


def _episodes(
    client: np.ndarray,
    start: np.ndarray,
    dur: np.ndarray,
    rate: np.ndarray,
    mode: str,
    abusive: bool,
    route: np.ndarray | int = -1,
) -> Episodes:
    n = np.maximum(np.round(rate * dur), 1).astype(np.int64)
    k = len(client)
    return Episodes(
        client=client.astype(np.int64),
        start=start.astype(float),
        dur=dur.astype(float),
        n=n,
        mode=np.full(k, M[mode]),
        abusive=np.full(k, abusive),
        route=np.broadcast_to(np.asarray(route, dtype=np.int64), (k,)).copy(),
    )


def _per_day(
    pop: Population, role: str, per_day: float, days: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(client, day) pairs: each client of ``role`` gets Poisson(per_day) episodes a day."""
    clients = np.flatnonzero(pop.role == ROLE[role])
    counts = rng.poisson(per_day, (len(clients), days))
    counts[:, 0] = np.maximum(counts[:, 0], 1)  # every scenario client acts at least once
    cl = np.repeat(np.repeat(clients, days), counts.ravel())
    day = np.repeat(np.tile(np.arange(days), len(clients)), counts.ravel())
    return cl, day


def plan_episodes(pop: Population, cfg: SimulatorSettings, rng: np.random.Generator) -> Episodes:
    days = int(np.ceil(cfg.days))
    hours = int(np.ceil(cfg.days * 24))
    parts = [_everyday(pop, hours, rng)]

    def burst(
        role: str,
        per_day: float,
        dur: tuple[float, float],
        rate: tuple[float, float],
        mode: str,
        abusive: bool,
        night: bool = False,
        route: np.ndarray | int = -1,
    ) -> None:
        cl, day = _per_day(pop, role, per_day, days, rng)
        if night:  # local 01:00-05:00
            off = np.array([REGIONS[r][1] for r in REGION_NAMES])[pop.region[cl]]
            start = day * DAY + ((rng.uniform(1, 5, len(cl)) - off) % 24) * 3600
        else:
            start = day * DAY + rng.uniform(0, DAY, len(cl))
        d = rng.uniform(*dur, len(cl))
        r = rng.uniform(*rate, len(cl))
        routes = np.atleast_1d(np.asarray(route))
        rt = routes[rng.integers(0, len(routes), len(cl))]
        parts.append(_episodes(cl, start, d, r, mode, abusive, rt))

    enum_routes = np.array(
        [route_id("GET", "/v1/products/{id}"), route_id("GET", "/v1/users/{id}")]
    )
    sync_routes = np.array(
        [route_id("GET", "/v1/products/{id}"), route_id("GET", "/v1/inventory/{id}")]
    )
    # abuse
    burst("credential_stuffing", 1.2, (240, 1_200), (0.4, 3.0), "stuff", True)
    burst("scraping", 1.5, (2 * 3600, 8 * 3600), (0.03, 0.15), "enum", True, route=enum_routes)
    burst("flood", 1.5, (40, 180), (12, 60), "flood", True)
    # legitimate look-alikes
    burst("heavy_enterprise", 1.5, (60, 150), (22, 45), "batch", False)
    burst("catalog_sync", 3.0, (600, 3_600), (0.05, 0.4), "enum", False, route=sync_routes)
    burst("batch_bursts", 1.2, (60, 300), (8, 40), "batch", False, night=True)
    burst("analysts", 1.5, (600, 3_600), (0.01, 0.06), "export", False)
    burst("mistypers", 2.0, (20, 90), (0.05, 0.15), "retry", False)
    # the styles added after the labelling functions were fixed (share 0 unless asked for:
    # no random draw happens for a role without clients, so other traffic stays as it was)
    burst("carding", 1.0, (600, 2_400), (0.3, 1.5), "card", True)
    burst("scalping", 1.0, (3_600, 3 * 3_600), (0.4, 2.0), "scalp", True)
    return Episodes.concat(parts)


def _everyday(pop: Population, hours: int, rng: np.random.Generator) -> Episodes:
    """One episode per client-hour: Poisson counts with diurnal + weekly shape."""
    t = (np.arange(hours) + 0.5) * 3600.0  # hour midpoints
    offset = np.array([REGIONS[r][1] for r in REGION_NAMES])[pop.region]
    local_h = (t[None, :] / 3600.0 + offset[:, None]) % 24
    profile = 1 + 0.95 * np.cos(2 * np.pi * (local_h - 15) / 24)  # peak mid-afternoon, mean 1
    flat = pop.flatness[:, None]
    shape = flat + (1 - flat) * profile
    weekday = ((t[None, :] + offset[:, None] * 3600) // DAY % 7).astype(int)  # day 0 is a Monday
    shape = shape * np.where(weekday >= 5, 1 - 0.45 * (1 - flat), 1.0)
    active = (t[None, :] >= pop.signup_at[:, None]) & (t[None, :] < pop.churn_at[:, None])
    mult = np.ones(pop.n)
    mode_of = np.full(pop.n, M["normal"])
    # abusers' own traffic: cover traffic for most; everything they do for these
    for role, m, k in (("key_sharing", "shared", 4.0), ("low_and_slow", "slow", 1.3)):
        sel = pop.role == ROLE[role]
        mode_of[sel] = M[m]
        mult[sel] = k
    for role in ("credential_stuffing", "scraping", "flood", "carding", "scalping"):
        mult[pop.role == ROLE[role]] = 0.5
    lam = (pop.rate * mult / 24.0)[:, None] * shape * active
    counts = rng.poisson(lam)
    cl, hr = np.nonzero(counts)
    n = counts[cl, hr]
    mode = mode_of[cl]
    return Episodes(
        client=cl.astype(np.int64),
        start=hr * 3600.0,
        dur=np.full(len(cl), 3600.0),
        n=n.astype(np.int64),
        mode=mode,
        abusive=ABUSIVE_MODES[mode],
        route=np.full(len(cl), -1, dtype=np.int64),
    )


def _ip_strings(addr: np.ndarray) -> pa.Array:
    octets = [pc.cast(pa.array((addr >> s) & 255), pa.string()) for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def _hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    lut = (
        np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")
        .view(np.uint8)
        .reshape(256, 2)
    )
    chars = lut[raw].reshape(n, 32)
    return pa.array(chars.view("S32").ravel().astype(str))


def expand_events(
    pop: Population, ep: Episodes, cfg: SimulatorSettings, rng: np.random.Generator
) -> tuple[pa.Table, np.ndarray]:
    """Episodes -> (events table in the contract schema, per-event abusive flag)."""
    from telemetry.schema import EVENT_SCHEMA

    horizon = cfg.days * DAY
    total = int(ep.n.sum())
    e_idx = np.repeat(np.arange(len(ep.n)), ep.n)
    cl = ep.client[e_idx]
    mode = ep.mode[e_idx]
    # position inside the episode: everyday use clusters into sessions, bursts are steady
    rank = np.arange(total) - np.repeat(np.cumsum(ep.n) - ep.n, ep.n)
    u = rng.random(total)
    is_normal = np.isin(ep.mode, [M["normal"], M["shared"], M["slow"]])[
        e_idx
    ]  # everyday use, not a run
    centre = rng.random(len(ep.n))[e_idx]
    clustered = is_normal & (rng.random(total) < 0.6 * (1 - pop.flatness[cl]))
    frac = np.where(clustered, (centre + rng.normal(0, 0.03, total)) % 1.0, u)
    frac = np.where(is_normal, frac, (rank + rng.random(total) * 0.8) / ep.n[e_idx])
    t = ep.start[e_idx] + frac * ep.dur[e_idx]
    t = np.round(t * 1000) / 1000  # millisecond precision, like real gateway logs
    keep = (t >= 0) & (t < horizon) & (t >= pop.signup_at[cl]) & (t < pop.churn_at[cl])
    sel = np.flatnonzero(keep)
    sel = sel[np.argsort(t[sel], kind="stable")]
    e_idx, cl, mode, rank, t = e_idx[sel], cl[sel], mode[sel], rank[sel], t[sel]
    n = len(sel)
    abusive = ep.abusive[e_idx]

    route = _routes(pop, ep, e_idx, cl, mode, t, cfg, rng)
    ids = _ids(ep, e_idx, route, rank, rng)
    status, cache_hit = _status(pop, cl, mode, route, t, rank, ep, e_idx, rng)
    up_ms, dur_ms = _latency(route, t, cache_hit, status, cfg, rng)
    addr = _addresses(pop, cl, mode, rng)

    r_method = np.array([r.method for r in ROUTES])
    r_tmpl = np.array([r.template for r in ROUTES])
    r_service = np.array([r.service for r in ROUTES])
    has_id = np.array([r.id_space > 0 for r in ROUTES])[route]
    tmpl = pa.array(r_tmpl[route])
    prefix = pc.replace_substring(tmpl, "{id}", "")
    id_str = pc.if_else(pa.array(has_id), pc.cast(pa.array(ids), pa.string()), "")
    path = pc.binary_join_element_wise(prefix, id_str, "")
    query = _queries(route, rng)

    resp_median = np.array([r.resp_median for r in ROUTES])[route]
    resp = np.round(resp_median * rng.lognormal(0, 0.6, n))
    resp = np.select([status == 304, status >= 500, status >= 400], [0, 150, 110], resp).astype(
        np.int64
    )
    is_write = np.isin(r_method[route], ["POST", "PUT"])
    req_bytes = np.round(np.where(is_write, 1_400, 420) * rng.lognormal(0, 0.35, n)).astype(
        np.int64
    )

    ua_idx = np.where(rng.random(n) < 0.85, pop.ua[cl], pop.ua_alt[cl])
    tier = pop.tier_at(cl, t)
    gw_401 = status == 401
    auth = np.where(gw_401 & (route != route_id("POST", "/v1/auth/login")), "invalid_key", "ok")
    cacheable = np.array([r.cacheable and r.method == "GET" for r in ROUTES])[route]
    cache = np.where(cache_hit, "HIT", np.where(cacheable, "MISS", "BYPASS"))
    ts = (cfg.start.timestamp() * 1e6 + np.round(t * 1e6)).astype("int64")

    cols = {
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "request_id": _hex_ids(rng, n),
        "client_id": pa.array(pop.client_id[cl]),
        "api_key_id": pa.array(pop.api_key_id[cl]),
        "client_address": _ip_strings(addr),
        "user_agent": pa.DictionaryArray.from_arrays(pa.array(ua_idx), pa.array(UA_STRINGS)).cast(
            pa.string()
        ),
        "http_request_method": pa.array(r_method[route]),
        "url_path": path,
        "url_query": query,
        "http_route": tmpl,
        "http_response_status_code": pa.array(status.astype(np.int16)),
        "duration_ms": pa.array(dur_ms.astype(np.float32)),
        "upstream_duration_ms": pa.array(up_ms.astype(np.float32), mask=np.isnan(up_ms)),
        "request_bytes": pa.array(req_bytes),
        "response_bytes": pa.array(resp),
        "upstream_service": pa.array(r_service[route]),
        "cache_status": pa.array(cache),
        "auth_result": pa.array(auth),
        "ratelimit_decision": pa.array(np.full(n, "allow")),
        "tier": pa.array(np.array(["free", "pro", "enterprise"])[tier]),
        "region": pa.array(np.array(REGION_NAMES)[pop.region[cl]]),
        "device_type": pa.array(np.array(DEVICE_TYPES)[pop.device[cl]]),
    }
    table = pa.table(
        {f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in EVENT_SCHEMA}, schema=EVENT_SCHEMA
    )
    return table, np.asarray(abusive)


def _routes(
    pop: Population,
    ep: Episodes,
    e_idx: np.ndarray,
    cl: np.ndarray,
    mode: np.ndarray,
    t: np.ndarray,
    cfg: SimulatorSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    n = len(cl)
    pref = pop.route_pref
    new_r = route_id("GET", "/v2/recommendations/{id}")
    cum = np.cumsum(pref, axis=1).astype(np.float32)
    route = np.empty(n, dtype=np.int64)
    for lo in range(0, n, 262_144):  # chunked to bound memory
        hi = min(n, lo + 262_144)
        route[lo:hi] = (rng.random(hi - lo, dtype=np.float32)[:, None] > cum[cl[lo:hi]]).sum(axis=1)
    route = np.minimum(route, len(ROUTES) - 1)
    if cfg.drift.new_route:
        after = t >= cfg.drift.after_day * DAY
        route = np.where(after & (rng.random(n) < 0.08), new_r, route)
    elif (route == new_r).any():
        route = np.where(route == new_r, 0, route)

    def mix(sel: np.ndarray, choices: list[tuple[str, str]], p: list[float]) -> None:
        k = int(sel.sum())
        if k:
            ids = np.array([route_id(m, tpl) for m, tpl in choices])
            route[sel] = ids[rng.choice(len(ids), size=k, p=np.array(p) / sum(p))]

    mix(
        mode == M["stuff"],
        [
            ("POST", "/v1/auth/login"),
            ("POST", "/v1/auth/password-reset"),
            ("POST", "/v1/auth/token"),
        ],
        [0.9, 0.04, 0.06],
    )
    mix(mode == M["retry"], [("POST", "/v1/auth/login")], [1.0])
    mix(
        mode == M["flood"],
        [("GET", "/v1/search"), ("GET", "/v1/products"), ("GET", "/v1/products/{id}")],
        [0.5, 0.2, 0.3],
    )
    mix(
        mode == M["batch"],
        [("POST", "/v1/orders"), ("GET", "/v1/inventory/{id}"), ("GET", "/v1/products/{id}")],
        [0.4, 0.3, 0.3],
    )
    mix(mode == M["export"], [("GET", "/v1/reports/export"), ("GET", "/v1/orders")], [0.6, 0.4])
    mix(mode == M["card"], [("POST", "/v1/payments"), ("POST", "/v1/orders")], [0.85, 0.15])
    mix(
        mode == M["scalp"],
        [("GET", "/v1/inventory/{id}"), ("GET", "/v1/products/{id}"), ("POST", "/v1/orders")],
        [0.75, 0.1, 0.15],
    )
    slow = (mode == M["slow"]) & (rng.random(n) < 0.6)
    mix(
        slow,
        [
            ("POST", "/v1/auth/login"),
            ("POST", "/v1/auth/password-reset"),
            ("GET", "/v1/reports/export"),
            ("GET", "/v1/users/{id}"),
        ],
        [0.3, 0.12, 0.13, 0.45],
    )
    enum = ep.route[e_idx] >= 0
    route[enum] = ep.route[e_idx][enum]
    return route


def _ids(
    ep: Episodes, e_idx: np.ndarray, route: np.ndarray, rank: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    n = len(route)
    space = np.array([max(r.id_space, 1) for r in ROUTES])[route]
    # popular items: a Zipf-like head over a uniform tail
    ids = np.where(
        rng.random(n) < 0.6, np.minimum(rng.zipf(1.3, n), space), rng.integers(1, space + 1)
    )
    # enumeration runs walk the id space in order from a random start, with small skips
    enum = ep.route[e_idx] >= 0
    if enum.any():
        start = rng.integers(1, 150_000, len(ep.n))[e_idx[enum]]
        step = rank[enum] + rank[enum] // 20  # every 20th id is skipped (deleted items)
        ids[enum] = start + step
    # scalping polls the same handful of hot items for the whole run
    scalp = ep.mode[e_idx] == M["scalp"]
    if scalp.any():
        hot = rng.integers(1, 200_000, len(ep.n))[e_idx[scalp]]
        ids[scalp] = np.minimum(hot + rng.integers(0, 6, int(scalp.sum())), space[scalp])
    return ids.astype(np.int64)


def _status(
    pop: Population,
    cl: np.ndarray,
    mode: np.ndarray,
    route: np.ndarray,
    t: np.ndarray,
    rank: np.ndarray,
    ep: Episodes,
    e_idx: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(cl)
    u = rng.random(n)
    method = np.array([r.method for r in ROUTES])[route]
    has_id = np.array([r.id_space > 0 for r in ROUTES])[route]
    cacheable = np.array([r.cacheable for r in ROUTES])[route]
    status = np.select([method == "POST", method == "DELETE"], [201, 204], 200)
    login = route == route_id("POST", "/v1/auth/login")
    token = route == route_id("POST", "/v1/auth/token")
    reset = route == route_id("POST", "/v1/auth/password-reset")
    status = np.where(login | token, 200, status)
    status = np.where(reset, 202, status)
    fail_p = np.select([mode == M["stuff"], mode == M["retry"]], [0.93, 0.0], pop.login_fail[cl])
    # a mistyper's retry run: failures until the last attempt of the run
    last = rank == ep.n[e_idx] - 1
    fail = np.where(mode == M["retry"], ~last, u < fail_p)
    status = np.where(login & fail, 401, status)
    # card testing: most stolen or generated cards are declined; scalpers lose most races
    card = mode == M["card"]
    if card.any():
        pay = route == route_id("POST", "/v1/payments")
        status[card & pay] = np.where(rng.random(int((card & pay).sum())) < 0.85, 402, 201)
    scalp_order = (mode == M["scalp"]) & (route == route_id("POST", "/v1/orders"))
    if scalp_order.any():
        status[scalp_order] = np.where(rng.random(int(scalp_order.sum())) < 0.6, 409, 201)
    v = rng.random(n)
    missing = has_id & (v < np.where(ep.route[e_idx] >= 0, 0.08, 0.04))
    status = np.where(missing & (status == 200), 404, status)
    status = np.where((v > 0.994) & (status < 300), 400, status)
    w = rng.random(n)
    status = np.where((w < 0.003) & ~login, 401, status)  # bad or revoked key at the gateway
    status = np.where((w > 0.997) & ~login, 403, status)
    cache_hit = cacheable & (status == 200) & (rng.random(n) < 0.35)
    status = np.where(
        cacheable & (status == 200) & ~cache_hit & (rng.random(n) < 0.05), 304, status
    )
    # 5xx: a small base rate, much higher inside incidents and under floods
    inc = _incident_mask(route, t, rng)
    p5 = np.where(inc, 0.12, 0.003) + np.where(mode == M["flood"], 0.04, 0.0)
    status = np.where(
        ~cache_hit & (rng.random(n) < p5),
        rng.choice([500, 502, 503, 504], n, p=[0.3, 0.3, 0.3, 0.1]),
        status,
    )
    return status, cache_hit


def _incident_windows(horizon_days: float, seed: int) -> dict[str, list[tuple[float, float]]]:
    r = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float]]] = {}
    for s in SERVICE_NAMES:
        k = r.poisson(0.5 * max(horizon_days, 1))
        starts = r.uniform(0, horizon_days * DAY, k)
        out[s] = [(a, a + r.uniform(600, 2_700)) for a in starts]
    return out


def _incident_mask(route: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    svc = np.array([SERVICE_NAMES.index(r.service) for r in ROUTES])[route]
    windows = _incident_windows(float(t.max(initial=0) / DAY) + 1, int(rng.integers(1 << 30)))
    mask = np.zeros(len(t), dtype=bool)
    for i, s in enumerate(SERVICE_NAMES):
        for a, b in windows[s]:
            mask |= (svc == i) & (t >= a) & (t < b)
    return mask


def _latency(
    route: np.ndarray,
    t: np.ndarray,
    cache_hit: np.ndarray,
    status: np.ndarray,
    cfg: SimulatorSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(route)
    svc = np.array([r.service for r in ROUTES])[route]
    med = np.array([SERVICES[s][0] for s in SERVICE_NAMES])
    sig = np.array([SERVICES[s][1] for s in SERVICE_NAMES])
    si = np.array([SERVICE_NAMES.index(r.service) for r in ROUTES])[route]
    up = med[si] * rng.lognormal(0, 1, n) ** sig[si]
    up = np.where(status >= 500, up * rng.uniform(2, 8, n), up)
    if cfg.drift.latency_regression != 1.0:
        hit = (svc == cfg.drift.latency_service) & (t >= cfg.drift.after_day * DAY)
        up = np.where(hit, up * cfg.drift.latency_regression, up)
    gw_only = cache_hit | (status == 401) & (svc != "auth") | (status == 403)
    up = np.where(gw_only, np.nan, up)
    overhead = rng.lognormal(np.log(1.1), 0.4, n)
    dur = np.where(np.isnan(up), overhead, up + overhead)
    return np.round(up, 3), np.round(dur, 3)


def _addresses(
    pop: Population, cl: np.ndarray, mode: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    n = len(cl)
    addr = pop.home_base[cl] + rng.integers(0, pop.home_size[cl]).astype(np.uint32)
    mobile = pop.device[cl] == 2
    carrier = pop.carrier_base[cl] + rng.integers(0, 256, n).astype(np.uint32)
    addr = np.where(mobile & (rng.random(n) < 0.7), carrier, addr)
    # stuffing: residential proxies anywhere in the world, shared with real users' carriers
    stuff = mode == M["stuff"]
    k = int(stuff.sum())
    if k:
        reg = rng.integers(0, len(REGION_NAMES), k)
        kind = rng.integers(1, 3, k)
        addr[stuff] = region_blocks(reg, kind) + rng.integers(0, 1_280, k).astype(np.uint32)
    # card testing: rotating hosting and residential addresses, a few dozen per client
    card = mode == M["card"]
    k = int(card.sum())
    if k:
        c = cl[card].astype(np.uint32)
        reg = (pop.region[cl[card]] + rng.integers(0, 3, k)) % len(REGION_NAMES)
        kind = rng.integers(0, 2, k)
        addr[card] = region_blocks(reg, kind) + (c * 104_729 + rng.integers(0, 48, k)) % 60_000
    # scalping: a couple of servers in one hosting network
    scalp = mode == M["scalp"]
    k = int(scalp.sum())
    if k:
        c = cl[scalp].astype(np.uint32)
        reg = pop.region[cl[scalp]]
        addr[scalp] = (
            region_blocks(reg, np.zeros(k, dtype=np.int64))
            + (c * 7_919 + rng.integers(0, 3, k).astype(np.uint32)) % 60_000
        )
    # key sharing: one key from a few dozen addresses on several continents
    shared = mode == M["shared"]
    k = int(shared.sum())
    if k:
        c = cl[shared].astype(np.uint32)
        slot = rng.integers(0, 20 + c % 100).astype(np.uint32)
        reg = (pop.region[cl[shared]] + slot % (2 + c % 4)) % len(REGION_NAMES)
        addr[shared] = (
            region_blocks(reg, np.ones(k, dtype=np.int64)) + (c * 7919 + slot * 131) % 60_000
        )
    return addr.astype(np.uint32)


def _queries(route: np.ndarray, rng: np.random.Generator) -> pa.Array:
    n = len(route)
    kind = np.array([r.query for r in ROUTES])[route]
    terms = np.array(
        ["shoes", "laptop", "coffee", "usb-c", "desk", "lamp", "jacket", "phone", "kettle", "chair"]
    )
    page = pc.cast(pa.array(rng.integers(1, 6, n)), pa.string())
    term = pa.array(terms[rng.integers(0, len(terms), n)])
    search = pc.binary_join_element_wise("q=", term, "&page=", page, "")
    listing = pc.binary_join_element_wise("page=", page, "&limit=50", "")
    return pc.if_else(
        pa.array(kind == "search"),
        search,
        pc.if_else(pa.array(kind == "list"), listing, pa.nulls(n, pa.string())),
    )
