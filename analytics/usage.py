"""Usage and performance analytics: traffic, breakdowns, SLOs, consumers, adoption, money.

Each function asks DuckDB one question over the filtered events (``ev``) and returns a
small DataFrame; nothing reads all events into pandas. Forecasts and anomalies live in
``analytics.series`` (they need the aggregates, then a model).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from analytics.source import GRANULARITIES, Filters, Source, bucket_sql
from config.analytics import CostModel, SloSettings, TierPrice

__all__ = [
    "DIMENSIONS",
    "SLO_COLUMNS",
    "adoption",
    "auto_granularity",
    "breakdown",
    "consumer_requests",
    "overview",
    "revenue",
    "slo",
    "top_consumers",
    "traffic",
]

# the SLO table's columns worth showing, in order (the CLI and the review)
SLO_COLUMNS = [
    "route",
    "requests",
    "availability",
    "availability_objective",
    "latency_good",
    "latency_objective",
    "budget_consumed",
    "latency_budget_consumed",
    "burn_rate_1h",
    "p95_ms",
    "status",
]

# user-facing dimension -> column
DIMENSIONS = {
    "route": "http_route",
    "consumer": "client_id",
    "service": "upstream_service",
    "tier": "tier",
    "region": "region",
    "device": "device_type",
    "method": "http_request_method",
    "status": "http_response_status_code",
    "decision": "ratelimit_decision",
    "policy": "policy_version",
}

# the per-group measures every breakdown shows (one pass over the rows)
_MEASURES = """
    count(*) AS requests,
    count(DISTINCT client_id) AS consumers,
    avg((http_response_status_code BETWEEN 400 AND 499)::DOUBLE) AS rate_4xx,
    avg((http_response_status_code >= 500)::DOUBLE) AS rate_5xx,
    avg((ratelimit_decision IN ('throttle', 'block', 'challenge'))::DOUBLE) AS refused_share,
    quantile_cont(duration_ms, [0.5, 0.95, 0.99]) AS q,
    sum(response_bytes) AS bytes_out"""


def _dim(by: str) -> str:
    try:
        return DIMENSIONS[by]
    except KeyError:
        raise ValueError(f"dimension {by!r}: expected one of {sorted(DIMENSIONS)}") from None


def _unpack_q(df: pd.DataFrame) -> pd.DataFrame:
    if "q" in df:
        qs = df.pop("q")
        for i, name in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            df[name] = [v[i] if isinstance(v, (list, tuple, np.ndarray)) else None for v in qs]
    return df


def auto_granularity(f: Filters) -> str:
    """A bucket size that gives a readable number of points for the range."""
    if f.start is None or f.end is None:
        return "hour"
    span = f.end - f.start
    if span <= timedelta(hours=3):
        return "minute"
    if span <= timedelta(hours=12):
        return "5min"
    if span <= timedelta(days=4):
        return "hour"
    if span <= timedelta(days=120):
        return "day"
    return "week"


def overview(src: Source, f: Filters) -> pd.DataFrame:
    """One row: totals of the range."""
    df = src.df(
        f"SELECT {_MEASURES}, min(timestamp) AS first, max(timestamp) AS last FROM ev",
        f,
    )
    return _unpack_q(df)


def traffic(
    src: Source, f: Filters, granularity: str = "auto", by: str | None = None, top: int = 8
) -> pd.DataFrame:
    """Requests, errors, refusals, throughput and latency per time bucket (and per ``by``
    value: the ``top`` busiest, the rest summed as ``(other)``)."""
    f = src.resolve(f)
    gran = auto_granularity(f) if granularity == "auto" else granularity
    bucket = bucket_sql(gran)
    seconds = GRANULARITIES[gran] / 1e6
    key_sel = key_group = ""
    top_cte = ""
    if by:
        col = _dim(by)
        top_cte = (
            f", top_keys AS (SELECT CAST({col} AS VARCHAR) AS k FROM ev GROUP BY 1 "
            f"ORDER BY count(*) DESC LIMIT {int(top)})"
        )
        key_sel = (
            f"CASE WHEN CAST({col} AS VARCHAR) IN (SELECT k FROM top_keys) "
            f"THEN coalesce(CAST({col} AS VARCHAR), '(none)') ELSE '(other)' END AS key, "
        )
        key_group = ", key"
    # a query may start with ", name AS (...)": more CTEs after Source's ``ev``
    query = f"""{top_cte}
        , b AS (SELECT {bucket} AS bucket, {key_sel}
               count(*) AS requests,
               count_if(http_response_status_code BETWEEN 400 AND 499)::BIGINT AS errors_4xx,
               count_if(http_response_status_code >= 500)::BIGINT AS errors_5xx,
               count_if(ratelimit_decision IN ('throttle', 'block', 'challenge'))::BIGINT AS refused,
               quantile_cont(duration_ms, [0.5, 0.95, 0.99]) AS q
             FROM ev GROUP BY ALL)
        SELECT *, requests / {seconds} AS rps FROM b ORDER BY bucket{key_group}"""
    df = _unpack_q(src.df(query, f))
    df.attrs["granularity"] = gran
    return df


def breakdown(src: Source, f: Filters, by: str, top: int = 50) -> pd.DataFrame:
    """Per value of ``by``: requests, share, consumers, error and refusal rates,
    latency percentiles, bytes out and mean throughput over the range."""
    f = src.resolve(f)
    col = _dim(by)
    seconds = (f.end - f.start).total_seconds() if f.start and f.end else 1.0
    df = src.df(
        f"""SELECT coalesce(CAST({col} AS VARCHAR), '(none)') AS key, {_MEASURES}
            FROM ev GROUP BY 1 ORDER BY requests DESC LIMIT {int(top)}""",
        f,
    )
    df = _unpack_q(df)
    total = src.rows("SELECT count(*) FROM ev", f)[0][0]
    df["share"] = df["requests"] / total if total else 0.0
    df["rps"] = df["requests"] / max(seconds, 1.0)
    return df


def slo(src: Source, f: Filters, settings: SloSettings) -> pd.DataFrame:
    """SLO compliance and error-budget burn per route over the range.

    Availability SLI: share of answers that are not 5xx. Latency SLI: share answered
    within the route's ``latency_ms``. Budget consumed = bad events / allowed bad
    events (1.0 = the whole budget); burn rate = bad share / (1 - objective), over the
    range and its last 1 h and 6 h (burn 14.4 over 1 h spends a 30-day budget in
    2 days: the usual paging threshold).
    """
    f = src.resolve(f)
    routes = [r for (r,) in src.rows("SELECT DISTINCT http_route FROM ev", f)]
    if not routes:
        return pd.DataFrame(columns=["route", "requests", "availability", "latency_good", "status"])
    values = ", ".join("(?, ?, ?, ?)" for _ in routes)
    params: list[object] = []
    for r in routes:
        t = settings.target(r)
        params += [r, t.availability, t.latency_ms, t.latency_objective]
    assert f.end is not None
    params += [f.end - timedelta(hours=1), f.end - timedelta(hours=6)]
    df = src.df(
        f""", t(http_route, availability_objective, latency_ms, latency_objective) AS
              (VALUES {values})
        , w AS (SELECT ?::TIMESTAMPTZ AS h1, ?::TIMESTAMPTZ AS h6)
        SELECT ev.http_route AS route, any_value(availability_objective) AS availability_objective,
               any_value(latency_ms) AS latency_ms,
               any_value(latency_objective) AS latency_objective,
               count(*) AS requests,
               count_if(http_response_status_code >= 500)::BIGINT AS bad,
               count_if(duration_ms > latency_ms)::BIGINT AS slow,
               count_if(timestamp >= w.h1)::BIGINT AS requests_1h,
               count_if(timestamp >= w.h1 AND http_response_status_code >= 500)::BIGINT AS bad_1h,
               count_if(timestamp >= w.h6)::BIGINT AS requests_6h,
               count_if(timestamp >= w.h6 AND http_response_status_code >= 500)::BIGINT AS bad_6h,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM ev JOIN t USING (http_route), w GROUP BY ev.http_route ORDER BY requests DESC""",
        f,
        params=params,
    )
    budget = 1 - df["availability_objective"]
    lat_budget = 1 - df["latency_objective"]
    df["availability"] = 1 - df["bad"] / df["requests"]
    df["latency_good"] = 1 - df["slow"] / df["requests"]
    df["budget_consumed"] = df["bad"] / (budget * df["requests"])
    df["latency_budget_consumed"] = df["slow"] / (lat_budget * df["requests"])
    df["burn_rate"] = (df["bad"] / df["requests"]) / budget
    df["burn_rate_1h"] = (df["bad_1h"] / df["requests_1h"].where(df["requests_1h"] > 0)) / budget
    df["burn_rate_6h"] = (df["bad_6h"] / df["requests_6h"].where(df["requests_6h"] > 0)) / budget
    breaching = (df["availability"] < df["availability_objective"]) | (
        df["latency_good"] < df["latency_objective"]
    )
    at_risk = (df[["budget_consumed", "latency_budget_consumed"]].max(axis=1) > 0.75) | (
        df["burn_rate_1h"].fillna(0) > 14.4
    )
    df["status"] = [
        "breaching" if b else "at risk" if r else "ok"
        for b, r in zip(breaching, at_risk, strict=True)
    ]
    return df


def top_consumers(src: Source, f: Filters, n: int = 20) -> pd.DataFrame:
    """The ``n`` consumers with most requests, with their attributes and experience."""
    # two passes: the cheap count finds the top clients, the measures touch only their rows
    df = src.df(
        f""", top AS (SELECT client_id FROM ev GROUP BY 1 ORDER BY count(*) DESC, client_id
                     LIMIT {int(n)})
        SELECT client_id, arg_max(tier, timestamp) AS tier, arg_max(region, timestamp) AS region,
               arg_max(device_type, timestamp) AS device_type, {_MEASURES},
               count(DISTINCT http_route) AS routes, min(timestamp) AS first, max(timestamp) AS last
        FROM ev WHERE client_id IN (SELECT client_id FROM top)
        GROUP BY client_id ORDER BY requests DESC, client_id""",
        f,
    )
    df = _unpack_q(df)
    total = src.rows("SELECT count(*) FROM ev", f)[0][0]
    df["share"] = df["requests"] / total if total else 0.0
    return df


def consumer_requests(src: Source, f: Filters, client_id: str, limit: int = 200) -> pd.DataFrame:
    """A consumer's latest requests in the range (the drill-down's last level)."""
    return src.df(
        f"""SELECT timestamp, request_id, http_request_method AS method, url_path, http_route AS route,
               http_response_status_code AS status, duration_ms, response_bytes, upstream_service,
               ratelimit_decision, policy_version, model_score
            FROM ev ORDER BY timestamp DESC LIMIT {int(limit)}""",
        f.with_(clients=(client_id,)),
    )


def adoption(src: Source, f: Filters) -> pd.DataFrame:
    """Per route: launch (first call ever), consumers and their share of the consumers
    active in the range, and the median days from a consumer's chance to use the route
    (its own first call, or the launch if later) to its first call on it."""
    f = src.resolve(f)
    return src.df(
        """, launch AS (SELECT http_route, min(timestamp) AS launched FROM all_ev GROUP BY 1)
        , cfirst AS (SELECT client_id, min(timestamp) AS first_seen FROM all_ev GROUP BY 1)
        , active AS (SELECT DISTINCT client_id FROM ev WHERE timestamp >= ? AND timestamp < ?)
        , rfirst AS (SELECT http_route, client_id, min(timestamp) AS first_call FROM ev
                     WHERE client_id IN (SELECT client_id FROM active) GROUP BY 1, 2)
        SELECT r.http_route AS route, any_value(l.launched) AS launched,
               count(*) AS consumers,
               count(*) / (SELECT count(*) FROM active) AS share_of_active,
               median(epoch(r.first_call - greatest(c.first_seen, l.launched)) / 86400.0)
                   AS median_days_to_first_call,
               any_value(l.launched) >= ? AS launched_in_range
        FROM rfirst r JOIN launch l USING (http_route) JOIN cfirst c USING (client_id)
        GROUP BY r.http_route ORDER BY launched DESC, consumers DESC""",
        f,
        time=False,
        params=[f.start, f.end, f.start],
    )


def revenue(src: Source, f: Filters, tiers: dict[str, TierPrice], cost: CostModel) -> pd.DataFrame:
    """Revenue and cost per tier over the range, from the config's prices.

    Subscription revenue counts each consumer active in the range for the range's
    length (monthly price x days / 30); usage revenue and cost are per 1,000 requests;
    egress cost per GB of response bytes.
    """
    f = src.resolve(f)
    days = (f.end - f.start).total_seconds() / 86400 if f.start and f.end else 0.0
    df = src.df(
        """SELECT coalesce(tier, '(none)') AS tier, count(DISTINCT client_id) AS consumers,
               count(*) AS requests, coalesce(sum(response_bytes), 0) AS bytes_out
           FROM ev GROUP BY 1 ORDER BY requests DESC""",
        f,
    )
    monthly = df["tier"].map(lambda t: tiers[t].monthly if t in tiers else 0.0)
    per_1k = df["tier"].map(lambda t: tiers[t].per_1k_requests if t in tiers else 0.0)
    df["revenue"] = df["consumers"] * monthly * days / 30 + df["requests"] / 1000 * per_1k
    df["cost"] = (
        df["requests"] / 1000 * cost.per_1k_requests + df["bytes_out"] / 1e9 * cost.per_gb_out
    )
    df["margin"] = df["revenue"] - df["cost"]
    df["priced"] = df["tier"].isin(list(tiers))
    return df
