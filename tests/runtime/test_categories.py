"""One category, one spelling: a column of codes that pandas reads as floats (its CSV has an empty cell)
trains, serves (both protocols) and drifts as the integers the CSV and its clients write."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime import drift
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import train_apart
from serving import serve

ROW: dict[str, Any] = {"x": 0.5, "code": 3, "flag": True}


def csv_rows(rows: int, seed: int) -> list[dict[str, Any]]:
    """Codes 1..3 and a flag; the label is "yes" for code 3 with the flag set."""
    rng = np.random.default_rng(seed)
    return [
        {
            "x": round(float(rng.normal()), 3),
            "code": int(rng.integers(1, 4)),
            "flag": bool(rng.random() < 0.5),
        }
        for _ in range(rows)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> WorkflowStore:
    root = tmp_path_factory.mktemp("store")
    (root / "data").mkdir()
    lines = ["x,code,flag,label"]
    for i, row in enumerate(csv_rows(150, seed=1)):
        label = "yes" if row["code"] == 3 and row["flag"] else "no"
        code = "" if i == 0 else row["code"]  # the one empty cell: pandas reads the column as 1.0, 2.0, 3.0
        flag = "" if i == 1 else row["flag"]
        lines.append(f"{row['x']},{code},{flag},{label}")
    (root / "data" / "codes.csv").write_text("\n".join(lines) + "\n")
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {
                "source": "data/codes.csv",
                "target": "label",
                "features": {"numeric": ["x"], "categorical": ["code", "flag"]},
            },
            "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 10.0}},
            "training": {"crossValidation": 0},
            "storage": {"path": "/unused"},
        }
    )
    store = WorkflowStore(root, "codes")
    train_apart(spec, store, "v1")
    return store


@pytest.fixture(scope="module")
def server(store: WorkflowStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(store.bentoml_home, f"{store.model_name()}:v1", tmp_path_factory.mktemp("serve")) as served:
        yield served.url


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(error.read().decode()) from None


def test_the_model_learns_the_codes_as_written(store: WorkflowStore) -> None:
    card = json.loads((store.bentoml_home / "models" / "codes" / "v1" / "card.json").read_text())
    assert card["schema"]["categories"] == {"code": ["1", "2", "3"], "flag": ["False", "True"]}


@pytest.mark.parametrize(
    ("column", "spellings", "unknown"),
    [
        ("code", [3, 3.0, "3", "3.0", "03", " 3"], 9),  # pandas read 03 and " 3" in the CSV as 3
        ("flag", [True, "true", "TRUE", "True", 1, "1", "yes", "on"], "maybe"),
    ],
)
def test_every_spelling_of_a_category_gets_the_same_answer_on_both_protocols(
    server: str, column: str, spellings: list[Any], unknown: Any
) -> None:
    records = [{**ROW, column: value} for value in [*spellings, unknown]]
    answer = post(f"{server}/predict", {"records": records, "probabilities": True})
    *known, other = answer["probabilities"]
    assert all(p == known[0] for p in known), f"{column}: {spellings} are one category"
    assert answer["predictions"][: len(spellings)] == ["yes"] * len(spellings)
    assert other != known[0], "an unknown category is answered differently: these spellings are known"

    # The Open Inference Protocol types a tensor as a whole: each spelling in the datatype that carries it.
    datatypes = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}
    for record, predicted in zip(records, answer["predictions"], strict=True):
        inputs = [
            {"name": name, "datatype": datatypes[type(value)], "shape": [1], "data": [value]}
            for name, value in record.items()
        ]
        inferred = post(f"{server}/v2/models/codes/infer", {"inputs": inputs})
        assert inferred["outputs"][0]["data"] == [predicted], record


def test_an_integer_code_is_not_a_boolean(server: str) -> None:
    """1 is True only in a boolean column: in the code column, True is a category the model never saw."""
    answer = post(
        f"{server}/predict", {"records": [{**ROW, "code": 1}, {**ROW, "code": True}], "probabilities": True}
    )
    assert answer["probabilities"][0] != answer["probabilities"][1]


def test_served_codes_do_not_drift_from_the_training_floats(server: str, store: WorkflowStore) -> None:
    drift.check(store, "v1", threshold=0.5, min_samples=1)  # what the other tests sent is checked apart
    post(f"{server}/predict", {"records": csv_rows(150, seed=2)})  # as the CSV and its clients write them
    summary = drift.check(store, "v1", threshold=0.5, min_samples=100)
    assert summary["status"] == "ok" and summary["rows"] == 150
    saved = {c["column"]: c for c in json.loads((store.root / summary["result"]).read_text())["columns"]}
    assert saved["code"]["drifted"] is False and saved["flag"]["drifted"] is False, saved
