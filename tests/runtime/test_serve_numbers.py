"""Numbers a backend cannot represent: never NaN, infinity or null where a prediction should be, never a 500.

Numbers beyond float32's range are refused on every route, whatever the backend, naming row, feature and
range. Within it, a row whose float32 arithmetic overflows in the ONNX graph is answered by scikit-learn, as
scikit-learn answers it; a row scikit-learn has no finite answer for is refused naming the feature.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from conftest import GAUGE_ROW as ROW
from conftest import bentoml_home
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import LARGEST, FeatureChecker, RequestError
from mlworkflow.runtime.store import WorkflowStore
from serving import Served, inference_inputs, post, serve

# Within float32's range, but scaled (a ratio's standard deviation is under 1) beyond it: the linear
# model's float32 sum is inf - inf, scikit-learn's float64 one a finite number.
OVERFLOWING = {**ROW, "ratio": 3e38, "share": 3e38}


def columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return inference_inputs(rows, frozenset({"kind"}))


@pytest.fixture(scope="module")
def forest_server(
    gauge_stores: dict[str, WorkflowStore], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The forest, served by scikit-learn: its trees compare float32 values."""
    with serve(bentoml_home("forest:v1"), "forest:v1", tmp_path_factory.mktemp("forest")) as served:
        yield served


def pipeline(tag: str) -> Any:
    return joblib.load(bentoml_home(tag) / "models" / tag.replace(":", "/") / "pipeline.joblib")


@pytest.mark.parametrize("backend", ["onnxruntime", "sklearn"])
@pytest.mark.parametrize("value", [1e39, -1e39, 10**39])
def test_a_number_beyond_float32_is_refused_on_every_route_naming_row_feature_and_range(
    request: pytest.FixtureRequest, backend: str, value: float
) -> None:
    url = request.getfixturevalue("linear_server" if backend == "onnxruntime" else "forest_server").url
    name = "linear" if backend == "onnxruntime" else "forest"
    rows = [ROW, {**ROW, "size": value}]
    named = ["'size'", str(value), "-3.4028235e+38 to 3.4028235e+38"]

    code, answer = post(f"{url}/predict", {"records": rows, "probabilities": True})
    assert code == 400 and all(part in answer["error"] for part in ["records[1]", *named]), answer

    code, answer = post(f"{url}/v2/models/{name}/infer", {"inputs": columns(rows)})
    assert code == 400 and all(part in answer["error"] for part in ["row 1", *named]), answer

    code, answer = post(f"{url}/predict_batch", {"records": rows})
    assert code == 200 and answer[0]["prediction"] in ("high", "low"), answer
    assert "prediction" not in answer[1] and all(part in answer[1]["error"] for part in named), answer


def test_the_largest_float32_is_served() -> None:
    checker = FeatureChecker(FeatureSchema("y", ["x"], []), impute=True)
    exact = float(np.finfo(np.float32).max)  # 3.4028234663852886e38; numpy prints it 3.4028235e38
    assert LARGEST == 3.4028235e38 and np.isfinite(np.float32(LARGEST))
    rows = [{"x": LARGEST}, {"x": -LARGEST}, {"x": exact}]
    assert checker.from_records(rows).numeric["x"].tolist() == [LARGEST, -LARGEST, exact]
    with pytest.raises(RequestError, match=r"records\[0\]: 'x' is 1e\+39, beyond the range served"):
        checker.from_records([{"x": 1e39}])
    with pytest.raises(RequestError, match=r"'x' is 3.40282357e\+38, beyond .* to 3.4028235e\+38"):
        checker.from_records([{"x": 3.40282357e38}])


def test_the_documented_bound_is_served_on_every_route(linear_server: Served) -> None:
    """3.4028235e38, the bound the README and the OpenAPI document give, as a client writes it."""
    row = {**ROW, "size": 3.4028235e38}
    code, answer = post(f"{linear_server.url}/predict", {"records": [row]})
    assert code == 200 and answer["predictions"][0] in ("high", "low"), answer
    code, batch = post(f"{linear_server.url}/predict_batch", {"records": [row]})
    assert code == 200 and batch[0]["prediction"] == answer["predictions"][0], batch
    for datatype in ("FP64", "FP32"):
        inputs = [{**t, "datatype": datatype} if t["name"] == "size" else t for t in columns([row])]
        code, inferred = post(f"{linear_server.url}/v2/models/linear/infer", {"inputs": inputs})
        assert code == 200 and inferred["outputs"][0]["data"] == answer["predictions"], (datatype, inferred)


def test_an_overflow_in_the_onnx_graph_is_answered_as_scikit_learn_answers_it(linear_server: Served) -> None:
    expected = pipeline("linear:v1").predict_proba(pd.DataFrame([ROW, OVERFLOWING]))
    assert np.isfinite(expected).all()

    code, answer = post(
        f"{linear_server.url}/predict", {"records": [ROW, OVERFLOWING], "probabilities": True}
    )
    assert code == 200 and answer["backend"] == "onnxruntime", answer
    assert answer["probabilities"][1] == expected[1].tolist(), "scikit-learn's float64 answer, exactly"
    assert abs(answer["probabilities"][0][0] - expected[0][0]) < 1e-4, "the other row: onnxruntime's"

    outputs = [{"name": "predict_proba"}]
    code, inferred = post(
        f"{linear_server.url}/v2/models/linear/infer",
        {"inputs": columns([ROW, OVERFLOWING]), "outputs": outputs},
    )
    assert code == 200 and inferred["outputs"][0]["data"][2:] == expected[1].tolist(), inferred

    code, batch = post(f"{linear_server.url}/predict_batch", {"records": [OVERFLOWING]})
    assert code == 200 and batch[0]["prediction"] == answer["predictions"][1], batch


def test_an_overflowing_regression_is_answered_as_scikit_learn_answers_it(
    gauge_stores: dict[str, WorkflowStore],
) -> None:
    import bentoml

    from mlworkflow.runtime.serve import LoadedModel

    model = LoadedModel(Path(bentoml.models.get("ridge:v1").path))
    row = {**ROW, "ratio": 3e38}
    batch = model.checker.from_records([ROW, row])
    assert model.onnx is not None
    graph, _ = model.onnx.run(model.onnx.feed(batch.numeric, batch.categorical))
    assert not np.isfinite(graph[1]), "the float32 graph overflows on this row"
    predicted = model.predict(batch)
    assert predicted.refused == {}
    assert predicted.predictions[1] == pipeline("ridge:v1").predict(pd.DataFrame([row]))[0]


def test_a_row_scikit_learn_has_no_finite_answer_for_is_refused_naming_the_feature(
    forest_server: Served,
) -> None:
    """The forest's trees take float32: a ratio near float32's largest, scaled, is beyond it."""
    rows = [ROW, {**ROW, "ratio": 3e38}]
    with pytest.raises(ValueError, match="too large"):
        pipeline("forest:v1").predict(pd.DataFrame(rows[1:]))

    code, answer = post(f"{forest_server.url}/predict", {"records": rows})
    assert code == 400 and "records[1]: 'ratio' is 3e+38, beyond what this model" in answer["error"], answer

    code, answer = post(f"{forest_server.url}/v2/models/forest/infer", {"inputs": columns(rows)})
    assert code == 400 and "row 1: 'ratio' is 3e+38" in answer["error"], answer

    code, batch = post(f"{forest_server.url}/predict_batch", {"records": rows})
    assert code == 200 and batch[0]["prediction"] in ("high", "low"), batch
    assert "record: 'ratio' is 3e+38" in batch[1]["error"] and "prediction" not in batch[1], batch
