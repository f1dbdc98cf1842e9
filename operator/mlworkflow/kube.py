"""The one place that talks to the Kubernetes API: server-side apply of children, and reading their state.

Objects are exchanged as plain JSON dicts (`_preload_content=False`): the generated client's models
validate responses strictly and add nothing the planner needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from kubernetes import client

from mlworkflow.api.v1alpha1 import Trigger
from mlworkflow.desired.children import (
    BATCH,
    MANAGER,
    MONITORING,
    RETRAIN_REQUEST_ANNOTATION,
    SEARCH,
    SERVING,
    SPEC_HASH_ANNOTATION,
    TRACKING,
    TRACKING_ATTEMPT_ANNOTATION,
    TRACKING_DIGEST_ANNOTATION,
    TRAINING,
    TRIGGER_ANNOTATION,
    VERSION_LABEL,
    WORKFLOW_LABEL,
    Manifest,
)
from mlworkflow.desired.lifecycle import (
    BatchRun,
    DriftCheck,
    RunState,
    SearchRun,
    ServingState,
    TrackingSync,
    TrainingRun,
    batch_result,
    search_result,
)
from mlworkflow.desired.patterns.automl import CHAMPION_ANNOTATION, DRIFT_REPORT_ANNOTATION
from mlworkflow.desired.patterns.forecast import PREDICT_REQUEST_ANNOTATION
from mlworkflow.runtime import termination

APPLY = "application/apply-patch+yaml"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JSON = dict[str, Any]


def _json(response: Any) -> JSON:
    return dict(json.loads(response.data))


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)

    def _patchers(self) -> dict[str, Callable[..., Any]]:
        return {
            "Job": self.batch.patch_namespaced_job,
            "CronJob": self.batch.patch_namespaced_cron_job,
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "HorizontalPodAutoscaler": self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
        }

    def _deleters(self) -> dict[str, Callable[..., Any]]:
        return {
            "HorizontalPodAutoscaler": self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            "CronJob": self.batch.delete_namespaced_cron_job,
        }

    def appliable(self) -> list[str]:
        """The kinds `apply` can apply (each needs the patch and create verbs)."""
        return list(self._patchers())

    def deletable(self) -> list[str]:
        """The kinds `delete` can delete (each needs the delete verb)."""
        return list(self._deleters())

    def apply(self, manifest: Manifest) -> JSON:
        """Server-side apply with the operator's field manager: re-applying the same manifest changes nothing,
        and fields other managers own (an HPA's replicas, a GitOps tool's labels) are left to them."""
        meta = manifest["metadata"]
        patch = self._patchers()[manifest["kind"]]
        return _json(
            patch(
                meta["name"],
                meta["namespace"],
                manifest,
                field_manager=MANAGER,
                force=True,
                _content_type=APPLY,
                _preload_content=False,
            )
        )

    def post_event(self, manifest: Manifest) -> bool:
        """Create an Event (see `desired.children.event`); False when it was already posted."""
        body: Any = manifest  # the client serialises a plain dict as it is
        try:
            self.core.create_namespaced_event(manifest["metadata"]["namespace"], body, _preload_content=False)
        except client.ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child the plan no longer wants (a HorizontalPodAutoscaler, a CronJob); gone is fine."""
        try:
            self._deleters()[kind](name, namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise

    # --- observing ---------------------------------------------------------------------------------------

    def training_runs(self, namespace: str, workflow: str) -> list[TrainingRun]:
        return [self._run(namespace, job) for job in self._jobs(namespace, workflow, TRAINING)]

    def _jobs(self, namespace: str, workflow: str, component: str) -> list[JSON]:
        """The workflow's Jobs of one component (training, batch, search, monitoring), but those being
        deleted."""
        selector = f"{WORKFLOW_LABEL}={workflow},app.kubernetes.io/component={component}"
        jobs = _json(
            self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        )
        return [job for job in jobs["items"] if not job["metadata"].get("deletionTimestamp")]

    def _pods(self, namespace: str, job: str) -> list[JSON]:
        return list(
            _json(
                self.core.list_namespaced_pod(
                    namespace, label_selector=f"job-name={job}", _preload_content=False
                )
            )["items"]
        )

    def _run(self, namespace: str, job: JSON) -> TrainingRun:
        meta = job["metadata"]
        state, condition, finished_at = _job_state(job)
        result: JSON = {}
        message = ""
        if state != "Running":
            wanted = "Succeeded" if state == "Succeeded" else "Failed"
            ended = sorted(
                (p for p in self._pods(namespace, meta["name"]) if _phase(p) == wanted),
                key=lambda p: p["metadata"]["creationTimestamp"],
            )
            text = _termination_message(ended[-1]) if ended else ""
            # A cut or garbled summary is an error summary saying so; a log tail (not JSON) stays the message.
            result = termination.read(text)
            message = (
                result.get("message") or text or condition.get("message", "") or condition.get("reason", "")
            )
        annotations = meta.get("annotations") or {}
        return TrainingRun(
            version=meta["labels"].get(VERSION_LABEL, ""),
            trigger=Trigger(annotations.get(TRIGGER_ANNOTATION, Trigger.INITIAL.value)),
            spec_hash=annotations.get(SPEC_HASH_ANNOTATION, ""),
            state=state,
            result=result,
            message=message,
            finished_at=finished_at,
            retrain_request=annotations.get(RETRAIN_REQUEST_ANNOTATION),
        )

    def tracking_syncs(self, namespace: str, workflow: str) -> list[TrackingSync]:
        """The MLflow sync Jobs, each with its summary once it ended."""
        syncs = []
        for job in self._jobs(namespace, workflow, TRACKING):
            run = self._run(namespace, job)
            annotations = job["metadata"].get("annotations") or {}
            syncs.append(
                TrackingSync(
                    job["metadata"]["name"],
                    annotations.get(TRACKING_DIGEST_ANNOTATION, ""),
                    int(annotations.get(TRACKING_ATTEMPT_ANNOTATION) or 1),
                    run.state,
                    run.result,
                    run.message,
                    run.finished_at,
                )
            )
        return syncs

    def batch_runs(self, namespace: str, workflow: str) -> list[BatchRun]:
        """The batch prediction Jobs (Forecast), each with its indexes' summaries added up."""
        return [self._batch_run(namespace, job) for job in self._jobs(namespace, workflow, BATCH)]

    def searches(self, namespace: str, workflow: str) -> list[SearchRun]:
        """The model search Jobs (AutoML), each with its workers' final summary."""
        return [self._search(namespace, job) for job in self._jobs(namespace, workflow, SEARCH)]

    def _search(self, namespace: str, job: JSON) -> SearchRun:
        meta = job["metadata"]
        state, condition, finished_at = _job_state(job)
        result: JSON = {}
        message = ""
        if state != "Running":
            summaries = [
                termination.read(_termination_message(pod))
                for pod in self._pods(namespace, meta["name"])
                if _phase(pod) in ("Succeeded", "Failed")
            ]
            result, failure = search_result(summaries, state == "Succeeded")
            if state == "Failed":
                message = failure or condition.get("message") or condition.get("reason", "")
        annotations = meta.get("annotations") or {}
        return SearchRun(
            version=meta["labels"].get(VERSION_LABEL, ""),
            trigger=Trigger(annotations.get(TRIGGER_ANNOTATION, Trigger.INITIAL.value)),
            spec_hash=annotations.get(SPEC_HASH_ANNOTATION, ""),
            state=state,
            result=result,
            message=message,
            finished_at=finished_at,
            champion=annotations.get(CHAMPION_ANNOTATION),
            drift_report=annotations.get(DRIFT_REPORT_ANNOTATION),
            retrain_request=annotations.get(RETRAIN_REQUEST_ANNOTATION),
        )

    def _batch_run(self, namespace: str, job: JSON) -> BatchRun:
        meta = job["metadata"]
        state, condition, finished_at = _job_state(job)
        result: JSON = {}
        message = ""
        if state != "Running":
            # Per index, its newest Pod that ended as the run did (a retried index has older failed Pods).
            newest: dict[str, JSON] = {}
            for pod in sorted(
                self._pods(namespace, meta["name"]), key=lambda p: p["metadata"]["creationTimestamp"]
            ):
                if _phase(pod) in ("Succeeded", "Failed"):
                    index = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "0")
                    if (
                        _phase(pod) == "Succeeded"
                        or newest.get(index, {}).get("status", {}).get("phase") != "Succeeded"
                    ):
                        newest[index] = pod
            summaries = [termination.read(_termination_message(pod)) for pod in newest.values()]
            result, failures = batch_result(summaries)
            message = failures or condition.get("message") or condition.get("reason", "")
        annotations = meta.get("annotations") or {}
        return BatchRun(
            id=meta["name"],
            version=meta["labels"].get(VERSION_LABEL, ""),
            trigger=_batch_trigger(annotations.get(TRIGGER_ANNOTATION)),
            state=state,
            result=result,
            message=message if state == "Failed" else "",
            finished_at=finished_at,
            predict_request=annotations.get(PREDICT_REQUEST_ANNOTATION),
        )

    def latest_drift_check(self, namespace: str, workflow: str) -> DriftCheck | None:
        """The newest finished drift-check Job (from the CronJob, or made from its template by hand)."""
        finished = []
        for job in self._jobs(namespace, workflow, MONITORING):
            status = job.get("status") or {}
            ended = [
                c
                for c in status.get("conditions") or []
                if c["type"] in ("Complete", "Failed") and c.get("status") == "True"
            ]
            if ended:
                stamp = status.get("completionTime") or ended[0]["lastTransitionTime"]
                finished.append((datetime.fromisoformat(stamp.replace("Z", "+00:00")), job))
        if not finished:
            return None
        finished_at, job = max(finished, key=lambda pair: pair[0])
        run = self._run(namespace, job)
        result = run.result or {"status": "error", "message": run.message or "the drift check failed"}
        return DriftCheck(job["metadata"]["name"], finished_at, result)

    def serving_state(self, namespace: str, name: str) -> ServingState:
        try:
            deployment = _json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
        except client.ApiException as error:
            if error.status == 404:
                return ServingState()
            raise
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") != SERVING:
            return ServingState()
        spec, status = deployment["spec"], deployment.get("status") or {}
        wanted = spec.get("replicas", 1)
        rolled_out = (
            status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == wanted
            and status.get("availableReplicas", 0) == wanted
            and status.get("replicas", 0) == wanted
        )
        version = spec["template"]["metadata"]["labels"].get(VERSION_LABEL)
        return ServingState(version=version, ready=rolled_out)


def _batch_trigger(value: str | None) -> Literal["Promotion", "Schedule", "Manual"]:
    return "Promotion" if value == "Promotion" else "Manual" if value == "Manual" else "Schedule"


def _phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase", ""))


def _job_state(job: JSON) -> tuple[RunState, JSON, datetime | None]:
    """How a Job stands (Running, Succeeded, Failed), its deciding condition, and when it finished."""
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    state: RunState = (
        "Succeeded" if "Complete" in conditions else "Failed" if "Failed" in conditions else "Running"
    )
    condition = conditions.get("Complete") or conditions.get("Failed") or {}
    stamp = status.get("completionTime") or condition.get("lastTransitionTime")
    finished_at = (
        datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp and state != "Running" else None
    )
    return state, condition, finished_at


def _termination_message(pod: JSON) -> str:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("message"):
            return str(terminated["message"])
    return ""
