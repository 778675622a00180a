"""The closed loop, live: fresh traffic through the real gateway → monitor → policy → again.

``run_closed_loop`` is the last act of ``gatewise demo`` (and ``gatewise loop``):

1. **Fresh traffic.** The simulator generates a new day for the same clients as the recorded
   history (same seed, another ``traffic_seed``), starting where the history ends, with drift
   switched on (a latency regression on one service) and a group skew (one region's
   legitimate clients fail logins and change address 3x as often, at 1.7x the rate). Out of
   it the loop takes the ``2 x minutes`` with the most abusive requests whose average rate
   stays under ``max_rps`` — chosen by that rule alone, stated in the report. Ground truth
   per request: the simulator's label of its client's window. ``gatewise demo`` simulates a
   history that ends when the demo starts, so the replayed clients' 1 h and 24 h features
   have their context; replayed long after its history, every client looks new.
2. **Phase A.** Every request is sent over HTTP to the real gateway (uvicorn, loopback) at its
   recorded offset — real rate, open loop — with its client's API key, address
   (``X-Forwarded-For``, believed from 127.0.0.1: gateway.trusted_proxies), user agent and request id. The upstream
   answers as the recorded one did (status, size, latency: ``upstream_app(replay=True)``).
   The policy in force is the active one; its abuse target enforces only when its harm bound
   clears on the recorded history (``monitoring.validation.validate``, published with the
   arithmetic as the reason), else it stays in shadow and the model's overrides only log. The
   gateway does not call the model live here, so in phase A only static limits act.
3. **Monitor.** The phase's truth is released (label delay 0: the demo's stand-in for a
   labelling team), features are rebuilt for the day, and the Prefect flow ``monitor`` runs
   over the phase: drift, bias, the champion's scores → overrides, limits adapted to normal
   traffic, the gate, publish. The running gateway picks the new version up by itself.
4. **Phase B.** The next ``minutes`` of the same traffic go through the same gateway.
5. **Outcome.** Per request, from the gateway's own telemetry (joined on request id):
   abusive requests stopped, legitimate requests harmed (overall and per tier, region,
   device), detection time per abusive client, next to the static per-tier limits
   (Kong/NGINX-style, ``static_limits_per_minute``) judged by the backtest on the very same
   recorded requests. A table, a JSON record and a self-contained HTML report (Plotly),
   logged to the champion's MLflow run.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings
from demo.loop_report import day_comparison, log_to_mlflow, print_loop, save_loop_report
from demo.servers import ThreadedServer, free_port
from demo.steps import print_monitor

__all__ = [
    "LiveFeatures",
    "LoopTraffic",
    "fresh_traffic",
    "outcome",
    "replay",
    "replay_settings",
    "run_closed_loop",
]

STOPPED = ("throttle", "block", "challenge")
GROUPS = ("tier", "region", "device_type")


@dataclass
class LoopTraffic:
    """Requests to replay: ``events`` (telemetry columns + ``offset_s``, ``abusive``,
    ``scenario``), the consumers they belong to and how the span was chosen."""

    events: pd.DataFrame
    consumers: pd.DataFrame
    span: dict[str, Any]


def fresh_traffic(
    s: Settings,
    minutes: float = 2.0,
    *,
    max_rps: float = 60.0,
    seed_offset: int = 1,
) -> LoopTraffic:
    """A new simulated day with drift and a group skew; the ``2 x minutes`` span with the most
    abusive requests at an average rate of at most ``max_rps``."""
    from config.simulator import DriftKnobs, SkewKnobs
    from telemetry.simulator import simulate

    if not 0 < minutes <= 120:
        raise ValueError(f"--minutes must be in (0, 120], not {minutes:g}")
    if max_rps <= 0:
        raise ValueError(f"--max-rps must be above 0, not {max_rps:g}")
    sim = s.simulator
    # the same clients as the recorded history (same seed), a new day of their traffic
    # (traffic_seed), starting where the history ends
    cfg = sim.model_copy(
        update={
            "days": 1.0,
            "traffic_seed": sim.seed + 1000 * seed_offset,
            "start": sim.start + timedelta(days=sim.days),
            "drift": DriftKnobs(after_day=0, latency_regression=3.0),
            "skew": SkewKnobs(column=sim.skew.column, value=sim.skew.value, factor=3.0),
        }
    )
    res = simulate(cfg)
    ev = res.events.to_pandas()
    lab = res.labels.to_pandas()
    win = pd.to_datetime(ev["timestamp"], utc=True).dt.floor(f"{cfg.label_window_minutes}min")
    m = lab.set_index(["client_id", "event_timestamp"])["label"]
    ev["abusive"] = m.reindex(pd.MultiIndex.from_arrays([ev["client_id"], win])).fillna(0).values
    ev["abusive"] = ev["abusive"].astype(int)
    roles = res.clients.to_pandas().set_index("client_id")["role"]
    ev["scenario"] = ev["client_id"].map(roles)
    span_s = 2 * minutes * 60
    t = (pd.to_datetime(ev["timestamp"], utc=True) - cfg.start).dt.total_seconds().to_numpy()
    ev["t"] = t
    step = 10.0
    bins = np.floor(t / step).astype(int)
    nb = math.ceil(86_400 / step)
    total = np.bincount(bins, minlength=nb)
    bad = np.bincount(bins, weights=ev["abusive"].to_numpy(), minlength=nb)
    k = int(span_s // step)
    ctot = np.convolve(total, np.ones(k, int), "valid")
    cbad = np.convolve(bad, np.ones(k), "valid")
    ok = ctot <= max_rps * span_s
    if not ok.any():
        raise ValueError(
            f"no {span_s / 60:g}-minute span of the fresh day stays under {max_rps} rps"
        )
    cbad = np.where(ok, cbad, -1)
    i = int(np.argmax(cbad))
    lo, hi = i * step, i * step + span_s
    sel = ev[(t >= lo) & (t < hi)].copy()
    sel["offset_s"] = sel["t"] - lo
    sel = sel.sort_values("offset_s", kind="stable").drop(columns=["t"]).reset_index(drop=True)
    cons = res.consumers.to_pandas()
    cons = cons[cons["client_id"].isin(set(sel["client_id"]))].reset_index(drop=True)
    span = {
        "rule": f"the {span_s / 60:g} min of a new simulated day of the same clients (traffic "
        f"seed {cfg.traffic_seed}) with the most "
        f"abusive requests at <= {max_rps:g} requests/s on average",
        "simulated_start": (cfg.start + timedelta(seconds=lo)).isoformat(),
        "requests": len(sel),
        "abusive_requests": int(sel["abusive"].sum()),
        "clients": int(sel["client_id"].nunique()),
        "abusive_clients": int(sel.loc[sel["abusive"] == 1, "client_id"].nunique()),
        "scenarios": sel.loc[sel["abusive"] == 1, "scenario"].value_counts().to_dict(),
        "drift": f"{cfg.drift.latency_service} service latency x3",
        "skew": f"{cfg.skew.column}={cfg.skew.value}: legitimate clients with 3x the failed "
        "logins and addresses, 1.7x the rate",
    }
    return LoopTraffic(sel, cons, span)


def register_consumers(
    s: Settings, consumers: pd.DataFrame, admin: str | None = None
) -> dict[str, str]:
    """An API key per replayed client (client_id → key); other consumers are kept. ``admin``:
    also an operator consumer of that id with the gateway's admin role (its key under the
    same id), e.g. for the stream's score push."""
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    keys: dict[str, str] = {}
    new = []
    if admin is not None:
        kid, key, digest = new_api_key()
        keys[admin] = key
        new.append(
            Consumer(
                client_id=admin,
                tier="enterprise",
                roles=[s.gateway.admin_role],
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    rows: list[Any] = list(consumers.itertuples(index=False))
    for row in rows:
        kid, key, digest = new_api_key()
        keys[row.client_id] = key
        new.append(
            Consumer(
                client_id=row.client_id,
                tier=row.tier,
                region=row.region,
                device_type=row.device_type,
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    ids = set(keys)
    kept = [
        c for c in ConsumersFile.load(s.gateway_consumers_path).consumers if c.client_id not in ids
    ]
    ConsumersFile(consumers=kept + new).save(s.gateway_consumers_path)
    return keys


def replay_settings(
    s: Settings, upstream_port: int, scoring_url: str | None = None, stream: str | None = None
) -> Settings:
    """The gateway for a replay: every service on the replay upstream. With ``scoring_url``
    the champion scores every client live (features from the online store the stream
    processor keeps current: the gateway publishes to the in-process stream ``stream``);
    without it, no live scoring (model action only through monitor-written overrides) and no
    stream publishing."""
    g = s.gateway
    services = {
        n: sv.model_copy(update={"instances": [f"http://127.0.0.1:{upstream_port}"]})
        for n, sv in g.services.items()
    }
    live = scoring_url is not None
    scoring = g.scoring.model_copy(
        update={"enabled": live, **({"url": scoring_url} if live else {})}
    )
    st = s.stream.model_copy(
        update={"enabled": live, "backend": "memory", "name": stream or s.stream.name}
        if live
        else {"enabled": False}
    )
    gw = g.model_copy(update={"services": services, "scoring": scoring})
    return s.model_copy(update={"gateway": gw, "stream": st})


class LiveFeatures:
    """The stream processor of a replay with live scoring, in a thread of this process: it
    reads the gateway's in-process stream (``backend: memory``) and pushes window features
    to the online store the scoring service reads, as the traffic arrives. It starts from
    its checkpoint or, without one, from the last ``bootstrap_hours`` of stored telemetry."""

    def __init__(
        self, s: Settings, push: bool = True, score_push: tuple[str, str] | None = None
    ) -> None:
        """``score_push``: (gateway URL, admin API key): after each online push the scores
        that moved go to that gateway (``features/score_push.py``)."""
        import threading

        from features.stream_service import StreamService

        self.settings = s
        self.status: dict[str, Any] = {}
        pusher = None
        if score_push is not None:
            from config.stream import ScorePushSettings
            from features.score_push import ScorePusher

            url, key = score_push
            sc = s.gateway.scoring
            cfg = ScorePushSettings(
                enabled=True, gateway_urls=[url], target=sc.target, alias=sc.alias
            )
            pusher = ScorePusher(cfg, sc.url, api_key=key)
        self.svc = StreamService(s, push=push, metrics_port=0, bootstrap=True, score_push=pusher)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.svc.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> LiveFeatures:
        self.svc.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        from telemetry.stream import MemoryBroker

        time.sleep(self.settings.stream.publish_interval_s * 2)  # the gateway's last publish
        self.stop.set()
        self.thread.join(timeout=60)
        # the gateway has stopped by now: what is left goes online, not to the gateway
        pusher, self.svc.score_push = self.svc.score_push, None
        try:
            self.svc.drain()  # what is still in the stream, then a checkpoint
            self.status = self.svc.status()
            if pusher is not None:
                self.status["score_push"] = pusher.stats()
        finally:
            self.svc.close()
            if pusher is not None:
                pusher.close()
            MemoryBroker.drop(self.settings.stream.name)


def _request(row: Any, key: str, run: str) -> tuple[str, str, dict[str, str], bytes | None]:
    url = row.url_path + (f"?{row.url_query}" if isinstance(row.url_query, str) else "")
    h = {
        "x-api-key": key,
        "x-request-id": f"{run}-{row.request_id}",
        "x-replay-status": str(int(row.http_response_status_code)),
        "x-replay-bytes": str(int(row.response_bytes or 0)),
        "x-replay-ms": f"{float(row.upstream_duration_ms or 0):.1f}",
    }
    if isinstance(row.client_address, str):
        h["x-forwarded-for"] = row.client_address
    if isinstance(row.user_agent, str):
        h["user-agent"] = row.user_agent
    body = None
    if row.http_request_method in ("POST", "PUT", "PATCH"):
        body = b"x" * int(min(row.request_bytes or 0, 4096))
    return row.http_request_method, url, h, body


async def _send_all(
    base: str,
    events: pd.DataFrame,
    keys: dict[str, str],
    run: str,
    on_progress: Any = None,
    concurrency: int = 128,
) -> pd.DataFrame:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[str, int, float, float]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as c:
        t0 = time.monotonic() + 0.2
        tasks = []

        async def one(row: Any) -> None:
            method, url, h, body = _request(row, keys[row.client_id], run)
            async with sem:
                sent = time.monotonic() - t0
                try:
                    r = await c.request(method, url, headers=h, content=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                out.append((f"{run}-{row.request_id}", code, sent, float(row.offset_s)))
                if on_progress:
                    on_progress(1)

        base_off = float(events["offset_s"].iloc[0]) if len(events) else 0.0
        todo: list[Any] = list(events.itertuples(index=False))
        for row in todo:
            wait = t0 + (row.offset_s - base_off) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(row)))
        await asyncio.gather(*tasks)
    df = pd.DataFrame(out, columns=["request_id", "status", "sent_s", "offset_s"])
    df["late_s"] = df["sent_s"] - (df["offset_s"] - base_off)
    return df


def replay(
    base: str,
    events: pd.DataFrame,
    keys: dict[str, str],
    run: str,
    on_progress: Any = None,
) -> pd.DataFrame:
    """Send ``events`` to the gateway at ``base`` at their recorded offsets (open loop).
    Returns request_id (as sent), status (0: no response), when it was sent and how late."""
    return asyncio.run(_send_all(base, events, keys, run, on_progress))


def release_labels(s: Settings, events: pd.DataFrame, recorded: pd.DataFrame, name: str) -> int:
    """The replayed requests' truth, as labels of the windows the gateway recorded them in."""
    import pyarrow as pa

    from labeling.store import LABELS_SCHEMA, LabelStore

    w = s.simulator.label_window_minutes
    df = recorded[["request_id", "client_id", "timestamp"]].merge(
        events[["request_id", "abusive", "scenario"]], on="request_id"
    )
    if df.empty:
        return 0
    df["event_timestamp"] = pd.to_datetime(df["timestamp"], utc=True).dt.floor(f"{w}min")
    g = (
        df.groupby(["client_id", "event_timestamp"])
        .agg(label=("abusive", "max"), scenario=("scenario", "first"))
        .reset_index()
    )
    g["label"] = g["label"].astype("int8")
    g["source"] = "simulator"  # the simulator's truth, released as a labelling team would
    g["labelled_by"] = "closed-loop truth release"
    g["labelled_at"] = pd.Timestamp.now(tz="UTC")
    cols = [c for c in LABELS_SCHEMA.names if c in g.columns]
    LabelStore(s.labels_dir).write(pa.Table.from_pandas(g[cols], preserve_index=False), name)
    return len(g)


def _recorded(s: Settings, run: str, since: datetime) -> pd.DataFrame:
    from telemetry.store import TelemetryStore

    con = TelemetryStore(s.telemetry_dir).connect()
    return con.execute(
        "SELECT request_id, timestamp, client_id, ratelimit_decision, "
        "http_response_status_code, tier, region, device_type, policy_version FROM events "
        f"WHERE timestamp >= TIMESTAMPTZ '{since.isoformat()}' AND starts_with(request_id, ?)",
        [f"{run}-"],
    ).df()


def _shares(df: pd.DataFrame, stopped: str) -> dict[str, Any]:
    ab, legit = df["abusive"] == 1, df["abusive"] == 0
    st = df[stopped]
    return {
        "requests": len(df),
        "abusive": int(ab.sum()),
        "abusive_stopped": int((ab & st).sum()),
        "abusive_stopped_share": float((ab & st).sum() / ab.sum()) if ab.sum() else None,
        "legitimate": int(legit.sum()),
        "legitimate_harmed": int((legit & st).sum()),
        "legitimate_harmed_share": float((legit & st).sum() / legit.sum()) if legit.sum() else None,
    }


def _groups(df: pd.DataFrame, stopped: str, min_group: int) -> tuple[list[dict[str, Any]], Any]:
    """Legitimate harm per group (per request); the worst/best ratio over judgeable groups
    (0 harm everywhere is a ratio of 1; harm against a best group at 0 is infinite)."""
    rows = []
    worst_ratio: float | None = None
    for attr in GROUPS:
        legit = df[df["abusive"] == 0]
        rates = {}
        for v, g in legit.groupby(attr, dropna=False):
            name = "(none)" if v is None or v != v else str(v)
            r = float(g[stopped].mean()) if len(g) else float("nan")
            rows.append({"attribute": attr, "value": name, "legitimate": len(g), "harmed": r})
            if len(g) >= min_group:
                rates[name] = r
        if len(rates) >= 2:
            hi, lo = max(rates.values()), min(rates.values())
            ratio = 1.0 if hi == 0 else (math.inf if lo == 0 else hi / lo)
            worst_ratio = ratio if worst_ratio is None else max(worst_ratio, ratio)
    return rows, worst_ratio


def outcome(
    events: pd.DataFrame,
    sent: pd.DataFrame,
    recorded: pd.DataFrame,
    static: pd.DataFrame,
    phase_b_from: float,
    min_group: int = 30,
) -> dict[str, Any]:
    """Per request: what the gateway did (its telemetry) and what static limits would have
    done (``static``: backtest decisions, request_id → action), by phase, by group, plus the
    detection time of every abusive client the gateway stopped."""
    ev = events.copy()
    df = sent.merge(
        ev[["request_id", "abusive", "scenario", "client_id", "offset_s"]].rename(
            columns={"offset_s": "sim_offset"}
        ),
        on="request_id",
    )
    rec = recorded[["request_id", "ratelimit_decision", *GROUPS, "policy_version"]]
    df = df.merge(rec, on="request_id", how="left")
    df["gatewise"] = df["ratelimit_decision"].isin(STOPPED)
    # what the policy in force would have done had its shadow rules (score bands, overrides
    # of a target in shadow) enforced: the live model's effect before it may act
    shadow = df["ratelimit_decision"].fillna("").str.startswith("shadow_")
    df["with_shadow"] = df["gatewise"] | shadow
    st = static.set_index("request_id")["action"]
    df["static"] = df["request_id"].map(st).isin(STOPPED)
    df["phase"] = np.where(df["sim_offset"] >= phase_b_from, "B", "A")
    res: dict[str, Any] = {"unrecorded": int((~df["request_id"].isin(rec["request_id"])).sum())}
    for ph in ("A", "B"):
        p = df[df["phase"] == ph]
        for system in ("gatewise", "static", "with_shadow"):
            out = _shares(p, system)
            rows, ratio = _groups(p, system, min_group)
            out["fpr_ratio"] = ratio
            out["groups"] = rows
            res[f"{ph}_{system}"] = out
    det = []
    for cid, g in df[df["abusive"] == 1].groupby("client_id"):
        first = float(g["sent_s"].min())
        hit = g.loc[g["gatewise"], "sent_s"]
        det.append(
            {
                "client_id": cid,
                "scenario": g["scenario"].iloc[0],
                "abusive_requests": len(g),
                "detected_after_s": None if hit.empty else float(hit.min() - first),
                "stopped_share": float(g["gatewise"].mean()),
                "in_phase_b": bool((g["phase"] == "B").any()),
            }
        )
    res["clients"] = det
    times = [d["detected_after_s"] for d in det if d["detected_after_s"] is not None]
    res["detection_median_s"] = float(np.median(times)) if times else None
    res["late_p95_s"] = float(np.percentile(df["late_s"], 95)) if len(df) else None
    res["no_response"] = int((df["status"] == 0).sum())
    return res


def _ceil(t: datetime, minutes: int) -> datetime:
    step = minutes * 60
    ts = t.timestamp()
    return datetime.fromtimestamp(math.ceil(ts / step) * step, UTC)


def _wait_flushed(app: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        t = app.state.gateway.status()["telemetry"]
        if t["pending"] == 0 and t["written"] + t["dropped"] >= t["emitted"]:
            return
        time.sleep(0.2)


def _judge_harm(console: Any, s: Settings, current: Any) -> Any:
    """No operator shortcut: the abuse target enforces only if its harm bound clears on the
    recorded history (monitoring/validation.py); otherwise it stays in shadow, and says why.
    An enforcing target is judged again too (a new champion, drifted inputs): whose bound no
    longer clears goes back to shadow. Returns the policy in force afterwards."""
    from gateway.policy_store import PolicyStore
    from monitoring.validation import validate

    if current.targets.get("abuse") is None:
        return current
    try:
        val = validate(s, target="abuse", policy=current, publish=True, author="gatewise demo")
    except LookupError as exc:
        console.print(f"[yellow]abuse target stays in shadow: harm bound not judged ({exc})[/]")
        return current
    h = val.harm
    console.print(
        ("[green]" if h.cleared else "[yellow]") + f"harm bound of the abuse target: {h.reason}[/]"
    )
    return PolicyStore(s.policy_dir).get(val.published) if val.published else current


def _redeploy(console: Any, s: Settings, config: Path | None, trained: dict[str, Any]) -> bool:
    """Drift asked for a new model and the monitor trained one (warm-started from the
    champion): deploy it when its gate passed it (no --force); returns whether it serves."""
    from flows.deploy import DeployError, deploy_flow

    if not trained.get("eligible"):
        console.print(
            f"[yellow]the retrained v{trained.get('version')} was refused by its gate "
            f"({'; '.join(trained.get('reasons') or [])[:300]}): the champion keeps serving[/]"
        )
        return False
    try:
        out = deploy_flow(
            target="abuse",
            version=str(trained["version"]),
            config_path=str(config) if config else None,
            data_dir=str(s.data_dir.resolve()),
        )
    except DeployError as exc:
        console.print(f"[red]{exc}[/]: the champion keeps serving")
        return False
    console.print(
        f"retrained v{out['version']} deployed as champion (steps: {' → '.join(out['steps'])}); "
        f"policy v{out['policy_version']} names it; the live service answers with it"
    )
    return True


def run_closed_loop(
    console: Any,
    s: Settings,
    config: Path | None = None,
    *,
    minutes: float = 2.0,
    max_rps: float = 60.0,
    scoring_url: str | None = None,
    retrain_budget_s: float = 30.0,
) -> dict[str, Any]:
    """The whole loop (module docstring); prints as it goes, returns the result record.
    ``scoring_url``: the champion's service; the gateway then scores every client live, and
    when drift asks for a new model the loop trains one between the phases
    (``retrain_budget_s``, warm-started from the champion), gates and deploys it."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flows.build_features import build_features_flow
    from flows.monitor import monitor_flow
    from gateway.app import create_app
    from gateway.backtest import backtest
    from gateway.policy import initial_policy
    from gateway.policy_store import PolicyStore, active_or_initial
    from gateway.upstreams import upstream_app

    run = f"loop{uuid.uuid4().hex[:8]}"
    traffic = fresh_traffic(s, minutes, max_rps=max_rps)
    sp = traffic.span
    console.print(
        f"fresh traffic: {sp['requests']:,} requests from {sp['clients']:,} clients "
        f"({sp['abusive_requests']:,} abusive from {sp['abusive_clients']} clients: "
        f"{sp['scenarios']}); {sp['rule']}; drift: {sp['drift']}; skew: {sp['skew']}"
    )
    admin = f"gatewise-{run}-operator"  # the stream's score push authenticates as it
    keys = register_consumers(s, traffic.consumers, admin=admin if scoring_url else None)
    store = PolicyStore(s.policy_dir)
    current = active_or_initial(s)
    if not store.exists():
        current = store.publish(current, author="gatewise demo", reason="initial policy")
    current = _judge_harm(console, s, current)
    v_a = current.version
    mode_a = current.targets["abuse"].mode if "abuse" in current.targets else "absent"
    console.print(f"policy v{v_a} in force for phase A (abuse target: {mode_a}, no overrides yet)")
    up_port, gw_port = free_port(), free_port()
    g = s.gateway
    rs = replay_settings(s, up_port, scoring_url, stream=f"gatewise-{run}")
    app = create_app(rs)
    live: LiveFeatures | None = None
    if scoring_url:
        live = LiveFeatures(rs, score_push=(f"http://127.0.0.1:{gw_port}", keys[admin]))
        console.print(
            f"live scoring: the gateway asks the champion at {scoring_url} about every client "
            "(cached, batched); a stream processor in this process turns the gateway's events "
            "into online window features as they arrive and pushes the scores that moved to "
            "the gateway"
        )
    else:
        console.print(
            "[yellow]no champion serving: the replay runs without live scoring (only "
            "monitor-written overrides can act for the model)[/]"
        )
    half = minutes * 60
    ev = traffic.events
    ev["request_id_sent"] = run + "-" + ev["request_id"]
    events = ev.assign(request_id=ev["request_id_sent"])
    phase_a, phase_b = ev[ev["offset_s"] < half], ev[ev["offset_s"] >= half]
    started = datetime.now(UTC) - timedelta(seconds=5)
    sent_parts = []
    mon: dict[str, Any] = {}
    retrained: dict[str, Any] | None = None
    with (
        live if live is not None else contextlib.nullcontext(),
        ThreadedServer(upstream_app(replay=True), up_port),
        ThreadedServer(app, gw_port, proxy_headers=False),
    ):
        base = f"http://127.0.0.1:{gw_port}"
        for name, part in (("A", phase_a), ("B", phase_b)):
            if name == "B":
                console.print(
                    f"policy v{app.state.gateway.core.policy.version} in force for phase B"
                )
            with Progress(
                TextColumn(f"phase {name}: replaying at real rate"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            ) as prog:
                task = prog.add_task("send", total=len(part))
                sent = replay(base, part, keys, run, lambda n, t=task: prog.advance(t, n))
            sent_parts.append(sent)
            _wait_flushed(app)
            codes = sent["status"].value_counts().sort_index().to_dict()
            console.print(
                f"phase {name}: {len(sent):,} requests in {sent['sent_s'].max():.0f}s, "
                f"p95 {sent['late_s'].quantile(0.95):.2f}s behind schedule; statuses {codes}"
            )
            if name == "B":
                break
            end_a = datetime.now(UTC)
            rec = _recorded(s, run, started)
            n_lab = release_labels(s, events, rec, f"{run}-A")
            console.print(
                f"phase A truth released: {n_lab} client windows labelled (label delay 0 in "
                "the demo); rebuilding today's features"
            )
            build_features_flow(
                config_path=str(config) if config else None,
                data_dir=str(s.data_dir.resolve()),
                since=end_a.date(),
                until=end_a.date() + timedelta(days=1),
            )
            w = s.simulator.label_window_minutes
            as_of = _ceil(end_a, w)  # the feature row of the window phase A ended in
            cut = started.replace(second=0, microsecond=0) - timedelta(minutes=started.minute % w)
            hours = (as_of - cut).total_seconds() / 3600
            mon = monitor_flow(
                hours=hours,
                as_of=as_of.isoformat(),
                label_delay_minutes=0,
                override_minutes=60,
                adapt_limits=True,
                retrain=scoring_url is not None,
                retrain_cooldown_h=0.0,  # the champion is minutes old; drift says it is stale
                retrain_budget_s=retrain_budget_s,
                config_path=str(config) if config else None,
                data_dir=str(s.data_dir.resolve()),
            )
            print_monitor(console, mon, "abuse")
            trained = (mon.get("policy") or {}).get("trained")
            if trained and _redeploy(console, s, config, trained):
                retrained = trained
                _judge_harm(console, s, active_or_initial(s))
            time.sleep(max(2.0, 2 * g.policy_poll_s))  # the gateway's next policy poll
    status = app.state.gateway.status()
    if live is not None:
        st = live.status
        sc = status.get("scoring") or {}
        console.print(
            f"live path: stream processor applied {st['applied']:,} events in {st['batches']} "
            f"micro-batches, pushed {st['pushed_rows']:,} feature rows online "
            f"({st['push_failures']} failed pushes), {sc.get('pushed', 0):,} moved scores pushed "
            f"to the gateway ({(st.get('score_push') or {}).get('failures', 0)} failed); "
            f"scoring: {sc.get('lookups', 0):,} lookups, {sc.get('calls', 0):,} calls to the "
            f"service, {sc.get('failures', 0)} failed, {sc.get('stale', 0)} stale, "
            f"{sc.get('unavailable', 0)} unavailable"
        )
    sent_all = pd.concat(sent_parts, ignore_index=True)
    rec = _recorded(s, run, started)
    release_labels(s, events, rec, f"{run}-B")
    static_policy = initial_policy(s)
    end = datetime.now(UTC) + timedelta(seconds=1)
    ids = sorted(set(traffic.events["client_id"]))
    bt = backtest(static_policy, s.telemetry_dir, start=started, end=end, clients=ids)
    static = bt.decisions[bt.decisions["request_id"].str.startswith(f"{run}-")]
    # phase B's offsets were re-based when sent; ``sim_offset`` keeps the recorded ones
    out = outcome(events, sent_all, rec, static, half, s.monitoring.min_group_size)
    v_b = PolicyStore(s.policy_dir).latest_version()
    from gateway.policy import policy_diff

    diff = policy_diff(store.get(v_a), store.get(v_b)) if v_b != v_a else []
    before = store.get(v_a)
    static_before = (
        before.tiers == static_policy.tiers
        and before.routes == static_policy.routes
        and not before.overrides
        and not before.allowances
    )
    result = {
        "day": day_comparison(mon),
        "before_label": f"v{v_a}" + (": static per-tier limits" if static_before else ""),
        "run": run,
        "at": datetime.now(UTC).isoformat(),
        "minutes_per_phase": minutes,
        "span": sp,
        "policy_a": v_a,
        "policy_b": v_b,
        "policy_diff": diff,
        "monitor": {
            k: mon.get(k)
            for k in (
                "check_id",
                "drift_share",
                "drifted",
                "score_drift",
                "bias",
                "policy",
                "reports",
            )
        },
        "gateway": {
            "decisions": status["decisions"],
            "telemetry": status["telemetry"],
            "scoring": status.get("scoring"),
        },
        "live_scoring": scoring_url is not None,
        "retrained": retrained,
        "stream": None
        if live is None
        else {
            k: live.status.get(k)
            for k in ("applied", "batches", "pushed_rows", "push_failures", "score_push")
        },
        "outcome": out,
    }
    print_loop(console, result)
    paths = save_loop_report(s, result)
    result["report"] = str(paths["html"])
    log_to_mlflow(s, paths, out)
    console.print(f"closed-loop report: {paths['html']}  (record: {paths['json']})")
    return result
