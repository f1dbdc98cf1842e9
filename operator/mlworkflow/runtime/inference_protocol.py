"""The Open Inference Protocol (KServe/Triton "v2" REST), mounted on the model service at `/v2`.

Clients that already speak it to KServe, Seldon MLServer or Triton reach our models unchanged. A request
carries one named input per feature column (MLServer's pandas codec), shape `[N]` or `[N, 1]`; numbers as
FP/INT data, categories as BYTES; `null` marks a missing value. The answer has one output, `predict`.

    POST /v2/models/<workflow>/infer
    {"inputs": [{"name": "x1", "datatype": "FP64", "shape": [2], "data": [0.3, 1.2]},
                {"name": "plan", "datatype": "BYTES", "shape": [2], "data": ["basic", null]}]}

This is also the service's fast path: it is a plain Starlette app inside the BentoML server (same workers,
same `/metrics`), so a request skips BentoML's IO descriptors and costs about half as much CPU.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import bentoml
import pydantic_core
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import FeatureBatch, FeatureChecker, RequestError

NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
OUTPUT = "predict"
PROBABILITIES = "predict_proba"  # a classifier's, as in MLServer's scikit-learn runtime


class ServedModel(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def schema(self) -> FeatureSchema: ...
    @property
    def checker(self) -> FeatureChecker: ...
    @property
    def task(self) -> str: ...
    @property
    def classes(self) -> list[Any] | None: ...
    @property
    def probabilities(self) -> bool: ...


class ModelServer(Protocol):
    """What the BentoML service offers this app (kept structural: the service module mounts this one)."""

    @property
    def model(self) -> ServedModel: ...
    def answer(
        self, batch: FeatureBatch, probabilities: bool = False
    ) -> tuple[list[Any], list[list[float]] | None]: ...


class NotServed(Exception):
    """A model name or version this Pod does not serve (HTTP 404)."""


def _server() -> ModelServer:
    server: ModelServer = bentoml.get_current_service()
    return server


def _served(request: Request) -> ServedModel:
    model = _server().model
    name, version = request.path_params["name"], request.path_params.get("version")
    if name != model.name:
        raise NotServed(f"model {name!r} is not served here; this service serves {model.name!r}")
    if version is not None and version != model.version:
        raise NotServed(f"{name} version {version!r} is not served here; this Pod serves {model.version!r}")
    return model


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    try:
        _server()
    except BentoMLException:  # the worker is still loading its model
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


async def metadata(request: Request) -> Response:
    try:
        model = _served(request)
    except NotServed as error:
        return _error(404, str(error))
    schema = model.schema
    outputs = [{"name": OUTPUT, "datatype": _prediction_datatype(model), "shape": [-1]}]
    if model.probabilities:
        outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(model.classes or [])]})
    return JSONResponse(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": model.backend,
            "inputs": [{"name": c, "datatype": "FP64", "shape": [-1]} for c in schema.numeric]
            + [{"name": c, "datatype": "BYTES", "shape": [-1]} for c in schema.categorical],
            "outputs": outputs,
        }
    )


async def model_ready(request: Request) -> Response:
    try:
        model = _served(request)
    except NotServed as error:
        return _error(404, str(error))
    # The service answers at all only once its model is loaded (BentoML holds /readyz until then).
    return JSONResponse({"name": model.name, "ready": True})


async def infer(request: Request) -> Response:
    try:
        model = _served(request)
        body = pydantic_core.from_json(await request.body())  # twice as fast as json.loads here
        outputs = _outputs(body, model)
        batch = _batch(body, model)
        predictions, probabilities = _server().answer(batch, PROBABILITIES in outputs)
    except NotServed as error:
        return _error(404, str(error))
    except (RequestError, ValueError) as error:  # ValueError: the body is not JSON
        return _error(400, str(error))
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "parameters": {"backend": model.backend},
        "outputs": [
            {"name": OUTPUT, "datatype": _datatype(predictions), "shape": [batch.rows], "data": predictions}
            if name == OUTPUT
            else {
                "name": PROBABILITIES,
                "datatype": "FP64",
                "shape": [batch.rows, len(model.classes or [])],
                "data": [p for row in probabilities or [] for p in row],  # row-major, as the protocol wants
                "parameters": {"classes": model.classes},
            }
            for name in outputs
        ],
    }
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return JSONResponse(answer)


def _outputs(body: Any, model: ServedModel) -> list[str]:
    """The outputs asked for, in order: `predict` unless the request names others."""
    offered = [OUTPUT, PROBABILITIES] if model.probabilities else [OUTPUT]
    requested = body.get("outputs") if isinstance(body, dict) else None
    if not requested:
        return [OUTPUT]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise RequestError('`outputs` must be a list of objects such as {"name": "predict"}')
    names = [o.get("name") for o in requested]
    for name in names:
        if name not in offered:
            raise RequestError(f"unknown output {name!r}: this model has {', '.join(map(repr, offered))}")
    return [str(name) for name in names]


def _batch(body: Any, model: ServedModel) -> FeatureBatch:
    """The request's inputs as checked feature columns; errors name the input."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError(
            "the body must be an object with a non-empty `inputs` list (Open Inference Protocol)"
        )
    schema = model.schema
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for tensor in body["inputs"]:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if name not in schema.numeric and name not in schema.categorical:
            raise RequestError(
                f"input {name!r} is not a feature of this model ({', '.join(schema.features)})"
            )
        columns[name] = data = _column(tensor, name, numeric=name in schema.numeric)
        if rows is not None and len(data) != rows:
            raise RequestError(f"input {name!r} has {len(data)} rows, the inputs before it {rows}")
        rows = len(data)
    missing = [c for c in schema.features if c not in columns]
    if missing:
        raise RequestError(f"input {missing[0]!r} is missing (the model needs {', '.join(schema.features)})")
    assert rows is not None
    return model.checker.from_columns(columns, rows, lambda i: f"row {i}")


def _column(tensor: dict[str, Any], name: str, numeric: bool) -> list[Any]:
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if numeric and datatype not in NUMERIC_DATATYPES:
        raise RequestError(
            f"input {name!r} is numeric: its datatype must be FP64, FP32 or INT*, not {datatype!r}"
        )
    if not numeric and datatype != "BYTES" and datatype not in NUMERIC_DATATYPES:
        raise RequestError(f"input {name!r} is categorical: its datatype must be BYTES, not {datatype!r}")
    if not isinstance(data, list) or not data:
        raise RequestError(f"input {name!r}: `data` must be a non-empty list")
    if isinstance(data[0], list):  # [[v], [v], ...] for shape [N, 1]
        if not all(isinstance(v, list) and len(v) == 1 for v in data):
            raise RequestError(f"input {name!r}: nested `data` must hold one value per row")
        data = [v[0] for v in data]
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) for d in shape)
        and shape[:1] == [len(data)]
        and math.prod(shape) == len(data)
    ):
        raise RequestError(
            f"input {name!r}: shape {shape!r} does not fit {len(data)} values; use [N] or [N, 1]"
        )
    return data


def _prediction_datatype(model: ServedModel) -> str:
    if model.task == "regression":
        return "FP64"
    return _datatype(model.classes) if model.classes else "BYTES"


def _datatype(predictions: list[Any]) -> str:
    kind = type(predictions[0])
    return {bool: "BOOL", int: "INT64", float: "FP64"}.get(kind, "BYTES")


app = Starlette(
    routes=[
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/models/{name}", metadata),
        Route("/models/{name}/versions/{version}", metadata),
        Route("/models/{name}/ready", model_ready),
        Route("/models/{name}/versions/{version}/ready", model_ready),
        Route("/models/{name}/infer", infer, methods=["POST"]),
        Route("/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]
)
