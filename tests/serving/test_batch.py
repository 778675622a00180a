"""Batch scoring: point-in-time window scores, and the backtest re-scored with them."""

from __future__ import annotations

import numpy as np

from gateway.backtest import backtest
from gateway.policy import default_policy
from serving.batch import score_windows


def test_windows_scored_point_in_time_and_backtest_uses_them(champion):
    s, r = champion
    df, version = score_windows(s, "abuse", "champion", since="2026-11-03T00:00:00+00:00")
    assert version == r.version and len(df) > 100
    assert (df["event_timestamp"] >= "2026-11-03").all()
    known = df["score"].notna()
    assert known.mean() > 0.5 and df.loc[known, "score"].between(0, 1).all()
    # the same window scored twice gives the same score (deterministic, point-in-time)
    again, _ = score_windows(s, "abuse", r.version, since="2026-11-03T00:00:00+00:00")
    assert np.allclose(df["score"].fillna(-1), again["score"].fillna(-1))

    base = default_policy(s.static_limits_per_minute, {}, [{"min_score": 0.5, "action": "block"}])
    t = base.targets["abuse"].model_copy(update={"mode": "enforce"})
    pol = base.model_copy(update={"targets": {"abuse": t}})
    plain = backtest(pol, s.telemetry_dir, start="2026-11-03T00:00:00+00:00")
    scored = backtest(
        pol, s.telemetry_dir, start="2026-11-03T00:00:00+00:00", scores=df, labels=s.labels_dir
    )
    assert "block" not in set(plain.decisions["decision"])  # simulated telemetry carries no scores
    blocked = scored.decisions["decision"] == "block"
    assert blocked.any()
    # blocking follows the model: mostly abusive requests
    assert scored.decisions.loc[blocked, "abusive"].mean() > 0.5


def test_scoring_windows_without_features_is_an_error_naming_the_range(champion):
    """The first five minutes of the data have no earlier feature rows: every score would be
    empty, so scoring says so (and how to build features) instead of reporting them scored."""
    import pytest

    s, _ = champion
    with pytest.raises(LookupError) as e:
        score_windows(
            s,
            "abuse",
            "champion",
            since="2026-11-02T00:00:00+00:00",
            until="2026-11-02T00:05:00+00:00",
        )
    msg = str(e.value)
    assert "no features for any of the" in msg and "2026-11-02 00:00" in msg
    assert "gatewise features build --since 2026-11-02 --until 2026-11-03" in msg
