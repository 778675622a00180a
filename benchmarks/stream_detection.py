"""Detection latency of the live path: how fast does the gateway act on a flood?

The path measured, every hop real and on loopback:

  gateway (uvicorn, in this process) --publish--> Redis stream --> stream processor
  (``gatewise stream``, its own process) --push--> Feast online store (SQLite) -->
  BentoML ``/score`` (its own process) --> gateway scoring client --> decision core

Setup (not timed): a private data dir; ``--clients`` simulated clients over one day that ENDS
NOW (``simulator.start`` = now - 1 day, so the processor's bootstrap and the feature rows are
current), with ``--flood-share`` of them flooding, so the champion has floods to learn; window
features built, ``feast apply``, materialised; ``train_target(abuse, --trials, --budget)`` and a
forced promotion; the BentoML service; the demo upstreams and the gateway (scoring enabled, its
per-client score cache at ``--cache-ttl`` s instead of the configured 5 s, the stream publisher
on a private stream ``gw-bench-<uuid>``); the abuse target in ENFORCE mode with the config's
score bands (>= 0.5 throttle, >= 0.9 block; see below); the processor as
``python -m gatewise stream`` (batch interval ``--batch-interval``), bootstrapped from the
stored day.

Traffic (timed), over real HTTP at a real rate: ``--legit`` background clients (simulated
legitimate clients, ~0.3 req/s each, everyday routes) for the whole run, and ``--flooders``
simulated legitimate free-tier clients (score < 0.3 before they start) that turn into floods
one after the other, every ``--stagger`` s. A flood is shaped like the simulator's
(``telemetry/simulator/traffic.py``): a rate drawn from U(12, 60) req/s, 50 % ``GET
/v1/search?q=..``, 20 % ``GET /v1/products?page=..``, 30 % ``GET /v1/products/{id}``, sent
open-loop (4 connections take the next slot of the schedule). Every request carries one of
the client's simulated addresses (X-Forwarded-For; the gateway's uvicorn trusts it from
127.0.0.1) and user agents: from 127.0.0.1 itself every client looks like it moved to a new
network, and the model blocks legitimate clients for that alone. The static tier limits are
multiplied by ``--static-scale`` (100) and a throttle keeps ``--throttle-factor`` (0.01) of
the limit: the simulated traffic the model learned from was never rate limited, and with the
config's limits (60/min for free) a flood is 95 % 429s with tiny bodies, which the model does
not recognise as a flood at all (0/8 detected with ``--static-scale 1``). A response counts as "refused by the model" when it is a 403 whose detail is ``score x >=
band`` (the block band) or a 429 whose ``RateLimit-Limit`` is below the tier's static burst
(only a throttle band lowers it). Detection latency = send time of the first such request -
send time of the flood's first request. A flooder goes on ``--stick`` s after its detection
(the share of its requests still refused by the model is reported) and gives up after
``--limit`` s ("not detected").

Batch baseline (computed, not run for 5 minutes each): features built and materialised every
5 minutes only. A flood becomes visible when the 5-minute window holding the same evidence
the stream needed (flood start + its stream latency) has closed AND the next scheduled run
has finished: ``first run >= window end`` + the MEASURED duration of one real
``build_windows`` + ``materialize`` on the same data after the traffic. The schedule's phase
is uniform over the 5 minutes (300 phases per flood, pooled) and, best case, aligned with the
window ends. Undetected floods are left out of both sides.

Also reported: the processor's ``/status`` (events, events per busy second, lag, watermark
age), the ``freshness_s`` ``/score`` returned for the flooders (polled once a second), and the
gateway's stream publisher stats. Everything is stopped at the end and the Redis stream keys
``<name>:<p>`` are deleted.

Usage: .venv/bin/python benchmarks/stream_detection.py [--flooders 8] [--stagger 8]
           [--limit 120] [--stick 10] [--legit 12] [--batch-interval 1.0] [--cache-ttl 1.0]
           [--clients 500] [--flood-share 0.06] [--trials 6] [--budget 60] [--seed 7]
           [--static-scale 100] [--throttle-factor 0.01] [--keep] [--no-save]
Results are appended as one JSON line to benchmarks/results/stream_detection.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    Procs,
    ThreadedServer,
    exit_on_signals,
    free_port,
    log_tail,
    machine,
    open_loop,
    wait_http,
)
from config.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "stream_detection.jsonl"
TARGET_MEDIAN_S = 15.0
BATCH_PERIOD_S = 300.0
FLOOD_RATE = (12.0, 60.0)  # req/s, as telemetry/simulator/traffic.py draws a flood
SEARCH_TERMS = ("shoes", "laptop", "coffee", "usb-c", "desk", "lamp", "jacket", "phone")
console = Console()


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def fmt(x: float | None, unit: str = " s") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


# setup ---------------------------------------------------------------------------------
def write_config(a: argparse.Namespace, data_dir: Path, stream_name: str, path: Path) -> Settings:
    """The repo's gatewise.yaml with the benchmark's simulator and stream sections."""
    doc = yaml.safe_load((REPO / "gatewise.yaml").read_text())
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    doc["data_dir"] = str(data_dir)
    sim = doc.setdefault("simulator", {})
    sim.update(clients=a.clients, days=1, seed=a.seed, start=(now - timedelta(days=1)).isoformat())
    sim.setdefault("scenarios", {})["flood"] = a.flood_share
    doc["stream"] = {
        "enabled": True,
        "name": stream_name,
        "partitions": a.partitions,
        "batch_interval_s": a.batch_interval,
        "metrics_port": 0,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_settings(path, data_dir=data_dir)


def prepare(s: Settings, a: argparse.Namespace) -> dict[str, Any]:
    """Simulate, build, materialise, train and promote; returns timings and the clients."""
    import pandas as pd

    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from labeling.simulated import simulate_labelled
    from models.registry import promote
    from models.train import train_target

    out: dict[str, Any] = {}
    with console.status("simulating one day of traffic ending now") as st:
        t = time.perf_counter()
        run, _ = simulate_labelled(s)
        out["simulate_s"] = time.perf_counter() - t
        out["events"] = run.result.events.num_rows
        clients = run.result.clients.to_pandas()
        labels = run.result.labels.to_pandas()
        console.print(
            f"simulated {out['events']:,} events of {len(clients)} clients "
            f"in {out['simulate_s']:.0f} s"
        )
        st.update("building window features")
        t = time.perf_counter()
        build_windows(s)
        out["build_s"] = time.perf_counter() - t
        st.update("feast apply + materialize")
        store = feature_store(s)
        apply_definitions(store, s)
        end = datetime.now(UTC)
        t = time.perf_counter()
        store.materialize(start_date=end - timedelta(days=2), end_date=end)
        out["materialize_s"] = time.perf_counter() - t
        console.print(
            f"features built in {out['build_s']:.0f} s, materialised in "
            f"{out['materialize_s']:.0f} s"
        )
        st.update(f"training abuse ({a.trials} trials, budget {a.budget:.0f} s)")
        t = time.perf_counter()
        r = train_target(s, "abuse", n_trials=a.trials, budget=a.budget)
        promote(s, "abuse", r.version, force=True)
        out["train_s"] = time.perf_counter() - t
        out["model_version"] = r.version
        metrics = {k: v for k, v in (getattr(r, "metrics", None) or {}).items() if "prec" in k}
        console.print(
            f"abuse v{r.version} trained and promoted in {out['train_s']:.0f} s {metrics or ''}"
        )
    bad = set(labels.loc[labels["label"] == 1, "client_id"])
    ev = run.result.events.select(
        ["client_id", "timestamp", "client_address", "user_agent"]
    ).to_pandas()
    recent = ev[ev["timestamp"] >= pd.Timestamp(end - timedelta(hours=6))]
    active = recent["client_id"].value_counts()
    legit = clients[(clients["role"] == "legit") & ~clients["client_id"].isin(bad)]
    legit = legit[legit["client_id"].isin(active.index)]
    out["legit"] = legit[["client_id", "tier", "region", "device_type"]].to_dict("records")
    # where each client's requests came from and with which user agents: live requests carry
    # the same (X-Forwarded-For, User-Agent), or every client would show up on a new network
    mine = ev[ev["client_id"].isin(set(legit["client_id"]))]
    out["profiles"] = {
        cid: Profile.of(g["client_address"], g["user_agent"])
        for cid, g in mine.groupby("client_id")
    }
    return out


def add_consumers(
    s: Settings, rows: list[dict[str, Any]], admin: str | None = None
) -> dict[str, str]:
    """API keys for the given simulated clients: client_id -> key; ``admin``: also an operator
    with the gateway's admin role (the score push authenticates as it)."""
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    keys, consumers = {}, []
    if admin is not None:
        kid, key, digest = new_api_key()
        keys[admin] = key
        consumers.append(
            Consumer(
                client_id=admin,
                roles=[s.gateway.admin_role],
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    for r in rows:
        kid, key, digest = new_api_key()
        keys[r["client_id"]] = key
        consumers.append(
            Consumer(
                client_id=r["client_id"],
                tier=r["tier"],
                roles=["consumer"],
                region=r["region"],
                device_type=r["device_type"],
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    ConsumersFile(consumers=consumers).save(s.gateway_consumers_path)
    return keys


def enforce_policy(s: Settings, limits: dict[str, int], throttle_factor: float) -> int:
    from gateway.policy import default_policy
    from gateway.policy_store import PolicyStore

    g = s.gateway
    bands = [
        {**b, "limit_factor": throttle_factor} if b.get("action") == "throttle" else b
        for b in g.score_bands
    ]
    base = default_policy(limits, g.route_costs, bands)
    abuse = base.targets["abuse"].model_copy(update={"mode": "enforce"})
    pol = base.model_copy(update={"targets": {**base.targets, "abuse": abuse}})
    return (
        PolicyStore(s.policy_dir)
        .publish(pol, author="benchmarks/stream_detection.py", reason="abuse target enforced")
        .version
    )


def server(app: Any, port: int) -> ThreadedServer:
    """uvicorn in a background thread, as the demo runs it. The load generator stands in for a
    load balancer on loopback: the gateway takes the client address from its X-Forwarded-For
    (uvicorn's proxy headers, trusted from 127.0.0.1)."""
    return ThreadedServer(app, port, proxy_headers=False)


# traffic -------------------------------------------------------------------------------
@dataclass
class Profile:
    """A simulated client's addresses and user agents, with their shares of its requests."""

    addrs: list[str]
    addr_p: np.ndarray
    uas: list[str]
    ua_p: np.ndarray

    @staticmethod
    def of(addrs: Any, uas: Any) -> Profile:
        a = addrs.value_counts().head(50)
        u = uas.dropna().value_counts().head(10)
        return Profile(
            list(a.index), (a / a.sum()).to_numpy(), list(u.index), (u / u.sum()).to_numpy()
        )

    def headers(self, key: str, rng: np.random.Generator) -> dict[str, str]:
        h = {
            "x-api-key": key,
            "x-forwarded-for": self.addrs[rng.choice(len(self.addrs), p=self.addr_p)],
        }
        if self.uas:
            h["user-agent"] = self.uas[rng.choice(len(self.uas), p=self.ua_p)]
        return h


@dataclass
class Flood:
    client_id: str
    tier: str
    rate: float
    offset_s: float
    pre_score: float | None = None
    first_sent: float | None = None  # wall time
    first_sent_mono: float | None = None
    detected_mono: float | None = None
    detected_how: str = ""
    sent: int = 0
    status: dict[int, int] = field(default_factory=dict)
    after: int = 0  # requests sent after detection
    after_model: int = 0  # of which refused by the model
    scores: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    stop_mono: float | None = None

    @property
    def latency(self) -> float | None:
        if self.detected_mono is None or self.first_sent_mono is None:
            return None
        return self.detected_mono - self.first_sent_mono


def refused_by_model(r: Any, static_burst: int) -> str:
    """'' unless the response is the model's doing (see the module doc)."""
    if r.status_code == 403:
        with contextlib.suppress(ValueError):
            body = r.json()
            if body.get("error") in ("block", "challenge") and str(
                body.get("detail", "")
            ).startswith("score"):
                return "block"
    if r.status_code == 429:
        lim = r.headers.get("ratelimit-limit")
        if lim is not None and int(lim) < static_burst:
            return "throttle"
    return ""


def flood_path(rng: np.random.Generator) -> str:
    u = rng.random()
    if u < 0.5:
        return f"/v1/search?q={SEARCH_TERMS[rng.integers(len(SEARCH_TERMS))]}&page={rng.integers(1, 6)}"
    if u < 0.7:
        return f"/v1/products?page={rng.integers(1, 6)}&limit=50"
    return f"/v1/products/{min(int(rng.zipf(1.3)), 50_000)}"


async def run_flood(
    base: str,
    key: str,
    prof: Profile,
    f: Flood,
    static_burst: int,
    limit_s: float,
    stick_s: float,
    seed: int,
    conns: int = 4,
) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    f.first_sent = time.time()
    f.first_sent_mono = t0
    end = t0 + limit_s

    async with httpx.AsyncClient(base_url=base, timeout=10) as c:

        async def send(_: int) -> None:
            nonlocal end
            sent = time.monotonic()
            try:
                r = await c.get(flood_path(rng), headers=prof.headers(key, rng))
            except httpx.HTTPError:
                f.status[-1] = f.status.get(-1, 0) + 1
                return
            f.sent += 1
            f.status[r.status_code] = f.status.get(r.status_code, 0) + 1
            how = refused_by_model(r, static_burst)
            if f.detected_mono is not None and sent >= f.detected_mono:
                f.after += 1
                f.after_model += bool(how)
            if how and (f.detected_mono is None or sent < f.detected_mono):
                f.detected_mono, f.detected_how = sent, how
                end = min(end, sent + stick_s)

        # the flood goes on ``stick_s`` after its detection: ``end`` moves forward then
        await open_loop(f.rate, send, until=lambda: end, workers=conns, start=t0)
    f.stop_mono = time.monotonic()


async def run_legit(
    base: str, keys: list[tuple[str, Profile, int]], stop: asyncio.Event, seed: int
) -> dict[Any, int]:
    import httpx

    rng = np.random.default_rng(seed)
    out: dict[Any, int] = {}
    paths = ("/v1/orders/{}", "/v1/products/{}", "/v1/search?q=desk", "/v1/users/{}")

    async def one(c: httpx.AsyncClient, key: str, prof: Profile, burst: int) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.exponential(1 / 0.3))
            if stop.is_set():
                return
            p = paths[rng.integers(len(paths))].format(rng.integers(1, 5000))
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get(p, headers=prof.headers(key, rng))
                out[r.status_code] = out.get(r.status_code, 0) + 1
                if refused_by_model(r, burst):
                    out["model"] = out.get("model", 0) + 1

    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        await asyncio.gather(*(one(c, k, pr, b) for k, pr, b in keys))
    return out


async def score_of(c: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    r = await c.post("/score", json={"target": "abuse", "ids": ids, "alias": "champion"})
    r.raise_for_status()
    return {row["id"]: row for row in r.json()["results"]}


async def drive(
    a: argparse.Namespace,
    gw: str,
    scorer_url: str,
    floods: list[Flood],
    keys: dict[str, str],
    profiles: dict[str, Profile],
    legit_keys: list[tuple[str, Profile, int]],
    bursts: dict[str, int],
) -> dict[Any, int]:
    import httpx

    stop = asyncio.Event()
    legit_task = asyncio.create_task(run_legit(gw, legit_keys, stop, a.seed + 1))
    start = time.monotonic()

    async def monitor(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            live = [f for f in floods if f.first_sent_mono is not None and f.stop_mono is None]
            if live:
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    res = await score_of(c, [f.client_id for f in live])
                    now = time.monotonic()
                    for f in live:
                        row = res.get(f.client_id, {})
                        f.scores.append(
                            (
                                now - (f.first_sent_mono or now),
                                row.get("score"),
                                row.get("freshness_s"),
                            )
                        )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def launch(i: int, f: Flood) -> None:
        await asyncio.sleep(max(0.0, start + f.offset_s - time.monotonic()))
        console.print(
            f"  flood {i + 1}/{len(floods)}: {f.client_id} ({f.tier}) at {f.rate:.0f} req/s, "
            f"score before {fmt(f.pre_score, '')}"
        )
        await run_flood(
            gw,
            keys[f.client_id],
            profiles[f.client_id],
            f,
            bursts[f.client_id],
            a.limit,
            a.stick,
            a.seed + 100 + i,
        )
        lat = f.latency
        console.print(
            f"  flood {i + 1}: "
            + (
                f"[green]refused by the model ({f.detected_how}) after {lat:.1f} s[/]"
                if lat is not None
                else f"[red]not detected within {a.limit:.0f} s[/]"
            )
            + f"; {f.sent} requests {dict(sorted(f.status.items()))}"
        )

    async with httpx.AsyncClient(base_url=scorer_url, timeout=5) as sc:
        mon = asyncio.create_task(monitor(sc))
        await asyncio.sleep(a.warmup)
        start = time.monotonic()
        await asyncio.gather(*(launch(i, f) for i, f in enumerate(floods)))
        stop.set()
        await mon
    return await legit_task


# the batch baseline --------------------------------------------------------------------
def batch_latencies(floods: list[Flood], run_s: float) -> tuple[list[float], list[float]]:
    """(random schedule phase, pooled over 300 phases; schedule aligned with window ends)."""
    rand, aligned = [], []
    for f in floods:
        if f.latency is None or f.first_sent is None:
            continue
        t0 = f.first_sent
        window_end = math.ceil((t0 + f.latency) / BATCH_PERIOD_S) * BATCH_PERIOD_S
        aligned.append(window_end + run_s - t0)
        for phase in np.arange(0.0, BATCH_PERIOD_S, 1.0):
            k = math.ceil((window_end - phase) / BATCH_PERIOD_S)
            rand.append(phase + k * BATCH_PERIOD_S + run_s - t0)
    return rand, aligned


def measure_batch_run(s: Settings) -> dict[str, float]:
    """One scheduled batch job on the data as it is now: build the windows of the days whose
    telemetry changed, then materialise the last 15 minutes."""
    from features.build import build_windows
    from features.store import feature_store

    t = time.perf_counter()
    build_windows(s)
    build = time.perf_counter() - t
    store = feature_store(s)
    end = datetime.now(UTC)
    t = time.perf_counter()
    store.materialize(start_date=end - timedelta(minutes=15), end_date=end)
    mat = time.perf_counter() - t
    return {"build_s": build, "materialize_s": mat, "total_s": build + mat}


# processes -----------------------------------------------------------------------------
def start_processor(
    procs: Procs, s: Settings, cfg: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``gatewise stream`` (the command, in its own process group), ready when its ``/status``
    answers; fails with the log tail if it exits or is not up in 300 s."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWISE_") or k == "GATEWISE_SHARED_DATA"
    }
    env |= {"GATEWISE_DATA_DIR": str(s.data_dir), "GATEWISE_CONFIG": str(cfg)}
    env |= extra_env or {}
    cmd = [sys.executable, "-m", "gatewise", "stream", "-c", str(cfg)]
    log = s.data_dir / "stream.log"
    p = procs.start([*cmd, "--metrics-port", str(port)], log, cwd=REPO, env=env)
    wait_http(f"http://127.0.0.1:{port}/status", proc=p, log=log, timeout=300)
    return p


def processor_status(port: int) -> dict[str, Any] | None:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None


# main ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flooders", type=int, default=8)
    ap.add_argument("--stagger", type=float, default=8.0, help="seconds between flood starts")
    ap.add_argument("--limit", type=float, default=120.0, help="give up on a flood after (s)")
    ap.add_argument("--stick", type=float, default=10.0, help="keep flooding after detection (s)")
    ap.add_argument("--legit", type=int, default=12, help="background legitimate clients")
    ap.add_argument("--warmup", type=float, default=5.0, help="background only, before floods")
    ap.add_argument("--batch-interval", type=float, default=1.0, help="processor micro-batch (s)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--cache-ttl", type=float, default=1.0, help="gateway score cache (s)")
    ap.add_argument(
        "--static-scale",
        type=int,
        default=100,
        help="multiply the static tier limits (the simulated traffic the model learned from was"
        " never rate limited; 1: the config's limits)",
    )
    ap.add_argument(
        "--throttle-factor", type=float, default=0.01, help="share of the limit a throttle keeps"
    )
    ap.add_argument(
        "--score-push",
        action="store_true",
        help="the processor pushes moved scores to the gateway (stream.score_push)",
    )
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--flood-share", type=float, default=0.06)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    ap.add_argument("--no-save", action="store_true", help="do not append to the results file")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    exit_on_signals()  # the processor and the service are stopped on the way out

    import redis

    from gateway.app import create_app
    from gateway.upstreams import upstream_app
    from serving.process import start_service, stop_service, wait_ready

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="gw-stream-bench-"))
    data = tmp / "data"
    data.mkdir()
    stream_name = f"gw-bench-{uuid.uuid4().hex[:10]}"
    cfg_path = tmp / "gatewise.yaml"
    s = write_config(a, data, stream_name, cfg_path)
    console.print(
        f"[bold]stream detection benchmark[/]: data {data}, stream {stream_name} "
        f"({a.partitions} partitions, batch {a.batch_interval:g} s), score cache {a.cache_ttl:g} s"
    )
    procs = Procs()
    service_started = False
    rds = redis.Redis.from_url(s.stream.redis_url)
    try:
        prep = prepare(s, a)
        rng = np.random.default_rng(a.seed)
        legit = prep["legit"]
        rng.shuffle(legit)
        free = [r for r in legit if r["tier"] == "free"]
        if len(free) < a.flooders * 2 + 1:
            raise SystemExit(f"only {len(free)} free-tier legitimate clients; raise --clients")
        cand = free[: a.flooders * 3]
        chosen = {r["client_id"] for r in cand}
        background = [r for r in legit if r["client_id"] not in chosen][: a.legit]
        operator = "bench-operator"
        keys = add_consumers(s, cand + background, admin=operator if a.score_push else None)

        port_sv, port_up, port_gw, port_st = free_port(), free_port(), free_port(), free_port()
        with console.status("starting the BentoML service"):
            t = time.perf_counter()
            start_service(s, cfg_path, port_sv)
            service_started = True
            scorer = f"http://127.0.0.1:{port_sv}"
            if not wait_ready(scorer):
                raise RuntimeError(
                    "BentoML not ready:\n" + log_tail(s.data_dir / "serving" / "service.log", 2000)
                )
        console.print(f"BentoML /score at {scorer} ready in {time.perf_counter() - t:.0f} s")

        import httpx

        pre = httpx.post(
            scorer + "/score",
            json={"target": "abuse", "ids": [r["client_id"] for r in cand]},
            timeout=30,
        ).json()["results"]
        pre_score = {row["id"]: row.get("score") for row in pre}
        ok = [r for r in cand if (pre_score.get(r["client_id"]) or 0.0) < 0.3][: a.flooders]
        if len(ok) < a.flooders:
            console.print(f"[yellow]only {len(ok)} candidates score < 0.3 before flooding[/]")
        floods = [
            Flood(
                r["client_id"],
                r["tier"],
                float(rng.uniform(*FLOOD_RATE)),
                i * a.stagger,
                pre_score.get(r["client_id"]),
            )
            for i, r in enumerate(ok)
        ]
        static = {t: lim * a.static_scale for t, lim in s.static_limits_per_minute.items()}
        bursts = {r["client_id"]: static.get(r["tier"], static["free"]) for r in cand}

        with console.status("starting the stream processor (bootstrap from the stored day)"):
            t = time.perf_counter()
            push_env = (
                {
                    "GATEWISE_STREAM__SCORE_PUSH__ENABLED": "true",
                    "GATEWISE_STREAM__SCORE_PUSH__SCORING_URL": scorer,
                    "GATEWISE_STREAM__SCORE_PUSH__GATEWAY_URLS": json.dumps(
                        [f"http://127.0.0.1:{port_gw}"]
                    ),
                    "GATEWISE_ADMIN_KEY": keys[operator],
                }
                if a.score_push
                else None
            )
            proc = start_processor(procs, s, cfg_path, port_st, push_env)
            st0 = processor_status(port_st) or {}
        console.print(
            f"stream processor pid {proc.pid} up in {time.perf_counter() - t:.0f} s, "
            f"started from {st0.get('started_from')}"
        )

        policy_v = enforce_policy(s, static, a.throttle_factor)
        g = s.gateway
        services = {
            n: sv.model_copy(update={"instances": [f"http://127.0.0.1:{port_up}"]})
            for n, sv in g.services.items()
        }
        scoring = g.scoring.model_copy(
            update={"enabled": True, "url": scorer, "cache_ttl_s": a.cache_ttl}
        )
        live = s.model_copy(
            update={"gateway": g.model_copy(update={"services": services, "scoring": scoring})}
        )
        app = create_app(live)
        gw_url = f"http://127.0.0.1:{port_gw}"
        console.print(
            f"gateway {gw_url} (policy v{policy_v}: static limits {static}/min, abuse ENFORCED, "
            f"throttle >= 0.5 to {a.throttle_factor:g} of the limit, block >= 0.9; "
            f"scoring timeout {scoring.timeout_ms:g} ms); {len(background)} background clients, "
            f"{len(floods)} floods every {a.stagger:g} s"
        )
        t_traffic = time.perf_counter()
        with server(upstream_app(latency_scale=0.05), port_up), server(app, port_gw):
            legit_status = asyncio.run(
                drive(
                    a,
                    gw_url,
                    scorer,
                    floods,
                    keys,
                    prep["profiles"],
                    [
                        (
                            keys[r["client_id"]],
                            prep["profiles"][r["client_id"]],
                            static.get(r["tier"], static["free"]),
                        )
                        for r in background
                    ],
                    bursts,
                )
            )
            st_proc = processor_status(port_st) or {}
        traffic_s = time.perf_counter() - t_traffic
        gw_status = app.state.gateway.status()

        with console.status("timing one scheduled batch job (build + materialize)"):
            batch_run = measure_batch_run(s)
        console.print(
            f"batch job on the same data: build {batch_run['build_s']:.1f} s + materialize "
            f"{batch_run['materialize_s']:.1f} s"
        )

        # results ------------------------------------------------------------------------
        lat = [f.latency for f in floods if f.latency is not None]
        rand, aligned = batch_latencies(floods, batch_run["total_s"])
        med, p95 = pct(lat, 50), pct(lat, 95)
        bmed, bp95 = pct(rand, 50), pct(rand, 95)
        amed = pct(aligned, 50)
        fresh = [x[2] for f in floods for x in f.scores if x[2] is not None]
        fresh_at_det = []
        first_half = []
        for f in floods:
            if f.latency is None:
                continue
            near = [x for x in f.scores if x[0] <= f.latency + 1.0 and x[2] is not None]
            if near:
                fresh_at_det.append(near[-1][2])
            over = [x[0] for x in f.scores if x[1] is not None and x[1] >= 0.5]
            if over:
                first_half.append(over[0])

        t1 = Table(
            title="floods through the gateway (latency: first request -> first refused by the model)"
        )
        for c in (
            "client",
            "tier",
            "req/s",
            "score before",
            "latency",
            "how",
            "requests",
            "statuses",
            "after: refused by model",
        ):
            t1.add_column(c)
        for f in floods:
            t1.add_row(
                f.client_id,
                f.tier,
                f"{f.rate:.0f}",
                "-" if f.pre_score is None else f"{f.pre_score:.3f}",
                fmt(f.latency),
                f.detected_how or "not detected",
                str(f.sent),
                " ".join(f"{k}:{v}" for k, v in sorted(f.status.items())),
                f"{f.after_model}/{f.after}" if f.after else "-",
            )
        console.print(t1)
        ratio = bmed / med if bmed and med else None
        t2 = Table(title="detection latency: live path vs batch-only (5-minute schedule)")
        for c in ("path", "detected", "median", "p95"):
            t2.add_column(c)
        t2.add_row("stream (measured)", f"{len(lat)}/{len(floods)}", fmt(med), fmt(p95))
        t2.add_row(
            f"batch, random phase (+{batch_run['total_s']:.0f} s job)",
            f"{len(lat)}/{len(floods)}",
            fmt(bmed),
            fmt(bp95),
        )
        t2.add_row(
            "batch, aligned with window ends",
            f"{len(lat)}/{len(floods)}",
            fmt(amed),
            fmt(pct(aligned, 95)),
        )
        console.print(t2)
        verdict = (
            "[green]met[/]" if med is not None and med < TARGET_MEDIAN_S else "[red]not met[/]"
        )
        console.print(
            f"stream median {fmt(med)} (target < {TARGET_MEDIAN_S:.0f} s: {verdict}); "
            f"batch/stream median ratio {ratio:.1f}x"
            if ratio
            else "no flood detected"
        )
        console.print(
            f"score >= 0.5 at /score after (median) {fmt(pct(first_half, 50))}; "
            f"/score freshness_s of the flooders: median {fmt(pct(fresh, 50))}, "
            f"p95 {fmt(pct(fresh, 95))}, at detection median {fmt(pct(fresh_at_det, 50))}"
        )
        keys_proc = (
            "events",
            "applied",
            "batches",
            "pushed_rows",
            "too_late",
            "duplicates",
            "events_per_busy_s",
            "last_batch_s",
            "busy_s",
            "lag_events",
            "seconds_behind",
            "watermark_age_s",
            "push_failures",
            "alerts",
        )
        proc_summary = {k: st_proc.get(k) for k in keys_proc}
        console.print(f"processor /status: {proc_summary}")
        console.print(
            f"gateway stream publisher: {gw_status['stream']}; scoring {gw_status['scoring']}; "
            f"decisions {gw_status['decisions']}"
        )
        bg_total = sum(v for k, v in legit_status.items() if k != "model")
        bg_model = legit_status.get("model", 0)
        console.print(
            f"background (legitimate) clients: {bg_total} requests, statuses "
            f"{ {k: v for k, v in legit_status.items() if k != 'model'} }, "
            f"refused by the model: {bg_model}"
        )
        total_s = time.perf_counter() - t_start
        console.print(f"traffic phase {traffic_s:.0f} s, whole run {total_s:.0f} s")

        if not a.no_save:
            row = {
                "bench": "stream_detection",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "model": f"gatewise-abuse v{prep['model_version']}",
                "clients": a.clients,
                "flood_share": a.flood_share,
                "flooders": len(floods),
                "detected": len(lat),
                "stream_median_s": med,
                "stream_p95_s": p95,
                "batch_random_phase_median_s": bmed,
                "batch_random_phase_p95_s": bp95,
                "batch_aligned_median_s": amed,
                "batch_job_s": batch_run,
                "ratio_batch_stream_median": ratio,
                "target_median_s": TARGET_MEDIAN_S,
                "target_met": med is not None and med < TARGET_MEDIAN_S,
                "batch_interval_s": a.batch_interval,
                "score_cache_ttl_s": a.cache_ttl,
                "partitions": a.partitions,
                "static_scale": a.static_scale,
                "throttle_factor": a.throttle_factor,
                "freshness_s_median": pct(fresh, 50),
                "freshness_s_at_detection_median": pct(fresh_at_det, 50),
                "floods": [
                    {
                        "rate": round(f.rate, 1),
                        "latency_s": f.latency,
                        "how": f.detected_how,
                        "pre_score": f.pre_score,
                        "requests": f.sent,
                        "after_refused": [f.after_model, f.after],
                    }
                    for f in floods
                ],
                "processor": proc_summary,
                "background_requests": bg_total,
                "background_refused_by_model": bg_model,
                "publisher": gw_status["stream"],
                "score_push": a.score_push,
                "scoring": gw_status["scoring"],
                "scoring_failed_share": (
                    gw_status["scoring"]["failures"] / gw_status["scoring"]["calls"]
                    if gw_status["scoring"]["calls"]
                    else None
                ),
                "setup_s": {
                    k: prep[k] for k in ("simulate_s", "build_s", "materialize_s", "train_s")
                },
                "traffic_s": traffic_s,
                "total_s": total_s,
            }
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")
            console.print(f"appended 1 line to {RESULTS.relative_to(REPO)}")
    finally:
        procs.stop_all(timeout=30)  # the processor checkpoints on SIGTERM
        if service_started:
            stop_service(s)
        with contextlib.suppress(Exception):
            n = rds.delete(*[f"{stream_name}:{p}" for p in range(a.partitions)])
            console.print(f"deleted {n} Redis stream keys of {stream_name}")
        rds.close()
        if a.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
