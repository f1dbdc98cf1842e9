"""Runtime fixtures: a generated dataset with categorical columns and missing values, trained stores, and a
version served by `bentoml serve`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kubelocal.net import free_port
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel, train
from support import wait_for


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


def train_apart(spec: MLWorkflowSpec, store: WorkflowStore, version: str) -> dict[str, Any]:
    """Train as the training Pod does, in a process of its own, and return its summary. (BentoML keeps the
    first model store a process opens: a test process that trained one workflow cannot train another.)"""
    termination = store.root / f"termination-{store.workflow}-{version}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.train"),
            f"--store={store.root}",
            f"--workflow={store.workflow}",
            f"--version={version}",
            f"--termination-log={termination}",
        ],
        env={**os.environ, "MLW_SPEC": spec.model_dump_json(by_alias=True)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(termination.read_text()))


@contextlib.contextmanager
def bentoml_serve(store: WorkflowStore, version: str, workdir: Path) -> Iterator[str]:
    """`bentoml serve` of one version on a free local port, as a serving Pod runs it; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(store.bentoml_home),
        "MODEL_TAG": f"{store.model_name()}:{version}",
        "HOSTNAME": "test-pod",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "mlworkflow.runtime.serve:ModelService"]
    with open(workdir / "bentoml.log", "wb") as output:
        process = subprocess.Popen(
            [*command, "--host=127.0.0.1", f"--port={port}"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or _ready(f"{url}/readyz"), 90, "bentoml serve ready")
        assert process.poll() is None, (workdir / "bentoml.log").read_text()
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
