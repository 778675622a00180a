"""Summaries of the telemetry store (DuckDB over the Parquet files)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from telemetry.store import TelemetryStore

__all__ = ["TelemetrySummary", "summarize"]


@dataclass
class TelemetrySummary:
    overall: dict[str, Any]
    routes: list[dict[str, Any]]
    tiers: list[dict[str, Any]]
    statuses: list[dict[str, Any]]


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def summarize(
    store: TelemetryStore, start: datetime | None = None, end: datetime | None = None, top: int = 10
) -> TelemetrySummary:
    """Totals, the busiest routes, per-tier figures and the status mix for ``[start, end)``."""
    con = store.connect()
    if store.is_empty() or not (start or end):
        con.execute("CREATE VIEW ev AS SELECT * FROM events")
    else:
        con.execute(f"CREATE VIEW ev AS {store.relation_sql(start, end)}")
    overall = _rows(
        con,
        """
        SELECT count(*) AS events, count(DISTINCT client_id) AS clients, count(DISTINCT http_route) AS routes,
               min(timestamp) AS first, max(timestamp) AS last,
               avg((http_response_status_code >= 500)::INT) AS error_rate_5xx,
               avg((http_response_status_code BETWEEN 400 AND 499)::INT) AS error_rate_4xx,
               quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.95) AS p95_ms,
               quantile_cont(duration_ms, 0.99) AS p99_ms
        FROM ev""",
    )[0]
    peak = _rows(
        con,
        "SELECT max(n) AS peak FROM (SELECT count(*) AS n FROM ev GROUP BY date_trunc('minute', timestamp))",
    )
    overall["peak_per_minute"] = peak[0]["peak"] if peak else None
    routes = _rows(
        con,
        f"""
        SELECT http_request_method AS method, http_route AS route, count(*) AS requests,
               count(*) / sum(count(*)) OVER () AS share,
               avg((http_response_status_code BETWEEN 400 AND 499)::INT) AS rate_4xx,
               avg((http_response_status_code >= 500)::INT) AS rate_5xx,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM ev GROUP BY ALL ORDER BY requests DESC LIMIT {int(top)}""",
    )
    tiers = _rows(
        con,
        """
        SELECT coalesce(tier, '(unknown)') AS tier, count(DISTINCT client_id) AS clients, count(*) AS requests,
               count(*) / count(DISTINCT client_id) AS per_client
        FROM ev GROUP BY ALL ORDER BY requests DESC""",
    )
    statuses = _rows(
        con,
        """
        SELECT (http_response_status_code // 100) || 'xx' AS class, count(*) AS requests, count(*) / sum(count(*)) OVER () AS share
        FROM ev GROUP BY ALL ORDER BY class""",
    )
    return TelemetrySummary(overall, routes, tiers, statuses)
