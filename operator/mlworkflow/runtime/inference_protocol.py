"""The Open Inference Protocol (KServe/Triton "v2" REST), mounted on the model service at `/v2`.

Clients that already speak it to KServe, Seldon MLServer or Triton reach our models unchanged. A request
carries one named input per feature column (MLServer's pandas codec), shape `[N]` or `[N, 1]`; numbers as
FP/INT data, categories as BYTES (or BOOL, INT, FP); `null` marks a missing value, and so does `NaN` in FP
data, as MLServer's pandas codec sends a missing number (before MLServer 1.4; later ones send `null`). Data
must fit its declared datatype: an INT64 input holds integers, a UINT8 one integers from 0 to 255, an FP32
one numbers within float32's range, BYTES strings, BOOL booleans. The answer has the outputs `predict` and
`prediction_id` (unless the request's `outputs` names others: `predict_proba` too for a classifier with
probabilities).

Prediction ids: the protocol's request `id` identifies a request, and its parameters hold scalars only, so
each row's id is a tensor. A client names its own with a BYTES input `prediction_id` of shape `[N]` (when no
feature has that name), or, for a request of one row, with the request's `id` (of at most 128 characters);
otherwise they are made here.
The output `prediction_id` (BYTES, `[N]`) answers them; `POST /feedback` labels them.

    POST /v2/models/<workflow>/infer
    {"inputs": [{"name": "x1", "datatype": "FP64", "shape": [2], "data": [0.3, 1.2]},
                {"name": "plan", "datatype": "BYTES", "shape": [2], "data": ["basic", null]}]}

This is also the service's fast path: it is a plain Starlette app inside the BentoML server (same workers,
same `/metrics`), so a request skips BentoML's IO descriptors and costs about half as much CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import bentoml
import numpy as np
import pydantic_core
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import MAX_ROWS, FeatureBatch, FeatureChecker, RequestError, largest
from mlworkflow.runtime.feedback import MAX_ID_LENGTH, check_prediction_ids

# The largest magnitude of each FP datatype, and the range of each integer one.
FLOATS = {
    name: largest(dtype) for name, dtype in (("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64))
}
INTEGERS = {
    f"{kind}{bits}": (int(np.iinfo(f"{kind.lower()}{bits}").min), int(np.iinfo(f"{kind.lower()}{bits}").max))
    for kind in ("INT", "UINT")
    for bits in (8, 16, 32, 64)
}
NUMERIC_DATATYPES = frozenset(FLOATS) | frozenset(INTEGERS)
DATATYPES = NUMERIC_DATATYPES | {"BYTES", "BOOL"}
NULL = type(None)
OUTPUT = "predict"
PROBABILITIES = "predict_proba"  # a classifier's, as in MLServer's scikit-learn runtime
PREDICTION_ID = "prediction_id"  # an input (the client's own ids) and an output


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
        self,
        batch: FeatureBatch,
        probabilities: bool,
        where: Callable[[int], str],
        model: Any,
        ids: list[str] | None,
    ) -> tuple[list[Any], list[list[float]] | None, dict[int, str], list[str]]: ...


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
    outputs = [
        {"name": OUTPUT, "datatype": _prediction_datatype(model), "shape": [-1]},
        {"name": PREDICTION_ID, "datatype": "BYTES", "shape": [-1]},
    ]
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
        own = _own_ids(body, model)
        batch = _batch(body, model)
        request_id = body.get("id")
        if own is None and batch.rows == 1 and isinstance(request_id, str) and request_id:
            # One row: one prediction, which the request's id names (when it can be a prediction id).
            own = [request_id] if len(request_id) <= MAX_ID_LENGTH else None
        elif own is not None:
            own = check_prediction_ids(own, batch.rows, f"input {PREDICTION_ID!r}: data")
        predictions, probabilities, _, ids = _server().answer(
            batch, PROBABILITIES in outputs, "row {}".format, model, own
        )
    except NotServed as error:
        return _error(404, str(error))
    except (RequestError, ValueError) as error:  # ValueError: the body is not JSON
        return _error(400, str(error))
    tensors: dict[str, dict[str, Any]] = {
        OUTPUT: {"datatype": _datatype(predictions), "shape": [batch.rows], "data": predictions},
        PREDICTION_ID: {"datatype": "BYTES", "shape": [batch.rows], "data": ids},
        PROBABILITIES: {
            "datatype": "FP64",
            "shape": [batch.rows, len(model.classes or [])],
            "data": [p for row in probabilities or [] for p in row],  # row-major, as the protocol wants
            "parameters": {"classes": model.classes},
        },
    }
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "parameters": {"backend": model.backend},
        "outputs": [{"name": name, **tensors[name]} for name in outputs],
    }
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return JSONResponse(answer)


def _offered(model: ServedModel) -> list[str]:
    return [OUTPUT, PREDICTION_ID, PROBABILITIES] if model.probabilities else [OUTPUT, PREDICTION_ID]


def _outputs(body: Any, model: ServedModel) -> list[str]:
    """The outputs asked for, in order: `predict` and `prediction_id` unless the request names others."""
    offered = _offered(model)
    requested = body.get("outputs") if isinstance(body, dict) else None
    if not requested:
        return [OUTPUT, PREDICTION_ID]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise RequestError('`outputs` must be a list of objects such as {"name": "predict"}')
    names = [o.get("name") for o in requested]
    for name in names:
        if name not in offered:
            raise RequestError(f"unknown output {name!r}: this model has {', '.join(map(repr, offered))}")
    return [str(name) for name in names]


def _is_ids(tensor: Any, model: ServedModel) -> bool:
    """Whether an input is the client's prediction ids (a feature of that name is a feature)."""
    return (
        isinstance(tensor, dict)
        and tensor.get("name") == PREDICTION_ID
        and PREDICTION_ID not in model.schema.features
    )


def _own_ids(body: Any, model: ServedModel) -> list[Any] | None:
    """The data of the `prediction_id` input, when the request has one (checked against the rows later)."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    tensor = next((t for t in inputs if _is_ids(t, model)), None) if isinstance(inputs, list) else None
    if tensor is None:
        return None
    if tensor.get("datatype") != "BYTES":
        raise RequestError(f"input {PREDICTION_ID!r} holds prediction ids: its datatype must be BYTES")
    return _column(tensor, PREDICTION_ID, numeric=False)


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
        if _is_ids(tensor, model):
            continue
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
    datatype = datatype if isinstance(datatype, str) else repr(datatype)  # never a key error, named below
    if numeric and datatype not in NUMERIC_DATATYPES:
        raise RequestError(
            f"input {name!r} is numeric: its datatype must be FP64, FP32 or INT*, not {datatype!r}"
        )
    if not numeric and datatype not in DATATYPES:
        raise RequestError(
            f"input {name!r} is categorical: its datatype must be BYTES (or BOOL, INT*, FP*), "
            f"not {datatype!r}"
        )
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
    return _fitting(data, name, datatype)


def _fitting(data: list[Any], name: str, datatype: str) -> list[Any]:
    """`data`, once every value is checked against `datatype`; NaN in FP data becomes null (missing).

    A clean column costs one pass for its set of value types and one in C for its range; only a column
    that fails is scanned value by value, to name the first bad one.
    """
    types = set(map(type, data))
    fits: Callable[[Any], bool]
    if datatype in FLOATS:
        largest = FLOATS[datatype]
        if types <= {int, float}:
            try:  # a finite sum: no NaN, no infinity (a sum too large for float64 takes the long way)
                clean = math.isfinite(sum(data)) and (
                    datatype == "FP64" or (-largest <= min(data) and max(data) <= largest)
                )
            except OverflowError:  # an integer beyond float64
                clean = False
            if clean:
                return data
        if types <= {int, float, NULL}:
            try:
                array = np.array(data, dtype=np.float64)  # null -> NaN
            except OverflowError:  # an integer beyond float64: named below
                array = np.array([math.inf])
            nan = np.isnan(array)
            if (np.abs(array[~nan]) <= largest).all():
                # MLServer's pandas codec sends a missing number as NaN (before MLServer 1.4): missing.
                return [None if missing else v for v, missing in zip(data, nan.tolist(), strict=True)]

        def fits(v: Any) -> bool:
            return v is None or (type(v) in (int, float) and (v != v or abs(v) <= largest))  # v != v: NaN

        kind = f"a {datatype} number (finite, at most {largest:.8g} in magnitude)"
    elif datatype in INTEGERS:
        low, high = INTEGERS[datatype]
        if types <= {int, NULL}:
            present = [v for v in data if v is not None] if NULL in types else data
            if not present or (low <= min(present) and max(present) <= high):
                return data

        def fits(v: Any) -> bool:
            return v is None or (type(v) is int and low <= v <= high)

        kind = f"an integer from {low} to {high} ({datatype})"
    else:
        expected = str if datatype == "BYTES" else bool
        if types <= {expected, NULL}:
            return data

        def fits(v: Any) -> bool:
            return v is None or type(v) is expected

        kind = "a string (BYTES)" if datatype == "BYTES" else "true or false (BOOL)"
    index = next(i for i, v in enumerate(data) if not fits(v))
    raise RequestError(f"input {name!r}: row {index} is {data[index]!r}, not {kind}")


def _prediction_datatype(model: ServedModel) -> str:
    if model.task == "regression":
        return "FP64"
    return _datatype(model.classes) if model.classes else "BYTES"


def _datatype(predictions: list[Any]) -> str:
    kind = type(predictions[0])
    return {bool: "BOOL", int: "INT64", float: "FP64"}.get(kind, "BYTES")


def _input_names(model: ServedModel) -> list[str]:
    features = model.schema.features
    return features if PREDICTION_ID in features else [*features, PREDICTION_ID]


def openapi_paths(model: ServedModel, error: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI paths of this app (under /v2) for `model`; `error` is the error body's schema."""
    offered = _offered(model)
    # The one name and version this Pod serves (any other is a 404).
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [model.name]},
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [model.version]},
    }
    tensor: dict[str, Any] = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": tensor
                | {
                    "properties": tensor["properties"]
                    | {
                        "name": {"type": "string", "enum": _input_names(model)},
                        "datatype": {"type": "string", "enum": sorted(DATATYPES)},
                        "shape": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "minItems": 1,
                            "maxItems": 2,
                        },
                        "data": {"type": "array", "minItems": 1, "maxItems": MAX_ROWS},
                    }
                },
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "enum": offered}},
                },
            },
        },
    }
    answer = {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": tensor},
        },
    }
    metadata = {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
    }
    model_ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"ready": {"type": "boolean"}},
    }

    def body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def get(summary: str, schema: dict[str, Any], *parameters: dict[str, Any]) -> dict[str, Any]:
        responses = {"200": body("Answered", schema)}
        if parameters:
            responses["404"] = body("A model name or version this Pod does not serve", error)
        return {
            "get": {"summary": summary, "tags": ["Open Inference Protocol"], "parameters": list(parameters)}
            | {"responses": responses}
        }

    def infer(*parameters: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": "Predictions for one input per feature column (see inference_protocol)",
                "tags": ["Open Inference Protocol"],
                "parameters": list(parameters),
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {
                    "200": body("Answered", answer),
                    "400": body("The inputs do not fit the model's features or their datatypes", error),
                    "404": body("A model name or version this Pod does not serve", error),
                    "415": body("The body is not JSON", error),
                },
            }
        }

    alive = {"type": "object", "properties": {"live": {"type": "boolean"}}}
    ready_schema = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
    ready_get = get("Whether the model is loaded", ready_schema)
    ready_get["get"]["responses"]["503"] = body("The model is still loading", ready_schema)
    return {
        "/v2/health/live": get("Whether the server answers", alive),
        "/v2/health/ready": ready_get,
        "/v2/models/{name}": get("The model's inputs and outputs", metadata, name),
        "/v2/models/{name}/versions/{version}": get(
            "The model's inputs and outputs", metadata, name, version
        ),
        "/v2/models/{name}/ready": get("Whether the model is ready", model_ready, name),
        "/v2/models/{name}/versions/{version}/ready": get(
            "Whether the model is ready", model_ready, name, version
        ),
        "/v2/models/{name}/infer": infer(name),
        "/v2/models/{name}/versions/{version}/infer": infer(name, version),
    }


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
