"""The BentoML service, really started with `bentoml serve` on 127.0.0.1, answering over HTTP."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel
from serving import Served, post, serve, status

ROW = {"tenure": 3.0, "monthly": 95.0, "plan": "basic", "region": "north"}


@pytest.fixture(scope="module")
def served(
    churn_store: tuple[WorkflowStore, TrainedModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    store, _ = churn_store
    with serve(store.bentoml_home, "churn:v1", tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="module")
def server(served: Served) -> str:
    return served.url


def test_predicts_with_the_version_and_backend(
    server: str, churn_store: tuple[WorkflowStore, TrainedModel]
) -> None:
    _, trained = churn_store
    code, answer = post(f"{server}/predict", {"records": [ROW, {**ROW, "monthly": None, "plan": None}]})
    assert code == 200
    assert answer["model"] == "v1" and answer["backend"] == trained.backend
    assert len(answer["predictions"]) == 2 and set(answer["predictions"]) <= {"yes", "no"}


def test_class_probabilities_on_request(server: str) -> None:
    rows = [ROW, {**ROW, "tenure": 40.0, "monthly": 20.0}]
    code, answer = post(f"{server}/predict", {"records": rows, "probabilities": True})
    assert code == 200 and answer["classes"] == ["no", "yes"]
    for prediction, row in zip(answer["predictions"], answer["probabilities"], strict=True):
        assert abs(sum(row) - 1) < 1e-6 and answer["classes"][row.index(max(row))] == prediction

    inputs = columns(rows)
    outputs = [{"name": "predict_proba"}, {"name": "predict"}]
    code, inferred = post(f"{server}/v2/models/churn/infer", {"inputs": inputs, "outputs": outputs})
    assert code == 200, inferred
    proba, predict = inferred["outputs"]
    assert predict["data"] == answer["predictions"]
    assert proba["shape"] == [2, 2] and proba["parameters"]["classes"] == ["no", "yes"]
    assert proba["data"] == [p for row in answer["probabilities"] for p in row]


def test_the_batch_endpoint_answers_each_record(server: str) -> None:
    def one(i: int) -> tuple[int, Any]:
        return post(f"{server}/predict_batch", {"records": [{**ROW, "tenure": float(i)}] * 3})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    for code, answer in results:
        assert code == 200 and len(answer) == 3
        assert all(a["model"] == "v1" and a["prediction"] in ("yes", "no") for a in answer)


def test_a_bad_record_in_a_batch_fails_only_itself(server: str) -> None:
    """Concurrent requests share a batch; a bad one is answered with its error, the others predicted."""

    def one(i: int) -> tuple[int, Any]:
        record = {**ROW, "tenure": "soon"} if i % 4 == 0 else {**ROW, "tenure": float(i)}
        return post(f"{server}/predict_batch", {"records": [record]})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    for i, (code, answer) in enumerate(results):
        assert code == 200 and len(answer) == 1, answer
        if i % 4 == 0:
            assert "'tenure' must be a finite number" in answer[0]["error"] and "prediction" not in answer[0]
        else:
            assert answer[0]["prediction"] in ("yes", "no") and "error" not in answer[0]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"records": [{"tenure": 3.0, "plan": "basic", "region": "north"}]}, "'monthly' is missing"),
        ({"records": [{**ROW, "tenure": "three"}]}, "'tenure' must be a finite number"),
        ({"records": [{**ROW, "tenure": True}]}, "'tenure' must be a finite number"),
        ({"records": [{**ROW, "plan": {"tier": 1}}]}, "'plan' must be a string"),
        ({"records": []}, "records: List should have at least 1 item"),
        ({"records": [ROW, "not an object"]}, "an object"),
        ({"records": "all of them"}, "records"),
        ({"rows": [ROW]}, "records"),
        (b"{not json", "json"),
    ],
)
def test_bad_requests_are_4xx_naming_the_problem(server: str, body: Any, names: str) -> None:
    code, answer = post(f"{server}/predict", body)
    assert 400 <= code < 500, answer
    assert names.lower() in json.dumps(answer).lower()


def test_metrics_and_recorded_samples(server: str, churn_store: tuple[WorkflowStore, TrainedModel]) -> None:
    store, trained = churn_store
    post(f"{server}/predict", {"records": [ROW] * 40})
    with urllib.request.urlopen(f"{server}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert f'mlworkflow_predictions_total{{backend="{trained.backend}",model_version="v1"}}' in metrics
    files = sorted(Path(store.samples).glob("test-pod-*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert rows and {"ts", "model", "features", "prediction"} <= set(rows[-1])
    # MLW_SAMPLE_MAX_ROWS=50: a file rotates past 50 rows, so a Pod never keeps more than twice that.
    assert all(len(f.read_text().splitlines()) <= 50 for f in files)


def columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open Inference Protocol inputs, one per feature column."""
    numeric = {"tenure", "monthly"}
    return [
        {
            "name": name,
            "datatype": "FP64" if name in numeric else "BYTES",
            "shape": [len(rows)],
            "data": [r[name] for r in rows],
        }
        for name in ROW
    ]


def test_the_open_inference_protocol_answers_like_predict(
    server: str, churn_store: tuple[WorkflowStore, TrainedModel]
) -> None:
    store, _ = churn_store
    rows = [ROW, {**ROW, "monthly": None, "plan": None}, {**ROW, "tenure": 40.0, "monthly": 20.0}]
    _, expected = post(f"{server}/predict", {"records": rows})
    code, answer = post(f"{server}/v2/models/churn/infer", {"id": "req-1", "inputs": columns(rows)})
    assert code == 200, answer
    assert answer["model_name"] == "churn" and answer["model_version"] == "v1" and answer["id"] == "req-1"
    output, ids = answer["outputs"]
    assert output == {"name": "predict", "datatype": "BYTES", "shape": [3], "data": expected["predictions"]}
    assert ids["name"] == "prediction_id" and ids["datatype"] == "BYTES" and len(set(ids["data"])) == 3
    assert answer["parameters"]["backend"] == expected["backend"]

    # Its inputs feed the drift monitor like any other: recorded as the model saw them.
    assert (
        post(
            f"{server}/v2/models/churn/infer", {"inputs": columns([{**ROW, "tenure": 777.0, "plan": None}])}
        )[0]
        == 200
    )
    recorded = [
        json.loads(line)
        for f in Path(store.samples).glob("test-pod-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert {"tenure": 3.0, "monthly": None, "plan": "", "region": "north"} in [
        r["features"] for r in recorded
    ]

    nested = [{**tensor, "shape": [3, 1], "data": [[v] for v in tensor["data"]]} for tensor in columns(rows)]
    code, answer = post(f"{server}/v2/models/churn/versions/v1/infer", {"inputs": nested})
    assert code == 200 and answer["outputs"][0]["data"] == expected["predictions"]


def test_the_open_inference_protocol_health_and_metadata(server: str) -> None:
    assert status(f"{server}/v2/health/live") == 200 and status(f"{server}/v2/health/ready") == 200
    assert status(f"{server}/v2/models/churn/ready") == 200
    with urllib.request.urlopen(f"{server}/v2/models/churn", timeout=5) as response:
        metadata = json.loads(response.read())
    assert metadata["name"] == "churn" and metadata["versions"] == ["v1"]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {
        "tenure": "FP64",
        "monthly": "FP64",
        "plan": "BYTES",
        "region": "BYTES",
    }
    assert status(f"{server}/v2/models/other") == 404
    code, answer = post(f"{server}/v2/models/churn/versions/v7/infer", {"inputs": columns([ROW])})
    assert code == 404 and "'v1'" in answer["error"]


@pytest.mark.parametrize(
    ("inputs", "names"),
    [
        (columns([ROW])[1:], "input 'tenure' is missing"),
        (
            [*columns([ROW]), {"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}],
            "'colour'",
        ),
        ([{**columns([ROW])[0], "datatype": "BYTES"}, *columns([ROW])[1:]], "'tenure' is numeric"),
        ([{**columns([ROW])[0], "shape": [2]}, *columns([ROW])[1:]], "shape [2]"),
        ([*columns([ROW])[:3], columns([ROW, ROW])[3]], "'region' has 2 rows"),
        (
            [{**columns([ROW])[0], "data": ["three"]}, *columns([ROW])[1:]],
            "'tenure': row 0 is 'three', not a FP64",
        ),
        ([{**columns([ROW])[0], "data": [True]}, *columns([ROW])[1:]], "'tenure': row 0 is True, not a FP64"),
        ([*columns([ROW])[:2], {**columns([ROW])[2], "data": [{"tier": 1}]}, columns([ROW])[3]], "'plan'"),
    ],
)
def test_open_inference_protocol_bad_requests_are_400_naming_the_problem(
    server: str, inputs: list[dict[str, Any]], names: str
) -> None:
    code, answer = post(f"{server}/v2/models/churn/infer", {"inputs": inputs})
    assert code == 400, answer
    assert names.lower() in answer["error"].lower()


def test_open_inference_protocol_refuses_what_is_not_a_request(server: str) -> None:
    for body in (b"{not json", {"inputs": []}, {"instances": [ROW]}):
        code, answer = post(f"{server}/v2/models/churn/infer", body)
        assert code == 400 and answer["error"], answer
    code, answer = post(
        f"{server}/v2/models/churn/infer", {"inputs": columns([ROW]), "outputs": [{"name": "p"}]}
    )
    assert code == 400 and "'predict'" in answer["error"]
    code, answer = post(f"{server}/v2/models/churn/infer", {"inputs": columns([ROW]), "outputs": "predict"})
    assert code == 400 and "list of objects" in answer["error"]


def test_the_sample_recorder_keeps_a_bounded_rate(tmp_path: Path) -> None:
    """A burst is recorded up to the bucket (ten seconds' worth); past it, only what the rate refills."""
    from mlworkflow.runtime.data import FeatureSchema
    from mlworkflow.runtime.features import FeatureChecker
    from mlworkflow.runtime.serve import SampleRecorder

    checker = FeatureChecker(FeatureSchema("label", ["x"], []), impute=True)
    recorder = SampleRecorder(tmp_path, "pod", max_rows=10_000, rows_per_second=10)
    batch = checker.from_records([{"x": float(i)} for i in range(150)])
    recorder.record("v1", batch, list(range(150)))
    recorder.record("v1", batch, list(range(150)))
    lines = [json.loads(line) for line in (tmp_path / "pod.jsonl").read_text().splitlines()]
    assert 100 <= len(lines) <= 102, len(lines)
    xs = [line["features"]["x"] for line in lines[:100]]
    assert xs == sorted(xs) and max(xs) > 100, "a random sample of the request, in its order"
    assert all(line["prediction"] == int(line["features"]["x"]) for line in lines)


def recorded(store: WorkflowStore, folder: str) -> list[dict[str, Any]]:
    files = sorted((store.base / folder).glob("test-pod-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_every_prediction_has_an_id_answered_and_recorded(
    server: str, churn_store: tuple[WorkflowStore, TrainedModel]
) -> None:
    store, _ = churn_store
    _, made = post(f"{server}/predict", {"records": [ROW, ROW]})
    _, own = post(f"{server}/predict", {"records": [ROW, ROW], "ids": ["order-1", "order-2"]})
    _, batched = post(f"{server}/predict_batch", {"records": [ROW]})
    code, inferred = post(f"{server}/v2/models/churn/infer", {"inputs": columns([ROW, ROW])})
    assert code == 200 and [o["name"] for o in inferred["outputs"]] == ["predict", "prediction_id"]
    inferred_ids = inferred["outputs"][1]["data"]
    _, one = post(f"{server}/v2/models/churn/infer", {"id": "request-7", "inputs": columns([ROW])})
    ids_input = {"name": "prediction_id", "datatype": "BYTES", "shape": [2], "data": ["c-1", "c-2"]}
    _, named = post(f"{server}/v2/models/churn/infer", {"inputs": [*columns([ROW, ROW]), ids_input]})

    assert len(set(made["ids"])) == 2 and own["ids"] == ["order-1", "order-2"]
    assert batched[0]["id"] and len(set(inferred_ids)) == 2 and not set(inferred_ids) & set(made["ids"])
    assert one["id"] == "request-7" and one["outputs"][1]["data"] == ["request-7"]
    assert named["outputs"][1]["data"] == ["c-1", "c-2"]
    # The sample keeps every row of a quiet Pod (MLW_SAMPLE_MAX_ROWS=50 rotates, so look at the newest).
    ids = {row.get("id") for row in recorded(store, "samples")}
    assert {"order-1", "order-2", "request-7", "c-1", "c-2", *made["ids"], *inferred_ids} <= ids


@pytest.mark.parametrize(
    ("route", "body", "names"),
    [
        ("/predict", {"records": [ROW, ROW], "ids": ["a"]}, "`ids` must hold one id per row: 2 rows, 1 ids"),
        ("/predict", {"records": [ROW], "ids": [""]}, "ids[0] must be a string of 1 to 128"),
        ("/feedback", {"labels": [{"id": "a", "label": "maybe"}]}, "labels[0].label must be a class"),
        ("/feedback", {"labels": [{"id": "a", "label": "no"}, {"label": "no"}]}, "labels[1].id must be"),
        ("/feedback", {"labels": [{"id": "a"}]}, "labels[0].label is missing"),
        ("/feedback", {"labels": [{"id": "a", "label": None}]}, "labels[0].label must be a class"),
        ("/feedback", {"labels": []}, "labels: List should have at least 1 item"),
        ("/feedback", {"truth": []}, "labels: Field required"),
    ],
)
def test_bad_ids_and_labels_are_400_naming_the_row_and_field(
    server: str, route: str, body: Any, names: str
) -> None:
    code, answer = post(server + route, body)
    assert code == 400 and list(answer) == ["error"] and names in answer["error"], answer


def test_feedback_records_labels_by_prediction_id(
    server: str, churn_store: tuple[WorkflowStore, TrainedModel]
) -> None:
    store, _ = churn_store
    _, answer = post(f"{server}/predict", {"records": [ROW, ROW]})
    labels = [{"id": answer["ids"][0], "label": "yes"}, {"id": "never-served", "label": "no"}]
    code, recorded_ = post(f"{server}/feedback", {"labels": labels})
    assert code == 200 and recorded_ == {"recorded": 2}, "an unknown id is not an error here"
    rows = recorded(store, "feedback")
    assert {(r["id"], r["label"]) for r in rows} >= {(answer["ids"][0], "yes"), ("never-served", "no")}
    assert all(isinstance(r["ts"], float) for r in rows)
