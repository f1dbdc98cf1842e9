"""The model service's HTTP contract, kept whatever BentoML does around our code.

BentoML parses a request before the API method sees it and answers errors its own way: a body that does not
fit the method's parameters is a 400 whose JSON holds pydantic's `detail` list, an error our code raises is
answered wrapped in a list, a multipart body can end in a 500, and every 4xx is logged at ERROR with a
traceback. One ASGI middleware in front of every route (`Contract`) and a log filter keep the contract:

- a request body that is not JSON is refused with 415 on the routes that take one, before anything parses it;
- every error of those routes is answered `{"error": "<one line>"}`, the schema the document declares;
- a 4xx is logged as one WARNING line (status, route, reason); a 5xx keeps BentoML's traceback;
- `/docs.json` says what the service does: the Open Inference Protocol's routes too, the error schema, the
  row limit, the records' features as the served model has them, and the labels `/feedback` takes.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pydantic
from bentoml.exceptions import BentoMLException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlworkflow.runtime import inference_protocol
from mlworkflow.runtime.features import CATEGORY_TYPES, LARGEST, MAX_ROWS
from mlworkflow.runtime.feedback import MAX_ID_LENGTH
from mlworkflow.runtime.inference_protocol import ServedModel

logger = logging.getLogger("mlworkflow.serve")

RECORD_ROUTES = ("/predict", "/predict_batch", "/feedback")  # BentoML's JSON routes
ERROR = {"$ref": "#/components/schemas/Error"}
JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean"}


def takes_json(path: str) -> bool:
    return path in RECORD_ROUTES or (path.startswith("/v2/models/") and path.endswith("/infer"))


class Contract:
    """The ASGI middleware; `served` gives the model the worker serves (for the document)."""

    def __init__(self, app: ASGIApp, served: Callable[[], ServedModel]) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] == "POST" and takes_json(path):
            media_type = _header(scope, b"content-type").split(";")[0].strip().lower()
            # No Content-Type at all is taken as JSON, as BentoML does.
            if media_type not in ("", "application/json"):
                reason = f"the body must be JSON (Content-Type: application/json), not {media_type}"
                await _refuse(send, scope, 415, reason)
                return
        if path == "/docs.json":
            await self.app(scope, receive, _Rewriting(send, self._document))
        elif path in RECORD_ROUTES or path.startswith("/v2/"):
            await self.app(scope, receive, _Rewriting(send, None, scope))
        else:
            await self.app(scope, receive, send)

    def _document(self, body: bytes) -> bytes:
        return json.dumps(document(json.loads(body), self.served())).encode()


class _Rewriting:
    """A `send` that holds back an error's body (or the document's), to answer it rewritten."""

    def __init__(
        self, send: Send, document: Callable[[bytes], bytes] | None, scope: Scope | None = None
    ) -> None:
        self.send, self.document, self.scope = send, document, scope
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and (self.document or message["status"] >= 400):
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body, status = b"".join(self.chunks), self.start["status"]
        headers = self.start["headers"]
        if self.document is not None:
            await _answer(self.send, status, self.document(body) if status == 200 else body, headers)
            return
        assert self.scope is not None
        if status >= 500 and self.scope["path"] not in RECORD_ROUTES:  # ours: already as documented
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": body})
            return
        reason = _reason(body)
        if status < 500:
            _log(self.scope, status, reason)
        await _answer(self.send, status, json.dumps({"error": reason}).encode(), headers)


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def _reason(body: bytes) -> str:
    """One line from an error body: ours, BentoML's (an object in a list), or pydantic's `detail` list."""
    try:
        error = json.loads(body)
    except ValueError:
        return " ".join(body.decode("utf-8", "replace").split()) or "no reason given"
    if isinstance(error, list) and len(error) == 1:  # BentoML answers a 4xx wrapped in a list
        error = error[0]
    if isinstance(error, dict) and isinstance(error.get("detail"), list):  # pydantic's, one per problem
        return "; ".join(
            ": ".join(filter(None, (_where(item.get("loc", [])), str(item.get("msg")))))
            for item in error["detail"]
            if isinstance(item, dict)
        ) or str(error.get("error"))
    if isinstance(error, dict) and isinstance(error.get("error"), str):
        return " ".join(error["error"].split())
    return " ".join(json.dumps(error).split())


def _where(loc: list[Any]) -> str:
    """pydantic's location of a problem as a path: ("records", 2, "x") -> "records[2].x"."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _log(scope: Scope, status: int, reason: str) -> None:
    logger.warning("%d %s %s: %s", status, scope["method"], scope["path"], reason)


async def _refuse(send: Send, scope: Scope, status: int, reason: str) -> None:
    _log(scope, status, reason)
    await _answer(send, status, json.dumps({"error": reason}).encode())


async def _answer(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A JSON answer; `headers` are kept (a 405's Allow, BentoML's), but for the body's type and length."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})


class ClientErrorTracebacks(logging.Filter):
    """Drops BentoML's ERROR record, with its traceback, of a request it answers with a 4xx: `Contract`
    logs those as one WARNING line. A 5xx keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, pydantic.ValidationError):
            return False
        return not (isinstance(error, BentoMLException) and error.error_code.value < 500)


def install_log_filter() -> None:
    """Once per worker: BentoML logs an API's exceptions through this logger (`log_exception`)."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorTracebacks())


def document(openapi: dict[str, Any], model: ServedModel) -> dict[str, Any]:
    """BentoML's OpenAPI document, made true for `model`: records with its features (types, nullability,
    the range of numbers, the row limit), the answers' schemas, errors as `Error`, and the Open Inference
    Protocol's routes."""
    openapi = copy.deepcopy(openapi)
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what is wrong, naming row and feature"}},
    }
    schemas["Record"] = record_schema(model)
    prediction = prediction_schema(model)
    errors = {
        "400": "The request does not fit the model's features, or the model has no finite answer for a row",
        "415": "The body is not JSON",
        "500": "A fault of the service",
        "503": "The batch queue is full",
        "504": "No answer in time",
    }
    prediction_id = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    answers = {
        "/predict": {
            "type": "object",
            "required": ["model", "backend", "predictions", "ids"],
            "properties": {
                "model": {"type": "string"},
                "backend": {"type": "string", "enum": ["onnxruntime", "sklearn"]},
                "predictions": {"type": "array", "items": prediction},
                "ids": {"type": "array", "items": prediction_id, "description": "each prediction's id"},
                "classes": {"type": "array", "items": prediction},
                "probabilities": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
        "/predict_batch": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model"],
                "properties": {
                    "prediction": prediction,
                    "id": prediction_id,
                    "model": {"type": "string"},
                    "backend": {"type": "string", "enum": ["onnxruntime", "sklearn"]},
                    "error": {"type": "string", "description": "why this record has no prediction"},
                },
            },
        },
    }
    # /predict_batch checks each record alone and answers one that does not fit with `error`, in place.
    records = {"/predict": {"$ref": "#/components/schemas/Record"}, "/predict_batch": {"type": "object"}}
    for route, answer in answers.items():
        operation = openapi["paths"][route]["post"]
        operation["requestBody"]["required"] = True
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["records"] |= {"items": records[route], "minItems": 1, "maxItems": MAX_ROWS}
        operation["responses"] = {
            "200": _json("Answered", answer),
            **{status: _json(description, ERROR) for status, description in errors.items()},
        }
    ids = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ids["properties"]["ids"] = {
        "type": "array",
        "items": prediction_id,
        "minItems": 1,
        "maxItems": MAX_ROWS,
        "nullable": True,
        "description": "the client's own prediction ids, one per record (else the service makes them)",
    }
    operation = openapi["paths"]["/feedback"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": feedback_schema(model, prediction_id)}},
    }
    recorded = {
        "type": "object",
        "required": ["recorded"],
        "properties": {"recorded": {"type": "integer", "minimum": 1, "description": "labels recorded"}},
    }
    operation["responses"] = {
        "200": _json("Recorded", recorded),
        "400": _json("A label row is not {id, label}, or the label is not one the model predicts", ERROR),
        "415": _json("The body is not JSON", ERROR),
        "500": _json("A fault of the service", ERROR),
    }
    openapi["paths"].update(inference_protocol.openapi_paths(model, ERROR))
    return openapi


def feedback_schema(model: ServedModel, prediction_id: dict[str, Any]) -> dict[str, Any]:
    """`POST /feedback`'s body: labels of served predictions, by prediction id."""
    largest = float(np.finfo(np.float64).max)
    label = (
        {"type": "number", "minimum": -largest, "maximum": largest}
        if model.task == "regression"
        else {"enum": model.classes or []}
    )
    return {
        "type": "object",
        "required": ["labels"],
        "properties": {
            "labels": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_ROWS,
                "items": {
                    "type": "object",
                    "required": ["id", "label"],
                    "properties": {"id": prediction_id, "label": label},
                },
            }
        },
    }


def record_schema(model: ServedModel) -> dict[str, Any]:
    """One record: every feature, numbers within the served range, null where the model has an imputer."""
    number = {"type": "number", "minimum": -LARGEST, "maximum": LARGEST}
    category = {"anyOf": [{"type": t} for t in sorted({JSON_TYPES[t] for t in CATEGORY_TYPES})]}
    impute = model.checker.impute
    return {
        "type": "object",
        "required": model.schema.features,
        "properties": {
            **{c: number | ({"nullable": True} if impute else {}) for c in model.schema.numeric},
            **{c: category | {"nullable": True} for c in model.schema.categorical},
        },
    }


def prediction_schema(model: ServedModel) -> dict[str, Any]:
    return {"type": "number"} if model.task == "regression" else {"enum": model.classes or []}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
