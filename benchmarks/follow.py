"""Follow mode latency: a line written to an access log -> its client's features in the online
store (Feast, SQLite), against the same events published straight to the stream (what
gatewise's own gateway does) in the same run.

One process: a writer appends ``--rate`` lines/s (NGINX ``gatewise`` format, ``--clients``
consumers) for ``--seconds``; ``Follower`` tails the file and publishes to the ``memory``
stream; the stream processor (``StreamService``) turns them into window features and pushes
each touched client's row to the online store. A line's latency is the time from its write
to the end of the first online push that holds its client after the write. The baseline run
publishes the same events with ``publish_table`` at the moment the line would be written.

Usage: .venv/bin/python benchmarks/follow.py [--rate 200 --seconds 60 --clients 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import machine, save_result  # noqa: E402


def _line(i: int, client: str, ts: float) -> str:
    return (
        f'{ts:.3f} 10.1.{i % 200}.{i % 250 + 1} "-" "GET /v1/items/{i} HTTP/1.1" 200 512 230 '
        f'0.012 "0.010" "python-requests/2.31" "-" {uuid.uuid4().hex} "{client}" "-"'
    )


def _run(mode: str, args: argparse.Namespace, root: Path) -> dict:
    from config.settings import load_settings
    from features.stream_service import StreamService
    from telemetry.ingest import parse_record
    from telemetry.ingest.follow import Follower
    from telemetry.ingest.formats import resolve
    from telemetry.store import TelemetryStore
    from telemetry.stream import make_broker, publish_table

    s = load_settings(REPO / "gatewise.yaml", data_dir=root)
    stream = s.stream.model_copy(
        update={"backend": "memory", "enabled": True, "name": f"follow-{uuid.uuid4().hex[:8]}"}
    )
    s = s.model_copy(update={"stream": stream})
    svc = StreamService(s, None, push=True, bootstrap=False, metrics_port=0)
    svc.start()
    pushed: dict[str, list[float]] = {}
    orig = svc._pusher
    assert orig is not None

    def timed_push(rows) -> None:  # type: ignore[no-untyped-def]
        orig(rows)
        now = time.monotonic()
        for c in rows.column("client_id").to_pylist():
            pushed.setdefault(c, []).append(now)

    svc._pusher = timed_push
    stop = threading.Event()
    threads = [threading.Thread(target=svc.run, args=(stop,), daemon=True)]
    fmt = resolve("nginx:gatewise")
    log = root / "access.log"
    log.touch()
    broker = make_broker(s.stream)
    follower = None
    if mode == "follow":
        follower = Follower(
            [log],
            fmt,
            TelemetryStore(s.telemetry_dir),
            checkpoint=root / "cp.json",
            rejects_dir=root / "rejects",
            publish=lambda t: publish_table(broker, t, s.stream.partitions),
        )
        threads.append(threading.Thread(target=follower.run, args=(stop,), daemon=True))
    for t in threads:
        t.start()
    written: list[tuple[str, float]] = []
    n = int(args.rate * args.seconds)
    t0 = time.monotonic()
    with open(log, "a") as fh:
        for i in range(n):
            due = t0 + i / args.rate
            while (now := time.monotonic()) < due:
                time.sleep(min(0.002, due - now))
            client = f"c{i % args.clients:05d}"
            line = _line(i, client, datetime.now(UTC).timestamp())
            written.append((client, time.monotonic()))
            if mode == "follow":
                fh.write(line + "\n")
                fh.flush()
            else:  # the gateway's own path: the event straight to the stream
                import pyarrow as pa

                from telemetry.schema import EVENT_SCHEMA

                ev = parse_record(fmt, line)
                ev["client_id"] = client
                ev["request_id"] = uuid.uuid4().hex
                publish_table(
                    broker, pa.Table.from_pylist([ev], schema=EVENT_SCHEMA), s.stream.partitions
                )
    time.sleep(args.drain)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    svc.close()
    if follower is not None:
        follower.close()
    lat = []
    missing = 0
    for client, tw in written:
        after = [tp for tp in pushed.get(client, []) if tp >= tw]
        if after:
            lat.append(min(after) - tw)
        else:
            missing += 1
    a = np.array(lat) if lat else np.array([np.nan])
    return {
        "mode": mode,
        "lines": n,
        "never_online": missing,
        "p50_s": round(float(np.percentile(a, 50)), 3),
        "p95_s": round(float(np.percentile(a, 95)), 3),
        "p99_s": round(float(np.percentile(a, 99)), 3),
        "max_s": round(float(np.max(a)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0, help="lines per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--drain", type=float, default=10.0, help="seconds to wait after writing")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    rows = []
    for mode in ("stream", "follow"):
        with tempfile.TemporaryDirectory() as d:
            r = _run(mode, args, Path(d))
        rows.append(r)
        print(
            f"{mode:8s} lines {r['lines']:,}  p50 {r['p50_s']:.2f}s  p95 {r['p95_s']:.2f}s  "
            f"p99 {r['p99_s']:.2f}s  max {r['max_s']:.2f}s  never online {r['never_online']}",
            flush=True,
        )
    ratio = rows[1]["p95_s"] / rows[0]["p95_s"] if rows[0]["p95_s"] else float("nan")
    print(f"follow p95 / direct-to-stream p95: {ratio:.2f}x (target: follow p95 <= 5 s)")
    out = save_result(
        "follow",
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(),
            "args": vars(args),
            "rows": rows,
            "p95_ratio": round(ratio, 2),
        },
    )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
