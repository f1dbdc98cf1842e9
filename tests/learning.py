"""Helpers of the online learner's tests: a generated stream, a warm-up version, the learner as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.datasets import make_classification

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import train_apart

FEATURES = [f"f{i:02d}" for i in range(40)]
# An SGD classifier with a constant step: 300 warm-up rows leave it room to improve on the stream, and one
# mini-batch of flipped labels costs its canary score several times what a clean one ever does.
ESTIMATOR = {
    "estimator": "sklearn.linear_model.SGDClassifier",
    "params": {"loss": "log_loss", "learning_rate": "constant", "eta0": 0.01, "random_state": 0},
}
WARM_ROWS = 600  # half trains v1, half is its holdout: the canary


def online_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Three classes, 40 numeric features (25 informative), seeded: slice the warm-up and the stream from
    one call, so that they come from one distribution."""
    x, y = make_classification(
        n_samples=rows,
        n_features=len(FEATURES),
        n_informative=25,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=1.0,
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = y
    return frame


# A workflow on a bundled dataset, learning from files: for tests of what surrounds the learner.
WINE_SPEC = MLWorkflowSpec.model_validate(
    {
        "pattern": "OnlineLearning",
        "data": {"source": "sklearn://wine", "target": "target"},
        "model": {
            "estimator": "sklearn.linear_model.SGDClassifier",
            "params": {"loss": "log_loss", "random_state": 0},
        },
        "training": {"crossValidation": 3},
        "online": {"source": {"path": "incoming/*.csv"}},
        "storage": {"path": "/unused"},
    }
)


def online_spec(source: dict[str, Any], **online: Any) -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "OnlineLearning",
            "data": {"source": "data/warm.csv", "target": "label"},
            "model": ESTIMATOR,
            "training": {"holdout": 0.5},
            "online": {"source": source, **online},
            "storage": {"path": "/unused"},
        }
    )


def warm_up(root: Path, workflow: str, warm: pd.DataFrame, spec: MLWorkflowSpec) -> WorkflowStore:
    """`warm` as data/warm.csv and version v1 trained on it by the training runtime."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    warm.to_csv(root / "data" / "warm.csv", index=False)
    store = WorkflowStore(root, workflow)
    train_apart(spec, store, "v1")
    return store


def start_learner(
    store: WorkflowStore, spec: MLWorkflowSpec, start: str = "v1", port: int | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """The learner as its Pod runs it (`-m mlworkflow.runtime.learn`); log: <root>/learn-<workflow>.log."""
    log = (store.root / f"learn-{store.workflow}.log").open("ab")
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.learn"),
            f"--store={store.root}",
            f"--workflow={store.workflow}",
            *([f"--port={port}"] if port else []),
            f"--termination-log={store.root / f'termination-{store.workflow}'}",
        ],
        env={
            **os.environ,
            "MLW_SPEC": spec.model_dump_json(by_alias=True),
            "MLW_START_VERSION": start,
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, and the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def log_of(store: WorkflowStore) -> str:
    path = store.root / f"learn-{store.workflow}.log"
    return path.read_text()[-3000:] if path.exists() else ""


def progress(store: WorkflowStore) -> dict[str, Any]:
    """The learner's report (progress.json), {} before the first."""
    try:
        return dict(json.loads(store.online_progress.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def published(store: WorkflowStore) -> dict[str, Any]:
    """The card of the snapshot in `online/latest`, {} before the first."""
    try:
        version = store.online_latest.read_text().strip()
        return dict(json.loads((store.model_dir(version) / "card.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def snapshots(store: WorkflowStore, start: str = "v1") -> list[dict[str, Any]]:
    """The cards of the snapshots kept in the model store, oldest first."""
    folder = store.model_dir(start).parent
    cards = [
        json.loads((path / "card.json").read_text())
        for path in folder.glob(f"{start}.*")
        if (path / "card.json").exists()
    ]
    return sorted(cards, key=lambda card: int(card["version"].rsplit(".", 1)[1]))


def archived(store: WorkflowStore) -> pd.DataFrame:
    """Every row of the stream archive."""
    parts = sorted(store.stream_archive.glob("*/part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
