"""Load generators: wrk (a C client, one thread, optionally pinned with taskset; exact
percentiles through its Lua ``done()``), an asyncio + httpx closed loop that records every
request's latency, and an open-loop pacer that sends at a fixed rate.

    lua = write_wrk_script(tmp / "get.lua")
    r = run_wrk(ensure_wrk(), url, conns=64, seconds=10, script=lua)
    r = closed_loop(url, [b'{"ids": ["c1"]}'], n=3000, warmup=300, conns=8)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.processes import tree_cpu

JSON = {"content-type": "application/json"}


def latency_stats(
    lat_s: Sequence[float],
    wall: float,
    n_ok: int,
    errors: int,
    percentiles: Sequence[int] = (50, 90, 99),
) -> dict[str, Any]:
    """requests, errors, seconds, req/s, ``p<q>_ms`` for each of ``percentiles``, mean and
    max (ms) of the latencies ``lat_s`` (seconds) of a run of ``wall`` seconds."""
    import numpy as np

    a = np.asarray(lat_s, dtype=float) * 1000.0
    nan = float("nan")
    out: dict[str, Any] = {
        "requests": n_ok,
        "errors": errors,
        "seconds": wall,
        "rps": n_ok / wall if wall > 0 else 0.0,
    }
    for q in percentiles:
        out[f"p{q}_ms"] = float(np.percentile(a, q)) if len(a) else nan
    out["mean_ms"] = float(a.mean()) if len(a) else nan
    out["max_ms"] = float(a.max()) if len(a) else nan
    return out


# asyncio + httpx ----------------------------------------------------------------------------
async def _closed_loop(
    url: str,
    bodies: Sequence[bytes],
    n: int,
    warmup: int,
    conns: int,
    cpu_pid: int | None,
    headers: dict[str, str],
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:

        async def phase(count: int) -> tuple[list[float], int, float]:
            lat: list[float] = []
            state = {"next": 0, "err": 0}

            async def worker() -> None:
                while state["next"] < count:
                    i = state["next"]
                    state["next"] += 1
                    t = time.perf_counter()
                    try:
                        r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                    except httpx.HTTPError:
                        state["err"] += 1
                        continue
                    dt = time.perf_counter() - t
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        state["err"] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conns)))
            return lat, state["err"], time.perf_counter() - t0

        await phase(warmup)
        cpu0 = tree_cpu(cpu_pid) if cpu_pid else 0.0
        me0 = time.process_time()
        lat, err, wall = await phase(n)
        out = latency_stats(lat, wall, len(lat), err)
        out["loadgen_cpu_ms_per_req"] = 1000 * (time.process_time() - me0) / max(1, n)
        if cpu_pid:
            out["server_cpu_ms_per_req"] = 1000 * (tree_cpu(cpu_pid) - cpu0) / max(1, len(lat))
        return out


def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    n: int,
    warmup: int,
    conns: int,
    cpu_pid: int | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``conns`` keep-alive connections each POST the next of ``bodies`` (cycled) as soon as
    the last answer came: ``warmup`` requests, then ``n`` measured.

    Args:
        cpu_pid: the server's process: its tree's CPU time per answered request is reported
            as ``server_cpu_ms_per_req``.

    Returns:
        ``latency_stats`` of the 200s (anything else counts as an error), plus
        ``loadgen_cpu_ms_per_req`` (this process's CPU time per request sent).
    """
    run = _closed_loop(url, bodies, n, warmup, conns, cpu_pid, headers or JSON)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run)
    return uvloop.run(run)


async def open_loop(
    rate: float,
    send: Callable[[int], Awaitable[None]],
    until: Callable[[], float],
    workers: int = 4,
    start: float | None = None,
) -> None:
    """Request ``k`` is due at ``start + k / rate`` (``time.monotonic``); ``workers`` coroutines
    each take the next due slot, sleep until it and ``await send(k)``. Slots due at or after
    ``until()`` (read again for every slot, so a caller may bring the end forward) are not sent.
    """
    t0 = time.monotonic() if start is None else start
    slot = 0

    async def worker() -> None:
        nonlocal slot
        while True:
            k = slot
            slot += 1
            at = t0 + k / rate
            if at >= until():
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await send(k)

    await asyncio.gather(*(worker() for _ in range(workers)))


# wrk ----------------------------------------------------------------------------------------
# wrk reports its own numbers through done(): exact percentiles in microseconds
WRK_DONE_LUA = r"""
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


def wrk_get_paths(paths: Sequence[str]) -> str:
    """A wrk ``request()`` cycling through ``paths`` (path + query, already URL-encoded)."""
    items = ",\n".join(f"[==[{p}]==]" for p in paths)
    return (
        f"local paths = {{\n{items}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n"
    )


def wrk_post_bodies(
    path: str, bodies: Sequence[bytes], content_type: str = JSON["content-type"]
) -> str:
    """A wrk ``request()`` POSTing ``bodies`` to ``path`` one after the other, cycling."""
    items = ",\n".join(f"[==[{b.decode()}]==]" for b in bodies)
    return (
        f"local bodies = {{\n{items}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        f'  return wrk.format("POST", [==[{path}]==], '
        f'{{["Content-Type"] = [==[{content_type}]==]}}, bodies[i])\nend\n'
    )


def write_wrk_script(path: Path, request_lua: str = "") -> Path:
    """``request_lua`` (e.g. ``wrk_get_paths(...)``; '' for wrk's own GET of the URL) plus the
    ``done()`` reporter ``run_wrk`` reads, written to ``path``."""
    path.write_text(request_lua + WRK_DONE_LUA)
    return path


def run_wrk(
    wrk: str,
    url: str,
    conns: int,
    seconds: float,
    script: Path,
    headers: dict[str, str] | None = None,
    cpu: str | None = None,
) -> dict[str, Any]:
    """One wrk run (one thread, ``conns`` connections, ``--latency``) with a script from
    ``write_wrk_script``; ``cpu``: a taskset CPU list to pin wrk to.

    Returns:
        rps (every response, any status, per second), p50/p90/p99/mean/max_ms, requests,
        seconds, non_2xx, socket_errors (connect + read + write + timeout).
    """
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script)]
    for k, v in (headers or {}).items():
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
        "socket_errors": d["connect"] + d["read"] + d["write"] + d["timeout"],
    }
