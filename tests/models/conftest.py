from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO


@pytest.fixture()
def mlsettings(tmp_path, monkeypatch):
    """Settings with a private data dir: a real MLflow SQLite store and registry in it."""
    import os

    from config.settings import load_settings

    for k in list(os.environ):
        if k.startswith("GATEWISE_") and k != "GATEWISE_SHARED_DATA":
            monkeypatch.delenv(k)
    return load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "data")


def xor_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A label a linear model cannot learn (XOR of two features) plus noise
    columns, a time column, a client column and a sensitive group column."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = ((a > 0) ^ (b > 0)).astype(int)
    flip = rng.random(n) < 0.05
    y = np.where(flip, 1 - y, y)
    group = np.where(rng.random(n) < 0.5, "A", "B")
    c = y + rng.normal(0, 0.7, n)
    return pd.DataFrame(
        {
            "a": a,
            "b": b,
            "c": c,
            "noise1": rng.normal(size=n),
            "noise2": rng.exponential(size=n),
            "client": rng.integers(0, 300, n).astype(str),
            "ts": pd.Timestamp("2026-11-02", tz="UTC")
            + pd.to_timedelta(np.sort(rng.uniform(0, 86400, n)), unit="s"),
            "group": group,
            "label": y,
        }
    )


def unfair_table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Legitimate rows of group B look like abuse on the only informative
    feature, so any model that learns it flags B's legitimate rows far more often."""
    df = xor_table(n, seed)
    rng = np.random.default_rng(seed + 1)
    a = rng.normal(size=n)
    y = (a + rng.normal(0, 0.5, n) > 1.0).astype(int)
    a = np.where((df["group"] == "B") & (y == 0), a + 1.0, a)
    return df.assign(a=a, b=rng.normal(size=n), c=rng.normal(size=n), label=y)
