"""Forecasts and anomalies: exact on series whose continuation is known."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from analytics.source import Filters, Source
from tests.analytics.conftest import T0, event, store_of


def test_forecast_recovers_trend_and_weekday_pattern() -> None:
    from analytics.series import fit_forecast

    n, h = 42, 30
    t = np.arange(n + h)
    dow = t % 7  # the series starts on a Monday
    weekday_effect = np.where(dow >= 5, -0.7, 0.1)
    y = np.expm1(5.0 + 0.01 * t + weekday_effect)
    fc = fit_forecast(y[:n], first_dow=0, horizon=h)
    np.testing.assert_allclose(fc["mean"], y[n:], rtol=1e-6)
    assert float(fc["growth"]) == pytest.approx(np.exp(0.07))
    # an exact fit has no residual spread: the band collapses onto the forecast
    np.testing.assert_allclose(fc["lower"], fc["upper"], rtol=1e-6)


def test_forecast_band_covers_noise() -> None:
    from analytics.series import fit_forecast

    rng = np.random.default_rng(1)
    y = np.expm1(4 + rng.normal(0, 0.2, 60))
    fc = fit_forecast(y, first_dow=2, horizon=7)
    assert (fc["lower"] < fc["mean"]).all() and (fc["mean"] < fc["upper"]).all()
    with pytest.raises(ValueError, match="empty"):
        fit_forecast(np.array([]), 0, 7)


def test_robust_baseline_by_hand() -> None:
    from analytics.series import robust_baseline

    v = np.array([10, 20, 10, 20, 10, 20, 30, 20], dtype=float)
    med, mad = robust_baseline(v, period=2, lags=3)
    # index 6 looks back at 4, 2, 0 -> 10, 10, 10; index 7 at 5, 3, 1 -> 20, 20, 20
    assert med[6] == 10 and mad[6] == 0 and med[7] == 20
    assert np.isnan(med[:6]).all()  # fewer than three predecessors


def test_anomaly_flagged_against_its_own_hour(tmp_path) -> None:
    from analytics.series import anomalies

    # 9 days: 3 requests every hour, and 30 in one hour of the last day
    events = []
    for h in range(24 * 9):
        n = 30 if h == 24 * 8 + 5 else 3
        for i in range(n):
            events.append(event("c1", h * 60 + i, "/v1/search", 200, 50))
    src = Source([store_of(tmp_path / "t", events)])
    f = Filters(start=T0, end=T0 + timedelta(days=9))
    flagged = anomalies(src, f, metric="requests", by="route", threshold=4)
    assert len(flagged) == 1
    assert flagged["hour"].iloc[0] == T0 + timedelta(hours=24 * 8 + 5)
    assert flagged["value"].iloc[0] == 30 and flagged["baseline"].iloc[0] == 3
    every = anomalies(src, f, every=True)
    assert len(every) == 24 * 9 and every.attrs["seasonality"] == "hour of day"


def test_forecast_per_route_from_the_store(tmp_path) -> None:
    from analytics.series import forecast

    events = [event("c1", d * 1440 + i, "/v1/search", 200, 50) for d in range(14) for i in range(5)]
    events += [
        event("c2", d * 1440 + i, "/v1/orders", 200, 50) for d in range(14) for i in range(2)
    ]
    src = Source([store_of(tmp_path / "t", events)])
    df = forecast(src, Filters(), by="route", horizons=[7, 30]).set_index("key")
    assert df.loc["/v1/search", "last_7d"] == 35
    # a flat series forecasts itself
    assert df.loc["/v1/search", "forecast_7d"] == pytest.approx(35, rel=1e-6)
    assert df.loc["/v1/orders", "forecast_30d"] == pytest.approx(60, rel=1e-6)
    assert df.loc["/v1/search", "weekly_growth"] == pytest.approx(1.0)
