"""The one place that talks to the Kubernetes API: server-side apply of children, and reading their state.

Objects are exchanged as plain JSON dicts (`_preload_content=False`): the generated client's models
validate responses strictly and add nothing the planner needs. In the operator, the Jobs, Deployments and
Leases a reconcile reads come from its watches (`Watched`), not from a request per reconcile.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubernetes import client, config

from mlworkflow.api.v1alpha1 import Trigger
from mlworkflow.desired.children import (
    BATCH,
    MANAGER,
    MONITORING,
    PROGRESS_ANNOTATION,
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
    LearnerState,
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
APPLIED_HASH_ANNOTATION = "mlworkflow.io/applied-hash"
# The kinds whose changes the operator watches (controller.handlers): for them, a manifest already applied
# as it is, and not changed or deleted since, is not applied again.
MAX_FINISHED_JOBS = 20_000  # about 2 KiB each: bounded memory however many Jobs the cluster keeps
WATCHED_KINDS = (
    "Deployment",
    "Service",
    "CronJob",
    "HorizontalPodAutoscaler",
    "ServiceAccount",
    "Role",
    "RoleBinding",
)
# Kinds the operator creates and then leaves to another writer: the OnlineLearning learner's Lease, renewed
# by the learner with a resourceVersion-checked update that any write of the operator's would make fail.
CREATED_KINDS = ("Lease",)
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JSON = dict[str, Any]


def api_client() -> client.ApiClient:
    """In a Pod, its ServiceAccount; elsewhere, the current kubeconfig context."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    except config.ConfigException:
        api: client.ApiClient = config.new_client_from_config()  # type: ignore[no-untyped-call]
        return api


def _json(response: Any) -> JSON:
    return dict(json.loads(response.data))


COMPONENT_LABEL = "app.kubernetes.io/component"
_RECORDED_METADATA = (
    "name",
    "namespace",
    "uid",
    "labels",
    "annotations",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
)


def record(obj: Mapping[str, Any]) -> JSON:
    """What the operator reads of a watched Job, Deployment or Lease: its metadata but managedFields, its
    status, and of its spec the replicas and the Pod template's labels (a Job's, a Deployment's) or the
    holder's fields (a Lease's whole spec). A few hundred bytes where a Job's body is kilobytes."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    kept: JSON = {"metadata": {key: meta[key] for key in _RECORDED_METADATA if key in meta}}
    if "status" in obj:
        kept["status"] = obj["status"]
    if "template" in spec:  # a Deployment's or a Job's: only what `serving_state` reads
        template_labels = ((spec["template"].get("metadata") or {}).get("labels")) or {}
        kept["spec"] = {key: spec[key] for key in ("replicas",) if key in spec}
        kept["spec"]["template"] = {"metadata": {"labels": template_labels}}
    else:  # a Lease's: the holder's fields only
        kept["spec"] = spec
    return copy.deepcopy(kept)


@dataclass(frozen=True)
class Watched:
    """The children as the operator's watches last saw them, as `record`s: kopf indexes, each mapping a key
    to the records of every object under it. kopf fills them from a full listing before any reconcile runs
    and keeps them from the watch, so they converge from the cluster after a restart. Jobs are keyed by
    (namespace, the workflow label), Deployments and Leases by (namespace, name)."""

    jobs: Mapping[tuple[str, str], Iterable[JSON]]
    deployments: Mapping[tuple[str, str], Iterable[JSON]]
    leases: Mapping[tuple[str, str], Iterable[JSON]]

    @staticmethod
    def first(index: Mapping[tuple[str, str], Iterable[JSON]], key: tuple[str, str]) -> JSON | None:
        return next(iter(index.get(key, ())), None)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        # (kind, namespace, name) -> the applied-hash annotation and metadata.generation the API server
        # answered with. Only an optimisation: empty after a restart, so everything is applied once again.
        self._applied: dict[tuple[str, str, str], tuple[str, int | None]] = {}
        # Watched children deleted since (or found gone) by this operator: not deleted again.
        self._gone: set[tuple[str, str, str]] = set()
        # A finished Job's result never changes: it is read from its Pods once (Job uid -> run).
        self._finished: dict[str, Any] = {}
        # Set by the operator: Jobs, Deployments and Leases are then read from its watches. Without (tests,
        # one-off reads), each is listed or read from the API.
        self.watched: Watched | None = None

    def _patchers(self) -> dict[str, Callable[..., Any]]:
        return {
            "Job": self.batch.patch_namespaced_job,
            "CronJob": self.batch.patch_namespaced_cron_job,
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "HorizontalPodAutoscaler": self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            "ServiceAccount": self.core.patch_namespaced_service_account,
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
        }

    def _deleters(self) -> dict[str, Callable[..., Any]]:
        return {
            "HorizontalPodAutoscaler": self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            "CronJob": self.batch.delete_namespaced_cron_job,
        }

    def appliable(self) -> list[str]:
        """The kinds `apply` can apply (each needs the patch and create verbs; `CREATED_KINDS` create)."""
        return list(self._patchers())

    def deletable(self) -> list[str]:
        """The kinds `delete` can delete (each needs the delete verb)."""
        return list(self._deleters())

    def apply(self, manifest: Manifest) -> bool:
        """Server-side apply with the operator's field manager: fields other managers own (an HPA's replicas,
        a GitOps tool's labels) are left to them. A watched kind already applied as it is, and unchanged
        since (see `observed`), is not written again; returns whether it was written. A Lease is only
        created (`CREATED_KINDS`)."""
        meta = manifest["metadata"]
        if manifest["kind"] in CREATED_KINDS:
            return self._create(manifest)
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        if key[0] in WATCHED_KINDS and self._applied.get(key, ("",))[0] == digest:
            return False
        stamped = {**manifest, "metadata": {**meta, "annotations": {**meta.get("annotations", {})}}}
        stamped["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = digest
        patch = self._patchers()[manifest["kind"]]
        applied = _json(
            patch(
                meta["name"],
                meta["namespace"],
                stamped,
                field_manager=MANAGER,
                force=True,
                _content_type=APPLY,
                _preload_content=False,
            )
        )
        self._applied[key] = (digest, applied["metadata"].get("generation"))
        self._gone.discard(key)
        return True

    def _create(self, manifest: Manifest) -> bool:
        """Create `manifest` unless this operator created it already or it exists (409)."""
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        if key in self._applied:
            return False
        body: Any = manifest
        try:
            self.coordination.create_namespaced_lease(meta["namespace"], body, _preload_content=False)
        except client.ApiException as error:
            if error.status != 409:
                raise
        self._applied[key] = ("", None)
        return True

    def observed(self, kind: str, obj: JSON, deleted: bool) -> bool:
        """A watch saw a child change: unless it is still what was applied last, apply it again next time.
        Returns whether it must be applied again (edited or deleted by someone else)."""
        meta = obj.get("metadata") or {}
        key = (kind, meta.get("namespace", ""), meta.get("name", ""))
        if not deleted:
            self._gone.discard(key)  # it is back (made by someone else): delete it again if unwanted
        if key not in self._applied:
            return False
        digest, generation = self._applied[key]
        current = ((meta.get("annotations") or {}).get(APPLIED_HASH_ANNOTATION), meta.get("generation"))
        if deleted or current != (digest, generation):
            del self._applied[key]
            return True
        return False

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
        """Delete a child the plan no longer wants (a HorizontalPodAutoscaler, a CronJob); gone is fine. A
        watched kind known to be gone since is not deleted again (no write at every resync)."""
        key = (kind, namespace, name)
        if key in self._gone:
            return
        try:
            self._deleters()[kind](name, namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
        self._applied.pop(key, None)
        if kind in WATCHED_KINDS:
            self._gone.add(key)

    def read_lease(self, namespace: str, name: str) -> JSON | None:
        """A coordination.k8s.io/v1 Lease as a dict, or None when there is none."""
        try:
            return _json(self.coordination.read_namespaced_lease(name, namespace, _preload_content=False))
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def write_lease(self, namespace: str, lease: JSON, create: bool) -> JSON:
        """Create a Lease, or replace it at the resourceVersion its metadata names: a write based on a stale
        read fails with ApiException 409, so two writers cannot both win."""
        body: Any = lease
        if create:
            return _json(self.coordination.create_namespaced_lease(namespace, body, _preload_content=False))
        name = lease["metadata"]["name"]
        return _json(
            self.coordination.replace_namespaced_lease(name, namespace, body, _preload_content=False)
        )

    # --- observing ---------------------------------------------------------------------------------------

    def training_runs(self, namespace: str, workflow: str) -> list[TrainingRun]:
        return [self._once_finished(job, self._run) for job in self._jobs(namespace, workflow, TRAINING)]

    def _jobs(self, namespace: str, workflow: str, component: str) -> list[JSON]:
        """The workflow's Jobs of one component (training, batch, search, monitoring), but those being
        deleted."""
        if self.watched is not None:
            jobs = [
                job
                for job in self.watched.jobs.get((namespace, workflow), ())
                if job["metadata"]["labels"].get(COMPONENT_LABEL) == component
            ]
        else:
            selector = f"{WORKFLOW_LABEL}={workflow},{COMPONENT_LABEL}={component}"
            listed = self.batch.list_namespaced_job(
                namespace, label_selector=selector, _preload_content=False
            )
            jobs = _json(listed)["items"]
        return [job for job in jobs if not job["metadata"].get("deletionTimestamp")]

    def _pods(self, namespace: str, job: str) -> list[JSON]:
        return list(
            _json(
                self.core.list_namespaced_pod(
                    namespace, label_selector=f"job-name={job}", _preload_content=False
                )
            )["items"]
        )

    def _once_finished(self, job: JSON, read: Callable[[str, JSON], Any]) -> Any:
        """`read(namespace, job)`, kept for a finished Job: its Pods' results cannot change any more."""
        meta = job["metadata"]
        if _job_state(job)[0] == "Running":
            return read(meta["namespace"], job)
        if meta["uid"] not in self._finished:
            if len(self._finished) >= MAX_FINISHED_JOBS:  # the oldest first: dicts keep insertion order
                del self._finished[next(iter(self._finished))]
            self._finished[meta["uid"]] = read(meta["namespace"], job)
        return self._finished[meta["uid"]]

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
            run = self._once_finished(job, self._run)
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
        return [self._once_finished(job, self._batch_run) for job in self._jobs(namespace, workflow, BATCH)]

    def searches(self, namespace: str, workflow: str, lease: str | None = None) -> list[SearchRun]:
        """The model search Jobs (AutoML), each with its workers' final summary; those still running with the
        progress report on the Lease `lease` (read once, only while a search runs)."""
        runs = [self._once_finished(job, self._search) for job in self._jobs(namespace, workflow, SEARCH)]
        if lease is None or all(run.state != "Running" for run in runs):
            return runs
        progress = self.progress(namespace, lease)
        return [replace(run, progress=progress) if run.state == "Running" else run for run in runs]

    def progress(self, namespace: str, name: str) -> str | None:
        """The progress annotation of the Lease `name`, as written; None without one, or without the Lease
        (it is created again at the next apply)."""
        lease = self._lease(namespace, name)
        if lease is None:
            return None
        return (lease["metadata"].get("annotations") or {}).get(PROGRESS_ANNOTATION)

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
        """The finished drift-check Job (from the CronJob, or made from its template by hand) that started
        last (see `started_last`)."""
        newest = started_last(self._jobs(namespace, workflow, MONITORING))
        if newest is None:
            return None
        started_at, job = newest
        run = self._once_finished(job, self._run)
        result = run.result or {"status": "error", "message": run.message or "the drift check failed"}
        return DriftCheck(job["metadata"]["name"], started_at, result)

    def learner(self, namespace: str, name: str) -> LearnerState | None:
        """The learner's Lease `name` (OnlineLearning): its holder, until when it holds it, and the progress
        the learner wrote on it; None when there is no Lease yet (it is created again at the next apply). A
        renewTime that is not a time is no renewal."""
        lease = self._lease(namespace, name)
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        held_until = None
        try:
            renewed = datetime.fromisoformat(str(spec.get("renewTime")).replace("Z", "+00:00"))
            renewed = renewed if renewed.tzinfo else renewed.replace(tzinfo=UTC)
            held_until = renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
        except (ValueError, TypeError):
            pass
        annotations = lease["metadata"].get("annotations") or {}
        return LearnerState(spec.get("holderIdentity"), held_until, annotations.get(PROGRESS_ANNOTATION))

    def _lease(self, namespace: str, name: str) -> JSON | None:
        """A runtime's Lease (from the watch when there is one); when there is none, it is created again
        at the next apply."""
        if self.watched is not None:
            lease = Watched.first(self.watched.leases, (namespace, name))
        else:
            lease = self.read_lease(namespace, name)
        if lease is None:
            self._applied.pop(("Lease", namespace, name), None)
        return lease

    def serving_state(self, namespace: str, name: str) -> ServingState:
        """The serving Deployment `name`: the version its Pods run and whether it is rolled out."""
        deployment = (
            Watched.first(self.watched.deployments, (namespace, name))
            if self.watched is not None
            else self._read_deployment(namespace, name)
        )
        return serving_state_of(deployment)

    def _read_deployment(self, namespace: str, name: str) -> JSON | None:
        try:
            return _json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise


def serving_state_of(deployment: JSON | None) -> ServingState:
    """A serving Deployment's (a dict, or None when there is none): the version its Pods run and whether it
    is rolled out."""
    if deployment is None or deployment["metadata"]["labels"].get(COMPONENT_LABEL) != SERVING:
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


def milestone(kind: str, obj: JSON) -> object:
    """What a reconcile acts on of a watched child: a Job's state (Running, Succeeded, Failed), a
    Deployment's `ServingState`, a runtime Lease's holder and progress report but the report's time (the
    learner's counts, a search's trials). When it changes, the workflow is reconciled at once: an idle
    learner (nothing to learn, only renewing its Lease) wakes nothing."""
    if kind == "Job":
        return _job_state(obj)[0]
    if kind == "Deployment":
        return serving_state_of(obj)
    text = (obj["metadata"].get("annotations") or {}).get(PROGRESS_ANNOTATION)
    try:
        report = json.loads(text or "null")
    except ValueError:
        report = text
    if isinstance(report, dict):
        report = json.dumps({k: v for k, v in report.items() if k != "reported"}, sort_keys=True)
    return (obj.get("spec") or {}).get("holderIdentity"), report


def _batch_trigger(value: str | None) -> Literal["Promotion", "Schedule", "Manual"]:
    return "Promotion" if value == "Promotion" else "Manual" if value == "Manual" else "Schedule"


def _phase(pod: JSON) -> str:
    return str((pod.get("status") or {}).get("phase", ""))


def started_last(jobs: list[JSON]) -> tuple[datetime, JSON] | None:
    """Of the finished Jobs, the one that started last (status.startTime, else its creation) and that time;
    None when none finished. A check that started earlier but finished later read an older window, so
    checks are ordered by their start, not their end."""
    finished = []
    for job in jobs:
        if _job_state(job)[0] != "Running":
            stamp = (job.get("status") or {}).get("startTime") or job["metadata"]["creationTimestamp"]
            finished.append((datetime.fromisoformat(stamp.replace("Z", "+00:00")), job))
    return max(finished, key=lambda pair: pair[0], default=None)


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
