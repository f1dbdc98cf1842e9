"""Performance monitoring on generated data whose label relationship changes while its inputs do not: the
drift check sees nothing, the performance check on labelled predictions sees the decay, the planner retrains
(trigger Performance), and the challenger trained on the new world is promoted. And the confidence-based
estimate (CBPE) against the truth."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.conditions import find
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired.children import monitoring_args
from mlworkflow.desired.lifecycle import DriftCheck, Observed, ServingState, TrainingRun
from mlworkflow.desired.plan import plan
from mlworkflow.runtime import drift, performance, pipeline, predict, story
from mlworkflow.runtime.feedback import feedback_line
from mlworkflow.runtime.serve import JsonLines
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import serve_and_label, train_apart
from support import story_traces

NOW = pd.Timestamp("2026-01-01T00:00:00Z").to_pydatetime()


def world(rows: int, flipped: bool, seed: int) -> pd.DataFrame:
    """x1, x2 standard normal in both worlds; the label is x1 + x2 > 0 (with noise), then x1 - x2 > 0."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, rows), rng.normal(0, 1, rows)
    score = (x1 - x2 if flipped else x1 + x2) + rng.normal(0, 0.5, rows)
    return pd.DataFrame({"x1": x1, "x2": x2, "label": np.where(score > 0, "yes", "no")})


SPEC = MLWorkflowSpec.model_validate(
    {
        "pattern": "WebService",
        "data": {"source": "data/part-*.csv", "target": "label"},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression"},
        "training": {"crossValidation": 0},
        "monitoring": {"minSamples": 200, "cooldown": "1s"},
        "storage": {"path": "/unused"},
    }
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkflowStore, dict[str, Any]]:
    root = tmp_path_factory.mktemp("decay")
    (root / "data").mkdir()
    world(1500, flipped=False, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    store = WorkflowStore(root, "decay")
    return store, train_apart(SPEC, store, "v1")


@pytest.fixture
def store(trained: tuple[WorkflowStore, dict[str, Any]], tmp_path: Path) -> WorkflowStore:
    """A private copy (the checks keep their windows' state in the store)."""
    original, _ = trained
    shutil.copytree(original.root, tmp_path, dirs_exist_ok=True)
    return WorkflowStore(tmp_path, original.workflow)


def monitor(store: WorkflowStore, tmp_path: Path, metric: str = "f1_macro") -> dict[str, Any]:
    """The monitoring Job's program, as the CronJob runs it; its termination message."""
    message = tmp_path / "termination"
    argv = [f"--store={store.root}", f"--workflow={store.workflow}", "--version=v1", "--threshold=0.5"]
    argv += ["--min-samples=200", f"--metric={metric}", "--min-labelled-rows=200"]
    assert drift.main([*argv, f"--termination-log={message}"]) == 0
    return dict(json.loads(message.read_text()))


def run(version: str, trigger: Trigger, summary: dict[str, Any]) -> TrainingRun:
    return TrainingRun(version, trigger, "h1", "Succeeded", summary, finished_at=NOW)


def test_a_changed_label_relationship_is_measured_retrained_on_and_promoted(
    trained: tuple[WorkflowStore, dict[str, Any]], store: WorkflowStore, tmp_path: Path
) -> None:
    _, v1 = trained
    serve_and_label(store, world(600, flipped=True, seed=2))
    summary = monitor(store, tmp_path)

    assert summary["status"] == "ok" and summary["drifted"] is False, "the inputs did not move"
    measured = summary["performance"]
    assert measured["status"] == "ok" and measured["labelledRows"] == 600 and measured["unknownLabels"] == 0
    assert measured["baseline"] == v1["metrics"]["f1_macro"] > 0.85
    assert measured["measured"] < 0.6, "the served model is about as good as a coin in the new world"
    # The estimate cannot see a change of P(label | inputs) alone: this is what the labels are for.
    assert measured["estimated"] > 0.8

    served = plan(SPEC, Observed(1, "h1", MLWorkflowStatus(), [run("v1", Trigger.INITIAL, v1)]), NOW)
    status = plan(SPEC, Observed(1, "h1", served.status, [], ServingState("v1", True)), NOW).status
    decayed = plan(
        SPEC,
        Observed(1, "h1", status, [], ServingState("v1", True), DriftCheck("decay-check-1", NOW, summary)),
        NOW,
    )
    assert find(decayed.status.conditions, "Degraded").status == "True"  # type: ignore[union-attr]
    assert find(decayed.status.conditions, "Drifted").status == "False"  # type: ignore[union-attr]
    request = decayed.train
    assert request is not None and (request.version, request.trigger, request.champion) == (
        "v2",
        Trigger.PERFORMANCE,
        "v1",
    )

    # The data pipeline appends labelled rows of the new world; the retraining is judged on unseen rows.
    world(1500, flipped=True, seed=3).to_csv(store.root / "data" / "part-2.csv", index=False)
    v2 = train_apart(SPEC, store, "v2", "Performance", "v1", f"--drift-report={request.drift_report}")
    after = plan(SPEC, Observed(1, "h1", decayed.status, [run("v2", Trigger.PERFORMANCE, v2)]), NOW)
    record = after.status.history[0]
    assert (record.version, record.trigger, record.outcome, record.reason) == (
        "v2",
        Trigger.PERFORMANCE,
        "Promoted",
        "Better",
    ), record.message
    assert after.status.model.version == "v2" and record.drift_report == request.drift_report  # type: ignore[union-attr]
    # Judged on rows neither saw: v1's held-out rows of the old world and the new world's unseen rows.
    assert record.metrics["f1_macro"] > record.champion_metrics["f1_macro"] + 0.1

    # The story the next check draws, from the store alone: both versions served (v1 is v2's champion),
    # the drift check under its threshold, the decay measured while the estimate saw nothing.
    page = story.write_report(store, "f1_macro", "v2")
    text = page.read_text()
    drawn = story_traces(text)
    script = re.search(r'<script src="([^"]+)"', text)
    assert script and (page.parent / script[1]).stat().st_size > 1_000_000, "plotly.js beside the page"
    promoted = drawn["promoted version"]
    assert promoted["text"] == ["v1", "v2"] and promoted["y"] == [
        v1["metrics"]["f1_macro"],
        v2["metrics"]["f1_macro"],
    ]
    assert drawn["rejected version"]["y"] == [] and set(drawn["drift threshold"]["y"]) == {0.5}
    assert drawn["champion on the same rows"]["y"] == [record.champion_metrics["f1_macro"]]
    assert drawn["drift share"]["y"] == [summary["share"]]
    assert drawn["measured"]["y"] == [measured["measured"]] and drawn["estimated (CBPE)"]["y"] == [
        measured["estimated"]
    ]


def test_batch_predictions_are_measured_on_a_labels_file_joined_on_the_id_column(
    store: WorkflowStore, tmp_path: Path
) -> None:
    """A Forecast run predicts orders of the new world; their labels come later in a file keyed by the
    order number (integers in both files): the monitoring job, with the arguments the operator gives it,
    measures the decay as it does for served predictions."""
    orders = world(400, flipped=True, seed=7).assign(order=np.arange(1000, 1400))
    (store.root / "orders").mkdir()
    orders[["order", "x1", "x2"]].to_csv(store.root / "orders" / "2026-01-02.csv", index=False)
    batch = {"input": "orders/*.csv", "output": "predictions", "idColumn": "order", "labels": "labels/*.csv"}
    spec = MLWorkflowSpec.model_validate(
        {**SPEC.model_dump(by_alias=True), "pattern": "Forecast", "batch": batch}
    )
    assert spec.batch is not None
    predict.execute(predict.Run(store, spec.batch, "v1", "run-1", 0, 1), 10_000)
    (store.root / "labels").mkdir()
    orders[["order", "label"]].to_csv(store.root / "labels" / "2026-01-03.csv", index=False)

    message = tmp_path / "termination"
    argv = [*monitoring_args(store.workflow, spec, "v1", str(store.root)), f"--termination-log={message}"]
    assert "--id-column=order" in argv and drift.main(argv) == 0
    measured = json.loads(message.read_text())["performance"]
    assert measured["status"] == "ok", measured
    assert measured["labelledRows"] == 400 and measured["unknownLabels"] == 0
    assert measured["measured"] < 0.6 < 0.85 < measured["baseline"]
    published = pd.read_parquet(next((store.root / "predictions" / "run-1").glob("part-*.parquet")))
    # Copied as written (a CSV column is text); the prediction ids are the same text as the label file's.
    assert published["order"].tolist() == orders["order"].astype(str).tolist()


def test_the_estimate_is_close_to_the_measured_accuracy(store: WorkflowStore, tmp_path: Path) -> None:
    """CBPE on 2,000 fresh predictions of the same world, calibrated on v1's 300 held-out rows.

    Tolerance 0.03 in accuracy: the measured accuracy itself, on 2,000 labelled rows near 0.88, has a
    standard error of sqrt(0.88 * 0.12 / 2000) = 0.007, and isotonic calibration on 300 rows adds about as
    much again; 0.03 is three to four of those standard errors, and an estimate that is wrong in kind (a
    model judged on its training rows, or uncalibrated overconfident scores) misses by more."""
    serve_and_label(store, world(2000, flipped=False, seed=5))
    checked = monitor(store, tmp_path, metric="accuracy")["performance"]
    assert checked["status"] == "ok" and checked["labelledRows"] == 2000
    assert abs(checked["estimatedOnLabelled"] - checked["measured"]) <= 0.03, checked
    assert abs(checked["estimated"] - checked["measured"]) <= 0.03, checked


def test_labels_of_unrecorded_predictions_are_counted_and_too_few_labels_wait(
    store: WorkflowStore, tmp_path: Path
) -> None:
    ids = serve_and_label(store, world(300, flipped=False, seed=6), labelled=0.5)
    JsonLines(store.feedback, "pod-b", 100).write([feedback_line(2.0e9, "never-served", "yes")])
    first = monitor(store, tmp_path)["performance"]
    assert first["status"] == "insufficient" and first["labelledRows"] == 150 and first["unknownLabels"] == 1
    assert "150 labelled predictions of v1" in first["message"]
    late = [feedback_line(3.0e9 + i, prediction_id, "yes") for i, prediction_id in enumerate(ids[150:])]
    JsonLines(store.feedback, "pod-b", 1000).write(late)
    second = monitor(store, tmp_path)["performance"]
    assert second["status"] == "ok" and second["labelledRows"] == 300, "the labels window kept growing"
    third = monitor(store, tmp_path)["performance"]
    assert third["status"] == "insufficient" and third["labelledRows"] == 0, "a label is counted once"


def test_cbpe_on_known_probabilities() -> None:
    """The expected confusion matrix of two predictions: `yes` at 0.8 and `no` at 0.4 (P(yes))."""
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4]])
    estimated = performance.estimate(probabilities, np.array(["yes", "no"], dtype=object), ["no", "yes"])
    assert estimated["accuracy"] == pytest.approx((0.8 + 0.6) / 2)
    # yes: TP 0.8, FP 0.2, FN 0.4 -> F1 1.6 / 2.2; no: TP 0.6, FP 0.4, FN 0.2 -> F1 1.2 / 1.8.
    assert estimated["f1_macro"] == pytest.approx((1.6 / 2.2 + 1.2 / 1.8) / 2)


def test_integer_classes_joined_from_json_are_scored() -> None:
    """Labels and recorded predictions of classes 0 and 1 come back from JSON as an object array of ints,
    which scikit-learn's metrics call an "unknown" target type unless they are given as lists."""
    recorded = np.array([0, 1, 1, 0], dtype=object)
    scored = pipeline.metrics("classification", pd.Series([0, 1, 0, 0], dtype=object), recorded)
    assert scored["accuracy"] == 0.75
