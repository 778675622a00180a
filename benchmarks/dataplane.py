"""The NGINX data plane, live: a published policy and a pushed score -> enforced, against the
Python gateway in the same run.

Set-up (``realistic``, also used by ``benchmarks/gateway.py``'s ``dataplane`` case): a
realistic policy — ``--clients`` consumers with an API key each (default 10,000), 1,000
per-client overrides (block, challenge, throttle, allow; some with an expiry), 500
allowances, the abuse target in **enforce** with throttle and block bands, and a score for
every client — behind one stub upstream (NGINX answering 200).

Two measurements, each ``--rounds`` times, on the NGINX data plane (``gatewise.lua``, the
sync loop polling every 0.5 s) and on the Python gateway (``gateway.app``, its policy
watch polling every ``gateway.policy_poll_s`` = 1 s) side by side:

  policy   publish a new version that blocks one more client (``PolicyStore.publish``,
           what monitoring and ``gatewise policy push`` do) -> the first 403 for that client
  score    a client's score rises to 0.97: the stream's ``ScorePusher`` asks the scoring
           service (a stub here) and pushes it to both gateways' ``/admin/scores`` -> the
           first 403 for that client

Latency is from the publish (or the push call) to the first refused request, polled every
10 ms; a round fails if nothing happens in 10 s.

Usage: .venv/bin/python benchmarks/dataplane.py [--clients 10000] [--rounds 20]
Results are appended to benchmarks/results/dataplane.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import (  # noqa: E402
    ThreadedServer,
    ensure_nginx,
    free_port,
    machine,
    save_result,
)


# the stub upstream --------------------------------------------------------------------------
def stub_upstream(root: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    """NGINX answering every path with 200 ``{"ok":true}``; ``/__hits`` counts what it served
    (``stub_status``), so a benchmark can check every request reached it."""
    exe = ensure_nginx()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "nginx.conf").write_text(
        f"""worker_processes {workers}; daemon off; pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {root}/body; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location = /__hits {{ stub_status; }}
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }} }}
"""
    )
    proc = subprocess.Popen([exe, "-p", str(root), "-c", str(root / "nginx.conf")])
    for _ in range(200):
        try:
            upstream_hits(port)
            return proc
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the stub upstream did not start")


def upstream_hits(port: int) -> int:
    """Requests the stub upstream has served (``stub_status``'s total)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/__hits", timeout=2) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[2])


# the realistic policy --------------------------------------------------------------------------
@dataclass
class Realistic:
    settings: Any
    keys: dict[str, str]  # client id -> API key
    allowed: list[str]  # clients every request of which is allowed (low score, no deny)
    admin_key: str
    plain: list[str]  # allowed clients with no override at all


def realistic_settings(data_dir: Path, upstream_port: int, scoring_url: str | None = None) -> Any:
    """The repo's gatewise.yaml on ``data_dir``: every service on the stub upstream, scoring
    on (``scoring_url``), scanning off (it stays with the Python gateway)."""
    from config.settings import load_settings

    for k in [k for k in os.environ if k.startswith("GATEWISE_")]:
        os.environ.pop(k)
    s = load_settings(REPO / "gatewise.yaml", data_dir=data_dir)
    g = s.gateway
    up = f"http://127.0.0.1:{upstream_port}"
    scoring = {"enabled": True, **({"url": scoring_url} if scoring_url else {})}
    g = g.model_copy(
        update={
            "services": {
                n: sv.model_copy(update={"instances": [up], "health_path": None})
                for n, sv in g.services.items()
            },
            "scoring": g.scoring.model_copy(update=scoring),
            "scanning": g.scanning.model_copy(update={"enabled": False}),
        }
    )
    return s.model_copy(update={"gateway": g})


def realistic(
    data_dir: Path,
    upstream_port: int,
    clients: int = 10_000,
    overrides: int = 1_000,
    scoring_url: str | None = None,
) -> Realistic:
    """Settings, consumers and an active policy as described in the module docstring."""
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key
    from gateway.policy import parse_policy
    from gateway.policy_store import PolicyStore

    s = realistic_settings(data_dir, upstream_port, scoring_url)
    rng = random.Random(7)
    tiers = ("free", "pro", "enterprise")
    keys: dict[str, str] = {}
    people = []
    for i in range(clients):
        cid = f"client-{i:05d}"
        kid, key, digest = new_api_key()
        keys[cid] = key
        people.append(
            Consumer(
                client_id=cid,
                tier=tiers[i % 3],
                region=rng.choice(["eu-west", "us-east", "ap-south"]),
                device_type="server",
                roles=["consumer"],
                api_keys=[ApiKey(id=kid, sha256=digest)],
            )
        )
    kid, admin_key, digest = new_api_key()
    people.append(
        Consumer(
            client_id="ops",
            tier="enterprise",
            roles=["consumer", "admin"],
            api_keys=[ApiKey(id=kid, sha256=digest)],
        )
    )
    ConsumersFile(consumers=people).save(s.gateway_consumers_path)
    ids = list(keys)
    rng.shuffle(ids)
    acted, rest = ids[:overrides], ids[overrides:]
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    actions = ["block", "challenge", "throttle", "allow"]
    doc = {
        # limits far above any benchmark rate: no request is refused by a limit
        "tiers": {t: {"requests_per_minute": 10_000_000} for t in tiers},
        "routes": {"GET /v1/reports/export": {"cost": 10}},
        "overrides": [
            {
                "client_id": cid,
                "action": actions[i % 4],
                "reason": "benchmark",
                **({"requests_per_minute": 60} if actions[i % 4] == "throttle" else {}),
                **({"expires_at": soon} if i % 2 else {}),
            }
            for i, cid in enumerate(acted)
        ],
        "allowances": {
            cid: {"requests_per_minute": 20_000_000, "reason": "heavy"} for cid in rest[:500]
        },
        "targets": {
            "abuse": {
                "mode": "enforce",
                "bands": [
                    {"min_score": 0.5, "action": "throttle", "limit_factor": 0.5},
                    {"min_score": 0.9, "action": "block"},
                ],
            }
        },
    }
    PolicyStore(s.policy_dir).publish(parse_policy(doc), author="benchmark", reason="realistic")
    # clients with an allow override or none; scores low for them, high for a few others
    deny = {cid for i, cid in enumerate(acted) if actions[i % 4] != "allow"}
    allowed = [c for c in ids if c not in deny][: clients // 2]
    touched = set(acted)
    return Realistic(s, keys, allowed, admin_key, [c for c in allowed if c not in touched])


BENCH_PATHS = ("/v1/orders/17", "/v1/products/5", "/v1/search?q=red+shoes", "/v1/orders")


def keys_lua(keys: list[str], paths: tuple[str, ...] = BENCH_PATHS) -> str:
    """A wrk ``request()`` cycling through one prebuilt GET per key (each key a client of its
    own, on one of ``paths``); built in ``init``, where wrk's Host header is known."""
    ks = ",\n".join(f'"{k}"' for k in keys)
    ps = ",".join(f'"{p}"' for p in paths)
    return (
        f"local keys = {{\n{ks}\n}}\nlocal paths = {{{ps}}}\nlocal reqs = {{}}\n"
        "init = function(args)\n  for i, k in ipairs(keys) do\n"
        "    reqs[i] = wrk.format('GET', paths[(i - 1) % #paths + 1], {['X-Api-Key'] = k})\n"
        "  end\nend\nlocal n = 0\n"
        "request = function()\n  n = n % #reqs + 1\n  return reqs[n]\nend\n"
    )


def all_scores(r: Realistic) -> list[dict[str, Any]]:
    """A score for every client: low for the benchmark's clients, high for 1 in 50 others."""
    ok = set(r.allowed)
    return [{"id": c, "score": 0.1 if c in ok or i % 50 else 0.95} for i, c in enumerate(r.keys)]


def start_dataplane(r: Realistic, root: Path, port: int, workers: int) -> tuple[Any, Any, Any]:
    """Render, start NGINX, push the bundle and every score: (process, admin, sync)."""
    from gateway.dataplane.nginx import DataPlaneAdmin, NginxProcess, render
    from gateway.dataplane.sync import DataPlaneSync

    rendered = render(r.settings.gateway, root, port=port, admin_port=free_port(), workers=workers)
    proc = NginxProcess(rendered)
    proc.start()
    admin = DataPlaneAdmin(rendered.admin_url, rendered.token, timeout_s=30)
    sync = DataPlaneSync(r.settings, admin, rendered.root)
    if not sync.sync_once(force=True):
        raise RuntimeError(f"bundle push failed: {sync.status.error}")
    scores = all_scores(r)
    for i in range(0, len(scores), 2000):
        admin.push_scores(scores[i : i + 2000], "1")
    return proc, admin, sync


# the live measurement ----------------------------------------------------------------------------
def _until_refused(url: str, key: str, t0: float, timeout_s: float = 10.0) -> float | None:
    """Seconds from ``t0`` (perf_counter) to the first 403 for ``key``; None after
    ``timeout_s``."""
    import httpx

    with httpx.Client(timeout=2) as c:
        while time.perf_counter() - t0 < timeout_s:
            if c.get(url, headers={"x-api-key": key}).status_code == 403:
                return time.perf_counter() - t0
            time.sleep(0.01)
    return None


def _race(urls: dict[str, str], key: str, t0: float) -> dict[str, float | None]:
    """Poll every gateway at once from the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(urls)) as pool:
        futs = {n: pool.submit(_until_refused, u, key, t0) for n, u in urls.items()}
        return {n: f.result() for n, f in futs.items()}


def _stats(xs: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(xs, dtype=float) * 1000
    if not len(a):
        return {"n": 0}
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
    }


def _child(kind: str, data_dir: str, up_port: str, scoring_url: str, *rest: str) -> None:
    """A server of its own process, as in production: ``sync`` (what ``gatewise dataplane
    nginx`` runs beside NGINX) or ``gateway`` (the Python gateway, one uvicorn worker)."""
    s = realistic_settings(Path(data_dir), int(up_port), scoring_url)
    if kind == "sync":
        from gateway.dataplane.nginx import DataPlaneAdmin
        from gateway.dataplane.sync import DataPlaneSync

        root, admin_url = Path(rest[0]), rest[1]
        admin = DataPlaneAdmin(admin_url, (root / "admin.token").read_text().strip())
        DataPlaneSync(s, admin, root).run(threading.Event(), 0.5, 3600.0)
    else:
        from benchmarks.harness import serve
        from gateway.app import create_app

        serve(create_app(s), int(rest[0]))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    from config.stream import ScorePushSettings
    from features.score_push import ScorePusher
    from gateway.policy_store import PolicyStore

    tmp = Path(tempfile.mkdtemp(prefix="gatewise-dataplane-"))
    tmp.chmod(0o755)
    scores: dict[str, float] = {}

    async def score_app(scope: Any, receive: Any, send: Any) -> None:  # the scoring service
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        ids = json.loads(body or b"{}").get("ids", [])
        out = {"model_version": "1", "results": [{"id": i, "score": scores.get(i)} for i in ids]}
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": json.dumps(out).encode()})

    scorer = ThreadedServer(score_app, free_port()).start()
    up_port = free_port()
    upstream = stub_upstream(tmp / "upstream", up_port)
    children: list[subprocess.Popen[bytes]] = []
    proc = None
    try:
        t0 = time.perf_counter()
        r = realistic(tmp / "data", up_port, args.clients, scoring_url=scorer.url)
        scores.update({x["id"]: x["score"] for x in all_scores(r)})
        print(f"set-up: {args.clients:,} consumers + policy in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        proc, admin, _ = start_dataplane(r, tmp / "nginx", free_port(), 1)
        print(f"data plane up, bundle + {len(scores):,} scores in {time.perf_counter() - t0:.1f}s")
        py_port = free_port()
        common = [sys.executable, __file__, "--child"]
        place = [str(tmp / "data"), str(up_port), scorer.url]
        children.append(subprocess.Popen([*common, "sync", *place, str(proc.r.root), admin.url]))
        children.append(subprocess.Popen([*common, "gateway", *place, str(py_port)]))
        py_url = f"http://127.0.0.1:{py_port}"
        from benchmarks.harness import wait_http

        wait_http(py_url + "/readyz", children[-1])
        pusher = ScorePusher(
            ScorePushSettings(enabled=True, gateway_urls=[admin.url, py_url]),
            scorer.url,
            api_key=r.admin_key,
        )
        store = PolicyStore(r.settings.policy_dir)
        urls = {"nginx": proc.r.url + "/v1/orders", "python": py_url + "/v1/orders"}
        lat: dict[str, dict[str, list[float]]] = {k: {"policy": [], "score": []} for k in urls}
        fails = {k: 0 for k in urls}
        victims = iter(r.plain[: 2 * args.rounds])
        time.sleep(2)  # both watchers settled on the set-up's version
        from gateway.policy import parse_policy

        def record(got: dict[str, float | None], what: str) -> None:
            for name, v in got.items():
                if v is None:
                    fails[name] += 1
                else:
                    lat[name][what].append(v)

        for _ in range(args.rounds):
            cid = next(victims)
            doc = store.load().model_dump(mode="json")
            doc["overrides"].append({"client_id": cid, "action": "block", "reason": "live"})
            store.publish(parse_policy(doc), author="benchmark", reason=f"block {cid}")
            record(_race(urls, r.keys[cid], time.perf_counter()), "policy")
        for _ in range(args.rounds):
            cid = next(victims)
            scores[cid] = 0.97
            t_push = time.perf_counter()
            # what the stream processor does for a client whose score moved
            pusher._batch([cid])
            record(_race(urls, r.keys[cid], t_push), "score")
        rows = []
        for what in ("policy", "score"):
            base = _stats(lat["python"][what])
            for name in urls:
                st = _stats(lat[name][what])
                rows.append({"gateway": name, "change": what, **st})
                if st["n"]:
                    print(
                        f"{name:7s} {what:7s} n={st['n']} p50 {st['p50_ms']:.0f} ms "
                        f"p95 {st['p95_ms']:.0f} ms max {st['max_ms']:.0f} ms "
                        f"(p95 x{st['p95_ms'] / base['p95_ms']:.2f} the Python gateway's)"
                    )
        print(f"rounds with no refusal in 10 s: {fails}")
        if not args.no_save:
            save_result(
                "dataplane",
                {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": machine(),
                    "clients": args.clients,
                    "rounds": args.rounds,
                    "rows": rows,
                    "failed_rounds": fails,
                },
            )
    finally:
        for c in children:
            c.terminate()
            c.wait(10)
        if proc is not None:
            proc.stop()
        upstream.terminate()
        scorer.stop()


if __name__ == "__main__":
    main()
