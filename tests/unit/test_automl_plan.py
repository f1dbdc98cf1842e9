"""The AutoML pattern without a cluster: a training is a search first, its winner is trained as the version
and judged as every version is, and the status shows the search."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mlworkflow.api.conditions import find
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired import children
from mlworkflow.desired.lifecycle import Observed, SearchRun, ServingState, TrainingRun
from mlworkflow.desired.patterns import automl
from mlworkflow.desired.plan import plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "automl-breast-cancer.yaml"
CONTEXT = children.RuntimeContext(image="registry.invalid/mlw:1")
WINNER = {"estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 100}}


def spec() -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"])


def search(
    version: str = "v1", state: str = "Succeeded", trigger: Trigger = Trigger.INITIAL, **more: Any
) -> SearchRun:
    result = {
        "status": "ok",
        "trials": {"complete": 11, "failed": 1, "pruned": 0, "total": 12},
        "best": {**WINNER, "score": 0.99, "std": 0.01, "trial": 4},
        "leaderboard": [
            {"rank": r, **WINNER, "score": 1 - r / 100, "std": 0.01, "seconds": 1.0} for r in range(1, 13)
        ],
    }
    return SearchRun(
        version, trigger, "h1", state, result if state == "Succeeded" else {}, finished_at=NOW, **more
    )  # type: ignore[arg-type]


def trained(version: str = "v1") -> TrainingRun:
    result = {"status": "ok", "metrics": {"roc_auc": 0.98}, "backend": "sklearn", "holdout": {"rows": 114}}
    return TrainingRun(version, Trigger.INITIAL, "h1", "Succeeded", result, finished_at=NOW)


def test_a_new_workflow_searches_first_and_then_trains_the_winner() -> None:
    started = plan(spec(), Observed(1, "h1", MLWorkflowStatus()), NOW)
    assert started.train is not None and started.train.version == "v1" and started.refit is None
    wf = children.Workflow("bc", "ml", "u", spec())
    jobs = [m for m in automl.children_for(wf, started, CONTEXT).apply if m["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == ["bc-search-v1"], "a search, not a training, first"
    body = jobs[0]["spec"]
    assert (body["completionMode"], body["completions"], body["parallelism"]) == ("Indexed", 3, 3)
    args = body["template"]["spec"]["containers"][0]["args"]
    assert "--trials=12" in args and "--workers=3" in args and "--sampler=random" in args

    searching = plan(spec(), Observed(1, "h1", started.status, searches=[search(state="Running")]), NOW)
    assert searching.train is None and searching.status.phase == "Searching"
    condition = find(searching.status.conditions, "Searched")
    assert condition is not None and condition.status == "Unknown"

    done = plan(spec(), Observed(1, "h1", searching.status, searches=[search()]), NOW)
    assert done.train is None and done.refit is not None and done.refit.version == "v1"
    assert done.refit.model == WINNER and done.status.phase == "Training"
    assert done.status.search is not None and len(done.status.search.leaderboard) == 10, "bounded in status"
    assert {"SearchSucceeded", "TrainingStarted"} <= {e.reason for e in done.events}
    [job] = [m for m in automl.children_for(wf, done, CONTEXT).apply if m["kind"] == "Job"]
    assert job["metadata"]["name"] == "bc-train-v1"
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    trained_spec = MLWorkflowSpec.model_validate_json(env["MLW_SPEC"])
    assert trained_spec.model is not None and trained_spec.model.estimator == WINNER["estimator"]
    assert trained_spec.model.params == WINNER["params"] and trained_spec.model.task == "classification"
    assert job["metadata"]["annotations"][children.SPEC_HASH_ANNOTATION] == children.model_spec_hash(
        spec()
    ), "the workflow's own spec hash: the winner is not a spec change"

    refitting = plan(
        spec(),
        Observed(
            1, "h1", done.status, [TrainingRun("v1", Trigger.INITIAL, "h1", "Running")], searches=[search()]
        ),
        NOW,
    )
    assert refitting.refit is None and refitting.train is None, "the winner is trained once"
    served = plan(
        spec(),
        Observed(1, "h1", refitting.status, [trained()], ServingState("v1", True), searches=[search()]),
        NOW,
    )
    assert served.status.phase == "Serving" and served.status.model.version == "v1"  # type: ignore[union-attr]


def test_a_failed_search_is_a_failed_version() -> None:
    failed = SearchRun(
        "v1",
        Trigger.INITIAL,
        "h1",
        "Failed",
        {"status": "error", "reason": "TooManyFailedTrials", "message": "6 trials failed"},
        "6 trials failed",
        NOW,
    )
    result = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), searches=[failed]), NOW)
    assert result.refit is None and result.train is None
    stalled = find(result.status.conditions, "Stalled")
    assert stalled is not None and stalled.reason == "TrainingFailed" and "6 trials failed" in stalled.message
    assert result.status.history[0].reason == "TooManyFailedTrials"
    assert find(result.status.conditions, "Searched").reason == "SearchFailed"  # type: ignore[union-attr]


def test_a_drift_retraining_searches_again_warm_started_from_the_champions_search() -> None:
    status = plan(
        spec(),
        Observed(1, "h1", MLWorkflowStatus(), [trained()], ServingState("v1", True), searches=[search()]),
        NOW,
    ).status
    asked = plan(
        spec(),
        Observed(
            1, "h1", status, [trained()], ServingState("v1", True), retrain_request="x", searches=[search()]
        ),
        NOW,
    )
    assert asked.train is not None and asked.train.champion == "v1"
    wf = children.Workflow("bc", "ml", "u", spec())
    [job] = [m for m in automl.children_for(wf, asked, CONTEXT).apply if m["kind"] == "Job"]
    assert job["metadata"]["annotations"][automl.CHAMPION_ANNOTATION] == "v1"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--warm-start={children.STORE_MOUNT}/bc/automl/v1/leaderboard.json" in args
    # The winner of that search is trained against the champion, as every retraining is.
    second = search("v2", trigger=Trigger.MANUAL, champion="v1")
    refit = plan(
        spec(),
        Observed(1, "h1", asked.status, [trained()], ServingState("v1", True), searches=[search(), second]),
        NOW,
    ).refit
    assert refit is not None and (refit.version, refit.champion, refit.trigger) == (
        "v2",
        "v1",
        Trigger.MANUAL,
    )


def test_the_final_summary_is_the_worker_that_saw_most_trials_finished() -> None:
    from mlworkflow.desired.lifecycle import search_result

    early = {
        "status": "ok",
        "trials": {"complete": 5, "failed": 0, "pruned": 0, "total": 6},
        "best": {"score": 0.9},
    }
    last = {
        "status": "ok",
        "trials": {"complete": 5, "failed": 1, "pruned": 0, "total": 6},
        "best": {"score": 0.95},
    }
    assert search_result([early, last], succeeded=True) == (last, "")
    assert search_result([last, early], succeeded=True) == (last, "")
    failed = {"status": "error", "reason": "TooManyFailedTrials", "message": "6 trials failed"}
    assert search_result([early, failed], succeeded=False) == (failed, "6 trials failed")
