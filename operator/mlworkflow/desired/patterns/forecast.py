"""The Forecast pattern: batch predictions of `spec.batch.input` into `spec.batch.output`, by the promoted
version — once per newly promoted version, or on `spec.batch.schedule` (a CronJob), or when asked (the
`mlworkflow.io/predict` annotation) — each run an Indexed Job of `spec.batch.parallelism` Pods running
`python -m mlworkflow.runtime.predict`."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from mlworkflow.api.conditions import Outcome, Progress, set_condition
from mlworkflow.api.v1alpha1 import (
    BatchRunRecord,
    BatchStatus,
    ConditionStatus,
    MLWorkflowSpec,
    MLWorkflowStatus,
)
from mlworkflow.desired import children
from mlworkflow.desired.children import Children, Manifest, RuntimeContext, Workflow
from mlworkflow.desired.lifecycle import (
    BatchRun,
    BatchRunRequest,
    Deployment,
    Event,
    Observed,
    Plan,
    pending_request,
)

PREDICTED = "Predicted"
RUN_HISTORY = 10
RETRIES_PER_INDEX = 2
PREDICT_REQUEST_ANNOTATION = "mlworkflow.io/predict-request"
# The run id is the Job's name (unique, and the same for every Pod and retry of the run).
JOB_NAME_FIELD = "metadata.labels['batch.kubernetes.io/job-name']"


def deploy(
    spec: MLWorkflowSpec,
    observed: Observed,
    status: MLWorkflowStatus,
    events: list[Event],
    now: datetime,
    endpoint: str | None,
) -> Deployment:
    """Record finished runs; start a run for a newly promoted version (without a schedule) or for a new
    predict request; say how the last run went (condition `Predicted`)."""
    assert spec.batch is not None
    status.endpoint = None
    record = status.batch.model_copy(deep=True) if status.batch else BatchStatus()
    _record_runs(record, observed.batch_runs, events)
    version = status.model.version if status.model else None
    running = [r for r in observed.batch_runs if r.state == "Running"]
    run: BatchRunRequest | None = None
    request = _pending_predict_request(record, observed)
    if version is not None and not running:
        if request is not None:
            suffix = f"{version}-{hashlib.sha256(request.encode()).hexdigest()[:8]}"
            run = BatchRunRequest(suffix, version, "Manual", predict_request=request)
            record.last_handled_predict = request
        elif not spec.batch.schedule and version not in {
            *(r.version for r in record.runs),
            *(r.version for r in observed.batch_runs),
        }:
            run = BatchRunRequest(version, version, "Promotion")
    if run is not None:
        events.append(
            Event(
                "Normal", "BatchRunStarted", f"predicting {spec.batch.input} with {version} ({run.trigger})"
            )
        )
    status.batch = record
    last = next((r for r in record.runs if r.state != "Running"), None)
    status.conditions = set_condition(
        status.conditions, PREDICTED, *_predicted_condition(last), observed.generation, now
    )
    if version is None:
        return Deployment(
            None, Outcome(Progress.PROGRESSING, "NoModel", "no model version to predict with yet", "Pending")
        )
    if running or run:
        what = f"predicting {spec.batch.input} with {version}"
        return Deployment(version, Outcome(Progress.PROGRESSING, "Predicting", what, "Predicting"), run)
    if last is not None and last.state == "Failed":
        return Deployment(version, Outcome(Progress.STALLED, "BatchRunFailed", last.message, "Failed"))
    if spec.batch.schedule:
        when = f"{version} predicts on the schedule '{spec.batch.schedule}'"
        return Deployment(version, Outcome(Progress.DONE, "Scheduled", _with_last(when, last), "Scheduled"))
    return Deployment(
        version, Outcome(Progress.DONE, "Predicted", _with_last(f"{version} predicted", last), "Predicted")
    )


def _with_last(text: str, last: BatchRunRecord | None) -> str:
    if last is None:
        return text
    return f"{text}; last run {last.id}: {last.predicted} rows predicted, {last.rejected} rejected"


def _predicted_condition(last: BatchRunRecord | None) -> tuple[ConditionStatus, str, str]:
    if last is None:
        return ConditionStatus.UNKNOWN, "NoRun", "no batch run has finished yet"
    if last.state == "Succeeded":
        return (
            ConditionStatus.TRUE,
            "RunSucceeded",
            f"run {last.id} ({last.version}): {last.predicted} rows predicted, {last.rejected} rejected, "
            f"in {last.output}",
        )
    return ConditionStatus.FALSE, "RunFailed", f"run {last.id} ({last.version}) failed: {last.message}"


def _pending_predict_request(record: BatchStatus, observed: Observed) -> str | None:
    """The predict annotation's value when no run answered it yet."""
    request, record.last_handled_predict = pending_request(
        observed.predict_request,
        record.last_handled_predict,
        (r.predict_request for r in observed.batch_runs),
    )
    return request


def _record_runs(record: BatchStatus, runs: list[BatchRun], events: list[Event]) -> None:
    """Fold observed runs into the status; a run seen finishing is told once (Succeeded or Failed)."""
    for run in runs:
        known = next((r for r in record.runs if r.id == run.id), None)
        if known is not None and known.state != "Running":
            continue  # finished and recorded: its Job may since have gone (TTL)
        result = run.result
        updated = BatchRunRecord(
            id=run.id,
            version=run.version,
            trigger=run.trigger,
            state=run.state,
            rows_in=result.get("rowsIn"),
            predicted=result.get("predicted"),
            rejected=result.get("rejected"),
            output=result.get("output"),
            seconds=result.get("seconds"),
            finished_at=run.finished_at,
            message=(run.message or "")[:4096],
        )
        record.runs = [updated, *(r for r in record.runs if r.id != run.id)][:RUN_HISTORY]
        if run.state == "Succeeded":
            record.last_succeeded_at = run.finished_at
            events.append(
                Event(
                    "Normal",
                    "BatchRunSucceeded",
                    f"run {run.id} ({run.version}): {updated.predicted} rows predicted, "
                    f"{updated.rejected} rejected, in {updated.output}",
                )
            )
        elif run.state == "Failed":
            events.append(Event("Warning", "BatchRunFailed", f"run {run.id} ({run.version}): {run.message}"))


def children_for(workflow: Workflow, plan: Plan, context: RuntimeContext) -> Children:
    """The CronJob of scheduled runs (deleted without a schedule) and the Job of a run to start now."""
    assert workflow.spec.batch is not None
    apply: list[Manifest] = []
    delete: list[tuple[str, str]] = []
    if plan.deploy is not None and workflow.spec.batch.schedule:
        apply.append(batch_cronjob(workflow, plan.deploy, context))
    else:
        delete.append(("CronJob", batch_cronjob_name(workflow)))
    if plan.batch_run is not None:
        apply.append(batch_job(workflow, plan.batch_run, context))
    return Children(apply, delete)


def batch_job_name(workflow: Workflow, suffix: str) -> str:
    return f"{workflow.name}-predict-{suffix}"


def batch_cronjob_name(workflow: Workflow) -> str:
    return f"{workflow.name}-predict"


def _job_metadata(
    workflow: Workflow,
    version: str,
    trigger: Literal["Promotion", "Schedule", "Manual"],
    predict_request: str | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {children.TRIGGER_ANNOTATION: trigger}
    if predict_request is not None:
        annotations[PREDICT_REQUEST_ANNOTATION] = predict_request
    return {
        "labels": {**children.labels(workflow, children.BATCH), children.VERSION_LABEL: version},
        "annotations": annotations,
    }


def batch_job_spec(workflow: Workflow, version: str, context: RuntimeContext) -> dict[str, Any]:
    """An Indexed Job of `spec.batch.parallelism` Pods, each predicting its share of the input; a failed
    index is retried on its own, and an index refused for invalid input (or too many rejected rows) fails at
    once without a retry."""
    spec = workflow.spec
    assert spec.batch is not None
    indexes = spec.batch.parallelism
    pod = children.runtime_pod(
        workflow,
        context,
        "predict",
        "mlworkflow.runtime.predict",
        [
            f"--store={children.STORE_MOUNT}",
            f"--workflow={workflow.name}",
            f"--version={version}",
            "--run-id=$(MLW_RUN_ID)",
            f"--indexes={indexes}",
        ],
        env={"MLW_SPEC": spec.model_dump_json(by_alias=True, exclude_none=True)},
        resources=spec.training.resources,
    )
    pod["containers"][0]["env"].append(
        {"name": "MLW_RUN_ID", "valueFrom": {"fieldRef": {"fieldPath": JOB_NAME_FIELD}}}
    )
    return {
        "completionMode": "Indexed",
        "completions": indexes,
        "parallelism": indexes,
        "backoffLimitPerIndex": RETRIES_PER_INDEX,
        # One Pod per index at a time: a replacement starts only once the failed Pod is gone.
        "podReplacementPolicy": "Failed",
        "activeDeadlineSeconds": spec.training.active_deadline_seconds,
        "ttlSecondsAfterFinished": 86400,
        "podFailurePolicy": children.pod_failure_policy("predict", "FailIndex"),
        "template": {
            "metadata": {
                "labels": {**children.labels(workflow, children.BATCH), children.VERSION_LABEL: version}
            },
            "spec": pod,
        },
    }


def batch_job(workflow: Workflow, run: BatchRunRequest, context: RuntimeContext) -> Manifest:
    meta = children.metadata(workflow, batch_job_name(workflow, run.suffix), children.BATCH)
    job_meta = _job_metadata(workflow, run.version, run.trigger, run.predict_request)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**meta, "labels": job_meta["labels"], "annotations": job_meta["annotations"]},
        "spec": batch_job_spec(workflow, run.version, context),
    }


def batch_cronjob(workflow: Workflow, version: str, context: RuntimeContext) -> Manifest:
    """Scheduled runs of `version`: at most one at a time (a late run is skipped, not stacked)."""
    assert workflow.spec.batch is not None and workflow.spec.batch.schedule
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": children.metadata(workflow, batch_cronjob_name(workflow), children.BATCH),
        "spec": {
            "schedule": workflow.spec.batch.schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": _job_metadata(workflow, version, "Schedule"),
                "spec": batch_job_spec(workflow, version, context),
            },
        },
    }
