"""Simulator speed: events/s against two baselines measured in the same run.

- floor: materialising the same number of rows of random values in the
  contract schema (numpy + Arrow, no traffic logic): the least any vectorised
  generator must pay;
- per-event loop: a plain Python generator that builds one event dict at a
  time (the approach the issue rules out), on a sample, scaled up.

Usage: .venv/bin/python benchmarks/simulate.py [--clients 2000 --days 1]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import best_of, machine
from config.simulator import SimulatorSettings
from telemetry.schema import EVENT_SCHEMA
from telemetry.simulator import simulate
from telemetry.store import TelemetryStore


def floor(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {}
    for f in EVENT_SCHEMA:
        if pa.types.is_string(f.type):
            cols[f.name] = pa.array(rng.integers(0, 1000, n)).cast(pa.string())
        elif pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array(rng.integers(0, 86_400_000_000, n), f.type)
        else:
            cols[f.name] = pa.array(rng.random(n)).cast(f.type, safe=False)
    return pa.table(cols, schema=EVENT_SCHEMA)


def per_event_loop(n: int) -> list[dict]:
    r = random.Random(0)
    t0 = datetime(2026, 11, 2, tzinfo=UTC)
    routes = ["/v1/products/{id}", "/v1/search", "/v1/orders", "/v1/auth/login"]
    out = []
    for _i in range(n):
        route = r.choice(routes)
        out.append(
            {
                "timestamp": t0 + timedelta(seconds=r.random() * 86_400),
                "request_id": f"{r.getrandbits(128):032x}",
                "client_id": f"c{r.randrange(2000):07d}",
                "api_key_id": f"key_{r.randrange(2000):07d}",
                "client_address": ".".join(str(r.randrange(256)) for _ in range(4)),
                "user_agent": "curl/8.5.0",
                "http_request_method": "GET",
                "url_path": route.replace("{id}", str(r.randrange(1, 10**5))),
                "http_route": route,
                "http_response_status_code": r.choice([200, 200, 200, 404, 401]),
                "duration_ms": r.lognormvariate(3, 0.5),
                "upstream_duration_ms": r.lognormvariate(3, 0.5),
                "request_bytes": r.randrange(200, 900),
                "response_bytes": r.randrange(100, 10**5),
                "upstream_service": "catalog",
                "cache_status": "MISS",
                "auth_result": "ok",
                "ratelimit_decision": "allow",
                "tier": r.choice(["free", "pro", "enterprise"]),
                "region": "eu-west",
                "device_type": "server",
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    cfg = SimulatorSettings(clients=args.clients, days=args.days, seed=args.seed)

    t_sim, res = best_of(lambda: simulate(cfg), repeat=2)
    n = res.events.num_rows
    tmp = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        TelemetryStore(tmp / "t").append(res.events)
        t_store = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp)
    t_floor, _ = best_of(lambda: floor(n), repeat=2)
    sample = 50_000
    t_loop_sample, rows = best_of(lambda: per_event_loop(sample), repeat=1)
    t_loop_sample += best_of(lambda: pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), repeat=1)[0]
    t_loop = t_loop_sample * n / sample

    print(f"machine: {machine()}")
    print(f"simulate --clients {args.clients} --days {args.days:g}: {n:,} events")
    print(f"  generate            {t_sim:7.2f} s  {n / t_sim:>12,.0f} events/s")
    print(
        f"  + store (Parquet)   {t_store:7.2f} s  total {t_sim + t_store:.2f} s  ({n / (t_sim + t_store):,.0f} events/s end to end)"
    )
    print(
        f"  baseline floor      {t_floor:7.2f} s  (random columns, same schema)   ratio simulate/floor = {t_sim / t_floor:.1f}x"
    )
    print(
        f"  baseline per-event  {t_loop:7.2f} s  (Python loop, from {sample:,})  ratio loop/simulate = {t_loop / t_sim:.1f}x faster"
    )
    print(
        f"  target: >= 1M events in <= 20 s end to end -> {'met' if n >= 1_000_000 and t_sim + t_store <= 20 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
