"""As-of training rows: the offline row as of t is the row the online store held at t."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from config.settings import AsOfSettings


def test_the_grid_is_laid_per_day_and_cycles_offsets_inside_windows():
    from features.asof import instants

    cfg = AsOfSettings(every_minutes=15, offsets_s=[60, 150, 240])
    d0 = datetime(2026, 11, 2, tzinfo=UTC)
    day = instants(d0, d0 + timedelta(days=1), cfg)
    assert len(day) == 96
    assert day[:4] == [
        d0 + timedelta(minutes=1),
        d0 + timedelta(minutes=17, seconds=30),
        d0 + timedelta(minutes=34),
        d0 + timedelta(minutes=46),
    ]
    # a range cut anywhere gives the instants of the whole day that fall in it
    cut = instants(d0 + timedelta(hours=3, minutes=20), d0 + timedelta(hours=5), cfg)
    assert cut == [
        t for t in day if d0 + timedelta(hours=3, minutes=20) <= t < d0 + timedelta(hours=5)
    ]
    with pytest.raises(ValueError, match="inside a 5-minute window"):
        AsOfSettings(offsets_s=[0, 300])


def test_each_labelled_window_gets_a_row_at_each_instant_inside_it(settings, tmp_path):
    from features.asof import ASOF_DATASET, asof_entity_rows

    asof = AsOfSettings(every_minutes=15, offsets_s=[60, 150, 240])
    settings = settings.model_copy(
        update={"features": settings.features.model_copy(update={"asof": asof})}
    )
    d0 = datetime(2026, 11, 2, tzinfo=UTC)
    entity = pd.DataFrame(
        {
            "client_id": ["a", "a", "b", "c"],
            "event_timestamp": pd.to_datetime(
                [
                    d0,
                    d0 + timedelta(minutes=5),
                    d0 + timedelta(minutes=15),
                    d0 + timedelta(minutes=2),
                ],
                utc=True,
            ),
            "label": [1, 0, 1, 0],
        }
    )
    # no snapshots built: nothing added
    assert len(asof_entity_rows(settings, entity, 5)) == 4
    f = settings.features_dir / ASOF_DATASET / "date=2026-11-02" / "part-0.parquet"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    out = asof_entity_rows(settings, entity, 5)
    extra = out[out["as_of"]].sort_values("event_timestamp")
    # a@00:00 holds 00:01:00, b@00:15 holds 00:17:30; a@00:05 holds none, c@00:02 is no window start
    assert list(extra["client_id"]) == ["a", "b"]
    assert list(extra["label"]) == [1, 1]
    assert list(extra["event_timestamp"]) == [
        pd.Timestamp(d0 + timedelta(minutes=1)),
        pd.Timestamp(d0 + timedelta(minutes=17, seconds=30)),
    ]


def test_training_rows_as_of_t_equal_what_the_online_store_held_at_t(built, tmp_path):
    """Parity: a live processor fed in random micro-batches pushes rows to an online store;
    at each grid instant t, Feast's point-in-time join of ``abuse_asof_v1`` at t returns the
    same features for every client with traffic in its open window."""
    import pyarrow.parquet as pq

    from features.asof import ASOF_DATASET, instants
    from features.definitions import definitions
    from features.store import apply_definitions, feature_store
    from features.stream import STATE_COLUMNS, StreamProcessor
    from features.windows import CLIENT_FEATURES
    from telemetry.store import TelemetryStore

    s0, report = built
    assert report.rows[ASOF_DATASET] > 0
    s = s0.model_copy(update={"data_dir": tmp_path / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    ev = TelemetryStore(s.telemetry_dir).read().select(list(STATE_COLUMNS))
    ev = ev.sort_by([("timestamp", "ascending"), ("request_id", "ascending")])
    t_us = ev.column("timestamp").cast("int64").to_numpy()

    online: dict[str, dict] = {}

    def push(rows):
        for r in rows.to_pylist():
            online[r["client_id"]] = r

    proc = StreamProcessor(s, wall_clock=False, push=push, checkpoint_dir=tmp_path / "ck")
    proc.seed_first_seen(pq.read_table(s.features_dir / "state" / "first_seen.parquet"))
    first = datetime.fromtimestamp(int(t_us[0]) // 1_000_000, UTC)
    day2 = datetime(first.year, first.month, first.day, tzinfo=UTC) + timedelta(days=1)
    grid = instants(day2, day2 + timedelta(hours=6), s.features.asof)
    rng = np.random.default_rng(5)
    at: dict[datetime, dict[str, dict]] = {}
    i = int(np.searchsorted(t_us, int(day2.timestamp() * 1e6), side="left"))
    proc.apply(ev.slice(0, i))  # the first day in one go, as a bootstrap would
    for t in grid:
        cut = int(np.searchsorted(t_us, int(t.timestamp() * 1e6), side="left"))
        while i < cut:  # random micro-batches up to the instant
            n = int(min(cut - i, rng.integers(1, 1500)))
            proc.apply(ev.slice(i, n))
            i += n
        w0 = t - timedelta(seconds=int(t.timestamp()) % 300)
        at[t] = {
            c: dict(r)
            for c, r in online.items()
            if w0 < pd.Timestamp(r["event_timestamp"]).to_pydatetime() < t
        }
    rows = [(c, t) for t, m in at.items() for c in m]
    assert len(rows) > 200, "too few open windows at the instants to compare"
    entity = pd.DataFrame(rows, columns=["client_id", "event_timestamp"])
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)

    store = feature_store(s)
    apply_definitions(store, s)
    names = [n for n in CLIENT_FEATURES]
    asof = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service("abuse_asof_v1")
    ).to_df()
    closed = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service("abuse_v1")
    ).to_df()
    key = ["client_id", "event_timestamp"]
    asof = asof.set_index(key).sort_index()
    closed = closed.set_index(key).sort_index()
    want = (
        pd.DataFrame(
            [
                {
                    "client_id": c,
                    "event_timestamp": pd.Timestamp(t),
                    **{n: at[t][c][n] for n in names},
                }
                for c, t in rows
            ]
        )
        .set_index(key)
        .sort_index()
    )
    assert len(asof) == len(want)
    mismatched = []
    for n in names:
        a = asof[n].astype(float).to_numpy()
        b = want[n].astype(float).to_numpy()
        ok = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
        if not ok.all():
            mismatched.append((n, int((~ok).sum())))
    assert not mismatched, f"offline as-of rows differ from the online store: {mismatched}"
    # and the join at t on closed windows alone does not give what was served
    a = closed["request_count_5m"].astype(float).to_numpy()
    b = want["request_count_5m"].astype(float).to_numpy()
    assert (~np.isclose(a, b, equal_nan=True)).mean() > 0.5
    assert "client_5m_asof" in definitions(s.data_dir)
