"""The payload scanner as a model: detector + attack-class head, and its compact export.

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

``export_champion`` writes the champion for the gateway's hot path when the detector is
linear in the features (logistic regression; complement naive Bayes is a linear log-odds
too): two weight arrays and one threshold, run by ``features/scanner.py``'s
``CompactScanner`` — the same numbers as the pipeline (tested), in well under a
millisecond, with no training code on the request path. A non-linear detector (XGBoost)
is not exported; the gateway then scans through the BentoML service (``POST /scan``) with
its timeout and degradation rules.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from features.payload import as_values
from features.scanner import BENIGN_LABEL, CompactScanner, logit

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "NotCompactError",
    "PayloadModel",
    "compact_scanner",
    "export_champion",
    "load_scanner",
    "with_class_head",
]

log = logging.getLogger("gatewise.models")


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


def recentre(p: Any, threshold: float) -> np.ndarray:
    """Attack probability → scan score: the threshold maps to 0.5."""
    return np.asarray(1.0 / (1.0 + np.exp(-(logit(p) - logit(threshold)))))


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


def compact_scanner(model: PayloadModel, version: str = "") -> CompactScanner:
    """The compact form of a linear ``PayloadModel`` (``NotCompactError`` otherwise)."""
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
    return CompactScanner(
        w=w.astype(np.float32),
        b=b,
        W=np.asarray(coef, dtype=np.float32),
        B=np.asarray(inter, dtype=np.float64),
        classes=classes,
        threshold=float(model.threshold),
        version=str(version),
        family=name,
    )


def export_champion(settings: Settings, target: str = "payload") -> dict[str, Any]:
    """Write the champion's compact form where the gateway watches for it.

    Returns what was done: ``{"version", "path"}`` when exported, ``{"version", "remote":
    reason}`` when the champion is not linear (any stale compact file is removed so the
    gateway does not keep scanning with a demoted model), ``{"none": ...}`` without one."""
    from models.registry import load_alias
    from models.tracking import CHAMPION

    path = settings.scanner_path(target)
    loaded = load_alias(settings, target, CHAMPION)
    if loaded is None:
        return {"none": f"no {CHAMPION} for {target}"}
    model, mv = loaded
    try:
        if not isinstance(model, PayloadModel):
            raise NotCompactError(f"{type(model).__name__} is not a payload model")
        compact = compact_scanner(model, str(mv.version))
        problem = check_compact(compact, model)
        if problem:  # the same rule as a compiled champion (models/compiled.py)
            raise NotCompactError(f"compact export refused: {problem}")
    except NotCompactError as exc:
        path.unlink(missing_ok=True)
        return {"version": str(mv.version), "remote": str(exc)}
    compact.save(path)
    return {"version": str(mv.version), "path": str(path), "family": compact.family}


def check_values() -> list[str]:
    """Values the compact form is compared on before it is written: benign API values and
    generated attacks in several contexts, tagged as the gateway tags them."""
    from features.payload import in_context
    from models.payloads.api_values import api_benign
    from models.payloads.corpus import generated_attacks

    vals = [in_context(ctx, v) for v, ctx, _, _ in api_benign(400, seed=11)]
    ctxs = ("param", "header", "cookie", "body", "path")
    for i, (v, _, _) in enumerate(generated_attacks(per_template=1, seed=11)):
        vals.append(in_context(ctxs[i % len(ctxs)], v))
    return [*vals, "", "  ", "é' <x>", "1" * 5000]


def check_compact(
    compact: CompactScanner, model: PayloadModel, values: list[str] | None = None
) -> str:
    """'' when the compact form gives the model's labels and scores (within 1e-5) on the
    check values, else what differs."""
    vals = check_values() if values is None else values
    full, fast = model.scan(vals), compact.scan(vals)
    labels = sum(a[0] != b[0] for a, b in zip(full, fast, strict=True))
    if labels:
        return f"{labels} of {len(vals)} labels differ from the registered model"
    diff = max((abs(a[1] - b[1]) for a, b in zip(full, fast, strict=True)), default=0.0)
    if diff > 1e-5:
        return f"scores differ from the registered model by up to {diff:.2e}"
    return ""


def load_scanner(settings: Any, target: str = "payload", alias: str = "champion") -> Any:
    """Something with ``scan(values) -> [(label, score)]`` and ``version``: the compact
    export when it is the champion's, else the registered model itself."""
    from models import registry as reg

    c = reg.client(settings)
    name = settings.registered_model(target)
    mv = reg.version_by_alias(c, name, alias)
    if mv is None:
        raise LookupError(f"{name} has no {alias!r} version: train and promote target {target!r}")
    path = settings.scanner_path(target)
    if alias == reg.CHAMPION and path.exists():
        try:
            compact = CompactScanner.load(path)
        except Exception as exc:  # a broken export: the registry still has the model
            log.warning("compact scanner %s unreadable (%s): using the registered model", path, exc)
        else:
            if compact.version == str(mv.version):
                return compact
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(f"models:/{name}/{mv.version}")
    if not hasattr(model, "scan"):
        raise LookupError(f"{name} v{mv.version} is not a payload scanner")
    model.version = str(mv.version)
    return model


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
