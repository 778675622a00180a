"""The review queue: the clients whose label would change the most, with their evidence.

Who is asked, in this order:

1. **the harm bound's reviews** (``labeling/harm.py``): the unreviewed largest clients a
   shadow policy would act on, then the next draws of its sample; until they are answered
   the policy cannot enforce;
2. **heavy clients the static limits refuse**: a client over its tier's limit that the label
   model calls abusive gets no allowance of its own (``monitoring.policy.adapt_limits``); if
   it is a legitimate heavy user (a nightly batch, a partner's sync) every one of those
   refusals is harm, so its answer moves the policy most (up to a third of the queue);
3. **disagreement and doubt**: clients whose windows the label model is unsure about
   (``P(abusive)`` near 0.5) or on which the functions contradict each other, weighted by
   how much traffic rides on the answer (``log(1 + requests)``).

Each entry carries what a reviewer needs to decide: the request timeline (per five minutes,
with errors), the functions that fired and how often, the label model's probability, the
model's score when there is one, what the policy would do to the client, and the nearest
clients someone already labelled (by their traffic profile).

A review is a client-level label over the queue's period: ``record_review`` writes it (source
``review``, the reviewer and the time kept), as ``gatewise labels import --source review``
does with the exported queue file once its ``label`` column is filled in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings
from labeling.functions import apply_functions, window_table
from labeling.store import LabelStore

__all__ = ["QueueItem", "build_queue", "queue_csv", "record_review", "reviewed_clients"]

_PROFILE = (
    "request_count_1h",
    "rate_4xx_1h",
    "rate_401_1h",
    "distinct_addresses_1h",
    "distinct_networks_24h",
    "enumeration_score_1h",
    "sensitive_share_1h",
    "burstiness_1h",
)


@dataclass
class QueueItem:
    rank: int
    client_id: str
    reason: str
    requests: int
    windows: int
    p_abusive: float  # the label model's highest window probability
    uncertainty: float
    functions: dict[str, int]  # function -> windows it voted on (abusive or legitimate)
    conflicts: int  # windows where functions voted both ways
    tier: str
    rate_4xx: float
    addresses: int
    networks: int
    top_routes: list[str]
    model_score: float | None = None
    would_stop: int | None = None  # requests the policy would stop beyond static limits
    nearest: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[list[Any]] = field(default_factory=list)  # [window start, requests, 4xx]
    since: str = ""
    until: str = ""


def reviewed_clients(
    settings: Settings, since: datetime | str | None = None, until: datetime | str | None = None
) -> dict[str, int]:
    """client -> 1 (abusive) / 0 (legitimate) from people's labels (review, import, simulator
    truth) in the range: abusive when any labelled window of theirs is."""
    store = LabelStore(settings.labels_dir)
    lab = store.resolve(store.read()).to_pandas()
    lab = lab[lab["source"].isin(("review", "import", "simulator"))]
    if lab.empty:
        return {}
    ts = pd.to_datetime(lab["event_timestamp"], utc=True)
    if since is not None:
        lab = lab[ts >= pd.Timestamp(since)]
        ts = ts[ts >= pd.Timestamp(since)]
    if until is not None:
        lab = lab[ts < pd.Timestamp(until)]
    return {str(k): int(v) for k, v in lab.groupby("client_id")["label"].max().items()}


def _weak(settings: Settings, windows: pd.DataFrame) -> np.ndarray:
    store = LabelStore(settings.labels_dir)
    lab = store.read().to_pandas()
    lab = lab[lab["source"] == "weak"][["client_id", "event_timestamp", "probability"]]
    lab["event_timestamp"] = pd.to_datetime(lab["event_timestamp"], utc=True)
    lab = lab.drop_duplicates(["client_id", "event_timestamp"], keep="last")
    m = windows[["client_id", "event_timestamp"]].merge(lab, how="left")
    return m["probability"].to_numpy(dtype=float)


def build_queue(
    settings: Settings,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    *,
    n: int | None = None,
    harm_reviews: list[str] | None = None,
    would_stop: dict[str, int] | None = None,
    scores: pd.DataFrame | None = None,
    timeline_windows: int = 288,
) -> list[QueueItem]:
    """The ``n`` clients most worth a review in ``[since, until)`` (module docstring).
    ``harm_reviews``: the harm bound's ``next_reviews`` (asked first); ``would_stop``: per
    client, what the policy would stop; ``scores``: the model's window scores (client_id,
    event_timestamp, score)."""
    cfg = settings.labeling.review
    n = n or cfg.per_round
    windows = window_table(settings, since, until)
    if windows.empty:
        return []
    votes = apply_functions(settings, windows)
    p = _weak(settings, windows)
    windows = windows.assign(p=np.where(np.isnan(p), 0.5, p))
    done = reviewed_clients(settings, since, until)
    first, last = windows["event_timestamp"].min(), windows["event_timestamp"].max()
    span = (first.isoformat(), (last + pd.Timedelta(minutes=5)).isoformat())
    L = votes.to_numpy()
    fired = L != -1
    conflict = ((L == 1).any(axis=1)) & ((L == 0).any(axis=1))
    w = windows.assign(
        _conflict=conflict.astype(int),
        _u=1 - np.abs(2 * windows["p"].to_numpy() - 1),
    )
    per = w.groupby("client_id").agg(
        requests=("request_count_5m", "sum"),
        windows=("event_timestamp", "size"),
        p_abusive=("p", "max"),
        uncertainty=("_u", "max"),
        conflicts=("_conflict", "sum"),
        tier=("tier", "first"),
    )
    per = per[(per["requests"] >= cfg.min_requests) & ~per.index.isin(list(done))]
    per["priority"] = (per["uncertainty"] + 0.5 * (per["conflicts"] > 0)) * np.log1p(
        per["requests"]
    )
    ordered: list[tuple[str, str]] = []
    for c in harm_reviews or []:
        if c in per.index and c not in done:
            ordered.append((c, "the harm bound needs it (a client the policy would act on)"))
    over = _over_limit(settings, span)
    heavy = per[(per["p_abusive"] >= 0.5)].join(over, how="inner")
    heavy = heavy[heavy["over_limit"] > 0].sort_values("over_limit", ascending=False)
    for hc, row in heavy.head(max(1, n // 3)).iterrows():
        if str(hc) not in {x for x, _ in ordered}:
            ordered.append(
                (
                    str(hc),
                    f"static limits refuse ~{int(row['over_limit']):,} of its requests and the "
                    "label model calls it abusive: a legitimate heavy user would get an allowance",
                )
            )
    seen = {c for c, _ in ordered}
    for c in per.sort_values("priority", ascending=False).index:
        if len(ordered) >= n:
            break
        if c in seen:
            continue
        row = per.loc[c]
        why = (
            "the labelling functions disagree"
            if row["conflicts"] > 0
            else f"the label model is unsure (P(abusive) up to {row['p_abusive']:.2f})"
        )
        ordered.append((str(c), why))
    ordered = ordered[: max(n, len(harm_reviews or []))]
    names = list(votes.columns)
    profile = windows.groupby("client_id")[list(_PROFILE)].mean()
    near = _nearest(profile, done)
    items = []
    for rank, (cid, why) in enumerate(ordered, start=1):
        sel = (windows["client_id"] == cid).to_numpy()
        wc = windows[sel]
        fns = {names[j]: int(fired[sel, j].sum()) for j in range(len(names)) if fired[sel, j].any()}
        ms = None
        if scores is not None and len(scores):
            s = scores[scores["client_id"] == cid]["score"]
            ms = float(s.max()) if len(s) and s.notna().any() else None
        tl = (
            wc[["event_timestamp", "request_count_5m", "rate_4xx_5m"]]
            .tail(timeline_windows)
            .assign(n4xx=lambda d: (d["request_count_5m"] * d["rate_4xx_5m"]).round())
        )
        items.append(
            QueueItem(
                rank=rank,
                client_id=cid,
                reason=why,
                requests=int(wc["request_count_5m"].sum()),
                windows=len(wc),
                p_abusive=float(wc["p"].max()),
                uncertainty=float((1 - np.abs(2 * wc["p"] - 1)).max()),
                functions=fns,
                conflicts=int(conflict[sel].sum()),
                tier=str(wc["tier"].iloc[0]),
                rate_4xx=float(
                    (wc["request_count_5m"] * wc["rate_4xx_5m"]).sum()
                    / max(wc["request_count_5m"].sum(), 1)
                ),
                addresses=int(wc["distinct_addresses_24h"].max()),
                networks=int(wc["distinct_networks_24h"].max()),
                top_routes=_top_routes(settings, cid, span),
                model_score=ms,
                would_stop=None if would_stop is None else int(would_stop.get(cid, 0)),
                nearest=near(cid),
                timeline=[
                    [t.isoformat(), int(r), int(e)]
                    for t, r, e in zip(
                        tl["event_timestamp"], tl["request_count_5m"], tl["n4xx"], strict=True
                    )
                ],
                since=span[0],
                until=span[1],
            )
        )
    return items


def _over_limit(settings: Settings, span: tuple[str, str]) -> pd.DataFrame:
    """Per client: requests above its tier's static limit, minute by minute, in the span."""
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    con = store.connect()
    limits = pd.DataFrame(
        {
            "tier": list(settings.static_limits_per_minute),
            "lim": [float(v) for v in settings.static_limits_per_minute.values()],
        }
    )
    con.register("limits", limits)
    fallback = float(min(settings.static_limits_per_minute.values()))
    df = con.execute(
        f"""SELECT client_id, sum(greatest(n - coalesce(lim, {fallback}), 0)) AS over_limit
            FROM (SELECT client_id, any_value(tier) AS tier, count(*) AS n
                  FROM ({store.relation_sql(span[0], span[1])})
                  GROUP BY client_id, date_trunc('minute', timestamp)) m
            LEFT JOIN limits USING (tier) GROUP BY client_id"""
    ).df()
    return df.set_index("client_id")


def _nearest(profile: pd.DataFrame, done: dict[str, int], k: int = 3) -> Any:
    """client -> its k nearest labelled clients (standardised log traffic profile)."""
    labelled = [c for c in done if c in profile.index]
    if not labelled:
        return lambda cid: []
    z = np.log1p(profile.clip(lower=0))
    z = (z - z.mean()) / z.std().replace(0, 1)
    ref = z.loc[labelled].to_numpy()

    def find(cid: str) -> list[dict[str, Any]]:
        if cid not in z.index:
            return []
        d = np.sqrt(((ref - z.loc[cid].to_numpy()) ** 2).sum(axis=1))
        idx = np.argsort(d)[:k]
        return [
            {
                "client_id": labelled[i],
                "label": "abusive" if done[labelled[i]] else "legitimate",
                "distance": round(float(d[i]), 3),
            }
            for i in idx
        ]

    return find


def _top_routes(settings: Settings, cid: str, span: tuple[str, str]) -> list[str]:
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    con = store.connect()
    rows = con.execute(
        f"""SELECT http_request_method || ' ' || coalesce(http_route, url_path) AS r, count(*) AS n
            FROM ({store.relation_sql(span[0], span[1])}) WHERE client_id = ?
            GROUP BY 1 ORDER BY 2 DESC LIMIT 3""",
        [cid],
    ).fetchall()
    return [f"{r} ({n})" for r, n in rows]


def queue_csv(items: list[QueueItem]) -> pd.DataFrame:
    """The queue as a file a reviewer fills in (``label``: abusive / legitimate; empty =
    not answered) and ``gatewise labels import --source review`` reads back."""
    return pd.DataFrame(
        [
            {
                "rank": i.rank,
                "client_id": i.client_id,
                "label": "",
                "note": "",
                "reason": i.reason,
                "requests": i.requests,
                "would_stop": i.would_stop,
                "p_abusive": round(i.p_abusive, 3),
                "model_score": None if i.model_score is None else round(i.model_score, 3),
                "functions": "; ".join(f"{k} x{v}" for k, v in i.functions.items()),
                "rate_4xx": round(i.rate_4xx, 3),
                "addresses": i.addresses,
                "networks": i.networks,
                "top_routes": "; ".join(i.top_routes),
                "nearest_labelled": "; ".join(
                    f"{x['client_id']} ({x['label']})" for x in i.nearest
                ),
                "since": i.since,
                "until": i.until,
            }
            for i in items
        ]
    )


def save_queue(settings: Settings, items: list[QueueItem], extra: dict[str, Any]) -> Path:
    out = settings.data_dir / "labeling" / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"at": datetime.now(UTC).isoformat(), **extra, "items": [asdict(i) for i in items]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, default=str))
    tmp.replace(out)
    return out


def record_review(
    settings: Settings,
    client_id: str,
    label: str,
    since: str,
    until: str,
    reviewer: str,
    note: str = "",
    now: datetime | None = None,
) -> int:
    """One reviewer's answer: the client's windows with traffic in ``[since, until)`` labelled
    ``abusive`` / ``legitimate`` (source review). Returns the windows written."""
    from labeling.io import LabelImportError, import_labels

    if label not in ("abusive", "legitimate"):
        raise LabelImportError(f"label: {label!r} is not abusive or legitimate")
    if not reviewer.strip():
        raise LabelImportError("reviewer: a review needs the reviewer's name")
    import tempfile

    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"review-{client_id}.csv"
        pd.DataFrame(
            [
                {
                    "client_id": client_id,
                    "label": label,
                    "since": since,
                    "until": until,
                    "note": note,
                    "labelled_by": reviewer,
                    "labelled_at": now.isoformat(),
                }
            ]
        ).to_csv(f, index=False)
        r = import_labels(settings, f, source="review", level="client", now=now)
    return r.windows
