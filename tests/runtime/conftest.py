"""Runtime fixtures: a generated dataset with categorical columns and missing values, and trained stores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel, train


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
