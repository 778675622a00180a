"""The demo's "your gateway's logs" act: the first hours of the simulated traffic written as
the logs three real servers would write (NGINX's default ``main``, HAProxy's ``httplog``
through syslog, AWS ALB), with the broken lines real logs have, ingested with ``--format
auto`` into a scratch store beside the demo's (the demo's own store is not doubled)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from config.settings import Settings

__all__ = ["ingest_demo"]

# what real logs also hold: a line cut by a crash (rejected, with its reason), TLS bytes sent
# to the plain port (kept, as method _OTHER), a client that left before any response
BROKEN = {
    "nginx_main": [
        '203.0.113.9 - - [05/Dec/2026:07:00:01 +0000] "GET /v1/orders/1 HTTP/1.1" 200 5 "-" "cu',
        '198.51.100.7 - - [05/Dec/2026:07:00:02 +0000] "\\x16\\x03\\x01\\x00\\xA5" 400 157 "-" "-" "-"',
    ],
    "haproxy": [
        "haproxy[18113]: 127.0.0.1:34548 [15/Oct/2003:15:18:55.798] px-http px-http/<NOSRV> "
        '-1/-1/-1/-1/8490 -1 0 - - CR-- 2/2/2/0/0 0/0 ""',
    ],
    "alb": [],
}


def ingest_demo(console: Console, s: Settings, run: Any, hours: float = 2.0) -> dict[str, Any]:
    from telemetry.ingest import ingest_files
    from telemetry.ingest.emit import emit_table
    from telemetry.store import TelemetryStore

    events = run.result.events
    t0 = pc.min(events.column("timestamp")).as_py()
    first = events.filter(pc.less(events.column("timestamp"), t0 + timedelta(hours=hours)))
    logs = s.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store = TelemetryStore(s.data_dir / "demo-ingest" / "telemetry")
    t = Table(title=f"the first {hours:g} h of traffic as three servers log it, --format auto")
    for col in ("log", "detected", "read", "accepted", "rejected", "duplicate", "records/s"):
        t.add_column(col, justify="left" if col in ("log", "detected") else "right")
    out: dict[str, Any] = {}
    for fmt, name in (("nginx:main", "nginx_main"), ("haproxy", "haproxy"), ("alb", "alb")):
        path = logs / f"{name}.log"
        emit_table(first, fmt, path)
        if name == "haproxy":  # as syslog delivers it
            text = path.read_text().splitlines()
            prefix = "Dec  5 07:00:00 lb1 haproxy[14389]: "
            path.write_text("".join(prefix + line + "\n" for line in text))
        with path.open("a") as fh:
            fh.write("".join(line + "\n" for line in BROKEN[name]))
        rep = ingest_files(
            [path], "auto", store, rejects_dir=s.data_dir / "demo-ingest" / "rejects"
        )
        said = rep.detected[str(path)].removeprefix("format: ").split(" (")[0]
        t.add_row(
            path.name,
            said,
            f"{rep.read:,}",
            f"{rep.accepted:,}",
            f"{rep.rejected:,}",
            f"{rep.duplicate:,}",
            f"{rep.read / max(rep.seconds, 1e-9):,.0f}",
        )
        out[name] = {
            "format": said,
            "read": rep.read,
            "accepted": rep.accepted,
            "rejected": rep.rejected,
            "reasons": [ex["reason"] for ex in rep.examples.values()],
        }
    console.print(t)
    reasons = sorted({r for v in out.values() for r in v["reasons"]})
    console.print(
        "rejected, each with its reason (counted, quarantined, never silent): " + "; ".join(reasons)
    )
    console.print(
        "your own server's format: `.venv/bin/gatewise ingest -f nginx:'<log_format>' FILE`, "
        "`--nginx-conf /etc/nginx/nginx.conf --log-format NAME`, or live with `--follow` "
        "(docs/ingest.md)"
    )
    return out
