"""OnlineLearning's batch retraining: the training runtime reads the archived stream too, and judges the
new version against the learner's snapshot on rows neither saw."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

from learning import WINE_SPEC
from mlworkflow.runtime import holdout
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import train_apart


def test_a_retraining_learns_the_archive_and_holds_out_only_rows_the_snapshot_never_saw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = WorkflowStore(tmp_path, "wine")
    first = train_apart(WINE_SPEC, store, "v1")
    # The learner's snapshot of v1 (here: v1 itself, as a learned copy would be saved).
    shutil.copytree(store.model_dir("v1"), store.model_dir("v1.3"))
    wine = load_wine(as_frame=True).frame
    rng = np.random.default_rng(1)
    stream = wine.sample(90, random_state=1).reset_index(drop=True)
    stream.iloc[:, :-1] *= rng.normal(
        1, 0.01, (90, wine.shape[1] - 1)
    )  # new rows, not copies of the source's
    for hour, part in (("2026-01-01-10", stream[:40]), ("2026-01-01-11", stream[40:])):
        (store.stream_archive / hour).mkdir(parents=True)
        part.to_parquet(store.stream_archive / hour / "part-0.parquet")

    second = train_apart(WINE_SPEC, store, "v2", "Manual", "v1.3", "--stream-archive")

    assert second["rows"] == len(wine) + 90
    v1_trained = holdout.load_rows(store.model_dir("v1"))
    assert v1_trained is not None
    # Seen by the snapshot: v1's training rows and every archived row; what is left judges both.
    assert second["holdout"]["excludedRows"] == len(v1_trained) + 90
    assert second["holdout"]["rows"] == first["holdout"]["rows"] == len(wine) - len(v1_trained)
    assert "f1_macro" in second["champion"]["metrics"]
    trained_rows = holdout.load_rows(store.model_dir("v2"))
    assert trained_rows is not None and len(trained_rows) == len(v1_trained) + 90


def test_without_an_archive_the_source_alone_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = WorkflowStore(tmp_path, "wine")
    train_apart(WINE_SPEC, store, "v1")
    second = train_apart(WINE_SPEC, store, "v2", "Manual", "v1", "--stream-archive")
    assert second["rows"] == len(pd.DataFrame(load_wine().data))
