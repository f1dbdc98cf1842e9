"""The OnlineLearning pattern without a cluster: the learner's children, its progress in the status, the
batch retraining against its snapshot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from mlworkflow.api.conditions import find, is_true
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired import children
from mlworkflow.desired.lifecycle import (
    DriftCheck,
    LearnerState,
    Observed,
    Plan,
    ServingState,
    TrainingRun,
    TrainRequest,
)
from mlworkflow.desired.patterns import online
from mlworkflow.desired.plan import plan
from mlworkflow.desired.validation import check_spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONTEXT = children.RuntimeContext(image="registry.invalid/mlw:1")


def spec(example: str = "onlinelearning-wine.yaml", **changes: Any) -> MLWorkflowSpec:
    document = yaml.safe_load((EXAMPLES / example).read_text())["spec"]
    document.update(changes)
    return MLWorkflowSpec.model_validate(document)


def workflow(workflow_spec: MLWorkflowSpec | None = None) -> children.Workflow:
    return children.Workflow("wine", "ml", "uid-1", workflow_spec or spec())


def trained(
    version: str = "v1", trigger: Trigger = Trigger.INITIAL, f1: float = 0.9, **more: Any
) -> TrainingRun:
    result = {"status": "ok", "metrics": {"f1_macro": f1}, "backend": "sklearn", "holdout": {"rows": 200}}
    return TrainingRun(version, trigger, "h1", "Succeeded", {**result, **more}, finished_at=NOW)


def progress(start: str = "v1", snapshot: str | None = "v1.3", **more: Any) -> str:
    report = {
        "learner": "wine-learner-abc",
        "startVersion": start,
        "snapshot": snapshot,
        "snapshotTime": "2026-01-01T00:00:00Z",
        "samplesSeen": 300,
        "batchesApplied": 10,
        "batchesQuarantined": 0,
        "lag": 4,
        "canaryScore": 0.93,
        "quarantines": [],
        "somethingNew": {"ignored": True},
        **more,
    }
    return json.dumps(report)


def holding(text: str | None) -> LearnerState:
    return LearnerState("wine-learner-abc", NOW + timedelta(seconds=10), text)


def step(observed: Observed, workflow_spec: MLWorkflowSpec | None = None) -> Plan:
    return plan(workflow_spec or spec(), observed, NOW, "http://wine.ml.svc:80")


def learning(workflow_spec: MLWorkflowSpec | None = None, **observed: Any) -> Plan:
    """v1 trained and served; the learner as `observed` says."""
    first = step(Observed(1, "h1", MLWorkflowStatus(), [trained()]), workflow_spec)
    defaults: dict[str, Any] = {"serving": ServingState("v1", True), "learner": holding(progress())}
    return step(Observed(1, "h1", first.status, [trained()], **{**defaults, **observed}), workflow_spec)


def test_a_new_workflow_trains_its_first_version_and_runs_nothing_else() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus()))
    assert result.train is not None and result.train.version == "v1" and result.deploy is None
    assert online.children_for(workflow(), result, CONTEXT).apply == []
    assert result.status.phase == "Training"


def test_the_promoted_version_starts_the_learner_and_the_serving_follows_its_snapshots() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus(), [trained()]))
    assert result.deploy == "v1" and result.status.phase == "Deploying"
    wanted = online.children_for(workflow(), result, CONTEXT).apply
    kinds = [(m["kind"], m["metadata"]["name"]) for m in wanted]
    assert kinds == [
        ("ServiceAccount", "wine-learner"),
        ("Role", "wine-learner"),
        ("RoleBinding", "wine-learner"),
        ("Lease", "wine-learner"),
        ("Deployment", "wine-learner"),
        ("Service", "wine"),
        ("Deployment", "wine"),
    ]
    by_name = {(m["kind"], m["metadata"]["name"]): m for m in wanted}
    learner = by_name[("Deployment", "wine-learner")]
    assert learner["spec"]["replicas"] == 1 and learner["spec"]["strategy"] == {"type": "Recreate"}
    pod = learner["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "wine-learner" and pod["automountServiceAccountToken"] is True
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "mlworkflow.runtime.learn"]
    assert container["args"] == ["--store=/artifacts", "--workflow=wine", "--port=$(METRICS_PORT)"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    # Declared before the args use it (Kubernetes expands only variables defined earlier in env).
    assert env["METRICS_PORT"] == "9090" and container["env"][0]["name"] == "METRICS_PORT"
    assert env["MLW_START_VERSION"] == "v1" and env["MLW_LEASE"] == "wine-learner"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert MLWorkflowSpec.model_validate_json(env["MLW_SPEC"]) == spec()
    assert "MLW_KAFKA_CONFIG_DIR" not in env  # a file source has no credentials
    assert learner["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090}]
    assert {"name": "store", "mountPath": "/artifacts"} in container["volumeMounts"]
    # The learner's rights: its own Lease, nothing else.
    role = by_name[("Role", "wine-learner")]
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["wine-learner"],
            "verbs": ["get", "update", "patch"],
        }
    ]
    assert "spec" not in by_name[("Lease", "wine-learner")]
    for manifest in wanted:
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    # The serving Deployment is WebService's, following the learner's snapshots of v1.
    serving = by_name[("Deployment", "wine")]["spec"]["template"]["spec"]["containers"][0]
    serving_env = {e["name"]: e["value"] for e in serving["env"]}
    assert serving_env["MLW_FOLLOW_LATEST"] == "1" and serving_env["MODEL_TAG"] == "wine:v1"


def test_kafka_credentials_are_mounted_from_the_secret() -> None:
    kafka = {"bootstrapServers": "k:9092", "topic": "wine", "secretRef": {"name": "kafka-creds"}}
    with_kafka = spec("onlinelearning-kafka.yaml", online={"source": {"kafka": kafka}})
    result = step(Observed(1, "h1", MLWorkflowStatus(), [trained()]), with_kafka)
    learner = online.learner_deployment(workflow(with_kafka), "v1", CONTEXT)
    pod = learner["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MLW_KAFKA_CONFIG_DIR"] == online.KAFKA_CONFIG_DIR
    assert {"name": "kafka", "secret": {"secretName": "kafka-creds", "defaultMode": 0o440}} in pod["volumes"]
    assert {"name": "kafka", "mountPath": online.KAFKA_CONFIG_DIR, "readOnly": True} in pod["containers"][0][
        "volumeMounts"
    ]
    assert result.deploy == "v1"


def test_ready_once_the_learner_holds_its_lease_and_a_snapshot_serves() -> None:
    result = learning()
    status = result.status
    assert is_true(status.conditions, "Ready") and status.phase == "Learning"
    assert status.model is not None and status.model.version == "v1.3"
    assert status.online is not None and status.online.samples_seen == 300 and status.online.lag == 4
    learning_condition = find(status.conditions, "Learning")
    assert learning_condition is not None and learning_condition.status == "True"
    assert "300 samples" in learning_condition.message
    assert result.deploy == "v1"  # the learner starts from the trained version, not from its snapshot


def test_not_ready_while_the_lease_is_free_or_expired_or_no_snapshot_exists() -> None:
    free = learning(learner=None)
    assert not is_true(free.status.conditions, "Ready") and free.status.phase == "Starting"
    assert find(free.status.conditions, "Learning").reason == "LeaseNotHeld"  # type: ignore[union-attr]
    expired = learning(learner=LearnerState("old-pod", NOW - timedelta(seconds=1), progress()))
    assert not is_true(expired.status.conditions, "Ready")
    assert "last holder old-pod" in find(expired.status.conditions, "Learning").message  # type: ignore[union-attr]
    fresh = learning(learner=holding(progress(snapshot=None)))
    assert not is_true(fresh.status.conditions, "Ready")
    assert fresh.status.model is not None and fresh.status.model.version == "v1"
    assert find(fresh.status.conditions, "Reconciling").reason == "NoSnapshot"  # type: ignore[union-attr]
    rolling = learning(serving=ServingState("v1", False))
    assert rolling.status.phase == "Deploying" and not is_true(rolling.status.conditions, "Ready")


def test_each_quarantined_batch_is_told_once() -> None:
    quarantine = {"batch": "b-17", "reason": "ClassShift", "message": "class shares moved 0.8", "time": None}
    first = learning(learner=holding(progress(batchesQuarantined=1, quarantines=[quarantine])))
    told = [e for e in first.events if e.reason == "BatchQuarantined"]
    assert len(told) == 1 and told[0].type == "Warning" and told[0].key == "b-17"
    assert "b-17" in told[0].message and "ClassShift" in told[0].message
    assert first.status.online is not None and first.status.online.batches_quarantined == 1
    again = step(
        Observed(
            1,
            "h1",
            first.status,
            [trained()],
            serving=ServingState("v1", True),
            learner=holding(
                progress(batchesQuarantined=2, quarantines=[{**quarantine, "batch": "b-18"}, quarantine])
            ),
        )
    )
    assert [e.key for e in again.events if e.reason == "BatchQuarantined"] == ["b-18"]


def test_quarantining_while_no_snapshot_followed_the_newest_quarantine() -> None:
    calm = find(learning().status.conditions, "Quarantining")
    assert calm is not None and calm.status == "False" and calm.reason == "NoQuarantine"
    quarantine = {"batch": "b-17", "reason": "MissingColumn", "message": "column 'proline' is in none"}
    stuck = learning(
        learner=holding(
            progress(batchesQuarantined=3, quarantines=[{**quarantine, "time": "2026-01-01T00:00:05Z"}])
        )
    )
    condition = find(stuck.status.conditions, "Quarantining")
    assert condition is not None and condition.status == "True" and condition.reason == "MissingColumn"
    assert "b-17" in condition.message and "no snapshot since; 3 quarantined in all" in condition.message
    assert is_true(stuck.status.conditions, "Ready"), "the served snapshot still serves"
    recovered = learning(
        learner=holding(
            progress(batchesQuarantined=3, quarantines=[{**quarantine, "time": "2025-12-31T23:59:55Z"}])
        )
    )
    condition = find(recovered.status.conditions, "Quarantining")
    assert condition is not None and condition.status == "False" and condition.reason == "SnapshotSince"


def test_a_garbled_progress_report_is_said_and_the_last_one_kept() -> None:
    good = learning()
    for garbled in ("{not json", "[1, 2]", json.dumps({"samplesSeen": -5}), json.dumps({"quarantines": "x"})):
        result = step(
            Observed(
                1, "h1", good.status, [trained()], serving=ServingState("v1", True), learner=holding(garbled)
            )
        )
        condition = find(result.status.conditions, "Learning")
        assert (
            condition is not None
            and condition.status == "Unknown"
            and condition.reason == "ProgressUnreadable"
        )
        assert "mlworkflow.io/progress" in condition.message
        assert result.status.online == good.status.online  # the last readable report stays


def test_a_retraining_trains_a_batch_model_on_the_archive_against_the_learners_snapshot() -> None:
    current = learning()
    requested = step(
        Observed(
            1,
            "h1",
            current.status,
            [trained()],
            serving=ServingState("v1", True),
            learner=holding(progress()),
            retrain_request="r1",
        )
    )
    assert requested.train is not None and requested.train.trigger == Trigger.MANUAL
    assert requested.train.champion == "v1.3"
    job = children.training_job(workflow(), requested.train, CONTEXT)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--champion=v1.3" in args and "--stream-archive" in args
    # The batch model wins: it becomes the learner's start; the old snapshot is no longer served as such.
    champion = {"version": "v1.3", "metrics": {"f1_macro": 0.90}}
    v2 = trained("v2", Trigger.MANUAL, f1=0.95, champion=champion)
    promoted = step(
        Observed(
            1,
            "h1",
            requested.status,
            [trained(), v2],
            serving=ServingState("v1", True),
            learner=holding(progress()),
            retrain_request="r1",
        )
    )
    assert promoted.deploy == "v2" and promoted.status.history[0].outcome == "Promoted"
    assert promoted.status.history[0].champion == "v1.3"
    assert promoted.status.model is not None and promoted.status.model.version == "v2"
    learner = online.learner_deployment(workflow(), promoted.deploy, CONTEXT)
    env = {e["name"]: e.get("value") for e in learner["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLW_START_VERSION"] == "v2"
    # The restarted learner reports snapshots of v2.
    restarted = step(
        Observed(
            1,
            "h1",
            promoted.status,
            [trained(), v2],
            serving=ServingState("v2", True),
            learner=holding(progress("v2", "v2.1")),
        )
    )
    assert restarted.status.model is not None and restarted.status.model.version == "v2.1"
    assert is_true(restarted.status.conditions, "Ready")


def test_drift_with_on_drift_retrain_trains_a_batch_model_against_the_snapshot() -> None:
    """The drift check measures the stream against the start version's data; onDrift: Retrain (the wine
    example's) answers with the same batch retraining on the archived window as a manual one."""
    result = {"status": "ok", "share": 0.6, "drifted": True, "threshold": 0.3, "columns": [], "report": "r"}
    drifted = step(
        Observed(
            1,
            "h1",
            learning().status,
            [trained()],
            serving=ServingState("v1", True),
            learner=holding(progress()),
            drift=DriftCheck("wine-drift-1", NOW, result),
        )
    )
    assert drifted.status.drift is not None and drifted.status.drift.drifted
    assert drifted.train is not None and drifted.train.trigger == Trigger.DRIFT
    assert drifted.train.champion == "v1.3"
    args = children.training_job(workflow(), drifted.train, CONTEXT)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--champion=v1.3" in args and "--stream-archive" in args


def test_a_losing_batch_model_leaves_the_learner_as_it_is() -> None:
    current = learning()
    champion = {"version": "v1.3", "metrics": {"f1_macro": 0.95}}
    v2 = trained("v2", Trigger.SCHEDULE, f1=0.90, champion=champion)
    result = step(
        Observed(
            1,
            "h1",
            current.status,
            [trained(), v2],
            serving=ServingState("v1", True),
            learner=holding(progress()),
        )
    )
    assert result.status.history[0].outcome == "Rejected" and result.deploy == "v1"
    assert result.status.model is not None and result.status.model.version == "v1.3"


def test_the_schedule_retrains_against_the_snapshot() -> None:
    scheduled = spec(training={"schedule": "*/5 * * * *"})
    # The schedule fires in the reconcile after the one that saw the snapshot.
    first = learning(scheduled, created_at=NOW)
    assert first.train is None
    current = step(
        Observed(
            1,
            "h1",
            first.status,
            [trained()],
            serving=ServingState("v1", True),
            learner=holding(progress()),
            created_at=NOW - timedelta(minutes=6),
        ),
        scheduled,
    )
    assert current.train is not None and current.train.trigger == Trigger.SCHEDULE
    assert current.train.champion == "v1.3"


def test_a_first_training_never_reads_the_archive() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus()))
    assert result.train is not None
    args = children.training_job(workflow(), result.train, CONTEXT)["spec"]["template"]["spec"]["containers"][
        0
    ]["args"]
    assert "--stream-archive" not in args
    no_archive = spec(online={**spec().online.model_dump(by_alias=True), "archive": {"retentionHours": 0}})  # type: ignore[union-attr]
    retrain = TrainRequest("v2", Trigger.MANUAL, champion="v1.3")
    assert not children.with_stream_archive(no_archive, retrain)


def test_an_estimator_without_partial_fit_is_refused_and_a_pinned_version_too() -> None:
    refusal = check_spec(spec(model={"estimator": "sklearn.ensemble.RandomForestClassifier"}))
    assert refusal is not None and refusal.reason == "EstimatorNotIncremental"
    assert "spec.model.estimator" in refusal.message and "partial_fit" in refusal.message
    pinned = check_spec(spec(serving={"modelVersion": "v1"}))
    assert pinned is not None and pinned.reason == "ModelVersionNotAllowed"


def test_declared_classes_shape_the_model() -> None:
    """spec.online.classes shape the model (a change retrains); a workflow declaring none keeps the hash
    it had before classes entered it."""
    base = spec()
    assert base.online is not None and not base.online.classes
    declared = spec(online={**base.online.model_dump(by_alias=True), "classes": [0, 1, 2]})
    other = spec(online={**base.online.model_dump(by_alias=True), "classes": [0, 1, 2, 3]})
    hashes = {children.model_spec_hash(s) for s in (base, declared, other)}
    assert len(hashes) == 3
    assert children.model_spec_hash(base) == children.model_spec_hash(
        spec(online={**base.online.model_dump(by_alias=True), "batchSize": 7})
    )
