"""The payload scanner's runtime: a linear detector and attack-class head as two weight
arrays, scored over the payload features (``features/payload.py``) without scikit-learn's
estimators.

The champion's compact export (``models/payload.py`` writes it when the champion moves) is
what the gateway loads and runs on every request with parameters or a body; serving and
``gatewise scan`` can run it too. It lives beside the feature definitions it must reproduce
exactly (the same hashed n-grams and statistics as ``PayloadVectorizer``; tested), so the
request path imports no training code.

The scan score is the attack probability re-centred on the model's threshold:
``sigmoid(logit(p) - logit(threshold))``, so 0.5 is the operating point chosen in training.

    scanner = CompactScanner.load(settings.scanner_path("payload"))
    scanner.scan(["1' or '1'='1"])   # [("sqli", 0.9993)]
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.payload import (
    N_FEATURES,
    N_TEXT,
    N_TOKENS,
    STAT_NAMES,
    TOKEN_NGRAMS,
    _normal_and_rounds,
    _stats,
    as_values,
    split_context,
    tokens,
)

__all__ = ["BENIGN_LABEL", "CompactScanner", "logit"]

BENIGN_LABEL = "benign"
_DIGITS_SUB = re.compile(r"\d+")
_WHITE = re.compile(r"\s\s+")  # scikit-learn's char analyzer collapses these


def logit(p: Any) -> Any:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _ngrams(text: str, lo: int, hi: int) -> list[str]:
    """scikit-learn's character n-grams (``_char_ngrams``) of an already prepared text."""
    n = len(text)
    grams = list(text) if lo == 1 else []
    for k in range(max(lo, 2), min(hi, n) + 1):
        grams += [text[i : i + k] for i in range(n - k + 1)]
    return grams


@dataclass
class CompactScanner:
    """A linear detector and class head as arrays; ``scan`` reproduces ``PayloadModel.scan``."""

    w: np.ndarray  # (N_FEATURES + stats,) detector log-odds weights
    b: float
    W: np.ndarray  # (classes, N_FEATURES + stats) class-head weights
    B: np.ndarray  # (classes,)
    classes: list[str]
    threshold: float
    version: str = ""
    family: str = ""

    def __post_init__(self) -> None:
        self._index: dict[tuple[str, int], int] = {}
        self._z_threshold = float(logit(self.threshold))

    # persisting --------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Atomically (write beside, then rename): a watcher never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        meta = {
            "b": self.b,
            "classes": self.classes,
            "threshold": self.threshold,
            "version": self.version,
            "family": self.family,
            "n_features": N_FEATURES,
            "stats": STAT_NAMES,
        }
        with open(tmp, "wb") as fh:
            np.savez(fh, w=self.w, W=self.W, B=self.B, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> CompactScanner:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("n_features") != N_FEATURES or meta.get("stats") != STAT_NAMES:
                raise ValueError(
                    f"{path}: exported with another feature layout; re-export the champion"
                )
            return cls(
                w=z["w"],
                b=float(meta["b"]),
                W=z["W"],
                B=z["B"],
                classes=list(meta["classes"]),
                threshold=float(meta["threshold"]),
                version=str(meta.get("version", "")),
                family=str(meta.get("family", "")),
            )

    # scoring ----------------------------------------------------------------------
    def _hashed(self, grams: list[str], n_features: int, offset: int) -> Counter[int]:
        from sklearn.utils import murmurhash3_32

        index = self._index
        counts: Counter[int] = Counter()
        for g in grams:
            key = (g, offset)
            j = index.get(key)
            if j is None:
                h = murmurhash3_32(g, seed=0)
                j = offset + (2**31 if h == -(2**31) else abs(h)) % n_features
                if len(index) < 2_000_000:
                    index[key] = j
            counts[j] += 1
        return counts

    @staticmethod
    def _unit(counts: Counter[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        val = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if len(val):
            val /= math.sqrt(float(val @ val))
        return idx, val

    def _features(self, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashed n-gram indices and l2-normalised counts (text, then token classes), and
        the scaled statistics, exactly as ``featurize`` computes them."""
        ctx, value = split_context(value)
        norm, rounds = _normal_and_rounds(value)
        text = _WHITE.sub(" ", _DIGITS_SUB.sub("0", norm).lower())
        idx1, val1 = self._unit(self._hashed(_ngrams(text, 1, 4), N_TEXT, 0))
        lo, hi = TOKEN_NGRAMS
        idx2, val2 = self._unit(self._hashed(_ngrams(tokens(norm), lo, hi), N_TOKENS, N_TEXT))
        st = np.asarray(_stats(value, norm, rounds, ctx), dtype=np.float64)
        st = np.sign(st) * np.log1p(np.abs(st))
        return np.concatenate([idx1, idx2]), np.concatenate([val1, val2]), st

    def score_one(self, value: str) -> tuple[str, float]:
        """``(label, scan score)``; the score is re-centred on the threshold (0.5 = it)."""
        idx, val, st = self._features(value)
        z = float(self.w[idx] @ val) + float(self.w[N_FEATURES:] @ st) + self.b
        d = min(max(z - self._z_threshold, -700.0), 700.0)
        s = 1.0 / (1.0 + math.exp(-d))
        if d < 0:
            return BENIGN_LABEL, s
        logits = self.W[:, idx] @ val + self.W[:, N_FEATURES:] @ st + self.B
        return self.classes[int(np.argmax(logits))], s

    def scan(self, values: Any) -> list[tuple[str, float]]:
        return [self.score_one(v) for v in as_values(values)]

    def scan_max(self, values: list[str]) -> tuple[str, float] | None:
        """The most suspicious of a request's values (None: nothing to scan)."""
        best: tuple[str, float] | None = None
        for v in values:
            r = self.score_one(v)
            if best is None or r[1] > best[1]:
                best = r
        return best
