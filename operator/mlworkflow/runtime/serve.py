"""The BentoML service that serves one model version of a workflow from its model store.

    BENTOML_HOME=<store>/<workflow>/bentoml MODEL_TAG=<workflow>:v3 \\
        bentoml serve mlworkflow.runtime.serve:ModelService --host 0.0.0.0 --port 3000

`/predict` takes JSON records and answers at once; `/predict_batch` takes the same records but lets BentoML
batch concurrent requests (adaptive batching); `/v2/...` speaks the Open Inference Protocol (see
`inference_protocol`). Every answer names the model version and the backend
(onnxruntime when the version has a verified ONNX model, scikit-learn otherwise). Requests are checked
against the model card's feature schema: a problem is a 400 naming the column, never a 500; an answer holds
finite numbers only (`LoadedModel.predict`). `contract` keeps the HTTP contract around BentoML (415 for a
body that is not JSON, one error object, one log line per refused request, a true OpenAPI document).

Every prediction has an id, answered with it: the client's own (`ids` of /predict, the Open Inference
Protocol's `prediction_id` input or, for one row, the request's `id`), else one made here
(`<worker>-<request>-<row>`, unique without coordination). A bounded sample of the predictions (id, time,
inputs, prediction) is recorded in the artifact store for the monitor, and `POST /feedback` records their
labels when the truth is known (`mlworkflow.runtime.feedback`): the monitor measures the served model's
performance by joining the two.

Follow mode (OnlineLearning, `MLW_FOLLOW_LATEST=1`): the service serves the learner's newest snapshot of the
MODEL_TAG version (the start version), as `<store>/<workflow>/online/latest` names it, and looks at that file
about every half second (`Follower`): a new snapshot is loaded in a background thread and then replaces the
served model in one reference assignment, so no request fails and none restarts; each request keeps the
model it began with. Until the learner's first snapshot, or when `latest` names a snapshot of another start
version (the previous learner's), the start version itself serves. The gauge `mlworkflow_serving_snapshot`
says which: the n of the snapshot `<start>.<n>` served, -1 for the start version (the lowest over the Pod's
workers, so that a worker late to swap shows).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from mlworkflow.runtime import contract, inference_protocol
from mlworkflow.runtime.features import MAX_ROWS, FeatureBatch, RequestError
from mlworkflow.runtime.feedback import check_labels, check_prediction_ids, feedback_line
from mlworkflow.runtime.model import LoadedModel, sample_line
from mlworkflow.runtime.store import WorkflowStore

FOLLOW_SECONDS = 0.5
logger = logging.getLogger("mlworkflow.serve")
# BentoML's server logging leaves the root logger at WARNING: without a level of its own, this logger's INFO
# lines (a follow-mode swap, "now serving ...") never reach the Pod's log.
logger.setLevel(logging.INFO)

PREDICTIONS = bentoml.metrics.Counter(
    name="mlworkflow_predictions_total",
    documentation="Rows predicted, by model version and backend",
    labelnames=["model_version", "backend"],
)
SERVED_SNAPSHOT = bentoml.metrics.Gauge(
    name="mlworkflow_serving_snapshot",
    documentation="Follow mode: the n of the snapshot <start>.<n> served (-1: the start version)",
    labelnames=["model_version"],
    multiprocess_mode="livemin",
)


class Answer(NamedTuple):
    predictions: list[Any]
    probabilities: list[list[float]] | None
    refused: dict[int, str]
    ids: list[str]  # one per row of the batch, refused rows included


class JsonLines:
    """An append-only file of JSON lines in `folder`, bounded: past `max_rows` rows it becomes
    `<name>.1.jsonl` (replacing the older one), so it keeps at most twice max_rows rows."""

    def __init__(self, folder: Path, name: str, max_rows: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        self.rotated = folder / f"{name}.1.jsonl"
        self.max_rows = max_rows
        self.lock = threading.Lock()
        self.rows = sum(1 for _ in self.path.open()) if self.path.exists() else 0
        self.file = self.path.open("a")

    def write(self, lines: list[str]) -> None:
        with self.lock:
            if self.rows + len(lines) > self.max_rows:
                self.file.close()
                self.path.replace(self.rotated)
                self.file, self.rows = self.path.open("a"), 0
            self.file.writelines(lines)
            self.file.flush()
            self.rows += len(lines)


class SampleRecorder:
    """Appends a sample of served rows (JSON lines) to the artifact store for the monitor.

    Bounded in rate and in size. At most `rows_per_second` rows a second on average (a token bucket holding
    `BURST_SECONDS` of them, so a quiet Pod records every row of a burst), picked at random within each
    request: a busy Pod keeps a thin uniform sample instead of serialising every row it serves, which would
    cost as much CPU as the prediction. At most twice `max_rows` rows per Pod (`JsonLines`).
    """

    BURST_SECONDS = 10.0

    def __init__(self, folder: Path, name: str, max_rows: int, rows_per_second: float) -> None:
        self.lines = JsonLines(folder, name, max_rows)
        self.max_rows, self.rows_per_second = max_rows, rows_per_second
        self.capacity = rows_per_second * self.BURST_SECONDS
        self.tokens, self.refilled = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def allowance(self, rows: int) -> int:
        """How many of a request's `rows` to record now, taken from the bucket."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.refilled) * self.rows_per_second)
            self.refilled = now
            taken = min(rows, int(self.tokens))
            self.tokens -= taken
            return taken

    def record(
        self, version: str, batch: FeatureBatch, predictions: list[Any], ids: list[str] | None = None
    ) -> None:
        """Records a sample of `batch`'s rows with their predictions (None: not answered, not recorded) and
        their prediction ids."""
        if self.max_rows <= 0 or not (taken := self.allowance(batch.rows)):
            return
        rows = range(batch.rows) if taken == batch.rows else sorted(random.sample(range(batch.rows), taken))
        now = time.time()
        self.lines.write(
            [
                sample_line(now, version, features, predictions[i], ids[i] if ids else None)
                for i, features in zip(rows, batch.records(rows), strict=True)
                if predictions[i] is not None  # a row the model refused (a batch's, see ModelService.answer)
            ]
        )


class Follower:
    """Which version to serve in follow mode: the snapshot `<start>.<n>` named in `online/latest`, else the
    start version itself; and the thread that swaps a newly named one in."""

    def __init__(self, store: WorkflowStore, start: str, interval: float = FOLLOW_SECONDS) -> None:
        self.store, self.start, self.interval = store, start, interval
        self.stopped = threading.Event()
        self.refused: set[str] = set()  # versions that did not load: not tried again at every look

    def wanted(self) -> str:
        """The version `latest` names when it is a snapshot of the start version; else the start version."""
        try:
            named = self.store.online_latest.read_text().strip()
        except OSError:
            return self.start
        prefix, _, number = named.partition(".")
        return named if prefix == self.start and number.isdigit() else self.start

    def load(self, version: str) -> LoadedModel:
        return LoadedModel(self.store.model_dir(version))

    def follow(self, current: Callable[[], LoadedModel], swap: Callable[[LoadedModel], None]) -> None:
        """Until `stopped`: every `interval`, load the wanted version when it is not `current()` and hand it
        to `swap`. A version that does not load is logged once and skipped; the served one stays."""
        while not self.stopped.wait(self.interval):
            version = self.wanted()
            if version == current().version or version in self.refused:
                continue
            try:
                loaded = self.load(version)
            except Exception:  # a snapshot pruned meanwhile, a bad file: keep serving what serves
                logger.warning(
                    "could not load %s %s; %s keeps serving",
                    self.store.workflow,
                    version,
                    current().version,
                    exc_info=True,
                )
                self.refused.add(version)
                continue
            swap(loaded)
            logger.info("now serving %s %s", self.store.workflow, version)

    def start_thread(self, current: Callable[[], LoadedModel], swap: Callable[[LoadedModel], None]) -> None:
        threading.Thread(target=self.follow, args=(current, swap), name="follow-latest", daemon=True).start()


def _load() -> tuple[LoadedModel, SampleRecorder, JsonLines, Follower | None]:
    tag = os.environ["MODEL_TAG"]
    store = Path(os.environ["BENTOML_HOME"]).parent  # <store>/<workflow>/bentoml -> <store>/<workflow>
    follower = None
    if os.environ.get("MLW_FOLLOW_LATEST") == "1":
        name, _, start = tag.partition(":")
        follower = Follower(WorkflowStore(store.parent, name), start)
        model = follower.load(follower.wanted())
    else:
        model = LoadedModel(Path(bentoml.models.get(tag).path))
    pod = f"{os.environ.get('HOSTNAME', 'local')}-{os.getpid()}"
    max_rows = int(os.environ.get("MLW_SAMPLE_MAX_ROWS", "50000"))
    recorder = SampleRecorder(
        store / "samples", pod, max_rows, float(os.environ.get("MLW_SAMPLE_ROWS_PER_SECOND", "100"))
    )
    return model, recorder, JsonLines(store / "feedback", pod, max_rows), follower


# One limit for every route (the Open Inference Protocol's is the checker's); in the schema, so that BentoML
# applies it to each request before /predict_batch joins several.
Records = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ROWS)]
LabelRows = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ROWS)]

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
        self.model, self.recorder, self.labels, self.follower = _load()
        # Prediction ids: this worker's random prefix (64 bits: no two workers share one), then a request
        # counter and the row (`next` of a count is atomic under the GIL).
        self.id_prefix, self.requests = secrets.token_hex(8), itertools.count()
        # The predictions counter's version label: in follow mode the start version, not each snapshot (a new
        # one every few seconds would make a new time series each).
        self.counted_as = self.follower.start if self.follower else None
        if self.follower is not None:
            self._count_served()
            self.follower.start_thread(lambda: self.model, self._swap)
        contract.install_log_filter()

    def _swap(self, model: LoadedModel) -> None:
        # One assignment: a request holds the model it read at its start (`answer`'s `model`) to its end.
        self.model = model
        self._count_served()

    def _count_served(self) -> None:
        assert self.follower is not None
        _, _, number = self.model.version.partition(".")
        SERVED_SNAPSHOT.labels(model_version=self.follower.start).set(int(number) if number else -1)

    def new_ids(self, rows: int) -> list[str]:
        """Ids for a request's `rows` predictions: `<worker>-<request>-<row>`."""
        request = f"{self.id_prefix}-{next(self.requests):x}"
        return [f"{request}-{row}" for row in range(rows)]

    def answer(
        self,
        batch: FeatureBatch,
        probabilities: bool = False,
        where: Callable[[int], str] | None = "records[{}]".format,
        model: LoadedModel | None = None,
        ids: list[str] | None = None,
    ) -> Answer:
        """Predictions for checked features (JSON-ready) with their ids (the client's `ids`, else new ones),
        counted and sampled for the monitor, by `model` (the request's; default the served one).

        A row the model gives no finite answer for refuses the request, named as `where(row)`; with `where`
        None (a batch of several clients' records) its prediction is None and its reason is in `refused`.
        """
        model = model or self.model
        predicted = model.predict(batch, probabilities)
        PREDICTIONS.labels(model_version=self.counted_as or model.version, backend=model.backend).inc(
            len(predicted.predictions)
        )
        if predicted.refused and where is not None:
            row, reason = next(iter(predicted.refused.items()))
            raise RequestError(f"{where(row)}: {reason}")
        predictions: list[Any] = predicted.predictions.tolist()
        for row in predicted.refused:  # in order: each is inserted where it was
            predictions.insert(row, None)
        ids = ids or self.new_ids(batch.rows)
        self.recorder.record(model.version, batch, predictions, ids)
        proba = None if predicted.probabilities is None else predicted.probabilities.tolist()
        return Answer(predictions, proba, predicted.refused, ids)

    # Async: the model takes about a millisecond of CPU and its session one thread, so answering on the
    # event loop costs less than a hop to BentoML's thread pool and serves just as many requests.
    @bentoml.api(route="/predict")
    async def predict(
        self,
        records: Records,
        probabilities: Annotated[bool, Field(strict=True)] = False,
        ids: list[str] | None = None,
    ) -> Annotated[dict[str, Any], JSON]:
        """Predictions for JSON records, with their ids (`ids`, one per record, when the client names them)
        and the model version and backend that made them; with `probabilities`, a classifier's class
        probabilities too (one row per record, columns `classes`)."""
        model = self.model  # this request's, whatever a follow-mode swap does meanwhile
        batch = model.checker.from_records(records)
        own = None if ids is None else check_prediction_ids(ids, batch.rows)
        answer = self.answer(batch, probabilities, model=model, ids=own)
        body: dict[str, Any] = {
            "model": model.version,
            "backend": model.backend,
            "predictions": answer.predictions,
            "ids": answer.ids,
        }
        if answer.probabilities is not None:
            body |= {"classes": model.classes, "probabilities": answer.probabilities}
        return body

    # max_latency_ms bounds how long a request may wait to join a batch; BentoML answers 503 past it, so it
    # is generous (a loaded node must not shed requests that a moment's wait would serve).
    @bentoml.api(route="/predict_batch", batchable=True, batch_dim=0, max_batch_size=512, max_latency_ms=1000)
    async def predict_batch(self, records: Records) -> Annotated[list[dict[str, Any]], JSON]:
        """The same, batched with concurrent requests; one answer per record, with its prediction's `id`.

        A batch mixes the records of several clients, so one bad record must not fail the others: when the
        batch does not pass its check, each record is checked alone and a bad one is answered with `error`;
        so is a record the model gives no finite answer for. The row limit applies to each request (its
        schema), not to the batch BentoML makes of several.
        """
        model = self.model  # this request's, whatever a follow-mode swap does meanwhile
        version, backend = model.version, model.backend
        answers: list[dict[str, Any]] = [{} for _ in records]
        good = list(range(len(records)))
        try:
            batch = model.checker.from_records(records, max_rows=None)
        except RequestError:
            good = []
            for index, record in enumerate(records):
                try:
                    model.checker.from_records([record], lambda _: "record")
                    good.append(index)
                except RequestError as error:
                    answers[index] = {"error": str(error), "model": version}
            if not good:
                return answers
            batch = model.checker.from_records([records[i] for i in good], max_rows=None)
        answer = self.answer(batch, where=None, model=model)
        for position, (index, prediction) in enumerate(zip(good, answer.predictions, strict=True)):
            if position in answer.refused:
                answers[index] = {"error": f"record: {answer.refused[position]}", "model": version}
            else:
                answers[index] = {
                    "prediction": prediction,
                    "id": answer.ids[position],
                    "model": version,
                    "backend": backend,
                }
        return answers

    @bentoml.api(route="/feedback")
    async def feedback(self, labels: LabelRows) -> Annotated[dict[str, Any], JSON]:
        """Ground truth for served predictions: `labels`, each `{id, label}`, the label one of the served
        model's classes (or a number for a regressor). Recorded for the monitor, which joins them to the
        predictions; an id that names no recorded prediction is counted there, not refused here."""
        model = self.model
        checked = check_labels(labels, model.task, model.classes)
        now = time.time()
        self.labels.write([feedback_line(now, prediction_id, label) for prediction_id, label in checked])
        return {"recorded": len(checked)}


def _served() -> LoadedModel:
    service: ModelService = bentoml.get_current_service()
    return service.model


# The decorators made the class a bentoml Service, which mypy cannot tell.
ModelService.add_asgi_middleware(contract.Contract, served=_served)  # type: ignore[attr-defined]
