"""Simulated history that went through a gateway: refusals, 429s and cut-short sessions.

The simulator draws what clients *want* to send; a real gateway's telemetry also holds what
its policy did to them. ``through_gateway`` replays the simulated events in time order
through the decision core with a policy (usually the initial one: the static per-tier
limits), and writes the outcome into the telemetry the way the live gateway records it: a
refused request keeps its ``request_id`` but gets status 429 (throttle) or 403
(block/challenge), ``ratelimit_decision`` says why, the upstream never saw it (no upstream
time, a small body), and a legitimate client that was told to wait mostly does (its requests
in the following ``Retry-After`` seconds are dropped with probability ``backoff``: sessions
cut short), while an abusive client keeps hammering. Scenario parameters are untouched: the
truth of which windows were abusive stays as the simulator drew it.

    events = through_gateway(events, initial_policy(settings), abusive_clients, seed=7)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from gateway.auth import Principal
from gateway.decision import STATUS, DecisionCore
from gateway.policy import Policy
from gateway.ratelimit import MemoryLimiter

__all__ = ["through_gateway", "through_gateway_hook"]


def through_gateway(
    events: pa.Table,
    policy: Policy,
    abusive_clients: set[str],
    *,
    backoff: float = 0.8,
    seed: int = 0,
    target: str = "abuse",
) -> pa.Table:
    from telemetry.schema import EVENT_SCHEMA, conform

    if events.num_rows == 0:
        return events
    df = events.to_pandas()
    order = np.argsort(df["timestamp"].to_numpy(), kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    core = DecisionCore(policy, MemoryLimiter(), target=target)
    rng = np.random.default_rng(seed)
    ts = (pd.to_datetime(df["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    t = ts.to_numpy()
    n = len(df)
    keep = np.ones(n, dtype=bool)
    action = np.full(n, "allow", dtype=object)
    label = np.full(n, "allow", dtype=object)
    waiting: dict[str, float] = {}  # client -> until when it holds back
    principals: dict[tuple[Any, ...], Principal] = {}
    cols = zip(
        df["client_id"],
        df["http_request_method"],
        df["http_route"],
        df["auth_result"],
        df["tier"],
        df["region"],
        df["device_type"],
        strict=True,
    )
    for i, (cid, method, route, auth, tier, region, device) in enumerate(cols):
        if auth not in (None, "ok", "anonymous"):
            continue  # refused before any policy: recorded as it was
        until = waiting.get(cid)
        if until is not None:
            if t[i] < until and rng.random() < backoff:
                keep[i] = False  # it waited: this request was never sent
                continue
            if t[i] >= until:
                del waiting[cid]
        key = (cid, tier, region, device)
        p = principals.get(key)
        if p is None:
            p = principals[key] = Principal(cid, (), tier, region, device)
        d = core.decide(p, method, route, None, float(t[i]))
        action[i], label[i] = d.action, d.label
        if d.action != "allow" and cid not in abusive_clients:
            retry = d.rate.retry_after if d.rate is not None else 1.0
            waiting[cid] = t[i] + max(1.0, float(retry))
    refused = action != "allow"
    df["ratelimit_decision"] = np.where(
        df["auth_result"].isin(["ok", "anonymous"]) | df["auth_result"].isna(),
        label,
        df["ratelimit_decision"],
    )
    status = df["http_response_status_code"].to_numpy().copy()
    status[refused] = [STATUS[a] for a in action[refused]]
    df["http_response_status_code"] = status.astype(np.int16)
    df.loc[refused, "upstream_duration_ms"] = np.nan
    dur = df["duration_ms"].to_numpy(dtype=np.float64).copy()
    dur[refused] = np.round(rng.lognormal(np.log(1.1), 0.4, int(refused.sum())), 3)
    df["duration_ms"] = dur.astype(df["duration_ms"].dtype, copy=False)
    df.loc[refused, "response_bytes"] = 110
    df.loc[refused, "cache_status"] = "BYPASS"
    df = df[keep].reset_index(drop=True)
    return conform(pa.Table.from_pandas(df, preserve_index=False), EVENT_SCHEMA)


def through_gateway_hook(
    settings: Any, policy: Policy | None = None
) -> Callable[[pa.Table, Any], pa.Table]:
    """A ``run_simulation(transform=...)`` hook: the simulation's events through the
    ``policy`` (default: the initial policy of ``settings``)."""
    from gateway.policy import initial_policy

    pol = policy or initial_policy(settings)

    def hook(events: pa.Table, result: Any) -> pa.Table:
        cl = result.clients
        abusive = {
            str(c)
            for c, a in zip(
                cl.column("client_id").to_pylist(), cl.column("abusive").to_pylist(), strict=True
            )
            if a
        }
        return through_gateway(events, pol, abusive, seed=settings.simulator.seed)

    return hook
