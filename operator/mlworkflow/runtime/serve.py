"""The BentoML service that serves one model version of a workflow from its model store.

    BENTOML_HOME=<store>/<workflow>/bentoml MODEL_TAG=<workflow>:v3 \\
        bentoml serve mlworkflow.runtime.serve:ModelService --host 0.0.0.0 --port 3000

`/predict` takes JSON records and answers at once; `/predict_batch` takes the same records but lets BentoML
batch concurrent requests (adaptive batching); `/v2/...` speaks the Open Inference Protocol (see
`inference_protocol`). Every answer names the model version and the backend
(onnxruntime when the version has a verified ONNX model, scikit-learn otherwise). Requests are checked
against the model card's feature schema: a problem is a 400 naming the column, never a 500. A bounded
sample of the inputs and predictions is recorded in the artifact store for the drift monitor.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import bentoml
import joblib
import numpy as np
import pandas as pd
from bentoml.validators import ContentType

from mlworkflow.runtime import inference_protocol
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import FeatureBatch, FeatureChecker, RequestError
from mlworkflow.runtime.onnx_export import OnnxPredictor

PREDICTIONS = bentoml.metrics.Counter(
    name="mlworkflow_predictions_total",
    documentation="Rows predicted, by model version and backend",
    labelnames=["model_version", "backend"],
)


class Answer(NamedTuple):
    predictions: list[Any]
    probabilities: list[list[float]] | None


class LoadedModel:
    """One model version, loaded for inference, with the checker its requests must pass."""

    def __init__(self, path: Path) -> None:
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
            OnnxPredictor(onnx_path.read_bytes(), self.schema, one_hot) if onnx_path.exists() else None
        )
        self.pipeline = None if self.onnx else joblib.load(path / "pipeline.joblib")
        self.backend = "onnxruntime" if self.onnx else "sklearn"

    def predict(
        self, batch: FeatureBatch, probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions, and the class probabilities (columns in `classes` order) when asked for."""
        if probabilities and not self.probabilities:
            raise RequestError(
                f"model {self.name} {self.version} gives no class probabilities ({self.task}, or an "
                "estimator without predict_proba): ask for predictions only"
            )
        if self.onnx is not None:
            predictions, proba = self.onnx.run(self.onnx.feed(batch.numeric, batch.categorical))
        else:
            frame = pd.DataFrame({**batch.numeric, **batch.categorical}, columns=self.schema.features)
            predictions = self.pipeline.predict(frame)  # type: ignore[union-attr]
            proba = self.pipeline.predict_proba(frame) if probabilities else None  # type: ignore[union-attr]
        PREDICTIONS.labels(model_version=self.version, backend=self.backend).inc(batch.rows)
        return np.asarray(predictions), proba if probabilities else None


class SampleRecorder:
    """Appends a sample of served rows (JSON lines) to the artifact store for the drift monitor.

    Bounded in rate and in size. At most `rows_per_second` rows a second on average (a token bucket holding
    `BURST_SECONDS` of them, so a quiet Pod records every row of a burst), picked at random within each
    request: a busy Pod keeps a thin uniform sample instead of serialising every row it serves, which would
    cost as much CPU as the prediction. Past `max_rows` the file becomes `<name>.1.jsonl` (replacing the
    older one), so each Pod keeps at most twice max_rows rows.
    """

    BURST_SECONDS = 10.0

    def __init__(self, folder: Path, name: str, max_rows: int, rows_per_second: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        self.rotated = folder / f"{name}.1.jsonl"
        self.max_rows, self.rows_per_second = max_rows, rows_per_second
        self.capacity = rows_per_second * self.BURST_SECONDS
        self.tokens, self.refilled = self.capacity, time.monotonic()
        self.lock = threading.Lock()
        self.rows = sum(1 for _ in self.path.open()) if self.path.exists() else 0
        self.file = self.path.open("a")

    def allowance(self, rows: int) -> int:
        """How many of a request's `rows` to record now, taken from the bucket."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.refilled) * self.rows_per_second)
            self.refilled = now
            taken = min(rows, int(self.tokens))
            self.tokens -= taken
            return taken

    def record(self, version: str, batch: FeatureBatch, predictions: list[Any]) -> None:
        if self.max_rows <= 0 or not (taken := self.allowance(batch.rows)):
            return
        rows = range(batch.rows) if taken == batch.rows else sorted(random.sample(range(batch.rows), taken))
        now = time.time()
        lines = [
            json.dumps({"ts": now, "model": version, "features": features, "prediction": predictions[i]})
            + "\n"
            for i, features in zip(rows, batch.records(rows), strict=True)
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
        float(os.environ.get("MLW_SAMPLE_ROWS_PER_SECOND", "100")),
    )
    return model, recorder


# Declared, because BentoML otherwise derives a JSON answer's media type from its JSON schema, generated anew
# for every response (a tenth of a 100-row prediction's CPU).
JSON = ContentType("application/json")

# BentoML's OpenTelemetry middleware costs about a sixth of a 100-row prediction even when no exporter is
# set (bench/serving), so the prediction routes skip it unless MLW_TRACE_PREDICTIONS=true.
UNTRACED_ROUTES = [] if os.environ.get("MLW_TRACE_PREDICTIONS") == "true" else ["/predict", "/v2/models/"]


# Worker processes per server, each with its own single-threaded onnxruntime session: the operator's Pods run
# one and scale by replicas; `bentoml serve` elsewhere may set one per core.
@bentoml.asgi_app(inference_protocol.app, path="/v2")
@bentoml.service(
    name="mlworkflow-model",
    workers=int(os.environ.get("MLW_SERVING_WORKERS", "1")),
    traffic={"timeout": 30},
    logging={"access": {"enabled": os.environ.get("MLW_ACCESS_LOG", "false") == "true"}},
    tracing={"excluded_urls": UNTRACED_ROUTES},
)
class ModelService:
    def __init__(self) -> None:
        # Loaded before the worker reports ready: /readyz answers only once the model can predict.
        self.model, self.recorder = _load()

    def answer(self, batch: FeatureBatch, probabilities: bool = False) -> Answer:
        """Predictions for checked features (JSON-ready), counted and sampled for the drift monitor."""
        predicted, proba = self.model.predict(batch, probabilities)
        predictions: list[Any] = predicted.tolist()
        self.recorder.record(self.model.version, batch, predictions)
        return Answer(predictions, None if proba is None else np.asarray(proba, dtype=np.float64).tolist())

    # Async: the model takes about a millisecond of CPU and its session one thread, so answering on the
    # event loop costs less than a hop to BentoML's thread pool and serves just as many requests.
    @bentoml.api(route="/predict")
    async def predict(
        self, records: list[dict[str, Any]], probabilities: bool = False
    ) -> Annotated[dict[str, Any], JSON]:
        """Predictions for JSON records, with the model version and backend that made them; with
        `probabilities`, a classifier's class probabilities too (one row per record, columns `classes`)."""
        answer = self.answer(self.model.checker.from_records(records), probabilities)
        body: dict[str, Any] = {
            "model": self.model.version,
            "backend": self.model.backend,
            "predictions": answer.predictions,
        }
        if answer.probabilities is not None:
            body |= {"classes": self.model.classes, "probabilities": answer.probabilities}
        return body

    # max_latency_ms bounds how long a request may wait to join a batch; BentoML answers 503 past it, so it
    # is generous (a loaded node must not shed requests that a moment's wait would serve).
    @bentoml.api(route="/predict_batch", batchable=True, batch_dim=0, max_batch_size=512, max_latency_ms=1000)
    async def predict_batch(self, records: list[dict[str, Any]]) -> Annotated[list[dict[str, Any]], JSON]:
        """The same, batched with concurrent requests; one answer per record.

        A batch mixes the records of several clients, so one bad record must not fail the others: when the
        batch does not pass its check, each record is checked alone and a bad one is answered with `error`.
        """
        version, backend = self.model.version, self.model.backend
        try:
            predictions = self.answer(self.model.checker.from_records(records)).predictions
            return [{"prediction": p, "model": version, "backend": backend} for p in predictions]
        except RequestError:
            pass
        answers: list[dict[str, Any]] = [{} for _ in records]
        good: list[int] = []
        for index, record in enumerate(records):
            try:
                self.model.checker.from_records([record], lambda _: "record")
                good.append(index)
            except RequestError as error:
                answers[index] = {"error": str(error), "model": version}
        if good:
            batch = self.model.checker.from_records([records[i] for i in good])
            for index, prediction in zip(good, self.answer(batch).predictions, strict=True):
                answers[index] = {"prediction": prediction, "model": version, "backend": backend}
        return answers
