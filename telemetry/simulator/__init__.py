"""Labelled traffic simulator: realistic API clients, abuse scenarios and their look-alikes.

``simulate(SimulatorSettings(clients=500, days=1))`` returns the events, the truth of
every client window and the consumers table as Arrow tables. The truth is not labels: it
becomes labels only when imported (``labeling/simulated.py``), so a data dir can also be
built from telemetry and consumers alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from config.simulator import SimulatorSettings

from telemetry.schema import TS

__all__ = ["TRUTH_SCHEMA", "SimulationResult", "simulate"]

# one row per client and window with traffic: 1 if any request in it was abuse
TRUTH_SCHEMA = pa.schema(
    [
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TS, nullable=False),  # start of the window
        pa.field("label", pa.int8(), nullable=False),  # 1 = abusive
        pa.field("source", pa.string(), nullable=False),  # "simulator"
        pa.field("scenario", pa.string()),  # the client's role
    ]
)


@dataclass
class SimulationResult:
    events: pa.Table  # telemetry contract; no ground truth in it
    labels: pa.Table  # TRUTH_SCHEMA: one row per client and label window with traffic
    consumers: pa.Table  # CONSUMERS_SCHEMA: current attributes per client
    clients: pa.Table  # per-client truth for analysis and tests (role, sign-up, churn)


def simulate(cfg: SimulatorSettings) -> SimulationResult:
    """Generate ``cfg.days`` of traffic for ``cfg.clients`` clients. Same seed, same output."""
    from config.demo_api import ROUTES
    from telemetry.simulator.population import ROLE_NAMES, make_population
    from telemetry.simulator.surface import DEVICE_TYPES, REGION_NAMES
    from telemetry.simulator.traffic import expand_events, plan_episodes

    rng = np.random.default_rng(cfg.seed)
    weights = np.array([r.weight for r in ROUTES])
    pop = make_population(cfg, len(ROUTES), weights, rng)
    if cfg.traffic_seed is not None:  # the same clients, other traffic
        rng = np.random.default_rng(cfg.traffic_seed)
    episodes = plan_episodes(pop, cfg, rng)
    events, abusive = expand_events(pop, episodes, cfg, rng)

    labels = _labels(events, abusive, pop, cfg, ROLE_NAMES)
    horizon = cfg.days * 86_400.0
    tiers = np.array(["free", "pro", "enterprise"])
    final_tier = tiers[pop.tier_at(np.arange(pop.n), np.full(pop.n, horizon))]
    consumers = pa.table(
        {
            "client_id": pa.array(pop.client_id),
            "tier": pa.array(final_tier),
            "region": pa.array(np.array(REGION_NAMES)[pop.region]),
            "device_type": pa.array(np.array(DEVICE_TYPES)[pop.device]),
        }
    )
    start_us = int(cfg.start.timestamp() * 1e6)

    def ts(sec: np.ndarray) -> pa.Array:
        finite = np.isfinite(sec)
        return pa.array(
            np.where(finite, start_us + sec * 1e6, 0).astype("int64"),
            pa.timestamp("us", tz="UTC"),
            mask=~finite,
        )

    clients = consumers.append_column("role", pa.array(np.array(ROLE_NAMES)[pop.role]))
    clients = clients.append_column("abusive", pa.array(pop.is_abusive))
    clients = clients.append_column("signup_at", ts(pop.signup_at)).append_column(
        "churn_at", ts(pop.churn_at)
    )
    clients = clients.append_column("upgrade_at", ts(pop.upgrade_at))
    return SimulationResult(events=events, labels=labels, consumers=consumers, clients=clients)


def _labels(
    events: pa.Table,
    abusive: np.ndarray,
    pop: object,
    cfg: SimulatorSettings,
    role_names: tuple[str, ...],
) -> pa.Table:
    """One label per (client, window with traffic): 1 if any request in it was abuse."""
    win_us = cfg.label_window_minutes * 60 * 1_000_000
    ts = events.column("timestamp").cast(pa.int64()).to_numpy()
    window = ts - ts % win_us
    t = pa.table(
        {
            "client_id": events.column("client_id"),
            "window": window,
            "abusive": abusive.astype(np.int8),
        }
    )
    g = t.group_by(["client_id", "window"]).aggregate([("abusive", "max")])
    roles = dict(zip(pop.client_id.tolist(), np.array(role_names)[pop.role].tolist(), strict=True))  # type: ignore[attr-defined]
    scen = pa.array([roles[c] for c in g.column("client_id").to_pylist()])
    out = pa.table(
        {
            "client_id": g.column("client_id"),
            "event_timestamp": g.column("window").cast(pa.timestamp("us", tz="UTC")),
            "label": g.column("abusive_max").cast(pa.int8()),
            "source": pa.array(np.full(g.num_rows, "simulator")),
            "scenario": scen,
        },
        schema=TRUTH_SCHEMA,
    )
    return out.sort_by([("event_timestamp", "ascending"), ("client_id", "ascending")])
