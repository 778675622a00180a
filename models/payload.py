"""The payload scanner as a model: detector + attack-class head, and its compact form.

``PayloadModel`` is what AutoML registers for the ``payload`` target: the searched
pipeline (``PayloadVectorizer`` → linear / naive Bayes / XGBoost) gives the attack
score, a multinomial logistic head over the same features names the attack class.
``predict_proba`` is the detector's (benign, attack), so the registry, the gate and
serving treat it like any binary model; ``scan(values)`` gives ``(label, score)``.

The scan score is the attack probability *re-centred on the model's threshold*:
``sigmoid(logit(p) - logit(threshold))``, so 0.5 is exactly the operating point chosen
in training (at most ``max_false_positive_rate`` of benign values above it), 0.9 means
odds 9:1 beyond it, 0.99 odds 99:1. Policy bands are written in these units and keep
their meaning when a new champion with another threshold takes over.

``CompactScanner`` is the champion exported for the gateway's hot path when the
detector is linear in the features (logistic regression; complement naive Bayes is a
linear log-odds too): two weight arrays, one threshold, and a scorer that hashes the
normal form's n-grams itself (a per-n-gram index cache) instead of going through
scikit-learn — the same numbers as the pipeline (tested), in well under a millisecond.
A non-linear detector (XGBoost) is not exported; the gateway then scans through the
BentoML service (``POST /scan``) with its timeout and degradation rules.

    scanner = CompactScanner.load(settings.scanner_path("payload"))
    scanner.scan(["1' or '1'='1"])   # [("sqli", 0.9993)]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from features.payload import (
    N_FEATURES,
    STAT_NAMES,
    _normal_and_rounds,
    _stats,
    as_values,
)

if TYPE_CHECKING:
    from gatewise.settings import Settings

__all__ = [
    "BENIGN_LABEL",
    "CompactScanner",
    "NotCompactError",
    "PayloadModel",
    "export_champion",
    "with_class_head",
]

BENIGN_LABEL = "benign"
_DIGITS_SUB = __import__("re").compile(r"\d+")
_WHITE = __import__("re").compile(r"\s\s+")  # scikit-learn's char analyzer collapses these


class PayloadModel(ClassifierMixin, BaseEstimator):
    """The searched detector pipeline plus a class head; fitted by ``with_class_head``."""

    def __init__(self, detector: Any = None, head: Any = None, threshold: float = 0.5) -> None:
        self.detector = detector
        self.head = head
        self.threshold = threshold

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    @property
    def steps(self) -> list[tuple[str, Any]]:
        return list(self.detector.steps)

    def fit(self, X: Any, y: Any) -> PayloadModel:  # fitted by with_class_head
        raise NotImplementedError("PayloadModel is assembled by models.payload.with_class_head")

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.detector.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold).astype(int)

    def attack_class(self, X: Any) -> np.ndarray:
        """The most likely attack class of each value (whatever its score)."""
        vec = self.detector.steps[0][1]
        return np.asarray(self.head.predict(vec.transform(X)))

    def scan(self, values: Any) -> list[tuple[str, float]]:
        """``(label, score)`` per value: ``benign`` below the threshold, else the class;
        the score re-centred so the threshold is 0.5 (module docstring)."""
        vals = as_values(values)
        if not vals:
            return []
        p = self.predict_proba(vals)[:, 1]
        cls = self.attack_class(vals)
        score = recentre(p, self.threshold)
        return [
            (str(c) if raw >= self.threshold else BENIGN_LABEL, float(s))
            for c, raw, s in zip(cls, p, score, strict=True)
        ]


def _logit(p: Any) -> Any:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def recentre(p: Any, threshold: float) -> np.ndarray:
    """Attack probability → scan score: the threshold maps to 0.5."""
    return np.asarray(1.0 / (1.0 + np.exp(-(_logit(p) - _logit(threshold)))))


def with_class_head(
    detector: Any, X: Any, classes: Any, threshold: float, seed: int = 0
) -> PayloadModel:
    """Fit the attack-class head on the attack rows of ``X`` (``classes`` names each row's
    class, benign rows included and skipped) and assemble the ``PayloadModel``."""
    from sklearn.linear_model import LogisticRegression

    from models.data import BENIGN

    cls = np.asarray(classes).astype(str)
    attack = cls != BENIGN
    vec = detector.steps[0][1]
    Xa = vec.transform(as_values(X))[np.flatnonzero(attack)]
    head = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=seed)
    head.fit(Xa, cls[attack])
    return PayloadModel(detector, head, float(threshold))


class NotCompactError(ValueError):
    """The detector is not linear in the features: it cannot be exported compactly."""


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
        self._index: dict[str, int] = {}
        self._z_threshold = float(_logit(self.threshold))

    # building and persisting ------------------------------------------------------
    @classmethod
    def from_model(cls, model: PayloadModel, version: str = "") -> CompactScanner:
        est = model.detector.steps[-1][1]
        name = type(est).__name__
        if name == "LogisticRegression":
            w, b = est.coef_[0].astype(np.float64), float(est.intercept_[0])
        elif name == "ComplementNB":
            flp = est.feature_log_prob_
            w, b = (flp[1] - flp[0]).astype(np.float64), 0.0
        else:
            raise NotCompactError(
                f"{name} is not linear in the features: the gateway scans through serving"
            )
        head = model.head
        coef, inter = head.coef_, head.intercept_
        classes = [str(c) for c in head.classes_]
        if len(classes) == 2:  # scikit-learn keeps one row for two classes
            coef, inter = np.vstack([-coef[0], coef[0]]), np.array([-inter[0], inter[0]])
        return cls(
            w=w.astype(np.float32),
            b=b,
            W=np.asarray(coef, dtype=np.float32),
            B=np.asarray(inter, dtype=np.float64),
            classes=classes,
            threshold=float(model.threshold),
            version=str(version),
            family=name,
        )

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
    def _features(self, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashed n-gram indices and l2-normalised counts, and the scaled statistics,
        exactly as ``featurize`` computes them."""
        from sklearn.utils import murmurhash3_32

        norm, rounds = _normal_and_rounds(value)
        text = _WHITE.sub(" ", _DIGITS_SUB.sub("0", norm).lower())
        n = len(text)
        grams = list(text)
        for k in range(2, min(4, n) + 1):
            grams += [text[i : i + k] for i in range(n - k + 1)]
        index = self._index
        counts: Counter[int] = Counter()
        for g in grams:
            j = index.get(g)
            if j is None:
                h = murmurhash3_32(g, seed=0)
                j = (2**31 if h == -(2**31) else abs(h)) % N_FEATURES
                if len(index) < 2_000_000:
                    index[g] = j
            counts[j] += 1
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        val = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if len(val):
            val /= math.sqrt(float(val @ val))
        st = np.asarray(_stats(value, norm, rounds), dtype=np.float64)
        st = np.sign(st) * np.log1p(np.abs(st))
        return idx, val, st

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


def scanner_path(settings: Settings, target: str = "payload") -> Path:
    return settings.data_dir / "scanner" / f"{target}.npz"


def export_champion(settings: Settings, target: str = "payload") -> dict[str, Any]:
    """Write the champion's compact form where the gateway watches for it.

    Returns what was done: ``{"version", "path"}`` when exported, ``{"version", "remote":
    reason}`` when the champion is not linear (any stale compact file is removed so the
    gateway does not keep scanning with a demoted model), ``{"none": ...}`` without one."""
    from models.registry import CHAMPION, load_alias

    path = scanner_path(settings, target)
    loaded = load_alias(settings, target, CHAMPION)
    if loaded is None:
        return {"none": f"no {CHAMPION} for {target}"}
    model, mv = loaded
    try:
        if not isinstance(model, PayloadModel):
            raise NotCompactError(f"{type(model).__name__} is not a payload model")
        compact = CompactScanner.from_model(model, str(mv.version))
    except NotCompactError as exc:
        path.unlink(missing_ok=True)
        return {"version": str(mv.version), "remote": str(exc)}
    compact.save(path)
    return {"version": str(mv.version), "path": str(path), "family": compact.family}


def holdout_report(
    model: PayloadModel, X: Any, classes: Any, max_errors: int = 200
) -> tuple[dict[str, float], Any, Any]:
    """Per-class detection on held-out rows at the model's threshold.

    Returns metrics (benign false-positive rate and its 95 % upper bound, precision,
    recall, per-class recall and class-head accuracy on caught attacks), the per-class
    table and the errors (false positives and missed attacks, most confident first)."""
    import pandas as pd

    from models.data import BENIGN
    from models.evaluate import rate_upper_bound

    vals = as_values(X)
    cls = np.asarray(classes).astype(str)
    score = model.predict_proba(vals)[:, 1]
    flagged = score >= model.threshold
    predicted = model.attack_class(vals)
    attack = cls != BENIGN
    rows = []
    for c in sorted(set(cls)):
        m = cls == c
        caught = flagged & m
        rows.append(
            {
                "class": c,
                "rows": int(m.sum()),
                "flagged": int(caught.sum()),
                "rate": float(caught.sum() / max(m.sum(), 1)),
                "class_correct": None
                if c == BENIGN
                else float((predicted[caught] == c).mean())
                if caught.any()
                else None,
            }
        )
    per_class = pd.DataFrame(rows)
    fp, n_neg = int((flagged & ~attack).sum()), int((~attack).sum())
    fpr, fpr_up = rate_upper_bound(fp, n_neg)
    tp = int((flagged & attack).sum())
    metrics = {
        "benign_fpr": fpr,
        "benign_fpr_upper95": fpr_up,
        "false_positives": float(fp),
        "precision": tp / max(int(flagged.sum()), 1),
        "recall": tp / max(int(attack.sum()), 1),
        "class_accuracy": float((predicted[flagged & attack] == cls[flagged & attack]).mean())
        if (flagged & attack).any()
        else float("nan"),
    }
    for r in rows:
        if r["class"] != BENIGN:
            metrics[f"recall_{r['class']}"] = r["rate"]
    wrong = np.flatnonzero(flagged != attack)
    errors = pd.DataFrame(
        {
            "payload": [vals[i] for i in wrong],
            "true_class": cls[wrong],
            "score": score[wrong],
            "error": np.where(attack[wrong], "missed attack", "false positive"),
        }
    )
    errors["confidence"] = np.abs(errors["score"] - model.threshold)
    errors = errors.sort_values("confidence", ascending=False).head(max_errors)
    return metrics, per_class, errors.drop(columns="confidence")


def fit_default(
    ds: Any = None, max_fpr: float = 0.001, train_on: str = "train", seed: int = 0
) -> PayloadModel:
    """The search's default linear configuration on the payload data's own split, without
    a search: fitted on ``train_on`` rows (``train``, threshold from the validation rows; or
    ``fit`` = train + validation, threshold from 5-fold out-of-fold scores, as AutoML does),
    flagging at most ``max_fpr`` of benign values. For tests,
    benchmarks and a gateway that needs a scanner before any training ran."""
    from models.data import payload_dataset
    from models.evaluate import threshold_at_fpr
    from models.search import build_model, make_splits

    ds = ds if ds is not None else payload_dataset()
    sp = make_splits(ds, 0.2)
    rows = sp.fit if train_on == "fit" else sp.train
    p = {"family": "linear", "text": True, "C": 20.0, "class_weight": "balanced"}
    det = build_model(p, "binary", ds.X.iloc[rows], ds.y.iloc[rows], seed=seed)
    if train_on == "fit":  # as run_automl does: out-of-fold scores over every fitted row
        from models.search import evaluate_params, oof_splits

        _, val, val_rows, _ = evaluate_params(p, ds, oof_splits(ds, sp), "average_precision")
        thr = threshold_at_fpr(ds.y.to_numpy()[val_rows], val, max_fpr)
    else:
        val = det.predict_proba(ds.X.iloc[sp.val])[:, 1]
        thr = threshold_at_fpr(ds.y.to_numpy()[sp.val], val, max_fpr)
    return with_class_head(det, ds.X.iloc[rows], ds.detail.iloc[rows], thr, seed)
