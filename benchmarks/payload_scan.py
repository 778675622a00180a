"""Payload scanning (issue 10): the platform's payload champion against a signature
baseline (the usual regular expressions for SQLi / XSS / path traversal / command
injection), on the same held-out split, and what scanning costs in process and over HTTP.

The model is what the platform ships: ``run_automl`` on the ``payload`` target of
gatewise.yaml (text families over the normalised values' hashed n-grams, threshold at a
0.1 % benign false-positive budget on validation rows), in a private data dir; ``--budget
0`` fits the search's default linear configuration instead. Data and split are the
training's own (``models.data.payload_dataset``): the real labelled sample deduplicated
on the normal form plus 3,000 synthetic benign values with quotes and brackets, split by
shape groups (near-duplicate templates never straddle train and holdout); the holdout's
benign false-positive rate is reported for the real and the synthetic values apart.
Robustness: every held-out attack re-encoded six ways (URL, double URL, HTML entities,
random case, SQL comments for spaces, tabs for spaces). Latency of scoring one value:
the compact export in process (what the gateway runs), the full scikit-learn pipeline in
process, and ``POST /scan`` on the real BentoML service (the remote path), as a ratio of
the in-process compact scanner measured in the same run.

Usage: .venv/bin/python benchmarks/payload_scan.py [--budget 60] [--http-requests 300]
           [--no-http] [--seed 0] [--no-save]
Results are appended as one JSON line to benchmarks/results/payload_scan.jsonl.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import free_port, machine, save_result

REPO = Path(__file__).resolve().parents[1]

CLASSES = ["norm", "sqli", "xss", "path-traversal", "cmdi"]
# the signature baseline: one URL decode and lower case, as a simple WAF rule set does
SIGNATURES = {
    "sqli": re.compile(
        r"\bunion\b.{0,40}\bselect\b|\bselect\b.{0,80}\bfrom\b|\b(or|and)\b\s*\(?\s*['\"]?\w*['\"]?\s*=\s*['\"]?\w*"
        r"|\bsleep\s*\(|\bbenchmark\s*\(|\bwaitfor\s+delay\b|;\s*(drop|insert|update|delete|select)\b"
        r"|'\s*(--|#)|\binformation_schema\b|\bexec(\s|\()|\bcast\s*\(|\bchar\s*\("
    ),
    "xss": re.compile(
        r"<\s*script|javascript\s*:|\bon\w+\s*=|<\s*(svg|img|iframe|body|object|embed)\b"
        r"|\balert\s*\(|\bconfirm\s*\(|\bprompt\s*\(|document\.cookie"
    ),
    "path-traversal": re.compile(r"\.\./|\.\.\\|/etc/passwd|\bboot\.ini\b|\bwin\.ini\b"),
    "cmdi": re.compile(
        r"[;&|`]\s*(cat|ls|dir|id|whoami|ping|wget|curl|nc|bash|sh|type|echo)\b|\$\(|\bdir\s+c:"
    ),
}


def signature(value: str) -> str:
    from urllib.parse import unquote_plus

    v = unquote_plus(value).lower()
    for cls, rx in SIGNATURES.items():
        if rx.search(v):
            return cls
    return "norm"


def variants(value: str, cls: str, rng: random.Random) -> dict[str, str]:
    rc = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in value)
    return {
        "url": quote(value, safe=""),
        "double_url": quote(quote(value, safe=""), safe=""),
        "html_entities": "".join(f"&#{ord(c)};" if c in "<>'\"()" else c for c in value),
        "random_case": rc,
        "sql_comments": value.replace(" ", "/**/"),
        "tabs": value.replace(" ", "\t"),
    }


def _judge(pred: np.ndarray, truth: np.ndarray, synthetic: np.ndarray) -> dict[str, object]:
    from models.evaluate import rate_upper_bound

    out: dict[str, object] = {}
    benign = truth == "norm"
    real_b, syn_b = benign & ~synthetic, benign & synthetic
    fp = int((pred[real_b] != "norm").sum())
    out["benign_fpr"], out["benign_fpr_upper95"] = rate_upper_bound(fp, int(real_b.sum()))
    out["benign_false_positives"] = fp
    out["synthetic_benign_fpr"] = float((pred[syn_b] != "norm").mean()) if syn_b.any() else None
    attack = ~benign
    out["attack_recall"] = float((pred[attack] != "norm").mean())
    flagged = pred != "norm"
    out["attack_precision"] = float((truth[flagged] != "norm").mean()) if flagged.any() else 0.0
    for c in CLASSES[1:]:
        is_c, said_c = truth == c, pred == c
        out[f"{c}_recall"] = float((pred[is_c] != "norm").mean()) if is_c.any() else None
        out[f"{c}_precision"] = float((truth[said_c] == c).mean()) if said_c.any() else None
    return out


def _latency(fn: Any, values: list[str]) -> dict[str, float]:
    lat = []
    for v in values:
        t0 = time.perf_counter()
        fn(v)
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1000
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.quantile(ms, 0.99))}


def _platform_model(budget: float, data_dir: Path) -> tuple[Any, Any, str]:
    """(settings, PayloadModel, how it was made): AutoML's champion, or the default config."""
    from config.settings import load_settings
    from models import registry as reg
    from models.train import train_target

    s = load_settings(REPO / "gatewise.yaml", data_dir=data_dir)
    s = s.model_copy(
        update={
            "serving": s.serving.model_copy(update={"targets": ["payload"], "port": free_port()})
        }
    )
    if budget > 0:
        r = train_target(s, "payload", budget=budget)
        reg.promote(s, "payload", r.version, force=True)
        model, _ = reg.load_alias(s, "payload", "champion")  # type: ignore[misc]
        how = (
            f"AutoML {r.trials} trials in {budget:.0f} s: {r.best_params['family']} "
            f"(gate {'passed' if r.eligible else 'refused: ' + '; '.join(r.reasons)})"
        )
        return s, model, how
    from models.payload import fit_default

    return s, fit_default(train_on="fit"), "default config (linear, C=20, balanced)"


def _http_latency(s: Any, values: list[str]) -> dict[str, float] | None:
    """POST /scan (one value per request, sequential) on a real BentoML service."""
    import httpx

    from serving.process import start_service, stop_service, wait_ready

    start_service(s)
    try:
        url = s.serving.url
        if not wait_ready(url, timeout=240):
            return None
        with httpx.Client(base_url=url, timeout=10) as c:
            for v in values[:20]:  # warm-up
                c.post("/scan", json={"values": [v]}).raise_for_status()
            out = _latency(
                lambda v: c.post("/scan", json={"values": [v]}).raise_for_status(), values
            )
        return out
    finally:
        stop_service(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=60.0, help="AutoML seconds (0: default config)")
    ap.add_argument("--http-requests", type=int, default=300)
    ap.add_argument("--no-http", action="store_true", help="skip the BentoML /scan measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import tempfile

    from models.data import payload_dataset
    from models.payload import NotCompactError, compact_scanner
    from models.payloads.benign import synthetic_benign
    from models.search import make_splits

    ds = payload_dataset()
    sp = make_splits(ds, 0.2)
    assert ds.detail is not None
    vals = ds.X["payload"].to_numpy()
    truth = ds.detail.to_numpy().astype(str)
    syn = ds.X["payload"].isin(set(synthetic_benign(3000))).to_numpy()
    hold = sp.holdout
    print(
        f"{len(ds.y):,} distinct values ({int(syn.sum()):,} synthetic benign), "
        f"{ds.groups.nunique() if ds.groups is not None else 0:,} shapes; fit "
        f"{len(sp.fit):,} / holdout {len(hold):,} ({int((truth[hold] != 'norm').sum()):,} attacks)"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="gatewise-payload-bench-"))
    t0 = time.perf_counter()
    s, model, how = _platform_model(args.budget, data_dir)
    fit_s = time.perf_counter() - t0
    print(f"model: {how}; threshold {model.threshold:.4f}; {fit_s:.0f} s")

    def predict(values: list[str]) -> np.ndarray:
        return np.array([lab if lab != "benign" else "norm" for lab, _ in model.scan(values)])

    hv = list(vals[hold])
    pred_model = predict(hv)
    pred_sig = np.array([signature(v) for v in hv])
    res_model = _judge(pred_model, truth[hold], syn[hold])
    res_sig = _judge(pred_sig, truth[hold], syn[hold])
    fp = [
        v
        for v, p, t in zip(hv, pred_model, truth[hold], strict=True)
        if t == "norm" and p != "norm"
    ]
    print("benign values the model flags:", fp[:12])

    rng = random.Random(args.seed)
    per_kind: dict[str, list[str]] = {}
    for v, c in zip(hv, truth[hold], strict=True):
        if c != "norm":
            for kind, var in variants(v, c, rng).items():
                per_kind.setdefault(kind, []).append(var)
    robust: dict[str, dict[str, float]] = {}
    for kind, vs in per_kind.items():
        robust[kind] = {
            "model_recall": float((predict(vs) != "norm").mean()),
            "signature_recall": float(np.mean([signature(v) != "norm" for v in vs])),
        }

    one = hv[:1000]
    latency: dict[str, Any] = {"pipeline_in_process": _latency(lambda v: model.scan([v]), one)}
    try:
        compact = compact_scanner(model)
        latency["compact_in_process"] = _latency(compact.score_one, one)
    except NotCompactError as exc:
        print(f"no compact form: {exc}")
    if not args.no_http and args.budget > 0:
        http = _http_latency(s, one[: args.http_requests])
        if http:
            latency["bentoml_http"] = http
    base = latency.get("compact_in_process", latency["pipeline_in_process"])["median_ms"]
    for v in latency.values():
        v["x_compact"] = v["median_ms"] / base

    rows = [("model (platform champion)", res_model), ("signatures (regex)", res_sig)]
    print(
        f"\n{'':28s} {'benign FPR':>10s} {'(95% up)':>9s} {'synthetic':>9s} {'precision':>9s} "
        f"{'recall':>7s}  per class recall"
    )
    for name, r in rows:
        per = "  ".join(f"{c} {r[f'{c}_recall']:.3f}" for c in CLASSES[1:])
        print(
            f"{name:28s} {r['benign_fpr']:10.4%} {r['benign_fpr_upper95']:9.4%} "
            f"{r['synthetic_benign_fpr']:9.4%} {r['attack_precision']:9.4f} "
            f"{r['attack_recall']:7.4f}  {per}"
        )
    print("\nobfuscated held-out attacks, recall (model / signatures):")
    for kind, r in robust.items():
        print(f"  {kind:14s} {r['model_recall']:.3f} / {r['signature_recall']:.3f}")
    print("\nscoring one value:")
    for k, v in latency.items():
        print(
            f"  {k:22s} median {v['median_ms']:.3f} ms  p99 {v['p99_ms']:.3f} ms  "
            f"(x{v['x_compact']:.1f} the compact scanner)"
        )
    print(f"machine: {machine()}")
    if not args.no_save:
        rec = {
            "benchmark": "payload_scan",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "model": how,
            "sizes": {"fit": len(sp.fit), "holdout": len(hold)},
            "threshold": model.threshold,
            "platform_model": res_model,
            "signatures": res_sig,
            "robustness": robust,
            "latency": latency,
        }
        save_result("payload_scan", rec)


if __name__ == "__main__":
    main()
