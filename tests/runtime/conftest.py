"""Runtime fixtures: a generated dataset with categorical columns and missing values, trained stores, and a
version served by `bentoml serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime.feedback import feedback_line
from mlworkflow.runtime.model import LoadedModel
from mlworkflow.runtime.serve import JsonLines, SampleRecorder
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel, train
from serving import Served, serve


def churn_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Numeric and categorical columns, with missing values, and a label that depends on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, rows).astype(float),
            "monthly": rng.normal(70, 20, rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "region": rng.choice(["north", "south", "east", "west"], rows),
        }
    )
    score = -0.04 * frame["tenure"] + 0.03 * frame["monthly"] + (frame["plan"] == "basic") * 1.2
    frame["churn"] = np.where(score + rng.normal(0, 0.5, rows) > 0.6, "yes", "no")
    frame.loc[rng.random(rows) < 0.08, "monthly"] = np.nan
    frame.loc[rng.random(rows) < 0.08, "plan"] = None
    return frame


def churn_spec(
    estimator: str = "sklearn.ensemble.RandomForestClassifier", **params: object
) -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/churn-*.csv", "target": "churn"},
            "model": {"estimator": estimator, "params": params or {"n_estimators": 50, "random_state": 0}},
            "training": {"crossValidation": 3},
            "storage": {"path": "/unused"},
        }
    )


@pytest.fixture(scope="session")
def churn_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkflowStore, TrainedModel]:
    root = tmp_path_factory.mktemp("store")
    (root / "data").mkdir()
    churn_frame(1500).to_csv(root / "data" / "churn-2026-01.csv", index=False)
    store = WorkflowStore(root, "churn")
    return store, train(churn_spec(), store, "v1", "Initial")  # type: ignore[arg-type]


def train_apart(
    spec: MLWorkflowSpec,
    store: WorkflowStore,
    version: str,
    trigger: str = "Initial",
    champion: str | None = None,
    *more: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train as the training Pod does, in a process of its own, and return its summary (the termination
    message). (BentoML keeps the first model store a process opens: a test process that trained one
    workflow cannot train another.)"""
    termination = store.root / f"termination-{store.workflow}-{version}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.train"),
            f"--store={store.root}",
            f"--workflow={store.workflow}",
            f"--version={version}",
            f"--trigger={trigger}",
            *([f"--champion={champion}"] if champion else []),
            *more,
            f"--termination-log={termination}",
        ],
        env={**os.environ, "MLW_SPEC": spec.model_dump_json(by_alias=True), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(termination.read_text()))


GAUGE_ROW: dict[str, Any] = {"ratio": 0.5, "share": 0.5, "size": 50.0, "kind": "a"}


def gauge_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Two ratios in [0, 1] with opposite effects (a standard deviation under 1: scaled, a number near
    float32's largest overflows float32), a wider number, a category; a class label and a value."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "ratio": rng.random(rows),
            "share": rng.random(rows),
            "size": rng.normal(50, 10, rows),
            "kind": rng.choice(["a", "b"], rows),
        }
    )
    score = 3 * frame["ratio"] - 2 * frame["share"] + (frame["size"] - 50) / 10 + rng.normal(0, 0.5, rows)
    frame["label"] = np.where(score > 0.5, "high", "low")
    frame["value"] = 30 * frame["ratio"] - 20 * frame["share"] + frame["size"] + rng.normal(0, 1, rows)
    return frame


def gauge_spec(estimator: str, target: str, **params: object) -> MLWorkflowSpec:
    task = "regression" if target == "value" else "classification"
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/gauge.csv", "target": target},
            "model": {"estimator": estimator, "task": task, "params": params},
            "storage": {"path": "/unused"},
        }
    )


@pytest.fixture(scope="session")
def gauge_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WorkflowStore]:
    """Three workflows on the gauge data: a linear classifier and a linear regressor that onnxruntime
    serves, and a forest that scikit-learn serves (its ONNX check fails here: holdout classes differ)."""
    root = tmp_path_factory.mktemp("gauge")
    (root / "data").mkdir()
    frame = gauge_frame(1500)
    frame.drop(columns=["value"]).to_csv(root / "data" / "gauge.csv", index=False)
    models = {
        "linear": (gauge_spec("sklearn.linear_model.LogisticRegression", "label"), "onnxruntime"),
        "forest": (
            gauge_spec("sklearn.ensemble.RandomForestClassifier", "label", n_estimators=50, random_state=2),
            "sklearn",
        ),
    }
    stores = {}
    for name, (spec, backend) in models.items():
        stores[name] = WorkflowStore(root, name)
        trained = train(spec, stores[name], "v1", "Initial")  # type: ignore[arg-type]
        assert trained.backend == backend, f"the {name} model must be served by {backend}"
    regression = tmp_path_factory.mktemp("gauge-value")
    (regression / "data").mkdir()
    frame.drop(columns=["label"]).to_csv(regression / "data" / "gauge.csv", index=False)
    stores["ridge"] = WorkflowStore(regression, "ridge")
    trained = train(gauge_spec("sklearn.linear_model.Ridge", "value"), stores["ridge"], "v1", "Initial")  # type: ignore[arg-type]
    assert trained.backend == "onnxruntime"
    return stores


def bentoml_home(tag: str) -> Path:
    """Where the model `tag` was saved: this process's BentoML store, fixed by the first training."""
    import bentoml

    return Path(bentoml.models.get(tag).path).parents[2]  # <home>/models/<name>/<version>


@pytest.fixture(scope="session")
def linear_server(
    gauge_stores: dict[str, WorkflowStore], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The linear classifier, served by onnxruntime."""
    with serve(bentoml_home("linear:v1"), "linear:v1", tmp_path_factory.mktemp("linear")) as served:
        yield served


def serve_and_label(
    store: WorkflowStore, frame: pd.DataFrame, labelled: float = 1.0, target: str = "label"
) -> list[str]:
    """`frame` predicted by v1 and recorded as a serving Pod does (every row: a quiet Pod), then the first
    `labelled` share of its true labels (`target`) sent back as `POST /feedback` records them. Returns the
    ids."""
    model = LoadedModel(store.model_dir("v1"))
    inputs = frame[model.schema.features]
    batch = model.checker.from_records(json.loads(inputs.to_json(orient="records")))
    predictions = model.predict(batch).predictions.tolist()
    ids = [f"p-{i}" for i in range(len(frame))]
    SampleRecorder(store.samples, "pod-a", 100_000, 1e9).record("v1", batch, predictions, ids)
    labels = frame[target].tolist()[: int(labelled * len(frame))]
    JsonLines(store.feedback, "pod-a", 100_000).write(
        [
            feedback_line(1.0e9 + i, prediction_id, label)
            for i, (prediction_id, label) in enumerate(zip(ids, labels, strict=False))
        ]
    )
    return ids
