"""The OnlineLearning pattern: after the shared training Job's first version (the warm-up), a learner keeps
learning from a stream with `partial_fit`, mini-batch by mini-batch behind guardrails, and writes snapshots
(`<start>.<n>`, e.g. v1.12) that the serving Pods follow without a restart.

Its children: the learner Deployment (one replica, Recreate: `python -m mlworkflow.runtime.learn`, started
from the promoted version), the single-writer Lease `<workflow>-learner` with the ServiceAccount, Role and
RoleBinding that let the learner hold it (and nothing else), and the serving Deployment and Service of
WebService in follow mode (`MLW_FOLLOW_LATEST=1`). The learner reports its progress as JSON in the Lease's
`mlworkflow.io/progress` annotation; the planner copies it into status.online, names the served snapshot in
status.model.version and posts an Event per newly quarantined mini-batch.

Retraining (schedule, drift with onDrift Retrain, the retrain annotation) is the shared lifecycle's: a batch
model trained on spec.data.source plus the archived stream (`children.with_stream_archive`), judged against
the learner's snapshot on rows neither saw; when it wins, it becomes the learner's start version.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlworkflow.api.conditions import Outcome, Progress, find, set_condition
from mlworkflow.api.v1alpha1 import ConditionStatus, MLWorkflowSpec, MLWorkflowStatus, OnlineStatus
from mlworkflow.desired import children
from mlworkflow.desired.children import Children, Manifest, RuntimeContext, Workflow
from mlworkflow.desired.lifecycle import Deployment, Event, LearnerState, Observed, Plan
from mlworkflow.desired.patterns import webservice

LEARNING = "Learning"
QUARANTINING = "Quarantining"
METRICS_PORT = 9090
KAFKA_CONFIG_DIR = "/etc/mlworkflow/kafka"
FOLLOW_ENV = {"MLW_FOLLOW_LATEST": "1"}
# The fields of status.online, by their JSON names: a learner's report may carry more, which is dropped.
PROGRESS_FIELDS = {field.alias or name for name, field in OnlineStatus.model_fields.items()}


def deploy(
    spec: MLWorkflowSpec,
    observed: Observed,
    status: MLWorkflowStatus,
    events: list[Event],
    now: datetime,
    endpoint: str | None,
) -> Deployment:
    """Run the learner from the promoted version, serve its snapshots; fold its report into the status.

    The version deployed is the newest promoted one (the learner's start); status.model.version is the
    learner's newest snapshot of it once there is one. Ready: the serving Deployment of that start version
    is rolled out, the learner holds its Lease, and it has written a snapshot of that start version."""
    start = promoted_version(status)
    learner = observed.learner or LearnerState()
    progress, problem = read_progress(learner.progress)
    if progress is not None:
        events += quarantine_events(status.online, progress)
        status.online = progress
    current = status.online
    snapshot = current.snapshot if current and start and current.start_version == start else None
    if status.model is not None and start is not None:
        status.model.version = snapshot or start
    held = bool(learner.holder) and learner.held_until is not None and learner.held_until > now
    serving_ready = start is not None and observed.serving.ready and observed.serving.version == start
    status.endpoint = endpoint if start else None
    generation = observed.generation

    serving = _serving_condition(start, serving_ready, snapshot, endpoint)
    previous = find(observed.status.conditions, webservice.SERVING_CONDITION)
    if serving_ready and (previous is None or previous.status != ConditionStatus.TRUE):
        events.append(Event("Normal", "RolledOut", serving[2]))
    status.conditions = set_condition(
        status.conditions, webservice.SERVING_CONDITION, *serving, generation, now
    )
    learning = _learning_condition(start, learner, held, current, problem)
    status.conditions = set_condition(status.conditions, LEARNING, *learning, generation, now)
    quarantining = _quarantining_condition(
        current if start and current and current.start_version == start else None
    )
    status.conditions = set_condition(status.conditions, QUARANTINING, *quarantining, generation, now)

    if start is None:
        return Deployment(
            None, Outcome(Progress.PROGRESSING, "NoModel", "no version to start from yet", "Pending")
        )
    if not serving_ready:
        return Deployment(
            start, Outcome(Progress.PROGRESSING, "RollingOut", f"rolling out {start}", phase="Deploying")
        )
    if not held:
        return Deployment(start, Outcome(Progress.PROGRESSING, "LearnerStarting", learning[2], "Starting"))
    if snapshot is None:
        what = f"the learner learns from {start}; no snapshot of it yet, {start} is serving at {endpoint}"
        return Deployment(start, Outcome(Progress.PROGRESSING, "NoSnapshot", what, "Starting"))
    return Deployment(start, Outcome(Progress.DONE, LEARNING, f"{serving[2]}; {learning[2]}", LEARNING))


def promoted_version(status: MLWorkflowStatus) -> str | None:
    """The newest promoted trained version: where the learner starts (status.model.version names the
    snapshot served, so it is not it)."""
    return next((r.version for r in status.history if r.outcome == "Promoted"), None)


def read_progress(text: str | None) -> tuple[OnlineStatus | None, str | None]:
    """The learner's report (the Lease annotation's JSON, camelCase keys as in status.online) as the status
    shows it, or why it cannot be read. Keys the status does not have are dropped; the quarantines are cut
    to the status' ten."""
    if text is None:
        return None, None
    try:
        report = json.loads(text)
        if not isinstance(report, dict):
            raise TypeError(f"a JSON object is expected, not {type(report).__name__}")
        known: dict[str, Any] = {k: v for k, v in report.items() if k in PROGRESS_FIELDS}
        if isinstance(known.get("quarantines"), list):
            known["quarantines"] = known["quarantines"][:10]
        return OnlineStatus.model_validate(known), None
    except (ValueError, TypeError, ValidationError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return None, f"the learner's {children.PROGRESS_ANNOTATION} annotation cannot be read ({reason})"[
            :1024
        ]


def quarantine_events(before: OnlineStatus | None, after: OnlineStatus) -> list[Event]:
    """A Warning Event per quarantined mini-batch the status did not list yet (the batch id is its key:
    two reconciles that see the same one post one Event)."""
    known = {q.batch for q in before.quarantines} if before else set()
    return [
        Event(
            "Warning",
            "BatchQuarantined",
            f"mini-batch {q.batch} quarantined ({q.reason}){': ' + q.message if q.message else ''}; "
            f"{after.batches_quarantined} quarantined so far",
            key=q.batch,
        )
        for q in reversed(after.quarantines)  # oldest first
        if q.batch not in known
    ]


def _serving_condition(
    start: str | None, ready: bool, snapshot: str | None, endpoint: str | None
) -> tuple[ConditionStatus, str, str]:
    if start is None:
        return ConditionStatus.FALSE, "NoModel", "no model version to serve yet"
    if not ready:
        return ConditionStatus.FALSE, "RollingOut", f"rolling out {start}"
    return ConditionStatus.TRUE, "Serving", f"{snapshot or start} is serving at {endpoint}"


def _learning_condition(
    start: str | None, learner: LearnerState, held: bool, online: OnlineStatus | None, problem: str | None
) -> tuple[ConditionStatus, str, str]:
    if start is None:
        return ConditionStatus.FALSE, "NoModel", "the learner starts once a version is trained"
    if problem is not None:
        return ConditionStatus.UNKNOWN, "ProgressUnreadable", problem
    if not held:
        last = f" (last holder {learner.holder})" if learner.holder else ""
        return (
            ConditionStatus.FALSE,
            "LeaseNotHeld",
            f"no learner holds the Lease{last}: starting from {start}",
        )
    if online is None or online.start_version != start:
        return ConditionStatus.FALSE, "LearnerStarting", f"{learner.holder} starts learning from {start}"
    lag = f", lag {online.lag}" if online.lag is not None else ""
    return (
        ConditionStatus.TRUE,
        LEARNING,
        f"{learner.holder} learned {online.samples_seen} samples from {start} in {online.batches_applied} "
        f"mini-batches, {online.batches_quarantined} quarantined{lag}",
    )


def _quarantining_condition(online: OnlineStatus | None) -> tuple[ConditionStatus, str, str]:
    """True, with the guardrail's reason, while no snapshot was written after the newest quarantined
    mini-batch (the learner snapshots only what it learned: the stream may be all bad); False once one was."""
    newest = online.quarantines[0] if online and online.quarantines else None
    if online is None or newest is None:
        return ConditionStatus.FALSE, "NoQuarantine", "no mini-batch quarantined"
    total = f"{online.batches_quarantined} quarantined in all"
    if newest.time is not None and (online.snapshot_time is None or newest.time > online.snapshot_time):
        return (
            ConditionStatus.TRUE,
            newest.reason,
            f"mini-batch {newest.batch} quarantined at {newest.time:%Y-%m-%dT%H:%M:%SZ}: {newest.message}; "
            f"no snapshot since; {total}"[:1024],
        )
    return (
        ConditionStatus.FALSE,
        "SnapshotSince",
        f"a snapshot after the last quarantine ({newest.reason}); {total}",
    )


def children_for(workflow: Workflow, plan: Plan, context: RuntimeContext) -> Children:
    """The learner (with its Lease and the rights to hold it) and the serving children in follow mode, for
    the start version `plan.deploy`; nothing before a version exists."""
    if plan.deploy is None:
        return Children()
    serving = webservice.serving_children(workflow, plan.deploy, context, FOLLOW_ENV)
    return Children(
        apply=[
            *learner_access(workflow),
            learner_lease(workflow),
            learner_deployment(workflow, plan.deploy, context),
            *serving.apply,
        ],
        delete=serving.delete,
    )


def learner_name(workflow: Workflow) -> str:
    """The name of the learner's Deployment, Lease, ServiceAccount, Role and RoleBinding."""
    return f"{workflow.name}-learner"


def learner_access(workflow: Workflow) -> list[Manifest]:
    """A ServiceAccount whose only right is to get, update and patch the learner's own Lease."""
    return children.lease_access(
        workflow, learner_name(workflow), children.LEARNER, ["get", "update", "patch"]
    )


def learner_lease(workflow: Workflow) -> Manifest:
    """The single-writer Lease, metadata only: the learner holds it and writes its progress on it."""
    return children.lease(workflow, learner_name(workflow), children.LEARNER)


def learner_deployment(workflow: Workflow, start: str, context: RuntimeContext) -> Manifest:
    """One learner from `start` (a new start version replaces it: Recreate, so that two never run), with the
    store, its Lease's name, its own name and namespace (downward API), and the Kafka credentials' Secret
    mounted when the source names one."""
    spec = workflow.spec
    assert spec.online is not None
    kafka = spec.online.source.kafka
    secret = kafka.secret_ref.name if kafka and kafka.secret_ref else None
    env: list[dict[str, Any]] = [
        # Declared and referenced in the args, as serving's HTTP_PORT: where a node gives each Pod a port of
        # its own in this variable (tests' process node), the learner listens there.
        {"name": "METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "MLW_SPEC", "value": spec.model_dump_json(by_alias=True, exclude_none=True)},
        {"name": "MLW_START_VERSION", "value": start},
        {"name": "MLW_LEASE", "value": learner_name(workflow)},
        {"name": "MLW_ALLOWED_ESTIMATOR_PREFIXES", "value": ",".join(context.allowed_estimator_prefixes)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "store", "mountPath": children.STORE_MOUNT}]
    volumes: list[dict[str, Any]] = [children.store_volume(workflow)]
    if secret is not None:
        env.append({"name": "MLW_KAFKA_CONFIG_DIR", "value": KAFKA_CONFIG_DIR})
        mounts.append({"name": "kafka", "mountPath": KAFKA_CONFIG_DIR, "readOnly": True})
        volumes.append({"name": "kafka", "secret": {"secretName": secret, "defaultMode": 0o440}})
    labels = {**children.labels(workflow, children.LEARNER), children.VERSION_LABEL: start}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": children.metadata(workflow, learner_name(workflow), children.LEARNER),
        "spec": {
            "replicas": 1,
            # The old learner is gone before the new one starts; the Lease guards the rest (a node that lost
            # contact with a Pod still running).
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": children.selector(workflow, children.LEARNER)},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": learner_name(workflow),
                    # The one runtime with API access: its Lease, through its own ServiceAccount.
                    "automountServiceAccountToken": True,
                    "securityContext": children.pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "learn",
                            "image": spec.runtime.image or context.image,
                            "imagePullPolicy": context.image_pull_policy,
                            "command": ["python", "-m", "mlworkflow.runtime.learn"],
                            "args": [
                                f"--store={children.STORE_MOUNT}",
                                f"--workflow={workflow.name}",
                                "--port=$(METRICS_PORT)",
                            ],
                            "env": env,
                            "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                            "resources": children.container_resources(spec.training.resources),
                            "securityContext": children.container_security(),
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
