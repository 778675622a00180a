"""Compiled champions: a fitted pipeline exported to ONNX and run by onnxruntime.

At registration (``models/train.py``) the pipeline is converted with skl2onnx (XGBoost
through onnxmltools' converter; our signed-log transformer through a converter of its own)
and logged beside the model as run artifacts under ``compiled/``:

- ``model.onnx``     the graph: one float32 input ``X`` (the features, in the model's order),
                     class probabilities out;
- ``check.parquet``  up to 500 holdout rows the two forms are compared on at load;
- ``compiled.json``  what happened: ``status`` (``exported`` or ``refused``), the reason,
                     the per-row latency of both forms measured at export, versions.

Float32 and not double: scikit-learn's trees and XGBoost split on float32 thresholds
themselves (their inputs are cast), and onnxruntime implements neither the imputer nor the
tree ensembles in double. Preprocessing in float32 can still move a value across a split, so
nothing is trusted on faith: ``verify`` compares the two forms row by row (probabilities
within ``tolerance``, identical decisions at the model's threshold) and serving refuses the
compiled form, and serves the pipeline, when they differ (``serving/runtime.py``).

What does not convert (a HistGradientBoosting model with skl2onnx 1.20 under scikit-learn
1.9, a categorical column, the cohort anomaly model, text models) is refused with the
converter's reason; the pipeline serves, as before.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ARTIFACT_DIR",
    "CompiledModel",
    "Export",
    "Verdict",
    "export",
    "load_dir",
    "verify",
]

ARTIFACT_DIR = "compiled"
TOLERANCE = 1e-5
_CHECK_ROWS = 500
_registered = False


@dataclass
class Export:
    status: str  # exported | refused
    reason: str
    onnx: bytes | None = None
    check: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def write(self, d: Path) -> Path:
        """The ``compiled/`` artifact directory's files."""
        d.mkdir(parents=True, exist_ok=True)
        if self.onnx is not None:
            (d / "model.onnx").write_bytes(self.onnx)
        if self.check is not None:
            self.check.to_parquet(d / "check.parquet", index=False)
        (d / "compiled.json").write_text(
            json.dumps({"status": self.status, "reason": self.reason, **self.info}, indent=1)
        )
        return d


class CompiledModel:
    """An onnxruntime session for one exported pipeline: float32 matrix in, P(class 1) out."""

    def __init__(self, onnx: bytes, features: list[str]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # one request is a handful of rows: thread pools cost more than they give, and the
        # service's own threads already share two cores
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        self.features = list(features)
        outs = [o.name for o in self.session.get_outputs()]
        self._out = "probabilities" if "probabilities" in outs else outs[-1]
        self._input = self.session.get_inputs()[0].name
        self.size = len(onnx)

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """P(class 1) for a (rows, features) matrix in ``self.features``' order; NaN = missing."""
        out = self.session.run([self._out], {self._input: np.asarray(X, dtype=np.float32)})[0]
        out = np.asarray(out)
        return (out[:, 1] if out.ndim == 2 and out.shape[1] > 1 else out.ravel()).astype(float)

    def predict_frame(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_matrix(X[self.features].to_numpy(dtype=np.float32, na_value=np.nan))


# conversion ------------------------------------------------------------------------------
def _register() -> None:
    """Converters skl2onnx lacks: our signed log1p and XGBoost's classifier."""
    global _registered
    if _registered:
        return
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import (
        OnnxAbs,
        OnnxAdd,
        OnnxIdentity,
        OnnxLog,
        OnnxMul,
        OnnxSign,
    )
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from sklearn.preprocessing import FunctionTransformer
    from xgboost import XGBClassifier

    def ft_shape(op: Any) -> None:
        t = op.inputs[0].type
        op.outputs[0].type = t.__class__([t.shape[0], t.shape[1]])

    def ft_convert(scope: Any, op: Any, container: Any) -> None:
        ft = op.raw_operator
        x = op.inputs[0]
        v = container.target_opset
        if ft.func is None:
            OnnxIdentity(x, op_version=v, output_names=op.outputs[:1]).add_to(scope, container)
            return
        if not _is_signed_log(ft.func):
            raise NotImplementedError(
                f"FunctionTransformer({getattr(ft.func, '__name__', ft.func)})"
            )
        one = np.array(
            [1], dtype=np.float64 if isinstance(x.type, DoubleTensorType) else np.float32
        )
        OnnxMul(
            OnnxSign(x, op_version=v),
            OnnxLog(OnnxAdd(OnnxAbs(x, op_version=v), one, op_version=v), op_version=v),
            op_version=v,
            output_names=op.outputs[:1],
        ).add_to(scope, container)

    update_registered_converter(
        FunctionTransformer, "SklearnFunctionTransformer", ft_shape, ft_convert, overwrite=True
    )
    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        overwrite=True,
    )
    _registered = True


def _is_signed_log(func: Any) -> bool:
    """models.search's sign(x)·log1p(|x|), known by name (serving must not import search)."""
    return (getattr(func, "__module__", ""), getattr(func, "__name__", "")) == (
        "models.search",
        "_signed_log1p",
    )


def _unconvertible(model: Any) -> str:
    """A step we know has no converter, named, before skl2onnx fails on it obscurely."""
    from sklearn.base import BaseEstimator
    from sklearn.preprocessing import FunctionTransformer

    def walk(est: Any) -> str:
        f = getattr(est, "func", None)
        if isinstance(est, FunctionTransformer) and f is not None and not _is_signed_log(f):
            name = getattr(f, "__name__", repr(f))
            return f"FunctionTransformer({name}): no ONNX converter for this function"
        for attr in ("steps", "transformers_"):
            for item in getattr(est, attr, None) or []:
                sub = item[1]
                if isinstance(sub, BaseEstimator):
                    r = walk(sub)
                    if r:
                        return r
        return ""

    return walk(model)


def _indexed(model: Any, features: list[str]) -> Any:
    """A copy whose ColumnTransformer selects columns by position (one matrix input)."""
    from sklearn.compose import ColumnTransformer

    m = copy.deepcopy(model)
    pos = {c: i for i, c in enumerate(features)}
    for _, step in m.steps:
        if isinstance(step, ColumnTransformer):
            step.transformers_ = [
                (n, t, [pos[c] for c in cols] if isinstance(cols, list | tuple) else cols)
                for n, t, cols in step.transformers_
            ]
            if hasattr(step, "feature_names_in_"):
                del step.feature_names_in_
    return m


def _per_row_us(fn: Any, X: Any, n: int = 50) -> float:
    fn(X)  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn(X)
    return (time.perf_counter() - t0) / n * 1e6


def export(
    model: Any,
    features: list[str],
    check: pd.DataFrame,
    task: str,
    threshold: float | None,
) -> Export:
    """Convert ``model`` and check it on ``check`` (holdout rows); never raises."""
    import onnx
    import onnxruntime
    import skl2onnx

    info: dict[str, Any] = {
        "format": "onnx",
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "features": len(features),
    }
    sample = check[features].iloc[:_CHECK_ROWS].reset_index(drop=True)
    if task != "binary":
        return Export("refused", f"task {task!r}: only binary classifiers are compiled", info=info)
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(check[c])]
    if non_numeric:
        return Export(
            "refused",
            f"categorical column {non_numeric[0]!r}: not compiled",
            check=sample,
            info=info,
        )
    steps = getattr(model, "steps", None)
    if not steps:
        return Export("refused", f"{type(model).__name__}: not a scikit-learn Pipeline", info=info)
    odd = _unconvertible(model)
    if odd:
        return Export("refused", odd, check=sample, info=info)
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        _register()
        m = _indexed(model, features)
        est = m.steps[-1][1]
        onx = convert_sklearn(
            m,
            initial_types=[("X", FloatTensorType([None, len(features)]))],
            options={id(est): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        blob = onx.SerializeToString()
        fast = CompiledModel(blob, features)
    except Exception as exc:
        return Export(
            "refused",
            f"{type(model.steps[-1][1]).__name__}: {type(exc).__name__}: {exc}"[:500],
            check=sample,
            info=info,
        )
    v = verify(fast, model, sample, threshold)
    info["check_rows"] = len(sample)
    info["max_abs_diff"] = v.max_abs_diff
    info["decisions_differ"] = v.decisions_differ
    one = sample.iloc[:1]
    info["pipeline_us_per_call"] = round(_per_row_us(lambda x: model.predict_proba(x), one), 1)
    info["compiled_us_per_call"] = round(_per_row_us(fast.predict_frame, one), 1)
    if not v.ok:
        return Export("refused", v.reason, check=sample, info=info)
    return Export("exported", "", onnx=blob, check=sample, info=info)


@dataclass
class Verdict:
    ok: bool
    reason: str
    rows: int
    max_abs_diff: float
    decisions_differ: int


def verify(
    fast: CompiledModel,
    model: Any,
    X: pd.DataFrame,
    threshold: float | None,
    tolerance: float = TOLERANCE,
) -> Verdict:
    """Both forms on the same rows: probabilities within ``tolerance`` and the same decision
    at ``threshold`` on every row, or the reason they are not."""
    if len(X) == 0:
        return Verdict(False, "no rows to compare the compiled form on", 0, float("nan"), 0)
    try:
        ref = np.asarray(model.predict_proba(X[fast.features])[:, 1], dtype=float)
        got = fast.predict_frame(X)
    except Exception as exc:
        return Verdict(
            False,
            f"compiled form failed: {type(exc).__name__}: {exc}"[:300],
            len(X),
            float("nan"),
            0,
        )
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return Verdict(
            False, "compiled form gave non-finite or misshapen output", len(X), float("nan"), 0
        )
    diff = float(np.max(np.abs(got - ref)))
    flips = 0 if threshold is None else int(np.sum((got >= threshold) != (ref >= threshold)))
    if flips:
        return Verdict(
            False,
            f"{flips} of {len(X)} decisions at threshold {threshold:.4f} differ from the pipeline",
            len(X),
            diff,
            flips,
        )
    if diff > tolerance:
        return Verdict(
            False,
            f"probabilities differ from the pipeline by up to {diff:.2e} (> {tolerance:.0e})",
            len(X),
            diff,
            flips,
        )
    return Verdict(True, "", len(X), diff, 0)


def load_dir(d: Path) -> tuple[dict[str, Any], bytes | None, pd.DataFrame | None]:
    """``compiled.json``, the ONNX bytes and the check rows from a downloaded artifact dir."""
    meta = json.loads((d / "compiled.json").read_text()) if (d / "compiled.json").exists() else {}
    blob = (d / "model.onnx").read_bytes() if (d / "model.onnx").exists() else None
    check = pd.read_parquet(d / "check.parquet") if (d / "check.parquet").exists() else None
    return meta, blob, check
