"""Weak labels: the labelling functions vote on every client window, the label model weighs
them, and each window gets ``P(abusive)`` in the labels table (``source = "weak"``).

Reviewed and imported labels anchor the label model: their windows keep their label and
teach it how far to trust each function (``LabelModel.fit(known=...)``); they stay in the
table as they are and win over the weak label of the same window (``LabelStore.resolve``).

    report = weak_labels(settings, since, until, anomaly=scorer)   # scorer: features -> score

``anomaly`` (optional) scores a window's own features (the day-one model's
``predict_proba``); its score feeds the ``anomalous`` function. The report has each
function's coverage, overlaps, conflicts and estimated accuracy (and, when a caller passes
the truth, its true accuracy), the correlated functions the model merged, and what was
written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from config.settings import Settings
from labeling.functions import apply_functions, function_specs, window_table
from labeling.label_model import FunctionStats, LabelModel, function_stats
from labeling.store import LabelStore

__all__ = ["WeakReport", "known_labels", "weak_labels"]

HUMAN = ("review", "import", "simulator")


@dataclass
class WeakReport:
    since: str
    until: str
    windows: int
    clients: int
    anchored_windows: int
    prior: float
    functions: list[FunctionStats]
    merges: list[tuple[str, str, float]]
    abusive_confident: int  # windows with P(abusive) >= labeling.confident
    legitimate_confident: int
    silent_windows: int = 0  # no function voted
    silent_rate: float = 0.0  # P(abusive) they get (reviews of silent windows, smoothed)
    batch: str | None = None
    path: Path | None = None
    stats_path: Path | None = None
    seconds: float = 0.0
    anomaly_version: str | None = None  # the day-one model that scored the windows, if any
    votes: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    windows_frame: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    probability: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def table(self) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in asdict(f).items() if k != "true_accuracy" or v is not None}
            for f in self.functions
        ]


def known_labels(settings: Settings, windows: pd.DataFrame) -> np.ndarray:
    """Per window: the human label (review, import, simulator truth) where there is one,
    else -1."""
    store = LabelStore(settings.labels_dir)
    lab = store.resolve(store.read()).to_pandas()
    lab = lab[lab["source"].isin(HUMAN)]
    if lab.empty:
        return np.full(len(windows), -1)
    lab["event_timestamp"] = pd.to_datetime(lab["event_timestamp"], utc=True)
    m = windows[["client_id", "event_timestamp"]].merge(
        lab[["client_id", "event_timestamp", "label"]], how="left"
    )
    return m["label"].fillna(-1).astype(int).to_numpy()


def weak_labels(
    settings: Settings,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    *,
    anomaly: Callable[[pd.DataFrame], np.ndarray] | None = None,
    truth: pd.DataFrame | None = None,
    write: bool = True,
    now: datetime | None = None,
) -> WeakReport:
    """Vote, weigh, write (module docstring). ``truth`` (client_id, event_timestamp, label),
    for tests and benchmarks only: adds each function's true accuracy to the report."""
    import time

    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    windows = window_table(settings, since, until)
    if windows.empty:
        raise LookupError("no client windows with features in that range")
    if anomaly is not None:
        windows["anomaly_score"] = np.asarray(anomaly(windows), dtype=float)
    votes = apply_functions(settings, windows)
    names = list(votes.columns)
    L = votes.to_numpy()
    known = known_labels(settings, windows)
    lm = LabelModel().fit(L, names, known=known)
    p = lm.predict_proba(L)
    # windows where no function voted: the votes say nothing, and the model's prior for them
    # is not identifiable from one-sided functions; the reviews of silent windows estimate
    # how often silence hides abuse (smoothed towards labeling.silent_prior)
    silent = (L == -1).all(axis=1)
    cfg = settings.labeling
    seen = silent & (known >= 0)
    rate = (float((known[seen] == 1).sum()) + cfg.silent_strength * cfg.silent_prior) / (
        float(seen.sum()) + cfg.silent_strength
    )
    p = np.where(silent, rate, p)
    p = np.where(known >= 0, known.astype(float), p)
    y_true = None
    if truth is not None:
        t = truth[["client_id", "event_timestamp", "label"]].copy()
        t["event_timestamp"] = pd.to_datetime(t["event_timestamp"], utc=True)
        y_true = (
            windows[["client_id", "event_timestamp"]]
            .merge(t, how="left")["label"]
            .fillna(0)
            .astype(int)
            .to_numpy()
        )
    stats = function_stats(L, names, lm, y_true)
    conf = settings.labeling.confident
    first, last = windows["event_timestamp"].min(), windows["event_timestamp"].max()
    rep = WeakReport(
        since=first.isoformat(),
        until=(last + pd.Timedelta(minutes=5)).isoformat(),
        windows=len(windows),
        clients=int(windows["client_id"].nunique()),
        anchored_windows=int((known >= 0).sum()),
        prior=lm.prior_,
        functions=stats,
        merges=lm.merges_,
        abusive_confident=int((p >= conf).sum()),
        legitimate_confident=int((p <= 1 - conf).sum()),
        silent_windows=int(silent.sum()),
        silent_rate=float(rate),
        votes=votes,
        windows_frame=windows,
        probability=p,
    )
    if write:
        weak = known < 0  # human labels stay as they are; the weak table covers the rest
        rep.batch = f"weak-{first:%Y%m%dT%H%M}-{last:%Y%m%dT%H%M}"
        table = pa.table(
            {
                "client_id": pa.array(windows.loc[weak, "client_id"].astype(str).tolist()),
                "event_timestamp": pa.array(windows.loc[weak, "event_timestamp"]),
                "label": pa.array((p[weak] >= 0.5).astype(np.int8)),
                "source": pa.array(["weak"] * int(weak.sum())),
                "labelled_at": pa.array([now] * int(weak.sum()), pa.timestamp("us", tz="UTC")),
                "labelled_by": pa.array(["label model"] * int(weak.sum())),
                "probability": pa.array(p[weak]),
            }
        )
        # one weak batch per range: a rerun replaces it
        rep.path = LabelStore(settings.labels_dir).write(table, rep.batch)
        rep.stats_path = _save_stats(settings, rep, now)
    rep.seconds = time.perf_counter() - t0
    return rep


def _save_stats(settings: Settings, rep: WeakReport, now: datetime) -> Path:
    """The run's function table, for the dashboard and the review queue."""
    out = settings.data_dir / "labeling" / "weak-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    specs = {s.name: s for s in function_specs(settings)}
    doc = {
        "at": now.isoformat(),
        "since": rep.since,
        "until": rep.until,
        "windows": rep.windows,
        "clients": rep.clients,
        "anchored_windows": rep.anchored_windows,
        "prior": rep.prior,
        "merges": [list(m) for m in rep.merges],
        "abusive_confident": rep.abusive_confident,
        "legitimate_confident": rep.legitimate_confident,
        "silent_windows": rep.silent_windows,
        "silent_rate": rep.silent_rate,
        "batch": rep.batch,
        "functions": [
            {
                **asdict(f),
                "where": specs[f.name].where if f.name in specs else None,
                "description": specs[f.name].description if f.name in specs else "",
            }
            for f in rep.functions
        ],
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(out)
    return out
