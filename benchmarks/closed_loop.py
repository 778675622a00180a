"""The closed loop at the former demo scale: does the model stop, live, what static limits miss?

For each seed, in a data dir of its own and through the product's own commands (subprocesses:
benchmarks never import the front door or the demo):

1. ``gatewise simulate`` — ``--clients`` clients, ``--days`` of history ending now (so the
   replayed clients have their 1 h / 24 h context), the seed's population and traffic;
2. ``gatewise features build`` (with the as-of snapshots the abuse target trains on);
3. ``gatewise train --target abuse --budget B`` (AutoML, MLflow, the gate);
4. ``gatewise deploy`` — without ``--force``: a challenger the gate refused is not deployed,
   and the loop then runs without live scoring (recorded as such);
5. ``gatewise loop --minutes M --scoring-url <the champion's service>``: fresh traffic of the
   same clients through the real gateway, live scoring, monitor, the gated policy, again;
6. the loop's JSON record: per request, phase B — abusive requests stopped and legitimate
   requests harmed by gatewise, next to the **baseline measured in the same run**: the static
   per-tier limits (``static_limits_per_minute``) judged by the backtest on the very same
   recorded requests. The figure: gatewise's stopped share minus static's (points) and their
   ratio; harm overall and the worst judgeable group.

Usage: .venv/bin/python benchmarks/closed_loop.py [--seeds 1 2 3] [--clients 2000]
           [--days 2] [--budget 60] [--minutes 1.5] [--no-save]
Results: one JSON line per seed in benchmarks/results/closed_loop.jsonl, and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine, save_result

REPO = Path(__file__).resolve().parents[1]
GW = str(REPO / ".venv" / "bin" / "gatewise")


def _run(args: list[str], env: dict[str, str], log: Path, check: bool = True) -> int:
    t0 = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n$ gatewise {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([GW, *args], env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"  gatewise {' '.join(args)}: rc {rc}, {time.monotonic() - t0:.0f}s", flush=True)
    if check and rc != 0:
        raise SystemExit(f"`gatewise {' '.join(args)}` failed (rc {rc}); log: {log}")
    return rc


def _worst_group(groups: list[dict[str, Any]], min_legit: int) -> dict[str, Any] | None:
    judged = [g for g in groups if g["legitimate"] >= min_legit]
    return max(judged, key=lambda g: g["harmed"]) if judged else None


def one_seed(seed: int, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / f"seed{seed}"
    log = work / f"seed{seed}.log"
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=a.days)
    env = {
        **os.environ,
        "GATEWISE_DATA_DIR": str(data),
        "GATEWISE_SIMULATOR__SEED": str(seed),
        "GATEWISE_SIMULATOR__CLIENTS": str(a.clients),
        "GATEWISE_SIMULATOR__DAYS": str(a.days),
        "GATEWISE_SIMULATOR__START": start.isoformat(),
        "GATEWISE_SERVING__PORT": str(a.port),
        "PREFECT_HOME": str(work / "prefect"),
    }
    t0 = time.monotonic()
    print(f"seed {seed}: data dir {data}; log {log}", flush=True)
    _run(["simulate"], env, log)
    _run(["features", "build"], env, log)
    _run(["train", "--target", "abuse", "--budget", str(a.budget)], env, log)
    deployed = _run(["deploy", "--target", "abuse"], env, log, check=False) == 0
    url = f"http://127.0.0.1:{a.port}"
    try:
        loop = ["loop", "--minutes", str(a.minutes)]
        if deployed:
            loop += ["--scoring-url", url]
        _run(loop, env, log)
    finally:
        if deployed:
            pid = data / "serving" / "service.pid"
            if pid.exists():
                import signal

                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid.read_text()), signal.SIGTERM)
    (rec_path,) = sorted((data / "reports").glob("closed-loop-*.json"))[-1:]
    rec = json.loads(rec_path.read_text())
    o = rec["outcome"]
    g, st, sh = o["B_gatewise"], o["B_static"], o.get("B_with_shadow") or {}
    worst = _worst_group(g["groups"], a.min_group)
    out = {
        "seed": seed,
        "clients": a.clients,
        "days": a.days,
        "budget_s": a.budget,
        "minutes_per_phase": a.minutes,
        "champion_deployed": deployed,
        "live_scoring": rec.get("live_scoring", False),
        "policy_a": rec["policy_a"],
        "policy_b": rec["policy_b"],
        "span": rec["span"],
        "scoring": (rec.get("gateway") or {}).get("scoring"),
        "stream": rec.get("stream"),
        "B": {
            "abusive": g["abusive"],
            "legitimate": g["legitimate"],
            "gatewise_stopped": g["abusive_stopped_share"],
            "gatewise_harmed": g["legitimate_harmed_share"],
            "static_stopped": st["abusive_stopped_share"],
            "static_harmed": st["legitimate_harmed_share"],
            "shadow_stopped": sh.get("abusive_stopped_share"),
            "shadow_harmed": sh.get("legitimate_harmed_share"),
            "worst_group": worst,
        },
        "A": {
            "gatewise_stopped": o["A_gatewise"]["abusive_stopped_share"],
            "static_stopped": o["A_static"]["abusive_stopped_share"],
            "gatewise_harmed": o["A_gatewise"]["legitimate_harmed_share"],
        },
        "detection_median_s": o["detection_median_s"],
        "abusive_clients_stopped": sum(
            1 for c in o["clients"] if c["detected_after_s"] is not None
        ),
        "abusive_clients": len(o["clients"]),
        "seconds": round(time.monotonic() - t0, 1),
        "report": rec.get("report"),
    }
    b = out["B"]
    if b["gatewise_stopped"] is not None and b["static_stopped"] is not None:
        b["points_over_static"] = round(100 * (b["gatewise_stopped"] - b["static_stopped"]), 2)
        b["ratio_to_static"] = (
            round(b["gatewise_stopped"] / b["static_stopped"], 3) if b["static_stopped"] else None
        )
    return out


def _pct(x: float | None, d: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{d}f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--minutes", type=float, default=1.5)
    ap.add_argument("--port", type=int, default=3917, help="the champion's service port")
    ap.add_argument("--min-group", type=int, default=30, help="legitimate requests to judge")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gatewise-loop-bench-"))
    rows = []
    try:
        for seed in a.seeds:
            r = one_seed(seed, a, work)
            r["machine"] = machine()
            r["at"] = datetime.now(UTC).isoformat()
            rows.append(r)
            if not a.no_save:
                save_result("closed_loop", r)
            b = r["B"]
            w = b["worst_group"]
            print(
                f"seed {seed}: phase B gatewise stopped {_pct(b['gatewise_stopped'])} vs static "
                f"{_pct(b['static_stopped'])} ({b.get('points_over_static', '-')} points, "
                f"x{b.get('ratio_to_static', '-')}); harmed {_pct(b['gatewise_harmed'], 3)} vs "
                f"{_pct(b['static_harmed'], 3)}; shadow rules enforced would stop "
                f"{_pct(b['shadow_stopped'])} / harm {_pct(b['shadow_harmed'], 3)}; worst group "
                + ("-" if w is None else f"{w['attribute']}={w['value']} {_pct(w['harmed'], 3)}")
                + f"; champion deployed: {r['champion_deployed']}; {r['seconds']:.0f}s",
                flush=True,
            )
    finally:
        if a.keep:
            print(f"data dirs kept under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if rows:
        print(
            "\n| seed | gatewise stopped | static stopped | points | gatewise harmed | "
            "static harmed | shadow stopped / harmed | live scoring |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            b = r["B"]
            print(
                f"| {r['seed']} | {_pct(b['gatewise_stopped'])} | {_pct(b['static_stopped'])} | "
                f"{b.get('points_over_static', '-')} | {_pct(b['gatewise_harmed'], 3)} | "
                f"{_pct(b['static_harmed'], 3)} | {_pct(b['shadow_stopped'])} / "
                f"{_pct(b['shadow_harmed'], 3)} | {r['live_scoring']} |"
            )


if __name__ == "__main__":
    main()
