"""The gateway act of ``gatewise demo``: backtest policies, then real HTTP through a real gateway.

1. Backtest the active policy (static tier limits, abuse target in shadow)
   and a tighter static policy on the simulated, labelled telemetry: the
   trade-off static limits force (abuse stopped vs legitimate clients harmed).
2. Start the demo upstreams and the gateway (uvicorn, loopback, free ports),
   create API consumers, and drive real requests for a few seconds at real
   rate: a steady client and an enterprise partner (the busiest legitimate
   free and enterprise clients of the history, each at its own busiest
   recorded minute: nothing it has not done before), a scraper that bursts
   past its limit, a revoked key and an unauthenticated probe.
3. Export the policy for Kong, envoyproxy/ratelimit and NGINX.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from rich.console import Console

from config.settings import Settings
from demo.payload_act import Probe
from demo.servers import ThreadedServer, free_port

__all__ = ["gateway_demo"]


def _simulated_clients(
    s: Settings, peak: dict[str, float]
) -> dict[str, tuple[str, str, str | None, str | None]]:
    """Real simulated clients for the demo roles: (client_id, tier, region, device);
    ``peak``: each client's busiest recorded minute (``busiest_minute_rps``)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from labeling.store import LabelStore

    picks: dict[str, tuple[str, str, str | None, str | None]] = {}
    if not s.consumers_path.exists():
        return picks
    cons = pq.read_table(s.consumers_path).to_pandas().set_index("client_id")
    lab = LabelStore(s.labels_dir).read().to_pandas()
    abusive = lab[lab["label"] == 1]
    bad = set(abusive["client_id"])
    noisy = abusive[abusive["scenario"].isin(["scraping", "flood", "credential_stuffing"])]
    if len(noisy):
        cid = noisy["client_id"].value_counts().index[0]
        picks["scraper"] = (cid, *cons.loc[cid, ["tier", "region", "device_type"]].tolist())
    legit = cons[~cons.index.isin(bad)]
    # the busiest legitimate client of each tier: the one static limits are unfair to, driven
    # live at its own busiest recorded minute (``busiest_minute_rps``)
    peaks = pd.Series(peak, dtype=float)
    for role, tier in (("steady", "free"), ("partner", "enterprise")):
        cand = legit[legit["tier"] == tier]
        if len(cand):
            p = peaks.reindex(cand.index).fillna(0.0)
            cid = str(p.idxmax()) if len(p) else cand.index[0]
            picks[role] = (cid, *cand.loc[cid, ["tier", "region", "device_type"]].tolist())
    return picks


def _consumers(s: Settings, peak: dict[str, float]) -> dict[str, tuple[str, str]]:
    """API keys for the demo roles: role → (client_id, key). Simulated clients where possible,
    so the champion scores them from their real online features."""
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    sim = _simulated_clients(s, peak)
    keys: dict[str, tuple[str, str]] = {}
    consumers = []
    for role, default_tier, roles, revoked in (
        ("steady", "free", ["consumer"], False),
        ("scraper", "free", ["consumer"], False),
        ("partner", "enterprise", ["consumer"], False),
        ("admin", "enterprise", ["consumer", "admin"], False),
        ("former", "pro", ["consumer"], True),
        ("injector", "pro", ["consumer"], False),
    ):
        cid, tier, region, device = sim.get(
            role, (f"demo-{role}", default_tier, "eu-west", "server")
        )
        kid, key, digest = new_api_key()
        keys[role] = (cid, key)
        consumers.append(
            Consumer(
                client_id=cid,
                tier=tier,
                roles=roles,
                region=region,
                device_type=device,
                api_keys=[ApiKey(id=kid, sha256=digest, revoked=revoked)],
            )
        )
    # the demo's consumers replace earlier ones with the same ids; anyone else's stay
    ids = {c.client_id for c in consumers}
    kept = [
        c for c in ConsumersFile.load(s.gateway_consumers_path).consumers if c.client_id not in ids
    ]
    ConsumersFile(consumers=kept + consumers).save(s.gateway_consumers_path)
    return keys


def busiest_minute_rps(s: Settings) -> dict[str, float]:
    """Each client's busiest recorded minute, in requests per second: a legitimate client
    driven live at that rate does nothing it has not done before."""
    from telemetry.store import TelemetryStore

    store = TelemetryStore(s.telemetry_dir)
    if store.is_empty():
        return {}
    rows = (
        store.connect()
        .execute(
            "SELECT client_id, max(n) / 60.0 FROM (SELECT client_id, "
            "date_trunc('minute', timestamp) AS m, count(*) AS n FROM events "
            "WHERE client_id IS NOT NULL GROUP BY 1, 2) GROUP BY 1"
        )
        .fetchall()
    )
    return {str(c): float(r) for c, r in rows}


async def _drive(
    base: str,
    keys: dict[str, tuple[str, str]],
    seconds: float,
    injected: list[Probe] | None = None,
    rates: dict[str, float] | None = None,
) -> Counter[tuple[str, int]]:
    """Drive the roles; ``rates``: requests per second of a role's client (default: the
    demo's fixed ones)."""
    rates = rates or {}
    import httpx

    out: Counter[tuple[str, int]] = Counter()

    async def injector() -> None:
        """Held-out real attacks and benign look-alikes in the query, headers, cookies and
        the path (the scanner's act); each request numbered by a ``probe`` parameter."""
        cid, key = keys["injector"]
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:
            for i, p in enumerate(injected or []):
                h = {"x-api-key": key}
                params: dict[str, Any] = {"probe": i}
                path = "/v1/search"
                if p.where == "query":
                    params["q"] = p.value
                elif p.where == "header":
                    h[p.header] = p.value
                elif p.where == "cookie":
                    h["cookie"] = f"pref={p.value}" if "=" not in p.value else p.value
                else:
                    path = f"/v1/products/{p.value}"
                r = await c.get(path, params=params, headers=h)
                out[(f"injector ({cid}) {p.where}", r.status_code)] += 1
                await asyncio.sleep(seconds / max(len(injected or []), 1) / 2)

    async def client(role: str, rate: float, path: str, with_key: bool = True) -> None:
        cid, key = keys.get(role, ("anonymous", ""))
        h = {"x-api-key": key} if with_key and key else {}
        label = f"{role} ({cid})" + (" export, cost 10" if "export" in path else "")
        async with httpx.AsyncClient(base_url=base, timeout=5) as c:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                r = await c.get(path, headers=h)
                out[(label, r.status_code)] += 1
                await asyncio.sleep(1 / rate)

    partner = rates.get("partner", 32.0)
    await asyncio.gather(
        client("steady", rates.get("steady", 2.0), "/v1/orders/17"),
        client("scraper", 40, "/v1/products/5"),
        client("partner", partner * 15 / 16, "/v1/search"),
        client("partner", partner / 16, "/v1/reports/export"),
        client("former", 1, "/v1/orders/1"),
        client("anonymous probe", 1, "/v1/users/1", with_key=False),
        injector(),
    )
    return out


def _live_stream(console: Console, s: Settings) -> Any:
    """The live path for the demo's traffic when Redis answers (a private stream name, so
    nothing else's entries are read); None, with a note, when it does not."""
    import uuid

    import redis

    from features.stream_service import StreamService
    from monitoring.alerts import engine_for

    try:
        redis.Redis.from_url(s.stream.redis_url, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        console.print(f"live stream skipped: no Redis at {s.stream.redis_url} ({exc})")
        return None
    cfg = s.stream.model_copy(
        update={"enabled": True, "name": f"gatewise-demo-{uuid.uuid4().hex[:6]}"}
    )
    live = s.model_copy(update={"stream": cfg})
    svc = StreamService(live, metrics_port=0, bootstrap=True, alerts=engine_for(live))
    svc.start()
    console.print(
        f"live stream: the gateway publishes to Redis stream {cfg.name}; a stream processor "
        f"({svc.started_from}) pushes window features to the online store as traffic arrives"
    )
    return svc


def _stream_report(console: Console, svc: Any) -> None:
    st = svc.status()
    console.print(
        f"stream processor: {st['applied']:,} events applied in {st['batches']} micro-batches, "
        f"{st['pushed_rows']:,} feature rows pushed online, {st['alerts']} alerts, "
        f"lag {st.get('lag_events', '?')} events; see docs/stream.md"
    )
    try:
        b = svc.processor.broker
        if b is not None and hasattr(b, "r"):
            b.r.delete(*[b.key(p) for p in range(svc.settings.stream.partitions)])
    finally:
        svc.close()


def _nginx_drive(
    console: Console,
    live: Settings,
    port: int,
    up_port: int,
    keys: dict[str, tuple[str, str]],
    seconds: float,
    rates: dict[str, float],
    scoring_url: str | None,
) -> tuple[Counter[tuple[str, int]], dict[str, Any]]:
    """The same traffic through NGINX enforcing the live policy (``gateway/dataplane``):
    render, start, push the policy and the champion's scores, drive, then ingest NGINX's
    access log into the telemetry store (what ``gatewise dataplane nginx`` follows live)."""
    from gateway.dataplane.nginx import DataPlaneAdmin, NginxProcess, render
    from gateway.dataplane.sync import DataPlaneSync
    from gateway.upstreams import upstream_app
    from telemetry.ingest import ingest_files
    from telemetry.store import TelemetryStore

    r = render(
        live.gateway,
        live.data_dir / "dataplane" / "demo",
        port=port,
        admin_port=free_port(),
        workers=1,
    )
    proc = NginxProcess(r)
    proc.start()
    admin = DataPlaneAdmin(r.admin_url, r.token)
    sync = DataPlaneSync(live, admin, r.root)
    stop = threading.Event()
    try:
        sync.sync_once(force=True)
        pushed = sync.refresh_scores() if scoring_url else 0
        console.print(
            f"NGINX data plane on {r.url}: policy v{sync.status.enforced} enforced by Lua, "
            f"{pushed} champion scores pushed; access log {r.access_log}"
        )
        worker = threading.Thread(target=sync.run, args=(stop,), name="dp-sync", daemon=True)
        worker.start()
        with ThreadedServer(upstream_app(latency_scale=0.05), up_port):
            counts = asyncio.run(_drive(r.url, keys, seconds, None, rates))
        st = admin.status()
    finally:
        stop.set()
        proc.stop()  # flushes the access log
        admin.close()
    rep = ingest_files(
        [r.access_log],
        "nginx-json",
        TelemetryStore(live.telemetry_dir),
        rejects_dir=live.rejects_dir,
    )
    f = rep.files[0]
    status = {
        "decisions": st["decisions"],
        "policy_version": st["policy_version"],
        "telemetry": {"emitted": f.read, "written": f.accepted, "dropped": f.rejected},
    }
    return counts, status


def gateway_demo(
    console: Console,
    s: Settings,
    seconds: float = 8.0,
    scoring_url: str | None = None,
    dataplane: str = "python",
) -> None:
    from demo.steps import backtest_report
    from gateway.app import create_app
    from gateway.backtest import backtest
    from gateway.policy import default_policy, initial_policy
    from gateway.policy_store import PolicyStore
    from gateway.upstreams import upstream_app

    g = s.gateway
    store = PolicyStore(s.policy_dir)
    active = store.publish_if_absent(
        initial_policy(s),
        author="gatewise demo",
        reason="initial policy from gatewise.yaml (static tier limits, abuse target in shadow)",
    )
    console.print(
        f"[bold]backtest[/]: policy v{active.version} on the simulated, labelled telemetry"
    )
    backtest_report(
        console,
        backtest(
            active,
            s.telemetry_dir,
            labels=s.labels_dir,
            label_window_minutes=s.simulator.label_window_minutes,
        ),
    )
    tight = default_policy(
        {k: max(1, v // 4) for k, v in s.static_limits_per_minute.items()}, g.route_costs
    )
    r = backtest(
        tight,
        s.telemetry_dir,
        labels=s.labels_dir,
        label_window_minutes=s.simulator.label_window_minutes,
    )
    o = r.outcome
    console.print(
        f"a static policy at a quarter of the limits would stop {o['abusive_stopped_share']:.1%} of "
        f"abusive requests but harm {o['legitimate_harmed_share']:.2%} of legitimate ones: "
        "static limits trade one for the other; model scores are how gatewise escapes it"
    )

    console.print(
        f"[bold]live gateway[/]: real HTTP for {seconds:.0f}s at real rate"
        + (f", scored by the champion at {scoring_url}" if scoring_url else "")
    )
    peak = busiest_minute_rps(s)
    keys = _consumers(s, peak)
    injected: list[Probe] = []
    # legitimate roles at their own busiest recorded minute (at least one request in 4 s)
    rates = {r: max(0.25, peak[keys[r][0]]) for r in ("steady", "partner") if keys[r][0] in peak}
    if rates:
        console.print(
            "legitimate roles at their own busiest recorded minute: "
            + ", ".join(f"{r} ({keys[r][0]}) {v:.2f} requests/s" for r, v in rates.items())
        )

    if g.scanning.enabled and s.scanner_path().exists() and dataplane == "python":
        from demo.payload_act import demo_requests

        injected = demo_requests()
        console.print(
            f"payload scanner: the champion's compact form scans every part of every request in "
            f"process; an injector sends {len(injected)} requests (held-out real attacks in the "
            "query, headers, cookies and path, and benign look-alikes)"
        )
    up_port, gw_port = free_port(), free_port()
    services = {
        n: sv.model_copy(update={"instances": [f"http://127.0.0.1:{up_port}"]})
        for n, sv in g.services.items()
    }
    update: dict[str, Any] = {"services": services}
    if scoring_url:  # the champion just deployed scores every consumer (abuse target in shadow)
        update["scoring"] = g.scoring.model_copy(update={"enabled": True, "url": scoring_url})
    live = s.model_copy(update={"gateway": g.model_copy(update=update)})
    if dataplane == "nginx":
        counts, status = _nginx_drive(
            console, live, gw_port, up_port, keys, seconds, rates, scoring_url
        )
        _report(console, s, keys, counts, status, scoring_url, [], "NGINX data plane")
        _exports(console, s, store)
        return
    svc = _live_stream(console, live)
    if svc is not None:
        live = svc.settings
    app = create_app(live)
    stop = threading.Event()
    worker = None
    if svc is not None:
        worker = threading.Thread(target=svc.run, args=(stop,), name="stream", daemon=True)
        worker.start()
    try:
        with (
            ThreadedServer(upstream_app(latency_scale=0.05), up_port),
            ThreadedServer(app, gw_port, proxy_headers=False),
        ):
            counts = asyncio.run(
                _drive(f"http://127.0.0.1:{gw_port}", keys, seconds, injected, rates)
            )
    finally:
        if svc is not None and worker is not None:
            time.sleep(svc.settings.stream.publish_interval_s * 2)  # the last publish
            stop.set()
            worker.join(timeout=60)
            svc.drain()  # what is still in the stream, then a checkpoint
            _stream_report(console, svc)
    status = app.state.gateway.status()  # after shutdown: the telemetry buffer is drained
    _report(console, s, keys, counts, status, scoring_url, injected, "gateway")
    _exports(console, s, store)


def _report(
    console: Console,
    s: Settings,
    keys: dict[str, tuple[str, str]],
    counts: Counter[tuple[str, int]],
    status: dict[str, Any],
    scoring_url: str | None,
    injected: list[Probe],
    plane: str,
) -> None:
    from demo.steps import table

    if scoring_url:
        from telemetry.store import TelemetryStore

        ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
        demo_ids = {cid for cid, _ in keys.values()}
        ev = ev[ev["client_id"].isin(demo_ids) & ev["model_version"].notna()]
        if len(ev):
            rows = (
                ev.groupby(["client_id", "model_version", "ratelimit_decision"])
                .agg(requests=("request_id", "size"), score=("model_score", "mean"))
                .reset_index()
                .to_dict("records")
            )
            console.print(table("scored by the champion (shadow: recorded, not enforced)", rows))
    if injected:
        from demo.payload_act import scan_summary
        from telemetry.store import TelemetryStore

        ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
        ev = ev[ev["client_id"] == keys["injector"][0]]
        rows = scan_summary(ev, injected)
        console.print(
            table(
                f"payload scanner v{status['scanning']['version']} in the gateway (policy: shadow "
                "bands log 0.5 / challenge 0.9 / block 0.99 — recorded, not enforced)",
                rows,
            )
        )
    rows = [{"client": k[0], "status": k[1], "requests": v} for k, v in sorted(counts.items())]
    console.print(table("responses by client (429 = throttled, 401 = refused credentials)", rows))
    t = status["telemetry"]
    console.print(
        f"{plane}: decisions {status['decisions']}; telemetry events emitted {t['emitted']:,}, "
        f"written {t['written']:,}, dropped {t['dropped']}; policy v{status['policy_version']}"
    )


def _exports(console: Console, s: Settings, store: Any) -> None:
    from gateway.exporters import export

    g = s.gateway
    out = s.data_dir / "exports"
    out.mkdir(parents=True, exist_ok=True)
    for fmt, name in (
        ("kong", "kong.yaml"),
        ("envoy", "envoy-ratelimit.yaml"),
        ("nginx", "nginx-limits.conf"),
    ):
        (out / name).write_text(export(store.load(), fmt))
    from gateway.dataplane.nginx import render
    from gateway.dataplane.sync import compile_active

    render(g, out / "nginx-lua", admin_port=g.port + 1, bundle=compile_active(s))
    console.print(
        f"policy exported for Kong, envoyproxy/ratelimit and NGINX under {out}/, and as an NGINX"
        f" + Lua data plane in {out / 'nginx-lua'} (`gatewise dataplane nginx` runs it live)"
    )
    console.print(
        "run it yourself: `.venv/bin/gatewise upstreams` and `.venv/bin/gatewise gateway`, "
        f"then `curl -H 'x-api-key: …' localhost:{g.port}/v1/orders/1` (keys: `gatewise consumers add`)"
    )
