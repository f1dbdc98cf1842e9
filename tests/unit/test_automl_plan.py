"""The AutoML pattern without a cluster: a training is a search first, its winner is trained as the version
and judged as every version is, and the status shows the search."""

from __future__ import annotations

import json
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


def report(search_id: str = "v1", **counts: int) -> str:
    """A search's progress report as its workers write it (mlworkflow.runtime.search.progress)."""
    return json.dumps(
        {
            "searchId": search_id,
            "metric": "roc_auc",
            "complete": 3,
            "failed": 1,
            "pruned": 0,
            "running": 2,
            "trials": 12,
            **counts,
            "best": {"estimator": "sklearn.ensemble.HistGradientBoostingClassifier", "score": 0.93217},
            "started": "2026-01-01T00:00:00.000000Z",
            "reported": "2026-01-01T00:00:42.500000Z",
        }
    )


def test_a_running_search_shows_its_workers_latest_counts_and_best_so_far() -> None:
    started = plan(spec(), Observed(1, "h1", MLWorkflowStatus()), NOW)
    first = plan(spec(), Observed(1, "h1", started.status, searches=[search(state="Running")]), NOW)
    assert "SearchStarted" in {e.reason for e in first.events}, "an Event at the start"
    assert find(first.status.conditions, "Searched").message == "searching a model for v1"  # type: ignore[union-attr]

    live = plan(
        spec(), Observed(1, "h1", first.status, searches=[search(state="Running", progress=report())]), NOW
    )
    shown = live.status.search
    assert shown is not None and shown.state == "Running"
    assert (shown.trials_complete, shown.trials_failed, shown.trials_pruned, shown.trials_running) == (
        3,
        1,
        0,
        2,
    )
    assert shown.trials == 12 and shown.best_score == 0.93217 and shown.seconds == 42.5
    assert shown.best_estimator == "sklearn.ensemble.HistGradientBoostingClassifier"
    message = (
        "search for v1: 3 of 12 trials complete, 1 failed, 2 running; "
        "best HistGradientBoostingClassifier roc_auc 0.9322"
    )
    assert find(live.status.conditions, "Searched").message == message  # type: ignore[union-attr]
    ready = find(live.status.conditions, "Ready")
    assert live.status.phase == "Searching" and ready is not None and ready.message == message
    assert "SearchStarted" not in {e.reason for e in live.events}, "one start Event"

    # The Job's end: the termination messages are the final word, whatever the Lease said last.
    done = plan(spec(), Observed(1, "h1", live.status, searches=[search(progress=report(complete=1))]), NOW)
    final = done.status.search
    assert final is not None and (final.trials_complete, final.trials_failed, final.trials_running) == (
        11,
        1,
        None,
    )
    assert final.best_score == 0.99 and final.best_estimator == WINNER["estimator"]


def test_stale_or_unreadable_progress_is_not_shown() -> None:
    v1 = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), [trained()], searches=[search()]), NOW)
    for stale in (report("v1"), "{not json", json.dumps({"searchId": "v2", "complete": -1}), None):
        running = plan(
            spec(),
            Observed(
                1, "h1", v1.status, [trained()], searches=[search(), search("v2", "Running", progress=stale)]
            ),
            NOW,
        )
        shown = running.status.search
        assert shown is not None and shown.version == "v2" and shown.trials_complete is None, stale
        assert shown.best_score is None and shown.reported_at is None
        assert find(running.status.conditions, "Searched").message == "searching a model for v2"  # type: ignore[union-attr]


def test_the_search_workers_may_patch_their_own_lease_and_nothing_else() -> None:
    started = plan(spec(), Observed(1, "h1", MLWorkflowStatus()), NOW)
    wf = children.Workflow("bc", "ml", "u", spec())
    wanted = {(m["kind"], m["metadata"]["name"]): m for m in automl.children_for(wf, started, CONTEXT).apply}
    assert {("ServiceAccount", "bc-search"), ("Role", "bc-search"), ("RoleBinding", "bc-search")} <= set(
        wanted
    )
    assert wanted[("Lease", "bc-search")]["metadata"]["labels"][children.WORKFLOW_LABEL] == "bc"
    [rule] = wanted[("Role", "bc-search")]["rules"]
    assert rule == {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["bc-search"],
        "verbs": ["patch"],
    }
    pod = wanted[("Job", "bc-search-v1")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "bc-search" and pod["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MLW_LEASE"]["value"] == "bc-search"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_latest_searchs_gauges_follow_its_progress() -> None:
    from prometheus_client import REGISTRY

    from mlworkflow.controller import metrics

    started = plan(spec(), Observed(1, "h1", MLWorkflowStatus()), NOW)
    live = plan(
        spec(), Observed(1, "h1", started.status, searches=[search(state="Running", progress=report())]), NOW
    )
    metrics.record_status("ml", "gauged", "AutoML", started.status, live.status)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ml", "workflow": "gauged", **labels})

    assert value("mlworkflow_search_current_trials", state="complete") == 3
    assert value("mlworkflow_search_current_trials", state="running") == 2
    assert value("mlworkflow_search_best_score") == 0.93217 and value("mlworkflow_search_seconds") == 42.5
    assert value("mlworkflow_search_trials_total", state="complete") is None, "counted once it finished"
    done = plan(spec(), Observed(1, "h1", live.status, searches=[search()]), NOW)
    metrics.record_status("ml", "gauged", "AutoML", live.status, done.status)
    assert value("mlworkflow_search_current_trials", state="complete") == 11
    assert value("mlworkflow_search_current_trials", state="running") == 0
    assert value("mlworkflow_search_trials_total", state="complete") == 11
    metrics.forget("ml", "gauged")
    assert value("mlworkflow_search_current_trials", state="complete") is None
