"""Desired state: the child objects of an MLWorkflow, built by pure functions (no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlworkflow.api import exitcodes, v1alpha1
from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, promotion_metric
from mlworkflow.desired import tracking
from mlworkflow.desired.lifecycle import Event, SyncRequest, TrainRequest

Manifest = dict[str, Any]

MANAGER = "mlworkflow-operator"
WORKFLOW_LABEL = "mlworkflow.io/workflow"
VERSION_LABEL = "mlworkflow.io/model-version"
SPEC_HASH_ANNOTATION = "mlworkflow.io/spec-hash"
TRIGGER_ANNOTATION = "mlworkflow.io/trigger"
# On a training Job: the workflow's retrain annotation value it answers (so that a restarted operator does not
# answer it twice).
RETRAIN_REQUEST_ANNOTATION = "mlworkflow.io/retrain-request"
STORE_MOUNT = "/artifacts"
HTTP_PORT = 3000
TRAINING, SERVING, MONITORING, BATCH, SEARCH = "training", "serving", "monitoring", "batch", "search"
TRACKING = "tracking"
# On an MLflow sync Job: the digest of the decisions it syncs, and which attempt it is.
TRACKING_DIGEST_ANNOTATION = "mlworkflow.io/tracking-digest"
TRACKING_ATTEMPT_ANNOTATION = "mlworkflow.io/tracking-attempt"
# MLflow's credential variables: the keys of spec.tracking.mlflow.secretRef that become them.
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
LEARNER = "learner"
# On a runtime's Lease (the learner's, the search's): its progress report, JSON (`mlworkflow.runtime.lease`).
PROGRESS_ANNOTATION = "mlworkflow.io/progress"


@dataclass(frozen=True)
class Workflow:
    """What the builders need of an MLWorkflow object: identity and spec."""

    name: str
    namespace: str
    uid: str
    spec: MLWorkflowSpec

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Workflow:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], MLWorkflowSpec.model_validate(body["spec"]))


@dataclass(frozen=True)
class Children:
    """What a plan needs in the cluster: manifests to apply (server-side), and (kind, name) to delete."""

    apply: list[Manifest] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RuntimeContext:
    """What the operator's admin decides for every runtime Pod."""

    image: str = "mlworkflow-operator:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    allowed_estimator_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES
    serving_access_log: bool = False
    mlflow_tracking_uri: str = ""  # the tracking server of workflows that name none


def model_spec_hash(spec: MLWorkflowSpec) -> str:
    """Hash of the fields that shape a model: a change retrains; serving-only changes (replicas) do not."""
    shaping: dict[str, Any] = {
        "data": spec.data.model_dump(by_alias=True),
        "model": spec.model.model_dump(by_alias=True) if spec.model else None,
        "holdout": spec.training.holdout,
    }
    if spec.online and spec.online.classes:  # the classes the model knows (only when declared: the hash of
        # a workflow that declares none stays what it was, and it is not retrained)
        shaping["classes"] = spec.online.classes
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def mlflow_settings(workflow: Workflow, context: RuntimeContext) -> tracking.MLflowSettings | None:
    return tracking.settings(workflow.spec, workflow.namespace, workflow.name, context.mlflow_tracking_uri)


def labels(workflow: Workflow, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlworkflow",
        "app.kubernetes.io/instance": workflow.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": workflow.name,
        "app.kubernetes.io/managed-by": MANAGER,
        WORKFLOW_LABEL: workflow.name,
    }


def selector(workflow: Workflow, component: str) -> dict[str, str]:
    return {WORKFLOW_LABEL: workflow.name, "app.kubernetes.io/component": component}


def owner_reference(workflow: Workflow) -> dict[str, Any]:
    """The MLWorkflow owns its children: deleting it deletes them (garbage collector)."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": workflow.name,
        "uid": workflow.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(workflow: Workflow, name: str, component: str, **extra_labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": workflow.namespace,
        "labels": {**labels(workflow, component), **extra_labels},
        "ownerReferences": [owner_reference(workflow)],
    }


def lease_access(workflow: Workflow, name: str, component: str, verbs: list[str]) -> list[Manifest]:
    """The ServiceAccount `name` of a runtime that reports on its Lease `name` (the learner, the search
    workers), whose only right is `verbs` on that one Lease (Role and RoleBinding `name`). Its token is
    mounted only by the Pods that say so themselves."""
    meta = metadata(workflow, name, component)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [name],
                    "verbs": verbs,
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": workflow.namespace}],
        },
    ]


def lease(workflow: Workflow, name: str, component: str) -> Manifest:
    """A coordination.k8s.io/v1 Lease, metadata only: created once, then written by its runtime."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata(workflow, name, component),
    }


def training_job_name(workflow: Workflow, version: str) -> str:
    return f"{workflow.name}-train-{version}"


def serving_name(workflow: Workflow) -> str:
    return workflow.name


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def store_volume(workflow: Workflow) -> dict[str, Any]:
    storage = workflow.spec.storage
    if storage.pvc is not None:
        return {"name": "store", "persistentVolumeClaim": {"claimName": storage.pvc.claim_name}}
    return {"name": "store", "hostPath": {"path": storage.path, "type": "DirectoryOrCreate"}}


def container_resources(requirements: v1alpha1.ResourceRequirements) -> dict[str, Any]:
    return requirements.model_dump(by_alias=True, exclude_defaults=True)


def runtime_pod(
    workflow: Workflow,
    context: RuntimeContext,
    name: str,
    module: str,
    args: list[str],
    env: dict[str, str] | None = None,
    resources: v1alpha1.ResourceRequirements | None = None,
) -> dict[str, Any]:
    """The Pod of a run-to-completion runtime (`python -m <module>`) with the artifact store mounted.

    It has no API access: its result goes out through its termination message (FallbackToLogsOnError, so a
    crash still says why). A tracked workflow's runtimes get its MLflow settings and credentials
    (`tracking.MLflowSettings.env`)."""
    spec = workflow.spec
    variables: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in (env or {}).items()]
    mlflow = mlflow_settings(workflow, context)
    if mlflow is not None:
        variables += [{"name": k, "value": v} for k, v in mlflow.env(workflow.namespace).items()]
        if mlflow.secret:
            variables += [
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": mlflow.secret, "key": key, "optional": True}},
                }
                for key in MLFLOW_SECRET_KEYS
            ]
    return {
        "restartPolicy": "Never",
        "serviceAccountName": spec.runtime.service_account_name or "default",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [
            {
                "name": name,
                "image": spec.runtime.image or context.image,
                "imagePullPolicy": context.image_pull_policy,
                "command": ["python", "-m", module],
                "args": args,
                "env": variables,
                "resources": container_resources(resources or v1alpha1.ResourceRequirements()),
                "securityContext": container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}],
            }
        ],
        "volumes": [store_volume(workflow)],
    }


def pod_failure_policy(container: str, action: str = "FailJob") -> dict[str, Any]:
    """Retry only what a retry may fix: a runtime that exits with `exitcodes.INVALID_INPUT` (bad data, a bad
    model spec) fails the Job at once (`FailIndex`: that index of an Indexed Job); an evicted or preempted
    Pod (condition DisruptionTarget) does not count against the retries; any other failure (a crash,
    OOMKilled, a lost node) is retried up to them."""
    return {
        "rules": [
            {
                "action": action,
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [exitcodes.INVALID_INPUT],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def trained_spec(spec: MLWorkflowSpec, train: TrainRequest) -> MLWorkflowSpec:
    """The spec a training runs with: the workflow's, with an AutoML search's winner (estimator and
    parameters) as its model when `train.model` names one."""
    if not train.model:
        return spec
    model = spec.model.model_dump(by_alias=True, exclude_none=True) if spec.model else {}
    return spec.model_copy(update={"model": v1alpha1.ModelSpec.model_validate({**model, **train.model})})


def with_stream_archive(spec: MLWorkflowSpec, train: TrainRequest) -> bool:
    """Whether a training also learns from the archived stream (OnlineLearning's lambda retraining): a
    retraining judged against the learner's snapshot, when the stream is archived. A first version, or one
    for a changed spec, trains on spec.data.source alone."""
    online = spec.online
    return (
        spec.pattern == v1alpha1.Pattern.ONLINE_LEARNING
        and online is not None
        and online.archive.retention_hours > 0
        and train.champion is not None
    )


def training_args(workflow: Workflow, train: TrainRequest, store: str) -> list[str]:
    """The training runtime's arguments (a Pod's, or the local runner's process's, with the store at
    `store`)."""
    return [
        f"--store={store}",
        f"--workflow={workflow.name}",
        f"--version={train.version}",
        f"--trigger={train.trigger}",
        *([f"--champion={train.champion}"] if train.champion else []),
        *([f"--drift-report={train.drift_report}"] if train.drift_report else []),
        *(["--stream-archive"] if with_stream_archive(workflow.spec, train) else []),
    ]


def training_job(workflow: Workflow, train: TrainRequest, context: RuntimeContext) -> Manifest:
    """The Job that trains `train.version`: one Pod running `python -m mlworkflow.runtime.train` (which also
    scores the served `train.champion` on its holdout, for the promotion decision). With `train.model` (an
    AutoML search's winner), that estimator and its parameters are trained; the Job still carries the
    workflow's own spec hash."""
    spec = workflow.spec
    trained = trained_spec(spec, train)
    version, trigger = train.version, train.trigger
    component_labels = {**labels(workflow, TRAINING), VERSION_LABEL: version}
    annotations = {SPEC_HASH_ANNOTATION: model_spec_hash(spec), TRIGGER_ANNOTATION: str(trigger)}
    if train.retrain_request is not None:
        annotations[RETRAIN_REQUEST_ANNOTATION] = train.retrain_request
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(workflow, training_job_name(workflow, version), TRAINING, **{VERSION_LABEL: version}),
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": spec.training.backoff_limit,
            "podFailurePolicy": pod_failure_policy("train"),
            "activeDeadlineSeconds": spec.training.active_deadline_seconds,
            # Results live in the MLWorkflow's status (history) once read; the Job can go after a day.
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": component_labels},
                "spec": runtime_pod(
                    workflow,
                    context,
                    "train",
                    "mlworkflow.runtime.train",
                    training_args(workflow, train, STORE_MOUNT),
                    env={
                        "MLW_SPEC": trained.model_dump_json(by_alias=True, exclude_none=True),
                        "MLW_ALLOWED_ESTIMATOR_PREFIXES": ",".join(context.allowed_estimator_prefixes),
                        "MLW_SPEC_HASH": model_spec_hash(spec),
                    },
                    resources=spec.training.resources,
                ),
            },
        },
    }


def tracking_job_name(workflow: Workflow, sync: SyncRequest) -> str:
    return f"{workflow.name}-track-{sync.digest[:10]}-{sync.attempt}"


def tracking_job(workflow: Workflow, sync: SyncRequest, context: RuntimeContext) -> Manifest:
    """The Job that syncs the decisions to MLflow (`mlworkflow.desired.tracking`): one Pod running
    `python -m mlworkflow.runtime.tracking` with them in MLW_TRACKING_DECISIONS. Not retried by the Job: a
    server that cannot be reached is tried again by a later attempt, a minute on."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **metadata(workflow, tracking_job_name(workflow, sync), TRACKING),
            "annotations": {
                TRACKING_DIGEST_ANNOTATION: sync.digest,
                TRACKING_ATTEMPT_ANNOTATION: str(sync.attempt),
            },
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels(workflow, TRACKING)},
                "spec": runtime_pod(
                    workflow,
                    context,
                    "track",
                    "mlworkflow.runtime.tracking",
                    [f"--store={STORE_MOUNT}", f"--workflow={workflow.name}", f"--digest={sync.digest}"],
                    env={"MLW_TRACKING_DECISIONS": json.dumps(sync.decisions, sort_keys=True)},
                ),
            },
        },
    }


def monitoring_cronjob_name(workflow: Workflow) -> str:
    return f"{workflow.name}-drift"


def monitoring_args(name: str, spec: MLWorkflowSpec, version: str, store: str) -> list[str]:
    """The monitoring runtime's arguments (`mlworkflow.runtime.drift`), on a cluster and locally alike: the
    drift check, and the performance check of the promotion metric (on spec.batch.labels too, for a
    Forecast; per group of the sensitive features among the recorded inputs)."""
    monitoring = spec.monitoring
    return [
        f"--store={store}",
        f"--workflow={name}",
        f"--version={version}",
        f"--threshold={monitoring.drift_threshold}",
        f"--min-samples={monitoring.min_samples}",
        "--html",
        f"--metric={promotion_metric(spec)}",
        f"--min-labelled-rows={monitoring.performance.min_labelled_rows}",
        *(
            [f"--labels={spec.batch.labels}", f"--id-column={spec.batch.id_column}"]
            if spec.batch and spec.batch.labels and spec.batch.id_column
            else []
        ),
        *(
            [
                f"--sensitive-features={','.join(monitoring.fairness.sensitive_features)}",
                f"--fairness-gap={monitoring.fairness.gap}",
            ]
            if monitoring.fairness.sensitive_features
            else []
        ),
    ]


def monitoring_cronjob(workflow: Workflow, version: str, context: RuntimeContext) -> Manifest:
    """The CronJob that checks the served inputs of `version` for drift against its training reference, and
    its labelled predictions' performance against its holdout."""
    spec = workflow.spec
    monitoring = spec.monitoring
    job_labels = labels(workflow, MONITORING)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(workflow, monitoring_cronjob_name(workflow), MONITORING),
        "spec": {
            "schedule": monitoring.schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": job_labels},
                "spec": {
                    "backoffLimit": 1,
                    "podFailurePolicy": pod_failure_policy("drift"),
                    "activeDeadlineSeconds": 1800,
                    "template": {
                        "metadata": {"labels": {**job_labels, VERSION_LABEL: version}},
                        "spec": runtime_pod(
                            workflow,
                            context,
                            "drift",
                            "mlworkflow.runtime.drift",
                            monitoring_args(workflow.name, spec, version, STORE_MOUNT),
                        ),
                    },
                },
            },
        },
    }


def endpoint(workflow: Workflow) -> str:
    return f"http://{serving_name(workflow)}.{workflow.namespace}.svc:80"


def event(meta: dict[str, Any], event: Event, now: datetime, instance: str) -> Manifest:
    """A core/v1 Event about the MLWorkflow with metadata `meta` (name, namespace, uid, generation).

    Its name is derived from what it tells (workflow uid, generation, reason, message, key), so the same
    occurrence told twice, by two reconciles that saw the same change at once or by a restarted operator,
    is one Event: the second create is refused as AlreadyExists."""
    told = "/".join([meta["uid"], str(meta.get("generation", 0)), event.reason, event.message, event.key])
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{hashlib.sha256(told.encode()).hexdigest()[:16]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],  # what kubectl describe shows; the status has the rest
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
