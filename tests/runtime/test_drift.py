"""The drift check on real Evidently reports: shifted inputs drift, an honest resample does not."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlworkflow.runtime import drift
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
    from mlworkflow.runtime.data import FeatureSchema

    reference = features(2000, seed=21)
    current = features(2000, seed=22)
    current["monthly"] = current["monthly"] * 1.5
    schema = FeatureSchema("churn", ["tenure", "monthly"], ["plan", "region"])
    plain = drift.compare(current, reference, schema, threshold=0.5)
    rendered = drift.compare(current, reference, schema, threshold=0.5, html=tmp_path / "report.html")
    assert plain == rendered
    assert [c.column for c in plain.columns if c.drifted] == ["monthly"]
    assert (tmp_path / "report.html").stat().st_size > 10_000
