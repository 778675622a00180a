"""The simulated client population: attributes, lifecycle and roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from telemetry.simulator.surface import (
    DEVICE_TYPES,
    REGION_NAMES,
    REGIONS,
    USER_AGENTS,
    region_blocks,
)

if TYPE_CHECKING:
    from config.simulator import SimulatorSettings

__all__ = ["ABUSE_SCENARIOS", "LEGIT_ROLES", "Population", "make_population"]

TIER_NAMES = ("free", "pro", "enterprise")
ABUSE_SCENARIOS = (
    "credential_stuffing",
    "scraping",
    "flood",
    "key_sharing",
    "low_and_slow",
    # added after the labelling functions were fixed (issue 21); share 0 by default
    "carding",
    "scalping",
)
LEGIT_ROLES = (
    "legit",
    "heavy_enterprise",
    "mistypers",
    "catalog_sync",
    "batch_bursts",
    "multi_server_partners",
    "analysts",
)
ROLE_NAMES = ABUSE_SCENARIOS + LEGIT_ROLES
ROLE = {name: i for i, name in enumerate(ROLE_NAMES)}
N_ABUSE = len(ABUSE_SCENARIOS)

# UA pool flattened: ua index -> (device index, string)
UA_STRINGS = tuple(ua for d in DEVICE_TYPES for ua in USER_AGENTS[d])
UA_DEVICE = np.array([i for i, d in enumerate(DEVICE_TYPES) for _ in USER_AGENTS[d]])


@dataclass
class Population:
    """Column arrays, one entry per client (index = client number)."""

    client_id: np.ndarray  # str
    api_key_id: np.ndarray  # str
    tier0: np.ndarray  # tier index at sign-up
    upgrade_at: np.ndarray  # seconds since start when the tier went up one step (inf = never)
    region: np.ndarray  # region index
    device: np.ndarray  # device index
    ua: np.ndarray  # primary user-agent index
    ua_alt: np.ndarray  # second user agent (browsers on two machines, app updates)
    role: np.ndarray  # ROLE index
    rate: np.ndarray  # mean requests per day of normal traffic
    signup_at: np.ndarray  # seconds since start (negative = before)
    churn_at: np.ndarray  # seconds since start (inf = stays)
    home_base: np.ndarray  # uint32 first address of the client's own pool
    home_size: np.ndarray  # size of that pool
    carrier_base: np.ndarray  # uint32 base of the shared carrier pool (mobile) or 0
    flatness: np.ndarray  # 0 = strongly diurnal, 1 = flat around the clock
    login_fail: np.ndarray  # probability a login attempt fails
    route_pref: np.ndarray  # (n, n_routes) per-client route weights

    @property
    def n(self) -> int:
        return len(self.client_id)

    @property
    def is_abusive(self) -> np.ndarray:
        return self.role < N_ABUSE

    def tier_at(self, client: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.minimum(self.tier0[client] + (t >= self.upgrade_at[client]), 2)


def _choice(rng: np.random.Generator, n: int, p: list[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def make_population(
    cfg: SimulatorSettings, n_routes: int, route_weights: np.ndarray, rng: np.random.Generator
) -> Population:
    """Draw the clients. Abusers share the tier, region, device and
    user-agent distributions of legitimate clients: no attribute gives them away."""
    n_base = cfg.clients
    n_shift = round(n_base * cfg.drift.client_mix_shift)
    n = n_base + n_shift
    horizon = cfg.days * 86_400.0

    tier0 = _choice(rng, n, [0.70, 0.24, 0.06])
    region = _choice(rng, n, [REGIONS[r][0] for r in REGION_NAMES])
    device = _choice(rng, n, [0.33, 0.30, 0.27, 0.10])
    device[tier0 == 2] = np.where(rng.random((tier0 == 2).sum()) < 0.8, 0, device[tier0 == 2])

    # sign-ups: most clients exist before the start; new ones arrive steadily
    signup_at = -rng.uniform(0, 365 * 86_400.0, n)
    is_new = rng.random(n) < min(0.9, cfg.days / 120.0)
    signup_at = np.where(is_new, rng.uniform(0, horizon, n), signup_at)
    # the drift cohort: mobile clients signing up after the drift point
    if n_shift:
        extra = slice(n_base, n)
        device[extra] = 2
        signup_at[extra] = cfg.drift.after_day * 86_400.0 + rng.uniform(0, 3600.0, n_shift)
    # churn is memoryless, so a client alive at the start churns Exp(mean) after it
    churn_at = np.maximum(signup_at, 0.0) + rng.exponential(240 * 86_400.0, n)
    churn_at = np.where(churn_at < horizon, churn_at, np.inf)
    upgrade_at = np.where(
        (tier0 < 2) & (rng.random(n) < 0.35),
        signup_at + rng.exponential(120 * 86_400.0, n),
        np.inf,
    )

    # user agents drawn from the device's pool (abusers too)
    ua = np.empty(n, dtype=np.int64)
    ua_alt = np.empty(n, dtype=np.int64)
    for d in range(len(DEVICE_TYPES)):
        idx = np.flatnonzero(device == d)
        pool = np.flatnonzero(d == UA_DEVICE)
        ua[idx] = rng.choice(pool, size=len(idx))
        ua_alt[idx] = rng.choice(pool, size=len(idx))

    role = _assign_roles(cfg, tier0, rng, n)

    # volume: heavy-tailed, by tier
    tier_mult = np.array([0.55, 1.6, 5.0])[tier0]
    rate = rng.lognormal(0.0, 0.9, n) * tier_mult
    rate *= cfg.mean_requests_per_client_day / rate.mean()

    flatness = np.select(
        [device == 0, device == 3],
        [rng.uniform(0.3, 0.9, n), rng.uniform(0.7, 1.0, n)],
        rng.uniform(0.0, 0.35, n),
    )
    login_fail = rng.beta(1.2, 30, n)

    # addresses: a small own pool; mobile clients also use their carrier's shared NAT pool
    kind = np.select([device == 0, device == 2], [0, 2], 1)
    block = region_blocks(region, kind)
    home_base = block + rng.integers(256, 1 << 16, n).astype(np.uint32)
    home_size = np.where(device == 0, rng.integers(1, 4, n), rng.integers(1, 3, n))
    carrier = rng.integers(0, 4, n).astype(np.uint32)
    carrier_base = np.where(device == 2, block + carrier * 256, 0).astype(np.uint32)

    # route preference: global Zipf weights bent by a per-client Dirichlet draw
    route_pref = route_weights[None, :] * rng.gamma(0.6, 1.0, (n, n_routes))
    _apply_role_traits(cfg, role, rate, flatness, login_fail, home_size, region, device, rng)

    return Population(
        client_id=np.array([f"c{i:07d}" for i in range(n)]),
        api_key_id=np.array([f"key_{i:07d}" for i in range(n)]),
        tier0=tier0,
        upgrade_at=upgrade_at,
        region=region,
        device=device,
        ua=ua,
        ua_alt=ua_alt,
        role=role,
        rate=rate,
        signup_at=signup_at,
        churn_at=churn_at,
        home_base=home_base,
        home_size=home_size,
        carrier_base=carrier_base,
        flatness=flatness,
        login_fail=login_fail,
        route_pref=route_pref / route_pref.sum(axis=1, keepdims=True),
    )


def _assign_roles(
    cfg: SimulatorSettings, tier0: np.ndarray, rng: np.random.Generator, n: int
) -> np.ndarray:
    role = np.full(n, ROLE["legit"])
    order = rng.permutation(n)
    pos = 0
    shares = cfg.scenarios.model_dump()
    look = cfg.lookalikes.model_dump()
    for name in ABUSE_SCENARIOS:
        k = round(n * shares[name])
        role[order[pos : pos + k]] = ROLE[name]
        pos += k
    for name in ("mistypers", "catalog_sync", "batch_bursts", "multi_server_partners", "analysts"):
        k = round(n * look[name])
        role[order[pos : pos + k]] = ROLE[name]
        pos += k
    legit_ent = np.flatnonzero((role == ROLE["legit"]) & (tier0 == 2))
    k = round(len(legit_ent) * look["heavy_enterprise"])
    role[rng.choice(legit_ent, size=k, replace=False)] = ROLE["heavy_enterprise"]
    return role


def _apply_role_traits(
    cfg: SimulatorSettings,
    role: np.ndarray,
    rate: np.ndarray,
    flatness: np.ndarray,
    login_fail: np.ndarray,
    home_size: np.ndarray,
    region: np.ndarray,
    device: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Per-role tweaks of the everyday traffic (the special episodes come later)."""
    m = role == ROLE["mistypers"]
    login_fail[m] = rng.uniform(0.25, 0.6, m.sum())
    m = role == ROLE["low_and_slow"]
    flatness[m] = rng.uniform(0.5, 1.0, m.sum())
    login_fail[m] = rng.uniform(0.15, 0.5, m.sum())
    m = role == ROLE["scraping"]
    flatness[m] = rng.uniform(0.6, 1.0, m.sum())
    m = role == ROLE["multi_server_partners"]
    home_size[m] = rng.integers(8, 40, m.sum())
    flatness[m] = rng.uniform(0.5, 1.0, m.sum())
    m = role == ROLE["heavy_enterprise"]
    rate[m] *= rng.uniform(3, 8, m.sum())
    # skewed group: legitimately noisier (shared addresses, more failed logins)
    if cfg.skew.factor > 1.0:
        col = {"region": region, "device_type": device}.get(cfg.skew.column)
        names = {"region": REGION_NAMES, "device_type": DEVICE_TYPES}.get(cfg.skew.column, ())
        if col is not None and cfg.skew.value in names:
            g = (col == names.index(cfg.skew.value)) & (role >= N_ABUSE)
            login_fail[g] = np.minimum(login_fail[g] * cfg.skew.factor, 0.8)
            home_size[g] = np.ceil(home_size[g] * cfg.skew.factor).astype(home_size.dtype)
            rate[g] *= cfg.skew.factor**0.5
