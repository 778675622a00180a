"""Checks that keep the simulated data honest.

The platform has something to prove only if the abuse in the data is hard:
no single per-client aggregate may separate abusers from legitimate clients,
and the naive static per-tier limit must both miss abusers and hurt heavy
legitimate clients. These functions measure exactly that; the tests and the
demo call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "CLIENT_AGGREGATES",
    "client_aggregates",
    "roc_auc",
    "single_aggregate_aucs",
    "static_limit_outcomes",
]

# per-client aggregates a static rule could threshold on
CLIENT_AGGREGATES = {
    "requests": "count(*)",
    "rate_4xx": "avg((http_response_status_code BETWEEN 400 AND 499)::INT)",
    "rate_5xx": "avg((http_response_status_code >= 500)::INT)",
    "rate_401": "avg((http_response_status_code = 401)::INT)",
    "rate_403": "avg((http_response_status_code = 403)::INT)",
    "rate_404": "avg((http_response_status_code = 404)::INT)",
    "distinct_routes": "count(DISTINCT http_route)",
    "distinct_addresses": "count(DISTINCT client_address)",
    "distinct_user_agents": "count(DISTINCT user_agent)",
    "latency_p50": "quantile_cont(duration_ms, 0.5)",
    "latency_p95": "quantile_cont(duration_ms, 0.95)",
    "bytes_in": "sum(request_bytes)",
    "bytes_out": "sum(response_bytes)",
    "sensitive_share": "avg((http_route IN ('/v1/auth/login', '/v1/auth/password-reset', '/v1/reports/export'))::INT)",
    "night_share": "avg((hour(timestamp) BETWEEN 0 AND 5)::INT)",
    "write_share": "avg((http_request_method IN ('POST', 'PUT', 'DELETE'))::INT)",
}


def client_aggregates(events: pa.Table, clients: pa.Table) -> Any:
    """One row per client with traffic: every aggregate above, plus the peak
    requests in one minute, inter-arrival burstiness, shared-address degree
    and the truth (``abusive``, ``role``) from ``clients``."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("ev", events)
    con.register("cl", clients.select(["client_id", "abusive", "role"]))
    aggs = ",\n".join(f"{expr} AS {name}" for name, expr in CLIENT_AGGREGATES.items())
    return con.sql(f"""
        WITH g AS (SELECT client_id, any_value(tier) AS tier, {aggs} FROM ev GROUP BY client_id),
        pm AS (SELECT client_id, max(n) AS peak_per_minute
               FROM (SELECT client_id, date_trunc('minute', timestamp) AS m, count(*) AS n FROM ev GROUP BY ALL)
               GROUP BY ALL),
        gaps AS (SELECT client_id, epoch_ms(timestamp) - lag(epoch_ms(timestamp)) OVER (PARTITION BY client_id ORDER BY timestamp) AS d FROM ev),
        ia AS (SELECT client_id, coalesce(stddev(d) / nullif(avg(d), 0), 0) AS burstiness FROM gaps WHERE d IS NOT NULL GROUP BY ALL),
        ca AS (SELECT DISTINCT client_id, client_address FROM ev),
        sh AS (SELECT a.client_id, count(DISTINCT b.client_id) AS shared_address_degree
               FROM ca a JOIN ca b ON a.client_address = b.client_address AND a.client_id <> b.client_id GROUP BY ALL)
        SELECT g.*, pm.peak_per_minute, coalesce(ia.burstiness, 0) AS burstiness,
               coalesce(sh.shared_address_degree, 0) AS shared_address_degree, cl.abusive, cl.role
        FROM g JOIN cl USING (client_id) JOIN pm USING (client_id)
        LEFT JOIN ia USING (client_id) LEFT JOIN sh USING (client_id)
        ORDER BY client_id""").to_arrow_table()


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann–Whitney U), ties averaged."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("ROC AUC needs both classes")
    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def single_aggregate_aucs(aggregates: pa.Table) -> dict[str, float]:
    """For each aggregate, the best ROC AUC any one threshold on it reaches
    (max of AUC and 1 - AUC: a rule may flag high or low values)."""
    y = np.asarray(aggregates.column("abusive").to_numpy(zero_copy_only=False), dtype=bool)
    out = {}
    skip = {"client_id", "tier", "abusive", "role"}
    for name in aggregates.column_names:
        if name in skip:
            continue
        x = np.nan_to_num(
            np.asarray(aggregates.column(name).to_numpy(zero_copy_only=False), dtype=float), nan=0.0
        )
        auc = roc_auc(y, x)
        out[name] = max(auc, 1 - auc)
    return out


def static_limit_outcomes(
    aggregates: pa.Table, limits_per_minute: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Per role: how many clients a static per-tier requests-per-minute limit
    would have throttled at least once (``share_limited``)."""
    tiers = aggregates.column("tier").to_pylist()
    peak = aggregates.column("peak_per_minute").to_pylist()
    roles = aggregates.column("role").to_pylist()
    out: dict[str, dict[str, float]] = {}
    for role, tier, p in zip(roles, tiers, peak, strict=True):
        limit = limits_per_minute.get(tier or "free", min(limits_per_minute.values()))
        d = out.setdefault(role, {"clients": 0, "limited": 0})
        d["clients"] += 1
        d["limited"] += int(p > limit)
    for d in out.values():
        d["share_limited"] = d["limited"] / d["clients"]
    return out
