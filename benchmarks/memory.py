"""Peak memory of a command and everything it starts (issue 26: the demo's peak RSS).

    .venv/bin/python benchmarks/memory.py -- make demo
    .venv/bin/python benchmarks/memory.py --interval 0.5 -- .venv/bin/gatewise demo --full

Samples the command's whole process tree (children started detached with ``setsid``
included: every process whose parent chain reaches the command, plus processes whose
command line names the data dir given with ``--data-dir``) every ``--interval`` seconds and
reports:

- peak total PSS: the tree's proportional set size (shared pages divided among the
  processes sharing them), the honest sum for several Python processes that share
  libraries; the figure compared with the budget (``--budget-gb``, default 4);
- peak total RSS (what adding ``ps`` columns gives; counts shared pages once per process);
- the largest single process at the peak, with its command line, and the top five;
- the baseline: this interpreter's own RSS with numpy, pandas and pyarrow imported, the
  floor any Python process of the project pays.

Results are appended to ``benchmarks/results/memory.jsonl``. psutil is a dependency of the
stack already (MLflow, BentoML).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results" / "memory.jsonl"


def _tree(root: psutil.Process, marker: str | None) -> list[psutil.Process]:
    procs = {root.pid: root}
    try:
        for c in root.children(recursive=True):
            procs[c.pid] = c
    except psutil.Error:
        pass
    if marker:  # detached services (setsid) that name the data dir
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                env = p.info.get("environ") or {}
                if marker in cmd or marker in env.get("GATEWISE_DATA_DIR", ""):
                    procs[p.pid] = p
                    for c in p.children(recursive=True):
                        procs[c.pid] = c
            except psutil.Error:
                continue
    return list(procs.values())


def _sample(procs: list[psutil.Process]) -> dict[str, Any]:
    pss = rss = 0
    each = []
    for p in procs:
        try:
            mi = p.memory_full_info()
            cmd = " ".join(p.cmdline())[:160]
        except psutil.Error:
            continue
        pss += getattr(mi, "pss", mi.rss)
        rss += mi.rss
        each.append((mi.rss, getattr(mi, "pss", mi.rss), p.pid, cmd))
    each.sort(reverse=True)
    return {"pss": pss, "rss": rss, "n": len(each), "top": each[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--budget-gb", type=float, default=4.0)
    ap.add_argument("--data-dir", default=".gatewise", help="also count processes naming it")
    ap.add_argument("--label", default="")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the command after --")

    import numpy  # noqa: F401  the floor: an interpreter with the data stack imported
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    floor = psutil.Process().memory_info().rss
    marker = str(Path(a.data_dir).resolve()) if a.data_dir else None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak: dict[str, Any] = {"pss": 0}
    peak_rss = 0
    series: list[tuple[float, int]] = []
    stop = threading.Event()

    def loop() -> None:
        nonlocal peak, peak_rss
        while not stop.is_set():
            s = _sample(_tree(root, marker))
            series.append((round(time.monotonic() - t0, 1), s["pss"]))
            if s["pss"] > peak["pss"]:
                peak = {**s, "at_s": round(time.monotonic() - t0, 1)}
            peak_rss = max(peak_rss, s["rss"])
            stop.wait(a.interval)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    wall = time.monotonic() - t0
    gb = 1024**3
    ok = peak["pss"] <= a.budget_gb * gb
    print(f"\n{' '.join(cmd)}: exit {rc}, {wall:.0f} s")
    print(
        f"peak total PSS {peak['pss'] / gb:.2f} GB at {peak.get('at_s', 0)} s over "
        f"{peak.get('n', 0)} processes (budget {a.budget_gb:.1f} GB: {'met' if ok else 'NOT met'});"
        f" peak total RSS {peak_rss / gb:.2f} GB"
    )
    print(f"floor: one interpreter with numpy + pandas + pyarrow, {floor / gb * 1024:.0f} MB RSS")
    for r, p, pid, c in peak.get("top", []):
        print(f"  {r / gb * 1024:7.0f} MB RSS {p / gb * 1024:7.0f} MB PSS  pid {pid}  {c}")
    if not a.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "bench": "memory",
                        "date": datetime.now(UTC).isoformat(timespec="seconds"),
                        "machine": f"{psutil.cpu_count()} cores, "
                        f"{psutil.virtual_memory().total / gb:.0f} GiB, Python "
                        f"{platform.python_version()}",
                        "command": " ".join(cmd),
                        "label": a.label,
                        "exit": rc,
                        "wall_s": round(wall, 1),
                        "peak_pss_gb": round(peak["pss"] / gb, 3),
                        "peak_rss_gb": round(peak_rss / gb, 3),
                        "peak_at_s": peak.get("at_s"),
                        "floor_mb": round(floor / gb * 1024),
                        "top": [
                            {
                                "rss_mb": round(r / gb * 1024),
                                "pss_mb": round(p / gb * 1024),
                                "cmd": c,
                            }
                            for r, p, _, c in peak.get("top", [])
                        ],
                        "budget_met": ok,
                        "series_pss_gb": [
                            (t, round(v / gb, 3)) for t, v in series[:: max(1, len(series) // 400)]
                        ],
                    }
                )
                + "\n"
            )
    sys.exit(rc)


if __name__ == "__main__":
    main()
