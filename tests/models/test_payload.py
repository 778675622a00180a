"""The payload scanner model on the real labelled payloads: split hygiene, detection of
held-out attacks and their obfuscations, benign values with quotes and brackets, the
compact export (same numbers as the pipeline), hot reload, thresholds and bounds."""

from __future__ import annotations

import random
import shutil
from urllib.parse import quote

import numpy as np
import pytest

from models.data import BENIGN, payload_dataset
from models.evaluate import rate_lower_bound, rate_upper_bound, threshold_at_fpr


@pytest.fixture(scope="module")
def trained():
    """A linear detector + class head fitted on the shape-grouped training groups."""
    from models.payload import fit_default
    from models.search import make_splits

    ds = payload_dataset()
    return ds, make_splits(ds, 0.2), fit_default(ds)


def test_split_keeps_templates_on_one_side_and_adds_benign_symbols():
    from features.payload import normalise, shape
    from models.search import make_splits

    ds = payload_dataset()
    assert ds.X["payload"].map(normalise).is_unique  # deduplicated on the normal form
    sp = make_splits(ds, 0.2)
    g = ds.groups.to_numpy()
    assert not set(g[sp.train]) & set(g[sp.holdout])
    assert not set(g[sp.val]) & set(g[sp.holdout])
    # near-duplicates (same template, other digits) share a group
    assert shape("1' or 17=17 --") == shape("1' OR 4=4 --")
    # the synthetic benign values are there, labelled benign, and hold the symbols
    from models.payloads.benign import synthetic_benign

    is_syn = ds.X["payload"].isin(set(synthetic_benign(3000)))
    assert is_syn.sum() > 2900 and (ds.detail[is_syn] == BENIGN).all()
    synthetic = ds.X["payload"][is_syn]
    assert synthetic.str.contains("'").sum() > 300 and synthetic.str.contains("<").sum() > 100
    assert ds.detail.value_counts()["sqli"] > 10_000


def test_conflicting_labels_are_dropped(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text(
        "payload,attack_type\n"
        "hello,norm\n"
        "%27%20or%201%3D1,sqli\n"
        "' or 1=1,norm\n"  # the same normal form as the row above, another label
        "<b>x</b>,xss\n"
        "world,norm\n"
    )
    ds = payload_dataset(csv, synthetic_benign=0)
    assert sorted(ds.X["payload"]) == ["<b>x</b>", "hello", "world"]
    assert ds.y.tolist() == [0, 1, 0] or sorted(ds.y.tolist()) == [0, 0, 1]


def test_missing_columns_are_named(tmp_path):
    from models.data import DataQualityError

    csv = tmp_path / "p.csv"
    csv.write_text("value,label\nx,norm\n")
    with pytest.raises(DataQualityError, match="attack_type"):
        payload_dataset(csv)


def test_held_out_attacks_caught_and_benign_symbols_pass(trained):
    ds, sp, model = trained
    hold = sp.holdout
    vals = ds.X["payload"].to_numpy()[hold]
    cls = ds.detail.to_numpy()[hold]
    verdicts = model.scan(list(vals))
    flagged = np.array([lab != "benign" for lab, _ in verdicts])
    attack = cls != BENIGN
    assert flagged[attack].mean() > 0.99  # recall on templates never seen in training
    assert flagged[~attack].mean() <= 0.003  # benign false positives stay rare
    # the class head names the class of caught attacks
    named = np.array([lab for lab, _ in verdicts])[flagged & attack]
    assert (named == cls[flagged & attack]).mean() > 0.95
    # hand-written benign values with quotes, apostrophes, brackets and arithmetic; none is
    # in the training data (synthetic templates included)
    benign = [
        "Conan O'Brien",
        "Siobhán O'Brien-Smith",
        "is 7 < 12 ?",
        "what is 2+2?",
        "I <3 this",
        "5 > 3 apples",
        "e = mc^2",
        "it's <= 10 bucks",
        'she said "hello"',
        "Rock 'n' Roll",
    ]
    seen = set(ds.X["payload"])
    assert not seen & set(benign)
    out = model.scan(benign)
    assert [lab for lab, _ in out] == ["benign"] * len(benign), list(zip(benign, out, strict=True))


def _variants(value: str, rng: random.Random) -> list[str]:
    return [
        quote(value, safe=""),
        quote(quote(value, safe=""), safe=""),
        "".join(f"&#{ord(c)};" if c in "<>'\"()" else c for c in value),
        "".join(ch.upper() if rng.random() < 0.5 else ch for ch in value),
        value.replace(" ", "/**/"),
        value.replace(" ", "\t"),
    ]


def test_known_attacks_and_their_obfuscations_are_caught(trained):
    """Held-out real attacks of every class: each one caught in its plain form is caught,
    with the same class, in all six obfuscations (encoding must not evade the scanner)."""
    ds, sp, model = trained
    rng = random.Random(0)
    hold = sp.holdout
    vals = ds.X["payload"].to_numpy()[hold]
    cls = ds.detail.to_numpy()[hold]
    picked = []
    for c in ("sqli", "xss", "path-traversal", "cmdi"):
        idx = np.flatnonzero(cls == c)
        picked += [(vals[i], c) for i in rng.sample(list(idx), min(40, len(idx)))]
    plain = model.scan([v for v, _ in picked])
    caught = [(v, c) for (v, c), (lab, _) in zip(picked, plain, strict=True) if lab == c]
    assert len(caught) >= 0.95 * len(picked)
    variants = [(x, v, c) for v, c in caught for x in _variants(v, rng)]
    out = model.scan([x for x, _, _ in variants])
    missed = [(v, x, lab) for (x, v, c), (lab, _) in zip(variants, out, strict=True) if lab != c]
    assert not missed, missed[:5]


def test_compact_export_gives_the_pipeline_numbers(trained, tmp_path):
    from features.scanner import CompactScanner
    from models.payload import compact_scanner, recentre

    ds, sp, model = trained
    compact = compact_scanner(model, "3")
    path = compact.save(tmp_path / "payload.npz")
    loaded = CompactScanner.load(path)
    vals = [*ds.X["payload"].to_numpy()[sp.holdout][:1500], "", "  ", "é' <x>", "1" * 5000]
    full = model.scan(vals)
    fast = loaded.scan(vals)
    assert [a[0] for a in full] == [b[0] for b in fast]
    assert max(abs(a[1] - b[1]) for a, b in zip(full, fast, strict=True)) < 1e-5
    assert loaded.version == "3" and loaded.family == "LogisticRegression"
    # the scan score is re-centred: the training threshold sits at 0.5
    assert abs(float(recentre(model.threshold, model.threshold)) - 0.5) < 1e-9
    assert (
        recentre(np.array([0.01, 0.5, 0.99]), 0.2) == np.sort(recentre([0.01, 0.5, 0.99], 0.2))
    ).all()


def test_non_linear_detector_is_not_exported(trained):
    from models.payload import NotCompactError, PayloadModel, compact_scanner
    from models.search import build_model

    ds, sp, model = trained
    rows = sp.train[:3000]
    p = {
        "family": "xgboost",
        "text": True,
        "n_rounds": 5,
        "max_depth": 3,
        "learning_rate": 0.3,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
    }
    det = build_model(p, "binary", ds.X.iloc[rows], ds.y.iloc[rows])
    with pytest.raises(NotCompactError, match="XGBClassifier"):
        compact_scanner(PayloadModel(det, model.head, 0.5))


def test_local_scanner_hot_reloads_and_keeps_the_last_good(trained, tmp_path):
    from gateway.scan import LocalScanner
    from models.payload import compact_scanner

    _, _, model = trained
    path = tmp_path / "scanner" / "payload.npz"
    ls = LocalScanner(path)
    assert ls.scanner is None and ls.scan(["x"]).reason == "no_scanner"
    v1 = compact_scanner(model, "1")
    v1.save(path)
    assert ls.reload() and ls.scanner.version == "1"
    assert ls.scan(["1' or '1'='1"]).label == "sqli"
    assert not ls.reload()  # unchanged file: nothing to do
    v2 = compact_scanner(model, "2")
    shutil.copy(v2.save(tmp_path / "v2.npz"), path)
    assert ls.reload() and ls.scan(["x"]).model_version == "2"
    path.write_bytes(b"not an npz file, truncated")  # a broken export is refused
    assert not ls.reload()
    assert ls.scanner.version == "2" and ls.error
    path.unlink()  # no compact form any more (a non-linear champion): local scanning stops
    assert ls.reload() and ls.scanner is None


def test_threshold_at_fpr_and_rate_bounds():
    y = np.array([0] * 1000 + [1] * 10)
    s = np.r_[np.linspace(0, 0.5, 1000), np.full(10, 0.9)]
    t = threshold_at_fpr(y, s, 0.002)  # two of 1,000 negatives may be flagged
    assert ((s >= t) & (y == 0)).sum() == 2 and ((s >= t) & (y == 1)).sum() == 10
    assert ((s >= threshold_at_fpr(y, s, 0.0)) & (y == 0)).sum() == 0
    from scipy.stats import beta

    rate, up = rate_upper_bound(3, 2000)
    assert rate == 0.0015 and abs(up - beta.ppf(0.95, 4, 1997)) < 1e-12
    assert rate_lower_bound(0, 100) == 0.0
    assert abs(rate_lower_bound(5, 100) - beta.ppf(0.05, 5, 96)) < 1e-12
