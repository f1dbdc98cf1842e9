"""The AutoML pattern: every training is a model search first — an Indexed Job of `spec.automl.parallelism`
workers running `python -m mlworkflow.runtime.search`, sharing one Optuna study in the artifact store — and
then the search's winner is trained as the version (the training runtime: same model card, holdout rules and
champion/challenger decision as every version) and served as in WebService.

While a search runs, its workers report how it stands (trials done, failed, pruned, running; the best so far)
as JSON in the `mlworkflow.io/progress` annotation of the Lease `<workflow>-search`, which the operator
creates once with the ServiceAccount, Role and RoleBinding allowing the search Pods to patch it (and nothing
else); the planner shows that report in status.search and the `Searched` condition. Once the search Job
ended, its workers' termination messages are the final word."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mlworkflow.api.conditions import set_condition
from mlworkflow.api.v1alpha1 import (
    ConditionStatus,
    LeaderboardEntry,
    MLWorkflowSpec,
    MLWorkflowStatus,
    SearchStatus,
    promotion_metric,
)
from mlworkflow.desired import children
from mlworkflow.desired.children import Children, Manifest, RuntimeContext, Workflow
from mlworkflow.desired.lifecycle import (
    Deployment,
    Event,
    Observed,
    Plan,
    SearchRun,
    TrainRequest,
)
from mlworkflow.desired.patterns import webservice

SEARCHED = "Searched"
RETRIES_PER_WORKER = 2
MAX_ESTIMATOR_CHARS = 256  # status.search.bestEstimator's bound
CHAMPION_ANNOTATION = "mlworkflow.io/champion"
DRIFT_REPORT_ANNOTATION = "mlworkflow.io/drift-report"


def deploy(
    spec: MLWorkflowSpec,
    observed: Observed,
    status: MLWorkflowStatus,
    events: list[Event],
    now: datetime,
    endpoint: str | None,
) -> Deployment:
    """Serve as WebService does; record the latest search (condition `Searched`, a bounded leaderboard) and
    train the winner of a search that succeeded and whose version has no training yet."""
    deployment = webservice.deploy(spec, observed, status, events, now, endpoint)
    trained = {r.version for r in observed.runs if not r.searching}
    latest = max(observed.searches, key=lambda s: _number(s.version), default=None)
    if latest is not None:
        previous = status.search
        status.search = search_status(spec, latest)
        new = previous is None or previous.version != latest.version
        if latest.state == "Running" and new:
            events.append(_started_event(spec, status.search))
        if latest.state != "Running" and (new or (previous is not None and previous.state == "Running")):
            events.append(_finished_event(status.search))
    if status.search is not None:
        status.conditions = set_condition(
            status.conditions, SEARCHED, *_searched_condition(status.search), observed.generation, now
        )
    refit = None
    for search in sorted(observed.searches, key=lambda s: _number(s.version)):
        model = searched_model(search.result)
        if search.state == "Succeeded" and search.version not in trained and model is not None:
            refit = TrainRequest(
                search.version,
                search.trigger,
                champion=search.champion,
                drift_report=search.drift_report,
                retrain_request=search.retrain_request,
                model=model,
            )
            what = f"training {search.version}: the search's winner {model['estimator']} {model['params']}"
            events.append(Event("Normal", "TrainingStarted", what))
            break
    return Deployment(deployment.version, deployment.outcome, refit=refit)


def _number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0


def search_status(spec: MLWorkflowSpec, search: SearchRun) -> SearchStatus:
    """A search as the status shows it: counts, the metric, the best trial, the ten best trials. While it
    runs, the counts and the best so far are its workers' latest progress report, if it is this search's."""
    trials = search.result.get("trials") or {}
    best = search.result.get("best") or {}
    status = SearchStatus(
        version=search.version,
        state=search.state,
        trials_complete=trials.get("complete"),
        trials_failed=trials.get("failed"),
        trials_pruned=trials.get("pruned"),
        trials=spec.automl.trials if spec.automl else None,
        metric=spec.automl.metric if spec.automl and spec.automl.metric else promotion_metric(spec),
        best_estimator=str(best["estimator"])[:MAX_ESTIMATOR_CHARS] if best.get("estimator") else None,
        best_score=best.get("score"),
        leaderboard=[
            LeaderboardEntry.model_validate(row) for row in (search.result.get("leaderboard") or [])[:10]
        ],
        seconds=search.result.get("seconds"),
        finished_at=search.finished_at,
        message=(search.message or "")[:4096] if search.state == "Failed" else "",
    )
    progress = read_progress(search.progress, search.version) if search.state == "Running" else None
    if progress is not None:
        best_so_far = progress.best or BestTrial()
        status = status.model_copy(
            update={
                "trials_complete": progress.complete,
                "trials_failed": progress.failed,
                "trials_pruned": progress.pruned,
                "trials_running": progress.running,
                "trials": progress.trials if progress.trials is not None else status.trials,
                "best_estimator": best_so_far.estimator,
                "best_score": best_so_far.score,
                "started_at": progress.started,
                "reported_at": progress.reported,
                "seconds": max(0.0, (progress.reported - progress.started).total_seconds())
                if progress.started and progress.reported
                else None,
            }
        )
    return status


class BestTrial(BaseModel):
    estimator: str | None = None
    score: float | None = None


class SearchProgress(BaseModel):
    """A search's progress report as its workers write it (`mlworkflow.runtime.search`)."""

    search_id: str = Field(alias="searchId")
    complete: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    pruned: int = Field(0, ge=0)
    running: int = Field(0, ge=0)
    trials: int | None = Field(None, ge=0)
    best: BestTrial | None = None
    started: datetime | None = None
    reported: datetime | None = None


def read_progress(text: str | None, version: str) -> SearchProgress | None:
    """The progress report `text` (JSON) when it is the search of `version`'s and can be read, else None:
    the Lease outlives a search, so it holds an earlier search's final report until a worker of this one
    reports; what cannot be read is shown as no report (the final summary does not depend on it)."""
    if not text:
        return None
    try:
        progress = SearchProgress.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None
    if progress.search_id != version:
        return None
    if progress.best is not None and progress.best.estimator is not None:
        progress.best.estimator = progress.best.estimator[:MAX_ESTIMATOR_CHARS]
    return progress


def searching_message(status: MLWorkflowStatus, version: str) -> str:
    """What the Ready condition says while `version`'s search runs: its counts once a worker reported."""
    search = status.search
    if search is not None and search.version == version:
        return _running_message(search)
    return f"searching a model for {version}"


def _searched_condition(search: SearchStatus) -> tuple[ConditionStatus, str, str]:
    if search.state == "Running":
        return ConditionStatus.UNKNOWN, "Searching", _running_message(search)
    if search.state == "Failed":
        failed = f"the search for {search.version} failed: {search.message}"
        return ConditionStatus.FALSE, "SearchFailed", failed
    return ConditionStatus.TRUE, "SearchSucceeded", _summary(search)


def _running_message(search: SearchStatus) -> str:
    return _summary(search) if search.reported_at is not None else f"searching a model for {search.version}"


def _summary(search: SearchStatus) -> str:
    """`search for v3: 12 of 40 trials complete, 1 failed, 2 running; best HistGradientBoostingClassifier
    f1_macro 0.93` (pruned and running only when there are any; the estimator's class name)."""
    complete, failed = search.trials_complete or 0, search.trials_failed or 0
    counts = f"{complete} of {search.trials} trials complete, {failed} failed"
    if search.trials_pruned:
        counts += f", {search.trials_pruned} pruned"
    if search.trials_running:
        counts += f", {search.trials_running} running"
    if search.best_score is None:
        return f"search for {search.version}: {counts}"
    estimator = (search.best_estimator or "").rsplit(".", 1)[-1]
    return f"search for {search.version}: {counts}; best {estimator} {search.metric} {search.best_score:.4g}"


def _started_event(spec: MLWorkflowSpec, search: SearchStatus) -> Event:
    workers = spec.automl.parallelism if spec.automl else 1
    what = (
        f"searching a model for {search.version}: {search.trials} trials on {workers} workers, "
        f"ranked by {search.metric}"
    )
    return Event("Normal", "SearchStarted", what)


def _finished_event(search: SearchStatus) -> Event:
    if search.state == "Failed":
        return Event("Warning", "SearchFailed", f"the search for {search.version} failed: {search.message}")
    return Event("Normal", "SearchSucceeded", _summary(search))


def children_for(workflow: Workflow, plan: Plan, context: RuntimeContext) -> Children:
    """The search workers' progress Lease and the rights to patch it, WebService's serving children, the
    search Job for a training the lifecycle asks for, and the training Job of a search's winner."""
    serving = webservice.children_for(workflow, plan, context)
    name = search_lease_name(workflow)
    apply = [
        *children.lease_access(workflow, name, children.SEARCH, ["patch"]),
        children.lease(workflow, name, children.SEARCH),
        *serving.apply,
    ]
    if plan.train is not None:
        apply.append(search_job(workflow, plan.train, context, plan.status))
    if plan.refit is not None:
        apply.append(children.training_job(workflow, plan.refit, context))
    return Children(apply, serving.delete)


def search_job_name(workflow: Workflow, version: str) -> str:
    return f"{workflow.name}-search-{version}"


def search_lease_name(workflow: Workflow) -> str:
    """The Lease the search workers report progress on, and their ServiceAccount, Role and RoleBinding."""
    return f"{workflow.name}-search"


def search_job(
    workflow: Workflow, train: TrainRequest, context: RuntimeContext, status: MLWorkflowStatus
) -> Manifest:
    """An Indexed Job of `spec.automl.parallelism` workers pulling trials from one study until the budget is
    spent. A worker that fails for invalid input stops its index at once; a crashed one is retried alone. A
    retraining's search is warm-started with the served version's search (its best trials first)."""
    spec = workflow.spec
    automl = spec.automl
    assert automl is not None
    workers = automl.parallelism
    annotations: dict[str, str] = {
        children.SPEC_HASH_ANNOTATION: children.model_spec_hash(spec),
        children.TRIGGER_ANNOTATION: str(train.trigger),
    }
    for key, value in (
        (CHAMPION_ANNOTATION, train.champion),
        (DRIFT_REPORT_ANNOTATION, train.drift_report),
        (children.RETRAIN_REQUEST_ANNOTATION, train.retrain_request),
    ):
        if value is not None:
            annotations[key] = value
    warm = _warm_start(workflow, status, train)
    args = [
        f"--store={children.STORE_MOUNT}",
        f"--workflow={workflow.name}",
        f"--search-id={train.version}",
        f"--workers={workers}",
        f"--sampler={automl.search}",
        f"--trials={automl.trials}",
        f"--max-failed={automl.max_failed_trials}",
        f"--pruning={automl.pruning}",
        *([f"--time-budget={automl.time_budget_seconds}"] if automl.time_budget_seconds else []),
        *([f"--warm-start={warm}"] if warm else []),
        # The champion's training rows stay out of the holdout: the search scores on the rows the refit
        # trains on.
        *([f"--champion={train.champion}"] if train.champion else []),
    ]
    pod = children.runtime_pod(
        workflow,
        context,
        "search",
        "mlworkflow.runtime.search",
        args,
        env={
            "MLW_SPEC": spec.model_dump_json(by_alias=True, exclude_none=True),
            "MLW_ALLOWED_ESTIMATOR_PREFIXES": ",".join(context.allowed_estimator_prefixes),
        },
        resources=spec.training.resources,
    )
    # Its one API right: patching the progress annotation of the search's own Lease.
    pod["serviceAccountName"] = search_lease_name(workflow)
    pod["automountServiceAccountToken"] = True
    pod["containers"][0]["env"] += [
        {"name": "MLW_LEASE", "value": search_lease_name(workflow)},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    labels = {**children.labels(workflow, children.SEARCH), children.VERSION_LABEL: train.version}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **children.metadata(
                workflow,
                search_job_name(workflow, train.version),
                children.SEARCH,
                **{children.VERSION_LABEL: train.version},
            ),
            "annotations": annotations,
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimitPerIndex": RETRIES_PER_WORKER,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": children.pod_failure_policy("search", "FailIndex"),
            "activeDeadlineSeconds": spec.training.active_deadline_seconds,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _warm_start(workflow: Workflow, status: MLWorkflowStatus, train: TrainRequest) -> str | None:
    """The champion's search leaderboard, when the champion came from a search of this workflow."""
    searched = status.search is not None and train.champion is not None
    if not searched:
        return None
    return f"{children.STORE_MOUNT}/{workflow.name}/automl/{train.champion}/leaderboard.json"


def searched_model(result: dict[str, Any]) -> dict[str, Any] | None:
    """The winner a search reported, as `{estimator, params}`, or None."""
    best = result.get("best") or {}
    if not best.get("estimator"):
        return None
    return {"estimator": best["estimator"], "params": best.get("params") or {}}
