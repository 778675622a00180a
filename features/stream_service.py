"""``gatewise stream``: one stream processor process, wired up.

Builds the processor for a set of partitions with its broker, the Feast push, the alert engine
it is given (``monitoring.alerts.engine_for(settings)``: log, webhook and Parquet sinks) and a
small HTTP endpoint (``/metrics`` in Prometheus text,
``/status`` as JSON: lag in events and seconds, watermark age, counters), restores its
checkpoint or bootstraps from the telemetry store, and runs micro-batches until stopped.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from config.settings import Settings
from features.stream import BatchResult, StreamProcessor, feast_pusher

__all__ = ["StreamService", "metrics_text", "parse_partitions"]

log = logging.getLogger("gatewise.stream")


def parse_partitions(spec: str | None, n: int) -> list[int]:
    """``"0,2"`` or ``"0-3"`` (or None: all) -> partition numbers, checked against ``n``."""
    if not spec:
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"--partitions: {part!r} is not a number or a range a-b") from None
    bad = sorted(p for p in out if not 0 <= p < n)
    if bad:
        raise ValueError(f"--partitions: {bad} outside 0..{n - 1} (stream.partitions = {n})")
    return sorted(out)


def metrics_text(status: dict[str, Any]) -> str:
    """The processor's status as Prometheus text (labels: consumer)."""
    c = status["consumer"]
    lines = []

    def g(name: str, value: Any, kind: str = "gauge") -> None:
        if value is None:
            return
        lines.append(f"# TYPE gatewise_stream_{name} {kind}")
        lines.append(f'gatewise_stream_{name}{{consumer="{c}"}} {float(value)}')

    for k in (
        "events",
        "applied",
        "out_of_order",
        "too_late",
        "duplicates",
        "batches",
        "pushed_rows",
        "closed_windows",
        "checkpoints",
        "alerts",
        "push_failures",
    ):
        g(f"{k}_total", status.get(k), "counter")
    g("lag_events", status.get("lag_events"))
    g("lag_entries", status.get("lag_entries"))
    g("seconds_behind", status.get("seconds_behind"))
    g("watermark_age_seconds", status.get("watermark_age_s"))
    g("last_batch_seconds", status.get("last_batch_s"))
    g("busy_seconds", status.get("busy_s"), "counter")
    sp = status.get("score_push") or {}
    for k in ("asked", "pushed", "failures"):
        g(f"score_push_{k}_total", sp.get(k), "counter")
    return "\n".join(lines) + "\n"


@dataclass
class StreamService:
    """A processor with its sinks and endpoint. ``start()`` then ``run(stop)``."""

    settings: Settings
    partitions: Sequence[int] | None = None
    push: bool = True
    bootstrap: bool = True
    metrics_port: int | None = None
    alerts: Any = None  # an engine with process/state/load_state and sinks; None: no alerts
    # after each online push, the moved scores to the gateways (features/score_push.py);
    # None: from stream.score_push when enabled
    score_push: Any = None
    processor: StreamProcessor = field(init=False)
    push_failures: int = 0
    started_from: str = ""
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        if self.score_push is None and self.settings.stream.score_push.enabled:
            from features.score_push import ScorePusher

            self.score_push = ScorePusher(
                self.settings.stream.score_push, self.settings.serving.url
            )
        self.processor = StreamProcessor(
            self.settings,
            self.partitions,
            push=self._push_online if self.push or self.score_push is not None else None,
            alerts=self.alerts,
            before_checkpoint=self.wait_pushed,
        )
        self._pusher: Callable[[Any], None] | None = None
        # pushes run in their own thread, in order, while the next batch computes (Feast's
        # write path is Python, DuckDB's is not: the two overlap on two cores); at most two
        # wait, so a slow online store slows the processor instead of growing memory
        self._pushq: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._push_thread: threading.Thread | None = None

    def _push_online(self, rows: Any) -> None:
        if self._push_thread is None:
            self._push_thread = threading.Thread(
                target=self._push_loop, name="online-push", daemon=True
            )
            self._push_thread.start()
        self._pushq.put(rows)

    def _push_loop(self) -> None:
        while True:
            rows = self._pushq.get()
            try:
                if rows is None:
                    return
                # a failed push is counted and logged, never fatal: the next batch pushes
                # newer rows, and the batch build materialises everything anyway
                if self.push:
                    if self._pusher is None:
                        self._pusher = feast_pusher(self.settings)
                    self._pusher(rows)
            except Exception:
                self.push_failures += 1
                log.exception("online push of %d rows failed", rows.num_rows)
            else:
                if self.score_push is not None:  # scored from what is online now
                    self.score_push(rows)  # counts its own failures, never raises
            finally:
                self._pushq.task_done()

    def wait_pushed(self) -> None:
        """Block until every handed-over row is in the online store (or counted as failed)."""
        if self._push_thread is not None:
            self._pushq.join()

    def status(self) -> dict[str, Any]:
        st = self.processor.status()
        st["push_failures"] = self.push_failures
        if self.score_push is not None:
            st["score_push"] = self.score_push.stats()
        st["started_from"] = self.started_from
        return st

    def start(self) -> None:
        """Restore the checkpoint, else seed from stored telemetry; open the endpoint."""
        p = self.processor
        if self.push and self._pusher is None:
            self._pusher = feast_pusher(self.settings)  # the Feast store loads now, not mid-batch
        if p.restore():
            self.started_from = f"checkpoint (watermark {p.watermark})"
        elif self.bootstrap:
            n = p.bootstrap()
            self.started_from = f"bootstrap ({n} stored events)"
        else:
            self.started_from = "empty"
        port = self.settings.stream.metrics_port if self.metrics_port is None else self.metrics_port
        if port:
            self._server = _serve_metrics(self, port)

    def run(
        self, stop: threading.Event, on_batch: Callable[[BatchResult], None] | None = None
    ) -> None:
        self.processor.run(stop, on_batch)

    def drain(self, max_batches: int = 1_000_000) -> int:
        """Consume until the stream has nothing more for us, checkpoint, return events applied."""
        p = self.processor
        n = 0
        for _ in range(max_batches):
            res = p.poll_once(count=500, block_ms=0)
            n += res.applied
            if not res.entries:
                break
        p.checkpoint()
        return n

    def close(self) -> None:
        if self._push_thread is not None:
            self._pushq.put(None)
            self._push_thread.join(timeout=30)
            self._push_thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for s in getattr(self.alerts, "sinks", []):
            close = getattr(s, "close", None)
            if close is not None:
                close()
        if self.score_push is not None:
            self.score_push.close()
        if self.processor.broker is not None:
            self.processor.broker.close()


def _serve_metrics(svc: StreamService, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body = metrics_text(svc.status()).encode()
                ctype = "text/plain; version=0.0.4"
            elif self.path.startswith("/status"):
                body = json.dumps(svc.status(), default=str).encode()
                ctype = "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="stream-metrics", daemon=True).start()
    return server
