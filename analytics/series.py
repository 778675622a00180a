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


def _z_scores(
    metric: str, x: np.ndarray, med: np.ndarray, mad: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """How unusual each point is, as the smaller of two z-scores: the robust one (distance
    from the seasonal median in MADs, at least 5 % of the median) and the sampling one
    (exact Poisson tails of the count, or of the error count given the hour's requests
    and the usual rate), so neither a small route's noise nor a noisy baseline flags."""
    from scipy.stats import norm, poisson

    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.maximum(1.4826 * mad, np.maximum(0.05 * np.abs(med), 1e-9))
        z_rob = (x - med) / spread
        if metric == "requests":
            lam = np.maximum(np.nan_to_num(med), 0.5)
            up = norm.isf(np.clip(poisson.sf(x - 1, lam), 1e-300, 1.0))
            down = -norm.isf(np.clip(poisson.cdf(x, lam), 1e-300, 1.0))
            z_pois = np.where(x >= lam, np.maximum(up, 0), np.minimum(down, 0))
        elif metric == "error_rate":
            usual = np.nansum(x * n) / max(np.nansum(np.where(np.isnan(x), 0, n)), 1)
            rate = np.maximum(np.nan_to_num(med), max(usual, 1e-4))
            k = np.round(np.nan_to_num(x) * n)
            lam = rate * np.maximum(n, 1)
            up = norm.isf(np.clip(poisson.sf(k - 1, lam), 1e-300, 1.0))
            z_pois = np.where(k > lam, np.maximum(up, 0), 0.0)  # fewer errors: no alarm
        else:
            # an hour's p95 over a few dozen requests is noisy: judge only hours with 20+
            # requests, and only moves of more than a quarter of the baseline per z unit
            z_lat = (x - med) / np.maximum(1.4826 * mad, 0.25 * np.abs(med))
            return np.where(n >= 20, z_lat, 0.0)
    return np.where(np.abs(z_rob) < np.abs(z_pois), z_rob, z_pois)


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
    """Hourly points of ``metric`` (requests | error_rate | p95_ms) per key in the range
    whose robust z-score against the seasonal baseline (built from up to four weeks
    before each point, also before the range) exceeds ``threshold``; ``every=True``
    returns every point of the range with its baseline (for plots)."""
    if metric not in ("requests", "error_rate", "p95_ms"):
        raise ValueError(f"metric {metric!r}: expected requests, error_rate or p95_ms")
    f = src.resolve(f)
    if f.start is None or f.end is None:  # an empty store
        return pd.DataFrame(columns=["key", "hour", "value", "baseline", "mad", "z", "anomaly"])
    # the baseline looks back before the range: four weeks when the data has them
    first, _ = src.span(f.with_(start=None, end=None))
    look = max(f.start - pd.Timedelta(days=28), first or f.start)
    wide = f.with_(start=pd.Timestamp(look).floor("h").to_pydatetime())
    key = f"CAST({_dim(by)} AS VARCHAR)" if by else "'all'"
    hourly = src.df(
        f""", top_keys AS (SELECT {key} AS k FROM ev GROUP BY 1 ORDER BY count(*) DESC
                            LIMIT {int(top)})
        SELECT {key} AS key, {bucket_sql("hour")} AS hour, count(*) AS requests,
               avg((http_response_status_code >= 500)::DOUBLE) AS error_rate,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM ev WHERE {key} IN (SELECT k FROM top_keys) GROUP BY 1, 2 ORDER BY 1, 2""",
        wide,
    )
    cols = ["key", "hour", "value", "baseline", "mad", "z", "anomaly"]
    if hourly.empty:
        return pd.DataFrame(columns=cols)
    assert wide.start is not None
    start = pd.Timestamp(wide.start).floor("h")
    end = pd.Timestamp(f.end) - pd.Timedelta(microseconds=1)
    grid = pd.date_range(start, end.floor("h"), freq="h", tz="UTC")
    # hour-of-week baselines once four weeks precede the points, else hour-of-day
    weekly = len(grid) >= 24 * 7 * 5
    period, lags = (24 * 7, 4) if weekly else (24, 7)
    frames = []
    for k, g in hourly.groupby("key", sort=False):
        g = g.set_index(pd.to_datetime(g["hour"], utc=True))
        s = (
            g[metric].reindex(grid, fill_value=0)
            if metric == "requests"
            else g[metric].reindex(grid)
        )
        n = g["requests"].reindex(grid, fill_value=0).to_numpy()
        med, mad = robust_baseline(s.to_numpy(), period, lags)
        z = _z_scores(metric, s.to_numpy(), med, mad, n)
        frames.append(
            pd.DataFrame(
                {"key": k, "hour": grid, "value": s.to_numpy(), "baseline": med, "mad": mad, "z": z}
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df = df[df["hour"] >= pd.Timestamp(f.start).floor("h")].reset_index(drop=True)
    df["anomaly"] = np.abs(df["z"]) > threshold
    df.attrs["seasonality"] = "hour of week" if weekly else "hour of day"
    return df if every else df[df["anomaly"]].reset_index(drop=True)
