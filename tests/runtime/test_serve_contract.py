"""The prediction API's HTTP contract, on a really served model: what `/docs.json` declares is what it does.

Media types, error bodies, the row limit of every route, the Open Inference Protocol's datatypes, the log
line of a refused request, and a schemathesis run against the document.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import GAUGE_ROW as ROW
from mlworkflow.runtime.features import MAX_ROWS
from serving import Served, inference_inputs, post

INFER = "/v2/models/linear/infer"


def columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return inference_inputs(rows, frozenset({"kind"}))


@pytest.mark.parametrize("route", ["/predict", "/predict_batch", "/feedback", INFER])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="records"\r\n\r\n[]\r\n--x--\r\n',
        ),
        ("text/plain", json.dumps({"records": [ROW]}).encode()),
        ("application/x-www-form-urlencoded", b"records=1"),
    ],
)
def test_a_body_that_is_not_json_is_415(
    linear_server: Served, route: str, content_type: str, body: bytes
) -> None:
    code, answer = post(linear_server.url + route, body, content_type)
    assert code == 415 and answer == {"error": answer["error"]}, answer
    assert content_type.split(";")[0] in answer["error"]


@pytest.mark.parametrize(
    ("route", "body", "names"),
    [
        ("/predict", {"rows": [ROW]}, "records: Field required"),
        (
            "/predict",
            {"records": [ROW], "probabilities": "yes"},
            "probabilities: Input should be a valid boolean",
        ),
        ("/predict", {"records": [{**ROW, "size": "big"}]}, "records[0]: 'size' must be a finite number"),
        (
            "/predict",
            {"records": [ROW] * (MAX_ROWS + 1)},
            f"records: List should have at most {MAX_ROWS} items",
        ),
        ("/predict_batch", {"records": [ROW] * (MAX_ROWS + 1)}, f"at most {MAX_ROWS} items"),
        (INFER, {"inputs": columns([ROW] * (MAX_ROWS + 1))}, f"at most {MAX_ROWS} rows per request"),
        ("/predict", b"{not json", "Invalid JSON"),
        (
            "/feedback",
            {"labels": [{"id": "a", "label": "high"}] * (MAX_ROWS + 1)},
            f"at most {MAX_ROWS} items",
        ),
    ],
)
def test_an_error_is_one_object_naming_the_problem(
    linear_server: Served, route: str, body: Any, names: str
) -> None:
    code, answer = post(linear_server.url + route, body)
    assert code == 400 and list(answer) == ["error"] and names in answer["error"], answer


def test_a_refused_request_is_one_warning_line_and_no_traceback(linear_server: Served) -> None:
    code, _ = post(f"{linear_server.url}/predict", {"records": [{**ROW, "kind": {"marker": 1}}]})
    assert code == 400
    lines = linear_server.log.read_text().splitlines()
    logged = [line for line in lines if "marker" in line]
    assert len(logged) == 1, logged
    assert "[WARNING]" in logged[0] and "400 POST /predict: records[0]: 'kind' must be a string" in logged[0]
    assert not [line for line in lines if "Traceback" in line], (
        "a 4xx (or anything so far) logged a traceback"
    )


def tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def with_input(replacement: dict[str, Any]) -> list[dict[str, Any]]:
    return [replacement if t["name"] == replacement["name"] else t for t in columns([ROW])]


@pytest.mark.parametrize(
    ("replacement", "names"),
    [
        (tensor("size", "INT64", [4.5]), "input 'size': row 0 is 4.5, not an integer"),
        (tensor("size", "UINT8", [256]), "row 0 is 256, not an integer from 0 to 255 (UINT8)"),
        (tensor("size", "INT8", [-129]), "not an integer from -128 to 127"),
        (tensor("size", "INT32", [True]), "row 0 is True, not an integer"),
        (tensor("size", "FP32", [1e39]), "row 0 is 1e+39, not a FP32 number"),
        (tensor("size", "FP16", [70000.0]), "not a FP16 number (finite, at most 65504"),
        (tensor("size", "FP64", ["NaN"]), "row 0 is 'NaN', not a FP64 number"),
        (tensor("size", "FP64", [math.inf]), "row 0 is inf, not a FP64 number"),
        (tensor("kind", "BYTES", [3]), "input 'kind': row 0 is 3, not a string (BYTES)"),
        (tensor("kind", "BOOL", ["true"]), "row 0 is 'true', not true or false (BOOL)"),
        (tensor("size", "BOOL", [True]), "input 'size' is numeric"),
        (tensor("size", {"FP": 64}, [1.0]), "input 'size' is numeric"),
    ],
)
def test_open_inference_protocol_data_must_fit_its_datatype(
    linear_server: Served, replacement: dict[str, Any], names: str
) -> None:
    code, answer = post(linear_server.url + INFER, {"inputs": with_input(replacement)})
    assert code == 400 and names in answer["error"], answer


def test_open_inference_protocol_data_that_fits_is_answered(linear_server: Served) -> None:
    code, expected = post(f"{linear_server.url}/predict", {"records": [{**ROW, "size": 50}]})
    for replacement in (
        tensor("size", "INT64", [50]),
        tensor("size", "UINT8", [50]),
        tensor("size", "FP16", [50.0]),
        tensor("size", "FP32", [50]),
    ):
        code, answer = post(linear_server.url + INFER, {"inputs": with_input(replacement)})
        assert code == 200 and answer["outputs"][0]["data"] == expected["predictions"], (replacement, answer)


def test_open_inference_protocol_takes_nan_in_fp_data_as_missing_as_mlserver_does(
    linear_server: Served,
) -> None:
    """MLServer's pandas codec (before 1.4) sends a missing FP64 value as the JSON token NaN."""
    rows = [ROW, {**ROW, "size": None}]
    _, expected = post(f"{linear_server.url}/predict", {"records": rows})
    inputs = [tensor("size", "FP64", [50.0, math.nan]) if t["name"] == "size" else t for t in columns(rows)]
    body = json.dumps({"inputs": inputs}).encode()
    assert b"NaN" in body
    code, answer = post(linear_server.url + INFER, body)
    assert code == 200 and answer["outputs"][0]["data"] == expected["predictions"], answer


def test_the_openapi_document_declares_every_route_and_the_model_features(linear_server: Served) -> None:
    with urllib.request.urlopen(f"{linear_server.url}/docs.json", timeout=10) as response:
        document = json.loads(response.read())
    assert {
        "/predict",
        "/predict_batch",
        "/feedback",
        INFER.replace("linear", "{name}"),
        "/v2/models/{name}",
    } <= set(document["paths"])
    record = document["components"]["schemas"]["Record"]
    assert record["required"] == ["ratio", "share", "size", "kind"]
    assert record["properties"]["size"]["maximum"] == pytest.approx(3.4028235e38)
    predict = document["paths"]["/predict"]["post"]
    assert (
        predict["requestBody"]["content"]["application/json"]["schema"]["properties"]["records"]["maxItems"]
        == MAX_ROWS
    )
    assert predict["responses"]["415"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    feedback = document["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert feedback["properties"]["labels"]["items"]["properties"]["label"] == {"enum": ["high", "low"]}


SCHEMATHESIS_CONFIG = """
[generation]
deterministic = true

# The Open Inference Protocol's cross-field rules (shape matches data, every feature once) are not JSON
# Schema: a request the document allows may still be refused, so only that check is off there.
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.enabled = false

# The same for /predict's `ids`: one per record, which JSON Schema cannot say either.
[[operations]]
include-path-regex = "^/predict$"
checks.positive_data_acceptance.enabled = false
"""


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    linear_server: Served, tmp_path: Path
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful) and every default check, on every route."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            f"--config-file={config}",
            "run",
            f"{linear_server.url}/docs.json",
            "--max-examples=20",
            "--workers=1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Server error" not in done.stdout


def test_a_server_error_keeps_its_traceback() -> None:
    """The filter drops BentoML's traceback of a client's error only."""
    import logging

    from bentoml.exceptions import ServiceUnavailable

    from mlworkflow.runtime.contract import ClientErrorTracebacks
    from mlworkflow.runtime.features import RequestError

    def logged(error: Exception) -> bool:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on /predict", None, None)
        record.exc_info = (type(error), error, None)
        return ClientErrorTracebacks().filter(record)

    assert not logged(RequestError("records[0]: 'x' is missing"))
    assert logged(ServiceUnavailable("queue full")) and logged(RuntimeError("a fault"))
