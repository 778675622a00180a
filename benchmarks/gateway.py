"""The gatewise gateway against NGINX as a reverse proxy, with wrk on loopback.

Set-ups in front of one trivial upstream (NGINX answering every path with
a fixed ``{"ok":true}``, one worker, so the upstream is never the bottleneck;
``--upstream uvicorn`` uses the demo upstream's ``/bench`` instead):

  direct        wrk -> upstream
  nginx         wrk -> NGINX reverse proxy (keepalive 64, HTTP/1.1) -> upstream
  gateway       wrk -> ``gatewise gateway``: API-key auth, RBAC, GCRA rate limit
                (static tier limits set high enough never to throttle),
                telemetry events to the Parquet store -> upstream
  gateway+score the same, plus the abuse score from a fake scorer (``POST /score``),
                cached per client (``cache_ttl_s: 60``), so the steady state is
                a cache hit
  gateway+scan  the gateway, plus the payload scanner in process (a compact linear
                champion fitted on the payload data at start): every part of every
                request read (query value, headers, cookies), verdicts recorded (shadow)
  dataplane     wrk -> NGINX + gatewise.lua (gateway/dataplane) enforcing a realistic
                policy: 10,000 consumers with a key each, 1,000 overrides, 500
                allowances, a score for every client, bands in enforce; wrk rotates
                through 5,000 clients' keys on four routes (its own script, no
                query values); the JSON access log on, as in production

Every request carries a query value (``--query-values`` N, default 200) and browser-like
headers: wrk rotates through N real parameter values from the labelled payload sample (one
in ten an attack), URL-encoded, and 20 header sets (a real User-Agent, Accept,
Accept-Language, a Cookie with a session token), for every case, so scanning on vs off
differs only in the scan.

Each is measured at 64 connections (throughput) and 8 connections (latency),
with NGINX and the gateway running the same number of worker processes (each
of ``--workers``, default 1 then 2): a 5 s settling run per server (lazy
imports, the telemetry sink's first Parquet write), then per point a 2 s
warm-up and ``--duration`` s with ``wrk --latency``. wrk runs one thread pinned to CPU ``--wrk-cpu`` with
``taskset`` (the servers are not pinned); on a 2-core machine wrk, the
upstream and the server under test share the two cores, so these are
same-machine ratios, not capacity figures.

wrk and NGINX are installed with apt-get when absent (root, non-interactive).

Usage: .venv/bin/python benchmarks/gateway.py [--workers 1 2] [--duration 10] [--warmup 2]
           [--upstream nginx|uvicorn] [--wrk-cpu 1] [--profile] [--profile-only]
           [--cases direct nginx gateway gateway+score] [--no-save]
Results are appended as JSON lines to benchmarks/results/gateway.jsonl.
Each case is one function returning the server under test (``STARTERS``; ``CASES`` is
their names, in table order): a new set-up is a function and an entry there.
"reached the upstream" is the share of wrk's requests that the upstream NGINX answered in
the same run (its stub_status counter): a refused request never reaches it, so a set-up
that refuses cannot pass refusals off as throughput (~100%: every request was allowed;
the gateway's health checks add a handful).
``--profile`` also samples one gateway worker (all its threads) with py-spy
while wrk drives it at 64 connections, and prints the top packages and
functions by own and inclusive samples. py-spy is pip-installed into
/tmp/gatewise-pyspy when absent (never into the project's venv); without it,
cProfile (main thread only) is used.
The "server CPU per request" column is the CPU time of the process group under
test (NGINX master + workers, or the gateway's uvicorn processes) divided by
the requests wrk completed: a figure that the machine's other load disturbs
far less than req/s. "other load" is the machine's busy CPU not spent by wrk,
the upstream or the server under test (another job on the machine): a run
with more than ~0.1 cores of it is not a clean measurement.
The servers run with bytecode cached under /tmp/gatewise-pycache
(PYTHONPYCACHEPREFIX), so start-up compiles nothing in the venv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    Procs,
    children_cpu,
    cpu_busy,
    ensure_nginx,
    ensure_wrk,
    exit_on_signals,
    find_pyspy,
    free_port,
    group_cpu,
    machine,
    pyspy_record,
    read_stacks,
    run_wrk,
    serve,
    wait_http,
    write_wrk_script,
)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
GATEWISE = str(Path(PY).with_name("gatewise"))
RESULTS = REPO / "benchmarks" / "results" / "gateway.jsonl"
PATH = "/bench"
BODY = b'{"ok":true}'
HITS = "/__hits"  # the upstream NGINX's stub_status: requests it has answered


# servers ---------------------------------------------------------------------
def nginx_conf(root: Path, workers: int, port: int, upstream_port: int | None) -> Path:
    """A minimal nginx.conf: fixed 200 when ``upstream_port`` is None, else a reverse proxy."""
    for d in ("logs", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if upstream_port is None:
        body = BODY.decode()
        server = f"""
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    keepalive_requests 1000000;
    location / {{ default_type application/json; return 200 '{body}'; }}
    location = {HITS} {{ stub_status; }}
  }}"""
    else:
        server = f"""
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}"""
    tmp = root / "tmp"
    text = f"""worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_timeout 65;
{server}
}}
"""
    conf = root / "nginx.conf"
    conf.write_text(text)
    return conf


def start_nginx(
    procs: Procs, nginx: str, root: Path, workers: int, port: int, upstream_port: int | None
) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    conf = nginx_conf(root, workers, port, upstream_port)
    test = subprocess.run(
        [nginx, "-t", "-q", "-p", str(root), "-e", str(root / "logs/error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {test.stderr}")
    log = root / "stdout.log"
    p = procs.start(
        [nginx, "-p", str(root), "-e", str(root / "logs/error.log"), "-c", str(conf)], log
    )
    wait_http(f"http://127.0.0.1:{port}{PATH}", proc=p, log=log, timeout=15)
    return p


# the fake scorer (run as ``gateway.py --serve-scorer PORT``) ---------------
def serve_scorer(port: int) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(
            {"model_version": "1", "results": [{"id": i, "score": 0.1} for i in body["ids"]]}
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/healthz", health)])
    serve(app, port)


def serve_upstream(port: int) -> None:
    from gateway.upstreams import upstream_app

    serve(upstream_app(), port)


# the gateway -------------------------------------------------------------
def gateway_config(
    root: Path, upstream_port: int, scorer_port: int | None, scanner: Path | None = None
) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "gatewise.yaml").read_text())
    cfg["data_dir"] = str(root / "data")
    big = 100_000_000
    cfg["static_limits_per_minute"] = {"free": big, "pro": big, "enterprise": big}
    cfg["gateway"] = {
        "host": "127.0.0.1",
        "services": {
            "edge": {"instances": [f"http://127.0.0.1:{upstream_port}"], "health_path": "/healthz"}
        },
        "routes": [{"route": f"GET {PATH}", "service": "edge"}],
        # the default roles open /v1/* and /v2/* to consumers; the bench route too
        "roles": {
            "consumer": [{"methods": ["GET"], "routes": [PATH]}],
            "admin": [{"routes": ["*"]}],
        },
        "scoring": {
            "enabled": scorer_port is not None,
            "url": f"http://127.0.0.1:{scorer_port or 3000}",
            "cache_ttl_s": 60,
        },
        "scanning": {"enabled": scanner is not None},
    }
    if scanner is not None:  # where the gateway looks for the champion's compact export
        (root / "data" / "scanner").mkdir(parents=True, exist_ok=True)
        shutil.copy(scanner, root / "data" / "scanner" / "payload.npz")
    path = root / "gatewise.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_consumer(cfg: Path) -> str:
    r = subprocess.run(
        [GATEWISE, "consumers", "add", "bench", "--tier", "enterprise", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
        cwd=cfg.parent,
    )
    keys = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("gw_")]
    if not keys:
        raise RuntimeError(f"no key printed by consumers add: {r.stdout!r} {r.stderr!r}")
    return keys[-1]


def start_gateway(
    procs: Procs, cfg: Path, port: int, workers: int, key: str, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    args = ["gateway", "--config", str(cfg), "--port", str(port), "--workers", str(workers)]
    if profile is None:
        cmd = [GATEWISE, *args]
    else:  # one in-process worker under cProfile (SIGINT lets uvicorn return and cProfile dump)
        cmd = [PY, "-m", "cProfile", "-o", str(profile), "-m", "gatewise", *args]
    log = cfg.parent / f"gateway-{port}.log"
    p = procs.start(cmd, log, cwd=cfg.parent)
    body = wait_http(
        f"http://127.0.0.1:{port}{PATH}", proc=p, log=log, timeout=90, headers={"x-api-key": key}
    )
    if body != BODY:
        raise RuntimeError(f"gateway answered {body!r}")
    return p


def telemetry_summary(data_dir: Path) -> dict[str, Any]:
    """What the gateway recorded (read after it stopped and drained its sink)."""
    from telemetry.store import TelemetryStore

    t = TelemetryStore(data_dir / "telemetry").read()
    if t.num_rows == 0:
        return {"telemetry_events": 0}
    dec = t.column("ratelimit_decision").to_pylist()
    return {
        "telemetry_events": t.num_rows,
        "telemetry_scored": t.num_rows - t.column("model_score").null_count,
        "telemetry_scanned": t.num_rows - t.column("scan_label").null_count
        if "scan_label" in t.column_names
        else 0,
        "telemetry_allowed": sum(d == "allow" for d in dec),
        "telemetry_files": sum(1 for _ in (data_dir / "telemetry").rglob("*.parquet")),
    }


def build_scanner(root: Path) -> Path:
    """The compact payload scanner the gateway+scan case loads: a linear detector and
    class head fitted on the real payloads (what AutoML's default text config gives)."""
    from models.payload import compact_scanner, fit_default

    return compact_scanner(fit_default(), "bench").save(root / "payload.npz")


def query_lua(n: int, seed: int = 0) -> str:
    """A wrk ``request()`` rotating through ``n`` real parameter values (1 in 10 an attack)
    and 20 header sets a browser or an API client sends: a real User-Agent (from the
    access-log sample), Accept, Accept-Language and a Cookie with a session token and a
    preference. Every case sends the same requests, so scanning on vs off differs only in
    the scan (of the query value and of every header and cookie)."""
    import random
    import string
    from urllib.parse import quote_plus

    from models.data import BENIGN, read_payloads
    from models.payloads.api_values import log_requests

    df = read_payloads()
    rng = random.Random(seed)
    benign = df.loc[df["attack_type"] == BENIGN, "payload"].tolist()
    attacks = df.loc[df["attack_type"] != BENIGN, "payload"].tolist()
    values = [rng.choice(attacks) if i % 10 == 9 else rng.choice(benign) for i in range(n)]
    paths = ",\n".join(f"[==[{PATH}?q={quote_plus(v)}]==]" for v in values)
    uas = list(dict.fromkeys(r["ua"] for r in log_requests(part="all") if r["ua"] != "-"))[:20]
    langs = ["en-US,en;q=0.9", "en-GB,en;q=0.8", "de-DE,de;q=0.9,en;q=0.7", "fr-FR,fr;q=0.9", "es"]
    sets = []
    for i, ua in enumerate(uas):
        token = "".join(rng.choices(string.ascii_letters + string.digits, k=26))
        h = {
            "User-Agent": ua,
            "Accept": "application/json, text/plain, */*",
            "Accept-Language": langs[i % len(langs)],
            "Cookie": f"session={token}; theme={'dark' if i % 2 else 'light'}; lang=en-GB",
        }
        sets.append("{" + ", ".join(f'["{k}"]=[==[{v}]==]' for k, v in h.items()) + "}")
    return (
        f"local paths = {{\n{paths}\n}}\nlocal hdrs = {{\n" + ",\n".join(sets) + "\n}\n"
        "local i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  local h = {}\n"
        "  for k, v in pairs(wrk.headers) do h[k] = v end\n"
        "  for k, v in pairs(hdrs[i % #hdrs + 1]) do h[k] = v end\n"
        "  return wrk.format(nil, paths[i], h)\nend\n"
    )


# measuring -------------------------------------------------------------------
def upstream_hits(hits_url: str | None) -> int | None:
    """Requests the upstream NGINX has answered so far (its stub_status), None without one."""
    if hits_url is None:
        return None
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(hits_url, timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)  # accepts handled requests
    if m is None:
        raise RuntimeError(f"no counters in the upstream's stub_status: {text!r}")
    return int(m.group(3)) - 1  # this status request counts itself


def measure(
    a: argparse.Namespace,
    wrk: str,
    lua: Path,
    url: str,
    headers: dict[str, str],
    server_pgid: int,
    upstream_pgid: int | None,
    hits_url: str | None = None,
) -> dict[int, dict[str, Any]]:
    """Warm-up, then the measured run, at 64 and 8 connections; plus CPU per request and the
    requests that reached the upstream (``upstream_hits``: a refused request never does, so
    refusals cannot pass for throughput).

    A first 5 s run at 64 connections lets every worker finish its one-off work
    (lazy imports, the telemetry sink's first Parquet write) before any warm-up.
    """
    out = {}
    run_wrk(wrk, url, 64, max(5.0, a.warmup), lua, headers, a.wrk_cpu)
    for conns in (64, 8):
        if a.warmup > 0:
            run_wrk(wrk, url, conns, a.warmup, lua, headers, a.wrk_cpu)
        up_pgid = upstream_pgid or 0
        h0 = upstream_hits(hits_url)
        c0, u0, m0, w0 = group_cpu(server_pgid), group_cpu(up_pgid), cpu_busy(), children_cpu()
        r = run_wrk(wrk, url, conns, a.duration, lua, headers, a.wrk_cpu)
        c1, u1, m1, w1 = group_cpu(server_pgid), group_cpu(up_pgid), cpu_busy(), children_cpu()
        h1 = upstream_hits(hits_url)
        if h0 is not None and h1 is not None:
            # wrk's count leaves out the requests in flight when it stopped; the gateway's
            # health checks add a few
            r["upstream_hits"] = h1 - h0
        n = max(1, r["requests"])
        r["server_cpu_us_per_req"] = (c1 - c0) / n * 1e6
        if upstream_pgid:
            r["upstream_cpu_us_per_req"] = (u1 - u0) / n * 1e6
        r["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        # CPU burnt by anything but wrk, the server and the upstream: other load on the machine
        ours = (c1 - c0) + ((u1 - u0) if upstream_pgid else 0) + (w1 - w0)
        r["wrk_cpu_s"] = w1 - w0
        r["other_cpu_cores"] = max(0.0, ((m1[0] - m0[0]) - ours) / r["seconds"])
        out[conns] = r
    return out


# profiling ---------------------------------------------------------------
def _package(f: str) -> str:
    m = re.search(r"\(([^)]*)\)$", f)
    path = m.group(1) if m else f
    head = path.split("/", 1)[0] if "/" in path else path.split(":", 1)[0]
    return head or "?"


# py-spy counts a thread-pool worker blocked on its queue as busy: that is idle time
_IDLE_TOP = re.compile(r"^_worker \(concurrent/futures/thread\.py\)$")


def summarize_stacks(raw: Path, requests: int, seconds: float, top: int = 25) -> str:
    """Own and inclusive shares of py-spy's samples (all threads), by function and package."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    pkg: dict[str, int] = {}
    total = idle = threads = 0
    for frames, n in read_stacks(raw):
        if not frames:
            continue
        if _IDLE_TOP.match(frames[-1]):
            idle += n
            continue
        total += n
        if any(f.startswith("Thread._bootstrap ") for f in frames):
            threads += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        pkg[_package(frames[-1])] = pkg.get(_package(frames[-1]), 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if total == 0:
        return "(no samples)\n"
    out = [
        f"{total} busy samples over {seconds:.0f} s, {requests} requests "
        f"({idle} samples of idle thread-pool workers left out); "
        f"event-loop thread {1 - threads / total:.0%}, worker threads "
        f"(telemetry writes) {threads / total:.0%}"
    ]
    out.append("\nown samples by package (the frame on top of the stack):")
    out += [f"  {n / total:6.1%}  {k}" for k, n in sorted(pkg.items(), key=lambda x: -x[1])[:15]]
    out.append(f"\ntop {top} functions by own samples:")
    out += [f"  {n / total:6.1%}  {k}" for k, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    out.append(f"\ntop {top + 15} functions by inclusive samples:")
    out += [
        f"  {n / total:6.1%}  {k}" for k, n in sorted(incl.items(), key=lambda x: -x[1])[: top + 15]
    ]
    return "\n".join(out) + "\n"


def profile_gateway(
    a: argparse.Namespace,
    procs: Procs,
    wrk: str,
    lua: Path,
    root: Path,
    upstream_port: int,
    scorer_port: int,
    scanner: Path | None = None,
) -> str:
    """One gateway worker under load (64 connections), sampled by py-spy (cProfile if absent)."""
    groot = root / "profile"
    groot.mkdir()
    scoring = a.profile_case == "gateway+score"
    scan = scanner if a.profile_case == "gateway+scan" else None
    cfg = gateway_config(groot, upstream_port, scorer_port if scoring else None, scan)
    key = add_consumer(cfg)
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    pyspy = find_pyspy(install=True)
    prof = groot / "gateway.prof"
    p = start_gateway(procs, cfg, port, 1, key, profile=None if pyspy else prof)
    head = (
        f"profile of one gateway worker ({a.profile_case}), wrk {a.profile_connections} "
        f"connections, {'py-spy, all threads, 100 Hz' if pyspy else 'cProfile, main thread'}\n"
    )
    hdr = {"x-api-key": key}
    try:
        # settle (lazy imports, the first telemetry write), then warm up
        run_wrk(wrk, url, 64, max(5.0, a.warmup), lua, hdr, a.wrk_cpu)
        run_wrk(wrk, url, a.profile_connections, a.warmup, lua, hdr, a.wrk_cpu)
        if pyspy:
            raw = groot / "stacks.txt"
            with pyspy_record(pyspy, p.pid, raw, rate=100, seconds=a.duration):
                res = run_wrk(wrk, url, a.profile_connections, a.duration + 1, lua, hdr, a.wrk_cpu)
            head += f"{res['rps']:.0f} req/s while sampled (py-spy pauses the process per sample)\n"
            if a.profile_out and raw.exists():
                shutil.copy(raw, a.profile_out)
                head += f"raw stacks (flamegraph.pl input) copied to {a.profile_out}\n"
            return head + (
                summarize_stacks(raw, res["requests"], a.duration)
                if raw.exists()
                else "(py-spy wrote nothing)\n"
            )
        res = run_wrk(wrk, url, a.profile_connections, a.duration, lua, hdr, a.wrk_cpu)
    finally:
        if not pyspy:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)  # uvicorn returns, cProfile writes its file
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        procs.stop(p)
    buf = io.StringIO()
    buf.write(head + f"{res['rps']:.0f} req/s under the profiler (includes start-up)\n")
    if not prof.exists():
        return buf.getvalue() + "(no profile written)\n"
    st = pstats.Stats(str(prof), stream=buf)
    st.strip_dirs()
    for order, k in (("tottime", 25), ("cumulative", 40)):
        buf.write(f"\n--- top {k} by {order} ---\n")
        st.sort_stats(order).print_stats(k)
    return buf.getvalue()


# the cases: one function each, starting the server under test ----------------
@dataclass
class Bench:
    """What every case starts from: the run's options and the servers up for the whole run."""

    a: argparse.Namespace
    procs: Procs
    nginx: str
    root: Path
    upstream: subprocess.Popen[bytes]
    up_port: int
    sc_port: int
    scanner: Path | None


@dataclass
class Target:
    """A server under test: wrk sends to ``port`` with ``headers``; ``server`` is its process
    (None: the upstream itself); ``data_dir`` holds its telemetry (None: it records none)."""

    port: int
    headers: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    lua: Path | None = None  # its own wrk script (default: the run's)


def case_direct(b: Bench, workers: int) -> Target:
    """wrk -> the upstream."""
    return Target(b.up_port)


def case_nginx(b: Bench, workers: int) -> Target:
    """wrk -> NGINX as a reverse proxy (keepalive 64, HTTP/1.1) -> the upstream."""
    port = free_port()
    root = b.root / f"proxy-{workers}"
    return Target(port, server=start_nginx(b.procs, b.nginx, root, workers, port, b.up_port))


def case_gateway(b: Bench, workers: int, score: bool = False, scan: bool = False) -> Target:
    """wrk -> ``gatewise gateway`` (+ the fake scorer, + the payload scanner) -> the upstream."""
    groot = Path(tempfile.mkdtemp(prefix=f"gateway-{workers}-", dir=b.root))
    cfg = gateway_config(
        groot, b.up_port, b.sc_port if score else None, b.scanner if scan else None
    )
    key = add_consumer(cfg)
    port = free_port()
    server = start_gateway(b.procs, cfg, port, workers, key)
    return Target(port, {"x-api-key": key}, server, groot / "data")


def case_dataplane(b: Bench, workers: int) -> Target:
    """wrk -> NGINX + ``gatewise.lua`` enforcing a realistic policy (``benchmarks/dataplane.py``:
    10,000 consumers with a key each, 1,000 overrides, 500 allowances, a score for every
    client, the abuse target's bands in enforce) -> the upstream. wrk rotates through 5,000
    clients' keys over four routes; the limits are set so that every request is allowed."""
    from benchmarks.dataplane import keys_lua, realistic, start_dataplane

    droot = Path(tempfile.mkdtemp(prefix=f"dataplane-{workers}-", dir=b.root))
    os.chmod(droot, 0o755)
    r = realistic(droot / "data", b.up_port, 10_000)
    port = free_port()
    proc, admin, _ = start_dataplane(r, droot / "nginx", port, workers)
    admin.close()
    assert proc.proc is not None
    b.procs.procs.append(proc.proc)  # stopped with the rest if the run fails
    lua = write_wrk_script(droot / "keys.lua", keys_lua([r.keys[c] for c in r.allowed[:5000]]))
    return Target(port, {}, proc.proc, None, lua)


STARTERS: dict[str, Callable[[Bench, int], Target]] = {
    "direct": case_direct,
    "nginx": case_nginx,
    "gateway": case_gateway,
    "gateway+score": partial(case_gateway, score=True),
    "gateway+scan": partial(case_gateway, scan=True),
    "dataplane": case_dataplane,
}
CASES = tuple(STARTERS)
GATEWAY_CASES = tuple(c for c in CASES if c.startswith("gateway"))


def print_row(case: str, workers: int, conns: int, r: dict[str, Any]) -> None:
    bad = r["non_2xx"] + r["socket_errors"]
    hits = r.get("upstream_hits")
    reached = f"  upstream got {hits / max(1, r['requests']):.0%}" if hits is not None else ""
    print(
        f"{case:14s} w={workers} c={conns:<3d} {r['rps']:9.0f} req/s  "
        f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
        f"server CPU {r['server_cpu_us_per_req']:6.0f} us/req  "
        f"machine {r['machine_busy']:.0%} busy, "
        f"other load {r['other_cpu_cores']:.2f} cores{reached}"
        + (f"  ERRORS {bad}" if bad else ""),
        flush=True,
    )


# main ----------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before each measurement")
    ap.add_argument("--upstream", choices=["nginx", "uvicorn"], default="nginx")
    ap.add_argument("--wrk-cpu", default="1", help="taskset CPU list for wrk ('' = no pinning)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--profile", action="store_true", help="also profile one gateway worker")
    ap.add_argument("--profile-only", action="store_true", help="only the profile")
    ap.add_argument("--profile-case", choices=GATEWAY_CASES, default="gateway+score")
    ap.add_argument("--profile-connections", type=int, default=64)
    ap.add_argument("--profile-out", type=Path, help="keep py-spy's raw stacks here")
    ap.add_argument("--no-save", action="store_true", help="do not append to the results file")
    ap.add_argument(
        "--query-values", type=int, default=200, help="real values rotated as ?q= (0: none)"
    )
    ap.add_argument("--serve-scorer", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_scorer:
        return serve_scorer(a.serve_scorer)
    if a.serve_upstream:
        return serve_upstream(a.serve_upstream)
    if a.wrk_cpu and not shutil.which("taskset"):
        a.wrk_cpu = ""
    if a.wrk_cpu == "":
        a.wrk_cpu = None

    exit_on_signals()  # a SIGTERM still stops every server below
    wrk, nginx = ensure_wrk(), ensure_nginx()
    mach = machine()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="gatewise-gwbench-"))
    os.chmod(root, 0o755)
    lua = write_wrk_script(root / "report.lua", query_lua(a.query_values) if a.query_values else "")
    wants_scan = "gateway+scan" in a.cases or (
        (a.profile or a.profile_only) and a.profile_case == "gateway+scan"
    )
    scanner = build_scanner(root) if wants_scan else None
    profile_text = ""
    try:
        # the upstream and the fake scorer stay up for the whole run
        up_port = free_port()
        if a.upstream == "nginx":
            upstream = start_nginx(procs, nginx, root / "upstream", 1, up_port, None)
        else:
            log = root / "upstream.log"
            upstream = procs.start([PY, __file__, "--serve-upstream", str(up_port)], log)
            wait_http(f"http://127.0.0.1:{up_port}{PATH}", proc=upstream, log=log, timeout=30)
        sc_port = free_port()
        log = root / "scorer.log"
        scorer = procs.start([PY, __file__, "--serve-scorer", str(sc_port)], log)
        wait_http(f"http://127.0.0.1:{sc_port}/healthz", proc=scorer, log=log, timeout=30)
        print(
            f"# {mach}; upstream: {a.upstream} on :{up_port} (1 worker); wrk -t1 "
            f"{'pinned to CPU ' + a.wrk_cpu if a.wrk_cpu else 'not pinned'}; "
            f"{a.warmup:.0f} s warm-up + {a.duration:.0f} s per point",
            flush=True,
        )

        b = Bench(a, procs, nginx, root, upstream, up_port, sc_port, scanner)
        hits_url = f"http://127.0.0.1:{up_port}{HITS}" if a.upstream == "nginx" else None
        for workers in [] if a.profile_only else a.workers:
            for case in a.cases:
                t = STARTERS[case](b, workers)
                try:
                    res = measure(
                        a,
                        wrk,
                        t.lua or lua,
                        f"http://127.0.0.1:{t.port}{PATH}",
                        t.headers,
                        t.server.pid if t.server is not None else upstream.pid,
                        upstream.pid if t.server is not None else None,
                        hits_url,
                    )
                finally:
                    if t.server is not None:
                        procs.stop(t.server)
                tel = telemetry_summary(t.data_dir) if t.data_dir is not None else {}
                for conns, r in res.items():
                    rows.append(
                        {"case": case, "workers": workers, "connections": conns, **r, **tel}
                    )
                    print_row(case, workers, conns, r)
                if tel:
                    sent = sum(r["requests"] for r in res.values())
                    print(
                        f"  telemetry: {tel.get('telemetry_events', 0)} events "
                        f"(wrk counted {sent} in the measured runs, plus warm-ups), "
                        f"{tel.get('telemetry_scored', 0)} scored, "
                        f"{tel.get('telemetry_scanned', 0)} scanned, "
                        f"{tel.get('telemetry_allowed', 0)} allowed, "
                        f"{tel.get('telemetry_files', 0)} Parquet files",
                        flush=True,
                    )
        if a.profile or a.profile_only:
            profile_text = profile_gateway(a, procs, wrk, lua, root, up_port, sc_port, scanner)
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)

    if rows:
        table = summarize(rows)
        print()
        print(table)
        if not a.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as fh:
                for r in rows:
                    fh.write(
                        json.dumps(
                            {
                                "benchmark": "gateway",
                                "when": when,
                                "machine": mach,
                                "upstream": a.upstream,
                                "wrk_cpu": a.wrk_cpu,
                                "duration_s": a.duration,
                                "warmup_s": a.warmup,
                                **{
                                    k: (round(v, 4) if isinstance(v, float) else v)
                                    for k, v in r.items()
                                },
                            }
                        )
                        + "\n"
                    )
            print(f"\nappended {len(rows)} rows to {RESULTS.relative_to(REPO)}")
    if profile_text:
        print()
        print(profile_text)


def summarize(rows: list[dict[str, Any]]) -> str:
    """Markdown table: req/s and p50/p99 at 64 and 8 connections, ratios to direct and NGINX."""
    by = {(r["case"], r["workers"], r["connections"]): r for r in rows}
    lines = [
        "| workers | set-up | req/s @64 | p50 / p99 @64 (ms) | req/s @8 | p50 / p99 @8 (ms) "
        "| added p50 @8 vs direct | req/s @64 vs NGINX | server CPU per request @64 "
        "| reached the upstream @64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in sorted({r["workers"] for r in rows}):
        direct = by.get(("direct", w, 8))
        ngx = by.get(("nginx", w, 64))
        for case in CASES:
            r64, r8 = by.get((case, w, 64)), by.get((case, w, 8))
            if r64 is None or r8 is None:
                continue
            added = (
                f"{r8['p50_ms'] - direct['p50_ms']:+.3f} ms"
                if direct is not None and case != "direct"
                else ""
            )
            ratio = f"{r64['rps'] / ngx['rps']:.1%}" if ngx is not None and case != "nginx" else ""
            flag = (
                " (errors!)"
                if r64["non_2xx"] + r8["non_2xx"] + r64["socket_errors"] + r8["socket_errors"]
                else ""
            )
            lat64 = f"{r64['p50_ms']:.2f} / {r64['p99_ms']:.2f}"
            hits = r64.get("upstream_hits")
            reached = f"{hits / max(1, r64['requests']):.0%}" if hits is not None else ""
            lines.append(
                f"| {w} | {case}{flag} | {r64['rps']:,.0f} | {lat64} "
                f"| {r8['rps']:,.0f} | {r8['p50_ms']:.2f} / {r8['p99_ms']:.2f} | {added} | {ratio} "
                f"| {r64['server_cpu_us_per_req']:,.0f} us | {reached} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
