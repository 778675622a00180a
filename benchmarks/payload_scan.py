"""Payload scanning, first slice of issue 10: a linear model on the normalised
payload's hashed character n-grams against a signature baseline (the usual regular
expressions for SQLi / XSS / path traversal / command injection), on the same held-out
split of the real labelled payloads in ``../shared/data/requests/``.

Split: values deduplicated on their normal form (``features.payload.normalise``), then
grouped by ``shape`` (digits collapsed) so near-duplicate templates never straddle
train and test; 25 % of the groups are the test set. The model's threshold is set from
out-of-fold scores on the training set (5 group folds) so that at most 0.1 % of benign
values are flagged. Robustness: every test attack re-encoded six ways (URL, double URL, HTML
entities, random case, SQL comments for spaces, tabs for spaces).

Usage: .venv/bin/python benchmarks/payload_scan.py [--data PATH] [--seed 0] [--no-save]
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
from urllib.parse import quote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, save_result

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path("../shared/data/requests/http_params_payloads.csv")
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    from features.payload import featurize, normalise, shape

    df = pd.read_csv(args.data, keep_default_na=False)
    df["cls"] = df["attack_type"]
    df["norm"] = df["payload"].map(normalise)
    conflicted = df.groupby("norm")["cls"].transform("nunique") > 1
    n_conflicted = int(conflicted.sum())
    df = df[~conflicted].drop_duplicates("norm").reset_index(drop=True)
    df["group"] = df["payload"].map(shape)
    gss = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=args.seed)
    tr_i, te_i = next(gss.split(df, groups=df["group"]))
    train, test = df.iloc[tr_i], df.iloc[te_i]
    print(
        f"{len(df):,} distinct values ({n_conflicted} with conflicting labels dropped), "
        f"{df['group'].nunique():,} shapes; train {len(train):,} / test {len(test):,}"
    )

    def new_model() -> LogisticRegression:
        return LogisticRegression(C=20.0, max_iter=3000, class_weight="balanced")

    # the threshold from out-of-fold scores over the whole training set (5 group folds):
    # 0.1 % of a small validation set is a handful of values, too few to hold on test
    x_train = featurize(train["payload"])
    oof = np.zeros(len(train))
    for f_i, v_i in GroupKFold(n_splits=5).split(train, groups=train["group"]):
        m = new_model().fit(x_train[f_i], train["cls"].iloc[f_i])
        oof[v_i] = 1 - m.predict_proba(x_train[v_i])[:, list(m.classes_).index("norm")]
    t = time.perf_counter()
    model = new_model().fit(x_train, train["cls"])
    fit_s = time.perf_counter() - t
    classes = list(model.classes_)
    norm_col = classes.index("norm")

    def attack_score(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        p = model.predict_proba(featurize(values))
        attack = 1 - p[:, norm_col]
        p[:, norm_col] = -1
        return attack, np.array(classes)[p.argmax(axis=1)]

    benign_val = np.sort(oof[(train["cls"] == "norm").to_numpy()])
    # the smallest threshold that flags at most 0.1 % of benign validation values
    k = int(np.floor(0.001 * len(benign_val)))
    threshold = float(benign_val[len(benign_val) - k - 1]) + 1e-9

    def judge(pred: np.ndarray, truth: pd.Series) -> dict[str, object]:
        truth_a = truth.to_numpy()
        out: dict[str, object] = {}
        benign = truth_a == "norm"
        out["benign_fpr"] = float((pred[benign] != "norm").mean())
        attack = ~benign
        out["attack_recall"] = float((pred[attack] != "norm").mean())
        flagged = pred != "norm"
        out["attack_precision"] = (
            float((truth_a[flagged] != "norm").mean()) if flagged.any() else 0.0
        )
        for c in CLASSES[1:]:
            is_c = truth_a == c
            said_c = pred == c
            out[f"{c}_recall"] = float((pred[is_c] != "norm").mean()) if is_c.any() else None
            out[f"{c}_precision"] = float((truth_a[said_c] == c).mean()) if said_c.any() else None
        return out

    test_score, test_cls = attack_score(test["payload"])
    pred_model = np.where(test_score >= threshold, test_cls, "norm")
    pred_sig = np.array([signature(v) for v in test["payload"]])
    res_model, res_sig = judge(pred_model, test["cls"]), judge(pred_sig, test["cls"])

    fp = test[(test["cls"] == "norm").to_numpy() & (pred_model != "norm")]["payload"]
    print("benign values the model flags (first 12):", fp.head(12).tolist())
    rng = random.Random(args.seed)
    attacks = test[test["cls"] != "norm"]
    robust: dict[str, dict[str, float]] = {}
    per_kind: dict[str, list[str]] = {}
    for v, c in zip(attacks["payload"], attacks["cls"], strict=True):
        for kind, var in variants(v, c, rng).items():
            per_kind.setdefault(kind, []).append(var)
    for kind, vals in per_kind.items():
        s, _ = attack_score(pd.Series(vals))
        robust[kind] = {
            "model_recall": float((s >= threshold).mean()),
            "signature_recall": float(np.mean([signature(v) != "norm" for v in vals])),
        }

    # in-process latency of scoring one value (what the gateway would pay per request)
    one = test["payload"].iloc[:500].tolist()
    lat = []
    for v in one:
        t0 = time.perf_counter()
        model.predict_proba(featurize([v]))
        lat.append(time.perf_counter() - t0)
    lat_ms = np.array(lat) * 1000

    rows = [("model (normalised n-grams, LR)", res_model), ("signatures (regex)", res_sig)]
    print(f"\nheld-out test: {len(test):,} values ({(test['cls'] != 'norm').sum():,} attacks)")
    print(f"{'':34s} {'benign FPR':>10s} {'precision':>9s} {'recall':>7s}  per class recall")
    for name, r in rows:
        per = "  ".join(f"{c} {r[f'{c}_recall']:.3f}" for c in CLASSES[1:])
        print(
            f"{name:34s} {r['benign_fpr']:10.4%} {r['attack_precision']:9.4f} "
            f"{r['attack_recall']:7.4f}  {per}"
        )
    print("\nobfuscated test attacks, recall (model / signatures):")
    for kind, r in robust.items():
        print(f"  {kind:14s} {r['model_recall']:.3f} / {r['signature_recall']:.3f}")
    print(
        f"\nthreshold {threshold:.4f} (<= 0.1 % of benign training values flagged out of fold); "
        f"fit {fit_s:.1f} s; "
        f"scoring one value in process: median {np.median(lat_ms):.3f} ms, "
        f"p99 {np.quantile(lat_ms, 0.99):.3f} ms"
    )
    print(f"machine: {machine()}")
    if not args.no_save:
        rec = {
            "benchmark": "payload_scan",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "sizes": {"train": len(train), "test": len(test)},
            "threshold": threshold,
            "model": res_model,
            "signatures": res_sig,
            "robustness": robust,
            "latency_ms": {
                "median": float(np.median(lat_ms)),
                "p99": float(np.quantile(lat_ms, 0.99)),
            },
        }
        save_result("payload_scan", rec)


if __name__ == "__main__":
    main()
