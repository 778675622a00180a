"""The gatewise gateway against NGINX as a reverse proxy, with wrk on loopback.

Four set-ups in front of one trivial upstream (NGINX answering every path with
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
                champion fitted on the real payloads at start): every request's
                query value scanned, verdicts recorded (shadow)

Every request carries a query value (``--query-values`` N, default 200): wrk rotates
through N real parameter values from the labelled payload sample (one in ten an
attack), URL-encoded, for every case, so scanning on vs off differs only in the scan.

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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
GATEWISE = str(Path(PY).with_name("gatewise"))
RESULTS = REPO / "benchmarks" / "results" / "gateway.jsonl"
PATH = "/bench"
BODY = b'{"ok":true}'
CASES = ("direct", "nginx", "gateway", "gateway+score", "gateway+scan")

# wrk reports its own numbers through done(): exact percentiles in microseconds
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"mean_us":%.1f,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# installing the tools ----------------------------------------------------
def _apt_install(*candidates: str) -> None:
    """Install the first of ``candidates`` apt-get can install (after one update if needed)."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for update in (False, True):
        if update:
            subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
        for pkg in candidates:
            r = subprocess.run(
                [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg],
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                print(f"installed {pkg}", file=sys.stderr)
                return
    raise SystemExit(f"could not install any of {candidates} with apt-get")


def ensure_tools() -> tuple[str, str]:
    if shutil.which("wrk") is None:
        _apt_install("wrk")
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        _apt_install("nginx-light", "nginx")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk")
    assert wrk is not None
    return wrk, nginx


# processes ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """Every server this script starts, each in its own process group; all killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        fh = open(log, "ab")  # noqa: SIM115 (kept open for the child)
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        fh.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # workers of a group whose leader has gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.procs)):
            self.stop(p)


def wait_http(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return r.read()
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


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
    p = procs.start(
        [nginx, "-p", str(root), "-e", str(root / "logs/error.log"), "-c", str(conf)],
        root / "stdout.log",
    )
    wait_http(f"http://127.0.0.1:{port}{PATH}", 15)
    return p


# the fake scorer (run as ``gateway.py --serve-scorer PORT``) ---------------
def serve_scorer(port: int) -> None:
    import uvicorn
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
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_upstream(port: int) -> None:
    import uvicorn

    from gateway.upstreams import upstream_app

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


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
    p = procs.start(cmd, cfg.parent / f"gateway-{port}.log", cwd=cfg.parent)
    body = wait_http(f"http://127.0.0.1:{port}{PATH}", 90, {"x-api-key": key})
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
    """A wrk ``request()`` rotating through ``n`` real parameter values (1 in 10 an attack)."""
    import random
    from urllib.parse import quote_plus

    from models.data import BENIGN, read_payloads

    df = read_payloads()
    rng = random.Random(seed)
    benign = df.loc[df["attack_type"] == BENIGN, "payload"].tolist()
    attacks = df.loc[df["attack_type"] != BENIGN, "payload"].tolist()
    values = [rng.choice(attacks) if i % 10 == 9 else rng.choice(benign) for i in range(n)]
    paths = ",\n".join(f'"{PATH}?q={quote_plus(v)}"' for v in values)
    return (
        f"local paths = {{\n{paths}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n"
    )


# wrk ---------------------------------------------------------------------
def run_wrk(
    wrk: str,
    url: str,
    conns: int,
    seconds: float,
    lua: Path,
    headers: dict[str, str],
    cpu: str | None,
) -> dict[str, Any]:
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    if cpu:
        cmd = ["taskset", "-c", cpu, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^WRKJSON (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = d["connect"] + d["read"] + d["write"] + d["timeout"]
    return {
        "rps": d["requests"] / secs,
        "p50_ms": d["p50_us"] / 1000,
        "p90_ms": d["p90_us"] / 1000,
        "p99_ms": d["p99_us"] / 1000,
        "mean_ms": d["mean_us"] / 1000,
        "max_ms": d["max_us"] / 1000,
        "requests": d["requests"],
        "seconds": secs,
        "non_2xx": d["status"],
        "socket_errors": errors,
    }


def children_cpu() -> float:
    """CPU seconds of this script's finished children (wrk runs)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def measure(
    a: argparse.Namespace,
    wrk: str,
    lua: Path,
    url: str,
    headers: dict[str, str],
    server_pgid: int,
    upstream_pgid: int | None,
) -> dict[int, dict[str, Any]]:
    """Warm-up, then the measured run, at 64 and 8 connections; plus CPU per request.

    A first 5 s run at 64 connections lets every worker finish its one-off work
    (lazy imports, the telemetry sink's first Parquet write) before any warm-up.
    """
    out = {}
    run_wrk(wrk, url, 64, max(5.0, a.warmup), lua, headers, a.wrk_cpu)
    for conns in (64, 8):
        if a.warmup > 0:
            run_wrk(wrk, url, conns, a.warmup, lua, headers, a.wrk_cpu)
        up_pgid = upstream_pgid or 0
        c0, u0, m0, w0 = group_cpu(server_pgid), group_cpu(up_pgid), cpu_busy(), children_cpu()
        r = run_wrk(wrk, url, conns, a.duration, lua, headers, a.wrk_cpu)
        c1, u1, m1, w1 = group_cpu(server_pgid), group_cpu(up_pgid), cpu_busy(), children_cpu()
        n = max(1, r["requests"])
        r["server_cpu_us_per_req"] = (c1 - c0) / n * 1e6
        if upstream_pgid:
            r["upstream_cpu_us_per_req"] = (u1 - u0) / n * 1e6
        r["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        # CPU burnt by anything but wrk, the server and the upstream: other load on the machine
        ours = (c1 - c0) + ((u1 - u0) if upstream_pgid else 0) + (w1 - w0)
        r["wrk_cpu_s"] = w1 - w0
        r["other_cpu_cores"] = max(0.0, ((m1[0] - m0[0]) / _TICK - ours) / r["seconds"])
        out[conns] = r
    return out


# CPU accounting ----------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pgid:  # fields after ")": state ppid pgrp ... utime(11) stime(12)
            total += int(f[11]) + int(f[12])
    return total / _TICK


# profiling ---------------------------------------------------------------
def find_pyspy() -> str | None:
    """py-spy on PATH, or installed with pip into /tmp (never into the project's venv)."""
    target = Path(tempfile.gettempdir()) / "gatewise-pyspy"
    for cand in (shutil.which("py-spy"), str(target / "bin" / "py-spy")):
        if cand and Path(cand).exists():
            return cand
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        return None
    r = subprocess.run(
        [pip, "install", "-q", "--target", str(target), "py-spy"], capture_output=True, text=True
    )
    exe = target / "bin" / "py-spy"
    return str(exe) if r.returncode == 0 and exe.exists() else None


def _frame(f: str) -> str:
    """``func (pkg/file.py:123)`` -> ``func (pkg/file.py)``: one entry per function."""
    return re.sub(r":\d+\)$", ")", f)


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
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n_s = line.rsplit(" ", 1)
        n = int(n_s)
        frames = [_frame(x) for x in stack.split(";") if x]
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
) -> str:
    """One gateway worker under load (64 connections), sampled by py-spy (cProfile if absent)."""
    groot = root / "profile"
    groot.mkdir()
    scoring = a.profile_case == "gateway+score"
    cfg = gateway_config(groot, upstream_port, scorer_port if scoring else None)
    key = add_consumer(cfg)
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    pyspy = find_pyspy()
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
            rec = ["record", "-p", str(p.pid), "-d", str(round(a.duration)), "-r", "100"]
            spy = subprocess.Popen(
                [pyspy, *rec, "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                res = run_wrk(
                    wrk,
                    url,
                    a.profile_connections,
                    a.duration + 1,
                    lua,
                    {"x-api-key": key},
                    a.wrk_cpu,
                )
            finally:
                try:
                    spy.wait(a.duration + 30)
                except subprocess.TimeoutExpired:
                    os.killpg(spy.pid, signal.SIGKILL)
                    spy.wait()
            head += f"{res['rps']:.0f} req/s while sampled (py-spy pauses the process per sample)\n"
            if a.profile_out and raw.exists():
                shutil.copy(raw, a.profile_out)
                head += f"raw stacks (flamegraph.pl input) copied to {a.profile_out}\n"
            return head + (
                summarize_stacks(raw, res["requests"], a.duration)
                if raw.exists()
                else "(py-spy wrote nothing)\n"
            )
        res = run_wrk(
            wrk, url, a.profile_connections, a.duration, lua, {"x-api-key": key}, a.wrk_cpu
        )
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
    ap.add_argument("--profile-case", choices=CASES[2:], default="gateway+score")
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

    wrk, nginx = ensure_tools()
    mach = machine()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="gatewise-gwbench-"))
    os.chmod(root, 0o755)
    lua = root / "report.lua"
    lua.write_text((query_lua(a.query_values) if a.query_values else "") + WRK_LUA)
    scanner = build_scanner(root) if "gateway+scan" in a.cases else None
    profile_text = ""
    try:
        # the upstream and the fake scorer stay up for the whole run
        up_port = free_port()
        if a.upstream == "nginx":
            upstream = start_nginx(procs, nginx, root / "upstream", 1, up_port, None)
        else:
            upstream = procs.start(
                [PY, __file__, "--serve-upstream", str(up_port)], root / "upstream.log"
            )
            wait_http(f"http://127.0.0.1:{up_port}{PATH}", 30)
        sc_port = free_port()
        procs.start([PY, __file__, "--serve-scorer", str(sc_port)], root / "scorer.log")
        wait_http(f"http://127.0.0.1:{sc_port}/healthz", 30)
        print(
            f"# {mach}; upstream: {a.upstream} on :{up_port} (1 worker); wrk -t1 "
            f"{'pinned to CPU ' + a.wrk_cpu if a.wrk_cpu else 'not pinned'}; "
            f"{a.warmup:.0f} s warm-up + {a.duration:.0f} s per point",
            flush=True,
        )

        for workers in [] if a.profile_only else a.workers:
            for case in a.cases:
                headers: dict[str, str] = {}
                server: subprocess.Popen[bytes] | None = None
                if case == "direct":
                    port = up_port
                elif case == "nginx":
                    port = free_port()
                    server = start_nginx(
                        procs, nginx, root / f"proxy-{workers}", workers, port, up_port
                    )
                else:
                    groot = root / f"{case.replace('+', '-')}-{workers}-{len(rows)}"
                    groot.mkdir()
                    cfg = gateway_config(
                        groot,
                        up_port,
                        sc_port if case == "gateway+score" else None,
                        scanner if case == "gateway+scan" else None,
                    )
                    key = add_consumer(cfg)
                    headers = {"x-api-key": key}
                    port = free_port()
                    server = start_gateway(procs, cfg, port, workers, key)
                try:
                    res = measure(
                        a,
                        wrk,
                        lua,
                        f"http://127.0.0.1:{port}{PATH}",
                        headers,
                        server.pid if server is not None else upstream.pid,
                        upstream.pid if server is not None else None,
                    )
                finally:
                    if server is not None:
                        procs.stop(server)
                tel: dict[str, Any] = {}
                if case.startswith("gateway"):
                    tel = telemetry_summary(groot / "data")
                for conns, r in res.items():
                    row = {"case": case, "workers": workers, "connections": conns, **r, **tel}
                    rows.append(row)
                    bad = r["non_2xx"] + r["socket_errors"]
                    print(
                        f"{case:14s} w={workers} c={conns:<3d} {r['rps']:9.0f} req/s  "
                        f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
                        f"server CPU {r['server_cpu_us_per_req']:6.0f} us/req  "
                        f"machine {r['machine_busy']:.0%} busy, "
                        f"other load {r['other_cpu_cores']:.2f} cores"
                        + (f"  ERRORS {bad}" if bad else ""),
                        flush=True,
                    )
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
            profile_text = profile_gateway(a, procs, wrk, lua, root, up_port, sc_port)
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
        "| added p50 @8 vs direct | req/s @64 vs NGINX | server CPU per request @64 |",
        "|---|---|---|---|---|---|---|---|---|",
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
            ratio = f"{r64['rps'] / ngx['rps']:.0%}" if ngx is not None and case != "nginx" else ""
            flag = (
                " (errors!)"
                if r64["non_2xx"] + r8["non_2xx"] + r64["socket_errors"] + r8["socket_errors"]
                else ""
            )
            lat64 = f"{r64['p50_ms']:.2f} / {r64['p99_ms']:.2f}"
            lines.append(
                f"| {w} | {case}{flag} | {r64['rps']:,.0f} | {lat64} "
                f"| {r8['rps']:,.0f} | {r8['p50_ms']:.2f} / {r8['p99_ms']:.2f} | {added} | {ratio} "
                f"| {r64['server_cpu_us_per_req']:,.0f} us |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
