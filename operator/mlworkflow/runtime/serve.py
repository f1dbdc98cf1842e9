"""The BentoML service that serves one model version of a workflow from its model store.

    BENTOML_HOME=<store>/<workflow>/bentoml MODEL_TAG=<workflow>:v3 \\
        bentoml serve mlworkflow.runtime.serve:ModelService --host 0.0.0.0 --port 3000

`/predict` takes JSON records and answers at once; `/predict_batch` takes the same records but lets BentoML
batch concurrent requests (adaptive batching). Every answer names the model version and the backend
(onnxruntime when the version has a verified ONNX model, scikit-learn otherwise). Requests are checked
against the model card's feature schema: a problem is a 400 naming the column, never a 500. A bounded
sample of the inputs and predictions is recorded in the artifact store for the drift monitor.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np
import pandas as pd
from bentoml.exceptions import InvalidArgument

from mlworkflow.runtime.data import FeatureSchema, category
from mlworkflow.runtime.onnx_export import OnnxPredictor
from mlworkflow.runtime.pipeline import to_plain

MAX_RECORDS = 10_000
PREDICTIONS = bentoml.metrics.Counter(
    name="mlworkflow_predictions_total",
    documentation="Rows predicted, by model version and backend",
    labelnames=["model_version", "backend"],
)


class RequestError(InvalidArgument):
    """A request that does not fit the model's feature schema (HTTP 400)."""


class LoadedModel:
    """One model version, loaded for inference, with the schema its requests must follow."""

    def __init__(self, path: Path) -> None:
        card = json.loads((path / "card.json").read_text())
        self.version: str = card["version"]
        self.schema = FeatureSchema.from_json(card["schema"])
        self.task: str = card["task"]
        self.impute: bool = card["pipeline"]["preprocessing"]["impute"]
        one_hot = card["pipeline"]["preprocessing"]["oneHot"]
        onnx_path = path / "model.onnx"
        self.onnx = (
            OnnxPredictor(onnx_path.read_bytes(), self.schema, one_hot) if onnx_path.exists() else None
        )
        self.pipeline = None if self.onnx else joblib.load(path / "pipeline.joblib")
        self.backend = "onnxruntime" if self.onnx else "sklearn"

    def validate(self, records: Any) -> list[dict[str, Any]]:
        """The records, or a RequestError naming the first problem."""
        if not isinstance(records, list) or not records:
            raise RequestError("`records` must be a non-empty list of objects, one per row")
        if len(records) > MAX_RECORDS:
            raise RequestError(f"at most {MAX_RECORDS} records per request, got {len(records)}")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise RequestError(f"records[{index}] must be an object of feature values")
            for column in self.schema.numeric:
                if column not in record:
                    raise RequestError(f"records[{index}]: feature {column!r} is missing")
                value = record[column]
                if value is None:
                    if not self.impute:
                        raise RequestError(
                            f"records[{index}]: {column!r} is null and this model has no imputer"
                        )
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise RequestError(f"records[{index}]: {column!r} must be a finite number, got {value!r}")
            for column in self.schema.categorical:
                if column not in record:
                    raise RequestError(f"records[{index}]: feature {column!r} is missing")
                if not (record[column] is None or isinstance(record[column], str | int | float)):
                    raise RequestError(
                        f"records[{index}]: {column!r} must be a string, got {record[column]!r}"
                    )
        return records

    def predict(self, records: Sequence[dict[str, Any]]) -> list[Any]:
        if self.onnx is not None:
            predictions, _ = self.onnx.run(self.onnx.feed_records(records))
        else:
            frame = pd.DataFrame.from_records(records, columns=self.schema.features)
            for column in self.schema.numeric:
                frame[column] = frame[column].astype("float64")
            for column in self.schema.categorical:
                frame[column] = frame[column].map(category)
            predictions = self.pipeline.predict(frame)  # type: ignore[union-attr]
        PREDICTIONS.labels(model_version=self.version, backend=self.backend).inc(len(records))
        return [to_plain(p) for p in np.asarray(predictions)]


class SampleRecorder:
    """Appends a sample of served rows (JSON lines) to the artifact store, bounded: past `max_rows` the file
    becomes `<name>.1.jsonl` (replacing the older one), so each Pod keeps at most twice max_rows rows."""

    def __init__(self, folder: Path, name: str, max_rows: int, rate: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        self.rotated = folder / f"{name}.1.jsonl"
        self.max_rows, self.rate = max_rows, rate
        self.lock = threading.Lock()
        self.rows = sum(1 for _ in self.path.open()) if self.path.exists() else 0
        self.file = self.path.open("a")

    def record(self, version: str, records: Sequence[dict[str, Any]], predictions: Sequence[Any]) -> None:
        if self.max_rows <= 0:
            return
        now = time.time()
        lines = [
            json.dumps({"ts": now, "model": version, "features": r, "prediction": p}, default=str) + "\n"
            for r, p in zip(records, predictions, strict=True)
            if self.rate >= 1.0 or random.random() < self.rate
        ]
        with self.lock:
            if self.rows + len(lines) > self.max_rows:
                self.file.close()
                self.path.replace(self.rotated)
                self.file, self.rows = self.path.open("a"), 0
            self.file.writelines(lines)
            self.file.flush()
            self.rows += len(lines)


def _load() -> tuple[LoadedModel, SampleRecorder]:
    tag = os.environ["MODEL_TAG"]
    model = LoadedModel(Path(bentoml.models.get(tag).path))
    store = Path(os.environ["BENTOML_HOME"]).parent  # <store>/<workflow>/bentoml -> <store>/<workflow>
    recorder = SampleRecorder(
        store / "samples",
        f"{os.environ.get('HOSTNAME', 'local')}-{os.getpid()}",
        int(os.environ.get("MLW_SAMPLE_MAX_ROWS", "50000")),
        float(os.environ.get("MLW_SAMPLE_RATE", "1.0")),
    )
    return model, recorder


# One worker per core the Pod may use: each has its own single-threaded onnxruntime session.
@bentoml.service(
    name="mlworkflow-model", workers=int(os.environ.get("MLW_SERVING_WORKERS", "1")), traffic={"timeout": 30}
)
class ModelService:
    def __init__(self) -> None:
        # Loaded before the worker reports ready: /readyz answers only once the model can predict.
        self.model, self.recorder = _load()

    def _answer(self, records: Any) -> list[Any]:
        rows = self.model.validate(records)
        predictions = self.model.predict(rows)
        self.recorder.record(self.model.version, rows, predictions)
        return predictions

    @bentoml.api(route="/predict")
    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Predictions for JSON records, with the model version and backend that made them."""
        return {
            "model": self.model.version,
            "backend": self.model.backend,
            "predictions": self._answer(records),
        }

    # max_latency_ms bounds how long a request may wait to join a batch; BentoML answers 503 past it, so it
    # is generous (a loaded node must not shed requests that a moment's wait would serve).
    @bentoml.api(route="/predict_batch", batchable=True, batch_dim=0, max_batch_size=512, max_latency_ms=1000)
    def predict_batch(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same, batched with concurrent requests; one answer per record."""
        version, backend = self.model.version, self.model.backend
        return [{"prediction": p, "model": version, "backend": backend} for p in self._answer(records)]
