"""ONNX export of a fitted pipeline, served by onnxruntime only where it is exact.

A pipeline is converted with skl2onnx when its steps are supported, then checked against scikit-learn on
the holdout: the same classes (or values) and probabilities within `TOLERANCE`. A pipeline that does not
convert, or whose check fails, keeps scikit-learn: never a silent difference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from mlworkflow.runtime.data import FeatureSchema, category

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Verification:
    passed: bool
    detail: str


def input_columns(schema: FeatureSchema, one_hot: bool) -> tuple[list[str], list[str]]:
    """The columns the ONNX graph takes: numeric ones, and categorical ones when they are encoded."""
    return schema.numeric, schema.categorical if one_hot else []


def convert(pipeline: Pipeline, schema: FeatureSchema, one_hot: bool) -> bytes | None:
    """The pipeline as an ONNX model, or None when skl2onnx does not support one of its steps."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    numeric, categorical = input_columns(schema, one_hot)
    types = [(c, FloatTensorType([None, 1])) for c in numeric] + [
        (c, StringTensorType([None, 1])) for c in categorical
    ]
    estimator = pipeline.steps[-1][1]
    # A classifier's second output as one float array, never a list of {class: score} maps: a classifier
    # without predict_proba (SGDClassifier's hinge loss) gives decision scores there, which the finite
    # check reads and which are never served as probabilities (LoadedModel.probabilities is False).
    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        model = convert_sklearn(pipeline, initial_types=types, options=options)
    except Exception:
        return None
    return bytes(model.SerializeToString())


class OnnxPredictor:
    """An onnxruntime session over a converted pipeline.

    For a serving worker (one of several processes on the Pod's cores): one thread, and onnxruntime's
    memory arena, which keeps the buffers of small requests for the next. For a batch Pod (`batch`):
    a thread per CPU the process may use (`usable_cpus`), which split each chunk's rows (a forest of 100
    trees: 1.9x on 2 cores), sleeping rather than spinning while they wait, and no arena (a chunk's buffers
    are few and large: the arena kept ~20 MiB of them after the run).
    """

    def __init__(self, model: bytes, schema: FeatureSchema, one_hot: bool, batch: bool = False) -> None:
        import onnxruntime

        threads = usable_cpus() if batch else 1
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # On a node whose cores other Pods share (or under a CPU quota), a spinning thread burns the time
        # its busy sibling needs (1M rows, 2 threads on a loaded machine: 63 s spinning, 17 s not).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads > 1 else "1")
        options.enable_cpu_mem_arena = not batch
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.numeric, self.categorical = input_columns(schema, one_hot)
        # skl2onnx sanitises column names ("sepal length (cm)" -> "sepal_length__cm_"); the order is kept.
        self.names = dict(
            zip(self.numeric + self.categorical, (i.name for i in self.session.get_inputs()), strict=True)
        )

    def feed(
        self, numeric: Mapping[str, np.ndarray], categorical: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The graph's inputs from typed columns (floats with NaN for missing, category strings)."""
        feed = {self.names[c]: numeric[c].astype(np.float32).reshape(-1, 1) for c in self.numeric}
        feed.update({self.names[c]: categorical[c].reshape(-1, 1) for c in self.categorical})
        return feed

    def feed_frame(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.feed(
            {c: frame[c].to_numpy(dtype=np.float64) for c in self.numeric},
            {c: frame[c].map(category).to_numpy(dtype=object) for c in self.categorical},
        )

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions, and class probabilities when the model gives them."""
        results = self.session.run(None, feed)
        predictions = np.asarray(results[0]).reshape(len(results[0]), -1)
        predictions = predictions[:, 0] if predictions.shape[1] == 1 else predictions
        probabilities = np.asarray(results[1]) if len(results) > 1 else None
        return predictions, probabilities


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what `taskset` or a static CPU manager gives),
    capped by the container's CPU limit (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), rounded up."""
    cpus = len(os.sched_getaffinity(0))
    limit = _cgroup_limit()
    return max(1, min(cpus, math.ceil(limit))) if limit else cpus


def _cgroup_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU limit in CPUs (quota / period), None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 else None


def verify(pipeline: Pipeline, predictor: OnnxPredictor, x: pd.DataFrame, task: str) -> Verification:
    """Whether onnxruntime gives scikit-learn's answers on `x` (the holdout).

    Numbers reach the graph as float32; a tree split that falls between float32 and float64 values of a
    scaled feature moves a probability, and the check then keeps scikit-learn.
    """
    try:
        predicted, probabilities = predictor.run(predictor.feed_frame(x))
    except Exception as error:
        return Verification(False, f"onnxruntime failed: {error}")
    if probabilities is not None and not np.issubdtype(np.asarray(probabilities).dtype, np.number):
        # Serving checks every answer for finite numbers: a graph that answers otherwise is not served.
        return Verification(
            False, f"the graph's second output is {np.asarray(probabilities).dtype}, not numbers"
        )
    expected = pipeline.predict(x)
    if task == "regression":
        difference = float(np.max(np.abs(predicted.astype(np.float64) - expected))) if len(x) else 0.0
        scale = max(1.0, float(np.max(np.abs(expected)))) if len(x) else 1.0
        ok = difference <= TOLERANCE * scale
        return Verification(ok, f"max difference {difference:.2e} (tolerance {TOLERANCE * scale:.2e})")
    mismatched = int(np.sum(np.asarray(predicted).astype(str) != np.asarray(expected).astype(str)))
    if mismatched:
        return Verification(False, f"{mismatched} of {len(x)} holdout classes differ")
    if probabilities is not None and hasattr(pipeline, "predict_proba"):
        difference = float(np.max(np.abs(probabilities - pipeline.predict_proba(x)))) if len(x) else 0.0
        if difference > TOLERANCE:
            return Verification(False, f"probabilities differ by up to {difference:.2e}")
        return Verification(True, f"identical classes; probabilities within {difference:.2e}")
    return Verification(True, "identical classes")
