"""Payload normalisation and features on the real labelled payloads."""

from __future__ import annotations

import html
import random
from urllib.parse import quote

import numpy as np
import pytest

from features.payload import N_FEATURES, STAT_NAMES, featurize, normalise, shape, stats


@pytest.fixture(scope="module")
def payloads(shared_data):
    import pandas as pd

    df = pd.read_csv(shared_data / "requests" / "http_params_payloads.csv", keep_default_na=False)
    return df


def _variants(v: str, rng: random.Random) -> dict[str, str]:
    return {
        "url": quote(v, safe=""),
        "double_url": quote(quote(v, safe=""), safe=""),
        "html_entities": "".join(f"&#{ord(c)};" if c in "<>'\"()" else c for c in v),
        "hex_entities": "".join(f"&#x{ord(c):x};" if c in "<>'\"" else c for c in v),
        "random_case": "".join(c.upper() if rng.random() < 0.5 else c for c in v),
        "sql_comments": v.replace(" ", "/**/"),
        "tabs": v.replace(" ", "\t"),
    }


def test_obfuscated_real_attacks_normalise_to_the_same_form(payloads) -> None:
    rng = random.Random(3)
    attacks = payloads[payloads["label"] == "anom"].sample(400, random_state=1)["payload"]
    failures = []
    for v in attacks:
        want = normalise(v)
        for kind, var in _variants(v, rng).items():
            if kind == "sql_comments" and "/*" in v:
                continue  # a payload with its own comments: /**/ then means something else
            if normalise(var) != want:
                failures.append((kind, v, var))
    assert not failures, failures[:5]


def test_normalise_is_idempotent_and_keeps_benign_text(payloads) -> None:
    sample = payloads.sample(2000, random_state=2)["payload"]
    for v in sample:
        n = normalise(v)
        assert normalise(n) == n, v
    assert normalise("O'Brien") == "o'brien"
    assert normalise("2 < 3 > 1") == "2 < 3 > 1"
    assert normalise("c/ del  ferrocarril,\t152") == "c/ del ferrocarril, 152"


def test_known_encodings() -> None:
    assert normalise("%2527%20UnIoN/**/SeLeCt%201--") == "' union select 1--"
    assert normalise("&#x3C;script&#x3E;alert(1)") == "<script>alert(1)"
    assert normalise("ＳＥＬＥＣＴ") == "select"  # full-width letters (NFKC)
    assert normalise("1\\x27 or 1=1") == "1' or 1=1"
    assert normalise(html.escape("<img src=x onerror=alert(1)>")) == "<img src=x onerror=alert(1)>"


def test_shape_groups_templates() -> None:
    a = "1) and 8514=(select count(*) from domain.domains as t1) and (4666=4666"
    b = "1) and 7956=(select count(*) from domain.domains as t1) and (12=12"
    assert shape(a) == shape(b) and shape(a) != shape("1) or 1=1")


def test_featurize_shape_and_invariance() -> None:
    rng = random.Random(5)
    v = "1' union select password from users where 1=1--"
    vs = [v, *_variants(v, rng).values()]
    x = featurize(vs)
    assert x.shape == (len(vs), N_FEATURES + len(STAT_NAMES))
    grams = x[:, :N_FEATURES].toarray()
    assert np.allclose(grams, grams[0])  # every dressing of the attack: the same n-grams
    assert len(stats(v)) == len(STAT_NAMES)
    # numbers differ only in digits: the same n-grams, so digits cannot carry a signal
    y = featurize(["33734", "10000"])[:, :N_FEATURES].toarray()
    assert np.allclose(y[0], y[1])
    # statistics describe the normal form only: every dressing gives the same numbers
    assert all(np.allclose(stats(w), stats(v)) for w in _variants(v, rng).values())
