"""Time series over the telemetry: usage forecasts (capacity planning) and anomalies
flagged against each series' own seasonal baseline.

The aggregation is DuckDB's (daily or hourly counts per key); the models are small
and transparent, so their numbers can be checked by hand:

- forecast: least squares on log(1 + daily requests) with a linear trend and, given
  three weeks of history, day-of-week effects; prediction intervals from the
  residuals' spread (80 %). Sums over the horizons 7/30/90 days.
- anomalies: each hourly point against the same hour on the previous days (the same
  hour of the week once four weeks are there): median and MAD of that baseline give a
  robust z-score; |z| above the threshold flags the point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analytics.source import Filters, Source, bucket_sql
from analytics.usage import _dim

__all__ = ["anomalies", "fit_forecast", "forecast", "robust_baseline"]

_Z80 = 1.2816


def fit_forecast(y: np.ndarray, first_dow: int, horizon: int) -> dict[str, np.ndarray]:
    """Forecast ``horizon`` days after the daily series ``y`` (first day's weekday
    ``first_dow``, Monday = 0). Returns daily ``mean``, ``lower``, ``upper`` arrays and
    the fitted weekly ``growth`` (a ratio: 1.05 = +5 % a week)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n == 0:
        raise ValueError("forecast: the series is empty")
    t = np.arange(n + horizon, dtype=float)
    cols = [np.ones_like(t)]
    if n >= 3:
        cols.append(t)
    seasonal = n >= 21
    if seasonal:
        dow = (first_dow + np.arange(n + horizon)) % 7
        cols += [(dow == d).astype(float) for d in range(1, 7)]
    x = np.column_stack(cols)
    z = np.log1p(y)
    coef, *_ = np.linalg.lstsq(x[:n], z, rcond=None)
    fitted = x @ coef
    resid = z - fitted[:n]
    dof = max(n - x.shape[1], 1)
    sigma = float(np.sqrt((resid**2).sum() / dof)) if n > x.shape[1] else 0.0
    fut = fitted[n:]
    growth = float(np.exp(coef[1] * 7)) if n >= 3 else 1.0
    return {
        "mean": np.expm1(fut).clip(0),
        "lower": np.expm1(fut - _Z80 * sigma).clip(0),
        "upper": np.expm1(fut + _Z80 * sigma).clip(0),
        "growth": np.array(growth),
    }


def forecast(
    src: Source,
    f: Filters,
    by: str | None = "route",
    horizons: list[int] | tuple[int, ...] = (7, 30, 90),
    top: int = 10,
) -> pd.DataFrame:
    """Per key (the ``top`` busiest of ``by``; ``None`` = all traffic): days of
    history, last 7 days' requests, weekly growth, and the forecast total (with an
    80 % band) for each horizon, plus the forecast busiest day in the longest one."""
    f = src.resolve(f)
    key = f"CAST({_dim(by)} AS VARCHAR)" if by else "'all'"
    daily = src.df(
        f""", top_keys AS (SELECT {key} AS k FROM ev GROUP BY 1 ORDER BY count(*) DESC
                            LIMIT {int(top)})
        SELECT {key} AS key, {bucket_sql("day")} AS day, count(*) AS requests
        FROM ev WHERE {key} IN (SELECT k FROM top_keys) GROUP BY 1, 2 ORDER BY 1, 2""",
        f,
    )
    out: list[dict[str, Any]] = []
    if daily.empty:
        return pd.DataFrame(out)
    first = pd.Timestamp(f.start).floor("D") if f.start else daily["day"].min()
    last = (pd.Timestamp(f.end) - pd.Timedelta(microseconds=1)).floor("D") if f.end else None
    h_max = max(horizons)
    for k, g in daily.groupby("key", sort=False):
        days = pd.date_range(first, last or g["day"].max(), freq="D", tz="UTC")
        s = g.set_index(pd.to_datetime(g["day"], utc=True))["requests"].reindex(days, fill_value=0)
        fc = fit_forecast(s.to_numpy(), int(days[0].dayofweek), h_max)
        row: dict[str, Any] = {
            "key": k,
            "history_days": len(s),
            "last_7d": int(s.iloc[-7:].sum()),
            "weekly_growth": float(fc["growth"]),
            "enough_history": len(s) >= 14,
        }
        for h in horizons:
            row[f"forecast_{h}d"] = float(fc["mean"][:h].sum())
            row[f"lower_{h}d"] = float(fc["lower"][:h].sum())
            row[f"upper_{h}d"] = float(fc["upper"][:h].sum())
        row["peak_day"] = (days[-1] + pd.Timedelta(days=int(np.argmax(fc["mean"])) + 1)).date()
        row["peak_day_requests"] = float(fc["mean"].max())
        out.append(row)
    return pd.DataFrame(out)


def robust_baseline(values: np.ndarray, period: int, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of each point's seasonal predecessors (``lags`` points at
    ``period`` steps back); NaN where fewer than 3 predecessors exist."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    past = np.full((n, lags), np.nan)
    for j in range(1, lags + 1):
        past[j * period :, j - 1] = v[: n - j * period] if n > j * period else []
    enough = np.sum(~np.isnan(past), axis=1) >= 3
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    if enough.any():
        p = past[enough]
        m = np.nanmedian(p, axis=1)
        med[enough] = m
        mad[enough] = np.nanmedian(np.abs(p - m[:, None]), axis=1)
    return med, mad


def anomalies(
    src: Source,
    f: Filters,
    metric: str = "requests",
    by: str | None = "route",
    threshold: float = 4.0,
    top: int = 10,
    every: bool = False,
) -> pd.DataFrame:
    """Hourly points of ``metric`` (requests | error_rate | p95_ms) per key whose robust
    z-score against the seasonal baseline exceeds ``threshold``; ``every=True`` returns
    every point with its baseline (for plots)."""
    if metric not in ("requests", "error_rate", "p95_ms"):
        raise ValueError(f"metric {metric!r}: expected requests, error_rate or p95_ms")
    f = src.resolve(f)
    key = f"CAST({_dim(by)} AS VARCHAR)" if by else "'all'"
    hourly = src.df(
        f""", top_keys AS (SELECT {key} AS k FROM ev GROUP BY 1 ORDER BY count(*) DESC
                            LIMIT {int(top)})
        SELECT {key} AS key, {bucket_sql("hour")} AS hour, count(*) AS requests,
               avg((http_response_status_code >= 500)::DOUBLE) AS error_rate,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM ev WHERE {key} IN (SELECT k FROM top_keys) GROUP BY 1, 2 ORDER BY 1, 2""",
        f,
    )
    cols = ["key", "hour", "value", "baseline", "mad", "z", "anomaly"]
    if hourly.empty:
        return pd.DataFrame(columns=cols)
    start = pd.Timestamp(f.start).floor("h") if f.start else hourly["hour"].min()
    end = pd.Timestamp(f.end) - pd.Timedelta(microseconds=1) if f.end else hourly["hour"].max()
    grid = pd.date_range(start, pd.Timestamp(end).floor("h"), freq="h", tz="UTC")
    weekly = len(grid) >= 24 * 7 * 4
    period, lags = (24 * 7, 4) if weekly else (24, 7)
    frames = []
    for k, g in hourly.groupby("key", sort=False):
        s = g.set_index(pd.to_datetime(g["hour"], utc=True))[metric]
        s = s.reindex(grid, fill_value=0) if metric == "requests" else s.reindex(grid)
        med, mad = robust_baseline(s.to_numpy(), period, lags)
        # a floor on the spread: a perfectly flat baseline must not flag tiny wobbles
        floor = np.maximum(0.05 * np.abs(med), 1.0 if metric == "requests" else 1e-3)
        scale = np.maximum(1.4826 * mad, floor)
        z = (s.to_numpy() - med) / scale
        frames.append(
            pd.DataFrame(
                {"key": k, "hour": grid, "value": s.to_numpy(), "baseline": med, "mad": mad, "z": z}
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df["anomaly"] = np.abs(df["z"]) > threshold
    df.attrs["seasonality"] = "hour of week" if weekly else "hour of day"
    return df if every else df[df["anomaly"]].reset_index(drop=True)
