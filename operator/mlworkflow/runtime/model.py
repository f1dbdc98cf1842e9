"""One model version loaded for inference: the code that answers for it in the serving Pods
(`mlworkflow.runtime.serve`) and in the batch prediction Pods (`mlworkflow.runtime.predict`) alike.

    model = LoadedModel(<store>/<workflow>/bentoml/models/<workflow>/<version>)
    predicted = model.predict(model.checker.from_records(records), probabilities=True)

The backend is onnxruntime when the version has a verified ONNX model (train.py saves `model.onnx` only
then), scikit-learn otherwise; either way an answer holds finite numbers only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import joblib
import numpy as np
import pandas as pd

from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import FeatureBatch, FeatureChecker, RequestError
from mlworkflow.runtime.onnx_export import OnnxPredictor

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


class Prediction(NamedTuple):
    """A model's answers for the rows it answers (in order), and why it answers no other row."""

    predictions: np.ndarray
    probabilities: np.ndarray | None  # float64, a row per answered row, columns in `classes` order
    refused: dict[int, str]  # row of the batch -> the reason, naming the feature


class LoadedModel:
    """One model version, loaded for inference, with the checker its requests must pass."""

    def __init__(self, path: Path, batch: bool = False) -> None:
        """`batch`: for a batch Pod, onnxruntime on all its CPUs (`OnnxPredictor`), and the scikit-learn
        pipeline behind it loaded only when a row needs it; a serving Pod loads it at once, so that its
        memory is what it is from the start."""
        self._path = path
        card = json.loads((path / "card.json").read_text())
        self.name: str = card["workflow"]
        self.version: str = card["version"]
        self.schema = FeatureSchema.from_json(card["schema"])
        self.task: str = card["task"]
        self.classes: list[Any] | None = card.get("classes")  # a classifier's, in probability-column order
        self.probabilities: bool = card.get("probabilities", False)
        self.checker = FeatureChecker(self.schema, card["pipeline"]["preprocessing"]["impute"])
        one_hot = card["pipeline"]["preprocessing"]["oneHot"]
        onnx_path = path / "model.onnx"
        self.onnx = (
            OnnxPredictor(onnx_path.read_bytes(), self.schema, one_hot, batch) if onnx_path.exists() else None
        )
        self.backend = "onnxruntime" if self.onnx else "sklearn"
        # Needed even behind onnxruntime: it answers the rows whose float32 arithmetic overflows.
        self._pipeline: Pipeline | None = None
        if not (batch and self.onnx):
            self._pipeline = self.pipeline

    @property
    def pipeline(self) -> Pipeline:
        """The fitted scikit-learn pipeline, loaded at its first use."""
        if self._pipeline is None:
            self._pipeline = joblib.load(self._path / "pipeline.joblib")
        return self._pipeline

    def predict(self, batch: FeatureBatch, probabilities: bool = False) -> Prediction:
        """Predictions, and the class probabilities (columns in `classes` order) when asked for.

        Whatever the backend, an answer holds finite numbers only. onnxruntime computes in float32: a row
        whose outputs are not finite there (an intermediate value overflowed; the inputs are within float32,
        see features.LARGEST) is answered by the scikit-learn pipeline, in float64 as at training, so exactly
        as scikit-learn would. A row scikit-learn gives no finite answer for either is refused, with the
        numeric feature responsible when one is.
        """
        if probabilities and not self.probabilities:
            raise RequestError(
                f"model {self.name} {self.version} gives no class probabilities ({self.task}, or an "
                "estimator without predict_proba): ask for predictions only"
            )
        frame: pd.DataFrame | None = None  # built only when scikit-learn answers: it costs a DataFrame
        if self.onnx is None:
            frame = self._frame(batch)
            answered, predictions, proba = self._pipeline_answers(frame, probabilities)
        else:
            predictions, graph_proba = self.onnx.run(self.onnx.feed(batch.numeric, batch.categorical))
            if self.task == "regression":
                predictions = predictions.astype(np.float64)
            proba = graph_proba.astype(np.float64) if probabilities and graph_proba is not None else None
            answered = np.arange(batch.rows)
            finite = self._finite_rows(predictions, graph_proba)
            if not finite.all():
                redo = np.flatnonzero(~finite)
                frame = self._frame(batch)
                fixed, fixed_predictions, fixed_proba = self._pipeline_answers(
                    frame.iloc[redo], probabilities
                )
                predictions[redo[fixed]] = fixed_predictions
                if proba is not None and fixed_proba is not None:
                    proba[redo[fixed]] = fixed_proba
                answered = np.setdiff1d(answered, np.setdiff1d(redo, redo[fixed]))
                predictions, proba = predictions[answered], None if proba is None else proba[answered]
        if len(answered) == batch.rows:
            return Prediction(predictions, proba, {})
        assert frame is not None  # a row is refused only once scikit-learn has seen it
        refused = np.setdiff1d(np.arange(batch.rows), answered)
        reasons = self._refusals(frame.iloc[refused])
        return Prediction(predictions, proba, dict(zip(refused.tolist(), reasons, strict=True)))

    def _frame(self, batch: FeatureBatch) -> pd.DataFrame:
        return pd.DataFrame({**batch.numeric, **batch.categorical}, columns=self.schema.features)

    def _finite_rows(self, predictions: np.ndarray, proba: np.ndarray | None) -> np.ndarray:
        """Which rows' outputs are all finite: a regressor's values, a classifier's probabilities."""
        values = predictions.astype(np.float64) if self.task == "regression" else None
        if (values is None or np.isfinite(values).all()) and (proba is None or np.isfinite(proba).all()):
            return np.ones(len(predictions), dtype=bool)  # the usual case: one test per output
        finite = np.ones(len(predictions), dtype=bool)
        if values is not None:
            finite &= np.isfinite(values)
        if proba is not None:
            finite &= np.isfinite(proba).all(axis=1)
        return finite

    def _pipeline_answers(
        self, frame: pd.DataFrame, probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """scikit-learn's answers: the positions (in `frame`) of the rows it answers with finite numbers,
        their predictions, and their probabilities when asked for."""
        try:
            predictions = np.asarray(self.pipeline.predict(frame))
            proba = (
                np.asarray(self.pipeline.predict_proba(frame), dtype=np.float64) if probabilities else None
            )
        except ValueError:
            # scikit-learn's own check refused a value that is not finite after preprocessing (a scaled
            # number beyond float64, or beyond float32 for a tree): halve the batch to find its rows.
            if len(frame) == 1:
                return self._nothing(probabilities)
            half = len(frame) // 2
            parts = [
                (offset, *self._pipeline_answers(frame.iloc[offset:end], probabilities))
                for offset, end in ((0, half), (half, len(frame)))
            ]
            parts = [part for part in parts if len(part[1])]
            if not parts:
                return self._nothing(probabilities)
            return (
                np.concatenate([offset + positions for offset, positions, _, _ in parts]),
                np.concatenate([predictions for _, _, predictions, _ in parts]),
                np.concatenate([p for _, _, _, p in parts if p is not None]) if probabilities else None,
            )
        positions = np.flatnonzero(self._finite_rows(predictions, proba))
        if len(positions) == len(frame):
            return positions, predictions, proba
        return positions, predictions[positions], None if proba is None else proba[positions]

    def _nothing(self, probabilities: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        proba = np.empty((0, len(self.classes or []))) if probabilities else None
        return np.empty(0, dtype=np.intp), np.empty(0), proba

    def _refusals(self, frame: pd.DataFrame) -> list[str]:
        """Why scikit-learn gives no finite answer for each row of `frame`: the numeric feature whose value
        alone overflows its arithmetic (found by setting each to 0 in turn, for all rows at once)."""
        reasons: list[str | None] = [None] * len(frame)
        for column in self.schema.numeric:
            waiting = np.flatnonzero([r is None for r in reasons])
            values = frame[column].to_numpy()[waiting]
            suspects = waiting[(values != 0) & ~np.isnan(values)]
            if not suspects.size:
                continue
            trial = frame.iloc[suspects].assign(**{column: 0.0})
            answered, _, _ = self._pipeline_answers(trial, self.probabilities)
            for row in suspects[answered].tolist():
                value = float(frame[column].iat[row])
                reasons[row] = (
                    f"{column!r} is {value!r}, beyond what this model's arithmetic takes (its answer would "
                    "not be a finite number): send a value of smaller magnitude"
                )
        return [
            reason or "this model's arithmetic overflows on these values together (no finite answer)"
            for reason in reasons
        ]


def sample_line(
    ts: float, version: str, features: dict[str, Any], prediction: Any, prediction_id: str | None = None
) -> str:
    """One row of a sample for the monitor, as a JSON line: `ts` (seconds since the epoch) first, the model
    version, the prediction's id (served predictions: what `POST /feedback` labels), the features as the
    model saw them (`FeatureBatch.records`) and its prediction. The serving Pods' `SampleRecorder` and the
    batch runs write it; `drift.read_window` and `performance` read it."""
    line: dict[str, Any] = {"ts": ts, "model": version}
    if prediction_id is not None:
        line["id"] = prediction_id
    return json.dumps({**line, "features": features, "prediction": prediction}) + "\n"
