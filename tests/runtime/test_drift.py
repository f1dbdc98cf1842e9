"""The drift check on real Evidently reports: shifted inputs drift, an honest resample does not."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlworkflow.runtime import drift
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel
from runtime.conftest import churn_frame


@pytest.fixture
def store(churn_store: tuple[WorkflowStore, TrainedModel], tmp_path: Path) -> WorkflowStore:
    """A private copy of the trained workflow (drift checks keep state in the store)."""
    trained, _ = churn_store
    copy = WorkflowStore(tmp_path, "churn")
    shutil.copytree(trained.bentoml_home, copy.bentoml_home)
    return copy


def serve(store: WorkflowStore, frame: pd.DataFrame, name: str = "pod-a") -> None:
    """Rows as the serving Pods record them."""
    store.samples.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with (store.samples / f"{name}.jsonl").open("a") as out:
        for record in json.loads(frame.to_json(orient="records")):
            out.write(json.dumps({"ts": now, "model": "v1", "features": record, "prediction": "no"}) + "\n")


def features(rows: int, seed: int) -> pd.DataFrame:
    return churn_frame(rows, seed=seed).drop(columns=["churn"])


def test_an_injected_shift_is_detected(store: WorkflowStore) -> None:
    shifted = features(600, seed=5)
    shifted["tenure"] = shifted["tenure"] + 40  # customers stay much longer
    shifted["monthly"] = shifted["monthly"] * 1.8
    shifted["plan"] = "pro"
    serve(store, shifted)
    summary = drift.check(store, "v1", threshold=0.5, min_samples=200, html=True)
    assert summary["status"] == "ok" and summary["drifted"] is True
    assert summary["share"] >= 0.75
    assert {c["column"] for c in summary["columns"]} >= {"tenure", "monthly", "plan"}
    assert all(c["method"] and isinstance(c["score"], float) for c in summary["columns"])
    assert (store.root / summary["report"]).read_text().strip().lower().startswith("<!doctype html")
    saved = json.loads((store.root / summary["result"]).read_text())
    assert {c["column"] for c in saved["columns"]} == {"tenure", "monthly", "plan", "region"}


def test_an_honest_resample_does_not_drift(store: WorkflowStore) -> None:
    serve(store, features(600, seed=11))
    summary = drift.check(store, "v1", threshold=0.5, min_samples=200)
    assert summary["status"] == "ok" and summary["drifted"] is False
    assert summary["share"] < 0.5 and "report" not in summary


def test_too_few_rows_is_not_enough_data_and_the_window_keeps_growing(store: WorkflowStore) -> None:
    serve(store, features(120, seed=3))
    first = drift.check(store, "v1", threshold=0.5, min_samples=200)
    assert first["status"] == "insufficient" and first["rows"] == 120 and "drifted" not in first
    serve(store, features(120, seed=4), name="pod-b")
    second = drift.check(store, "v1", threshold=0.5, min_samples=200)
    assert second["status"] == "ok" and second["rows"] == 240
    third = drift.check(store, "v1", threshold=0.5, min_samples=200)
    assert third["status"] == "insufficient" and third["rows"] == 0, "a checked row is not checked twice"


def test_a_missing_reference_is_a_clear_error(store: WorkflowStore) -> None:
    with pytest.raises(drift.DriftError, match="no reference data for churn v7") as error:
        drift.check(store, "v7", threshold=0.5, min_samples=1)
    assert error.value.reason == "ReferenceMissing"


def test_mismatched_columns_are_a_clear_error(store: WorkflowStore) -> None:
    serve(store, features(300, seed=2).drop(columns=["region"]).assign(country="fr"))
    with pytest.raises(drift.DriftError, match="lack the model's feature 'region'") as error:
        drift.check(store, "v1", threshold=0.5, min_samples=10)
    assert error.value.reason == "ColumnsMismatch"


def test_the_window_read_is_a_bounded_uniform_sample(tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    with (folder / "p.jsonl").open("w") as out:
        for i in range(5000):
            out.write(json.dumps({"ts": 100 + i, "features": {"i": i}}) + "\n")
    window, seen, newest = drift.read_window(folder, since=1099, max_rows=500)
    assert (len(window), seen, newest) == (500, 4000, 5099)
    assert window["i"].min() >= 1000 and np.ptp(window["i"]) > 3000, "sampled across the window, not its head"


def test_skipping_the_widgets_changes_no_verdict(tmp_path: Path) -> None:
    reference = features(2000, seed=21)
    current = features(2000, seed=22)
    current["monthly"] = current["monthly"] * 1.5
    schema = FeatureSchema("churn", ["tenure", "monthly"], ["plan", "region"])
    plain = drift.compare(current, reference, schema, threshold=0.5)
    rendered = drift.compare(current, reference, schema, threshold=0.5, html=tmp_path / "report.html")
    assert plain == rendered
    assert [c.column for c in plain.columns if c.drifted] == ["monthly"]
    assert (tmp_path / "report.html").stat().st_size > 10_000


def run_check(store: WorkflowStore, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """The CronJob's program, as its Pod runs it: exit code and termination message."""
    log = tmp_path / "termination-log"
    code = drift.main(
        [
            f"--store={store.root}",
            "--workflow=churn",
            "--version=v1",
            "--threshold=0.5",
            "--min-samples=100",
            f"--termination-log={log}",
        ]
    )
    return code, json.loads(log.read_text())


def test_a_feature_never_sent_is_missing_in_live_data_and_the_rest_is_checked(
    store: WorkflowStore, tmp_path: Path
) -> None:
    # What the issue saw: 100 served rows whose numeric feature is always null (the imputer answers them).
    serve(store, features(100, seed=11).assign(monthly=None))
    code, summary = run_check(store, tmp_path)
    assert code == 0 and summary["status"] == "ok"
    assert summary["columns"][0] == {"column": "monthly", "method": "missing in live data", "score": 1.0}
    saved = {c["column"]: c for c in json.loads((store.root / summary["result"]).read_text())["columns"]}
    assert saved["monthly"]["drifted"] is True
    assert not any(saved[c]["method"].startswith("missing") for c in ("tenure", "plan", "region"))
    assert summary["share"] == sum(c["drifted"] for c in saved.values()) / 4


def test_a_window_of_one_repeated_row_is_checked(store: WorkflowStore, tmp_path: Path) -> None:
    serve(store, features(1, seed=3).loc[[0] * 100])
    code, summary = run_check(store, tmp_path)
    assert code == 0 and summary["status"] == "ok"
    assert summary["share"] == 1.0, "a window of one repeated row is nothing like the varied reference"


SCHEMA = FeatureSchema("y", ["a", "b"], ["c"])
VARIED = pd.DataFrame({"a": np.arange(30.0), "b": np.arange(30.0), "c": ["x", "y", "z"] * 10})


@pytest.mark.parametrize(
    ("current", "reference", "method", "drifted"),
    [
        (VARIED.assign(a=None), VARIED, "missing in live data", True),
        (VARIED, VARIED.assign(a=None), "missing in reference", True),
        (VARIED.assign(a=None), VARIED.assign(a=None), "missing in live data and reference", False),
        (VARIED.assign(a=np.inf), VARIED, "missing in live data", True),
    ],
)
def test_a_column_without_values_is_a_finding_not_an_error(
    current: pd.DataFrame, reference: pd.DataFrame, method: str, drifted: bool
) -> None:
    result = drift.compare(current, reference, SCHEMA, threshold=0.5)
    first = result.columns[0]
    assert (first.column, first.method, first.drifted) == ("a", method, drifted)
    assert [c.drifted for c in result.columns[1:]] == [False, False], "b and c are compared as usual"
    assert result.share == (1 / 3 if drifted else 0.0)


def test_only_missing_columns_need_no_evidently_report(tmp_path: Path) -> None:
    schema = FeatureSchema("y", ["a"], ["c"])
    result = drift.compare(
        VARIED.assign(a=None, c=None), VARIED, schema, threshold=0.5, html=tmp_path / "report.html"
    )
    assert [(c.method, c.drifted) for c in result.columns] == [("missing in live data", True)] * 2
    assert result.share == 1.0 and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("current", "reference", "drifted"),
    [
        (VARIED.assign(a=5.0, c="x"), VARIED, [True, False, True]),  # constant now, varied before
        (VARIED.assign(a=5.0, c="x"), VARIED.assign(a=5.0, c="x"), [False, False, False]),
        (VARIED.assign(a=6.0, c="y"), VARIED.assign(a=5.0, c="x"), [True, False, True]),
    ],
    ids=["constant window", "constant both, same value", "constant both, another value"],
)
def test_constant_columns_are_compared(
    current: pd.DataFrame, reference: pd.DataFrame, drifted: list[bool]
) -> None:
    result = drift.compare(current, reference, SCHEMA, threshold=0.5)
    assert [c.drifted for c in result.columns] == drifted


def test_a_column_evidently_cannot_take_is_not_compared_and_the_rest_is(
    store: WorkflowStore, tmp_path: Path
) -> None:
    """A reference spanning more than float64 can bin fails Evidently's whole report: the check still
    completes, that column "not compared", the others compared."""
    path = store.model_dir("v1") / "reference.parquet"
    reference = pd.read_parquet(path)
    reference["monthly"] = np.where(np.arange(len(reference)) % 2, 1.7e308, -1.7e308)
    reference.to_parquet(path)
    serve(store, features(100, seed=11))
    code, summary = run_check(store, tmp_path)
    assert code == 0 and summary["status"] == "ok" and summary["notCompared"] == ["monthly"]
    saved = {c["column"]: c for c in json.loads((store.root / summary["result"]).read_text())["columns"]}
    assert saved["monthly"]["method"].startswith("not compared: ValueError: Too many bins")
    assert saved["monthly"]["drifted"] is False
    assert all(not saved[c]["method"].startswith("not compared") for c in ("tenure", "plan", "region"))
    assert summary["share"] == 0.0
