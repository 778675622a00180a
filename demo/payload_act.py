"""The payload-scanning act of ``gatewise demo``: the platform's second kind of model.

1. AutoML (the same Prefect flow ``train``) on the real labelled payloads: text families
   over hashed n-grams, threshold at a 0.1 % benign false-positive budget, gated and
   registered; per-class findings logged to the MLflow run.
2. Promoted when the gate allows it; the champion's compact form is exported for the
   gateway (``<data_dir>/scanner/payload.npz``), which reloads it without a restart.
3. The gateway act then sends held-out real attacks and benign values with quotes and
   brackets through the live gateway: scanned in process, recorded in shadow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from config.settings import Settings

__all__ = ["demo_requests", "payload_demo", "scan_summary"]


def payload_demo(console: Console, s: Settings, config: Path | None, budget: float = 45.0) -> Any:
    from demo.steps import table, train
    from models import registry as reg

    r = train(
        console, s, config, "payload", min(budget, s.target("payload").time_budget_s), None, 1, 0
    )
    c = reg.client(s)
    run = c.get_run(r.run_id)
    m = run.data.metrics
    rows = [
        {
            "class": k.removeprefix("holdout_recall_"),
            "recall (held-out templates)": round(v, 4),
        }
        for k, v in sorted(m.items())
        if k.startswith("holdout_recall_")
    ]
    if rows:
        console.print(table("payload v" + str(r.version) + ": detection by attack class", rows))
    if "holdout_benign_fpr" in m:
        console.print(
            f"benign values flagged on the holdout: {m['holdout_benign_fpr']:.3%} "
            f"(95 % upper bound {m.get('holdout_benign_fpr_upper95', float('nan')):.3%}; "
            f"budget {s.target('payload').max_false_positive_rate:.1%}), precision "
            f"{m.get('holdout_precision', float('nan')):.4f}; findings (misses, false positives) "
            "are artifacts of the run (findings/)"
        )
    if r.eligible:
        out = reg.promote(s, "payload", str(r.version))
        exported = out.get("scanner") or {}
        where = exported.get("path") or f"serving only ({exported.get('remote')})"
        console.print(
            f"payload v{out['champion']} is champion; compact scanner for the gateway: {where}"
        )
    else:
        console.print(f"the gate kept payload v{r.version} out: {'; '.join(r.reasons)}")
    return r


def demo_requests(n_attacks: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    """(query value, true class) for the live gateway: real attacks from the held-out
    templates (never trained on) and benign values with quotes, brackets and arithmetic."""
    import numpy as np

    from models.data import BENIGN, payload_dataset
    from models.search import make_splits

    ds = payload_dataset()
    sp = make_splits(ds, 0.2)
    rng = np.random.default_rng(seed)
    hold = sp.holdout
    assert ds.detail is not None
    cls = ds.detail.to_numpy()[hold]
    vals = ds.X["payload"].to_numpy()[hold]
    out: list[tuple[str, str]] = []
    for c in ("sqli", "xss", "path-traversal", "cmdi"):
        idx = np.flatnonzero(cls == c)
        k = min(len(idx), n_attacks // 4)
        out += [(str(vals[i]), c) for i in rng.choice(idx, k, replace=False)]
    for v in ("Conan O'Brien", "is 7 < 12 ?", "what is 2+2?", "Rock 'n' Roll", "red shoes"):
        out.append((v, BENIGN))
    return out


def scan_summary(events: Any, truth: dict[str, str]) -> list[dict[str, Any]]:
    """Scanner verdicts of the demo's injected requests, by true class."""
    from urllib.parse import parse_qs

    df = events[events["scan_label"].notna() & events["url_query"].notna()].copy()
    df["value"] = [parse_qs(q).get("q", [""])[0] for q in df["url_query"]]
    df = df[df["value"].isin(truth)]
    if not len(df):
        return []
    df["true_class"] = df["value"].map(truth)
    df["caught"] = df["scan_label"] != "benign"
    df["action"] = df["scan_action"].fillna("none")
    g = df.groupby("true_class").agg(
        requests=("request_id", "size"),
        flagged=("caught", "sum"),
        labels=("scan_label", lambda x: ", ".join(sorted(set(x)))),
        actions=("action", lambda x: ", ".join(sorted(set(x)))),
        max_score=("scan_score", "max"),
    )
    return [{str(k): v for k, v in r.items()} for r in g.reset_index().to_dict("records")]
