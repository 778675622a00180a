"""Request-content features for the ``payload`` target: normalise, then describe.

Attackers dress the same payload many ways (``%27``, ``&#39;``, ``UnIoN/**/SeLeCt``,
tabs for spaces), so everything is first brought to one canonical form: URL and HTML
decoding repeated until stable (double encoding), Unicode NFKC (full-width letters),
lower case, SQL comments and ``\\xNN`` escapes resolved, whitespace collapsed. The
model then sees hashed character n-grams of that form plus a few statistics
(length, entropy, symbol shares of the normal form) that stay meaningful for short values.

``shape`` maps near-duplicates (the same injection with other numbers) to one key so
that a split can keep them on one side: the data's 10,852 SQL injections are mostly a
few hundred templates with different digits.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["N_FEATURES", "STAT_NAMES", "featurize", "normalise", "shape", "stats"]

N_FEATURES = 2**18
_SQL_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_HEX_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")
_SPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
_SYMBOLS = "'\"<>()[]{};=-#/\\.%&|`$*+,:!?@^~"
STAT_NAMES = [
    "length",
    "log_length",
    "entropy",
    "digit_share",
    "alpha_share",
    "space_share",
    "symbol_share",
    *[f"count_{ord(c):02x}" for c in _SYMBOLS],
]


def normalise(value: str, max_rounds: int = 4) -> str:
    """The canonical form of a parameter value (see the module docstring)."""
    s, _ = _decode(value, max_rounds)
    s = unicodedata.normalize("NFKC", s).replace("\x00", "").lower()
    s = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)
    s = _SQL_BLOCK_COMMENT.sub(" ", s)  # /**/ is the classic space in SQL injection
    return _SPACE.sub(" ", s).strip()


def _decode(value: str, max_rounds: int) -> tuple[str, int]:
    s, rounds = value, 0
    for _ in range(max_rounds):
        nxt = html.unescape(unquote_plus(s, errors="replace"))
        if nxt == s:
            break
        s, rounds = nxt, rounds + 1
    return s, rounds


def shape(value: str) -> str:
    """Normal form with digit runs collapsed: the key that groups near-duplicates."""
    return _DIGITS.sub("0", normalise(value))


def _entropy(s: str) -> float:
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def stats(value: str) -> list[float]:
    """The statistics of ``STAT_NAMES`` for one raw value."""
    norm, rounds = _normal_and_rounds(value)
    return _stats(value, norm, rounds)


def _normal_and_rounds(value: str) -> tuple[str, int]:
    s, rounds = _decode(value, 4)
    s = unicodedata.normalize("NFKC", s).replace("\x00", "").lower()
    s = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)
    s = _SQL_BLOCK_COMMENT.sub(" ", s)
    return _SPACE.sub(" ", s).strip(), rounds


def _stats(value: str, norm: str, rounds: int) -> list[float]:
    # only statistics of the normal form: how a value was encoded (case, %-escapes, decoding
    # rounds) is left out on purpose — the sample holds no double-encoded attacks, so a
    # model would learn "encoded = benign" and double encoding would evade it
    n = max(len(norm), 1)
    return [
        float(len(norm)),
        math.log1p(len(norm)),
        _entropy(norm),
        sum(ch.isdigit() for ch in norm) / n,
        sum(ch.isalpha() for ch in norm) / n,
        norm.count(" ") / n,
        sum(ch in _SYMBOLS for ch in norm) / n,
        *[float(norm.count(c)) for c in _SYMBOLS],
    ]


def _hasher() -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        analyzer="char", ngram_range=(1, 4), n_features=N_FEATURES, alternate_sign=False
    )


class _LazyHasher:
    _h: Any = None

    def transform(self, docs: list[str]) -> Any:
        if self._h is None:
            self._h = _hasher()
        return self._h.transform(docs)


_HASHER = _LazyHasher()


def featurize(values: Iterable[str]) -> Any:
    """Sparse matrix: hashed character 1-4-grams of the normal form with digit runs
    collapsed (l2-normalised, ``N_FEATURES`` columns) followed by the scaled statistics."""
    from scipy import sparse

    values = [v if isinstance(v, str) else ("" if v is None else str(v)) for v in values]
    normal = [_normal_and_rounds(v) for v in values]
    # digit runs collapsed: which digits a value holds says nothing about an attack, and
    # left in, the model learned that benign numbers full of 3s looked like injections
    norms = [_DIGITS.sub("0", n) for n, _ in normal]
    grams = _HASHER.transform(norms)
    st = np.array(
        [_stats(v, n, r) for v, (n, r) in zip(values, normal, strict=True)], dtype=np.float64
    ).reshape(len(values), len(STAT_NAMES))
    # counts and lengths on a log scale: one long value must not dominate the n-grams
    st = np.sign(st) * np.log1p(np.abs(st))
    return sparse.hstack([grams, sparse.csr_matrix(st)], format="csr")


# --- the model's first step -----------------------------------------------------------

TEXT_COLUMN = "payload"


class _Memo:
    """Rows of ``featurize`` by value, kept for the process: an AutoML search featurizes the
    same values once, not once per trial and fold (featurize is a pure function)."""

    def __init__(self, limit: int = 400_000) -> None:
        import threading

        self.limit = limit
        self.index: dict[str, int] = {}
        self.blocks: list[Any] = []
        self.mat: Any = None
        self.lock = threading.Lock()

    def rows(self, values: list[str]) -> Any:
        from scipy import sparse

        with self.lock:
            missing = [v for v in dict.fromkeys(values) if v not in self.index]
            if len(self.index) + len(missing) > self.limit:
                self.index, self.blocks, self.mat = {}, [], None
                missing = list(dict.fromkeys(values))
            if missing:
                n = len(self.index)
                self.blocks.append(featurize(missing))
                self.index.update((v, n + i) for i, v in enumerate(missing))
                self.mat = None
            if self.mat is None:
                self.mat = sparse.vstack(self.blocks, format="csr")
                self.blocks = [self.mat]
            return self.mat[[self.index[v] for v in values]]


_MEMO = _Memo()
_MEMO_MIN_BATCH = 256  # training and evaluation pass thousands of values; requests pass few


def as_values(X: Any) -> list[str]:
    """Values from a frame (its ``payload`` column), a series, an array or a list."""
    if hasattr(X, "columns"):
        if TEXT_COLUMN not in X.columns:
            raise ValueError(f"expected a {TEXT_COLUMN!r} column, got {list(X.columns)}")
        X = X[TEXT_COLUMN]
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) == 2:
        X = X[:, 0]
    return [v if isinstance(v, str) else ("" if v is None else str(v)) for v in list(X)]


class PayloadVectorizer(TransformerMixin, BaseEstimator):
    """Stateless: raw values (a ``payload`` column) → ``featurize`` rows (memoised)."""

    def fit(self, X: Any, y: Any = None) -> PayloadVectorizer:
        return self

    def transform(self, X: Any) -> Any:
        values = as_values(X)
        if len(values) < _MEMO_MIN_BATCH:  # serving a request: nothing to reuse, keep no state
            return featurize(values)
        return _MEMO.rows(values)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags
