"""MLflow tracking in the planner: the runtime Pods' settings, the sync of decisions, and its retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, ModelRecord, ModelStatus
from mlworkflow.desired import children, tracking
from mlworkflow.desired.lifecycle import Event, SyncRequest, TrackingSync, TrainRequest, batch_result
from mlworkflow.desired.validation import check_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webservice-iris.yaml"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def workflow(mlflow: dict[str, Any] | None) -> children.Workflow:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    if mlflow is not None:
        spec["tracking"] = {"mlflow": mlflow}
    return children.Workflow("iris", "ml", "uid-1", MLWorkflowSpec.model_validate(spec))


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_a_tracked_workflow_s_runtime_pods_get_its_settings_and_credentials() -> None:
    context = children.RuntimeContext(mlflow_tracking_uri="http://mlflow.ops:5000")
    tracked = workflow({"secretRef": {"name": "mlflow-token"}})
    env = env_of(children.training_job(tracked, TrainRequest("v1", "Initial"), context))  # type: ignore[arg-type]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ops:5000", "the admin's default"
    assert (env["MLW_MLFLOW_EXPERIMENT"], env["MLW_MLFLOW_MODEL"], env["MLW_NAMESPACE"]) == (
        "ml/iris",
        "ml.iris",
        "ml",
    )
    assert env["MLW_SPEC_HASH"] == children.model_spec_hash(tracked.spec)
    for key in children.MLFLOW_SECRET_KEYS:
        assert env[key] == {"secretKeyRef": {"name": "mlflow-token", "key": key, "optional": True}}
    own = workflow(
        {"trackingUri": "https://mlflow.team", "experiment": "/Shared/iris", "registeredModel": "iris"}
    )
    env = env_of(children.training_job(own, TrainRequest("v1", "Initial"), context))  # type: ignore[arg-type]
    assert (env["MLFLOW_TRACKING_URI"], env["MLW_MLFLOW_EXPERIMENT"], env["MLW_MLFLOW_MODEL"]) == (
        "https://mlflow.team",
        "/Shared/iris",
        "iris",
    )
    assert "MLFLOW_TRACKING_TOKEN" not in env
    untracked = env_of(children.training_job(workflow(None), TrainRequest("v1", "Initial"), context))  # type: ignore[arg-type]
    assert "MLFLOW_TRACKING_URI" not in untracked


def test_tracking_without_a_server_is_refused_when_the_operator_has_none() -> None:
    spec = workflow({}).spec
    refusal = check_spec(spec)
    assert refusal is not None and refusal.reason == "TrackingNotConfigured"
    assert check_spec(spec, default_tracking_uri="http://mlflow:5000") is None


def status_after(*records: tuple[str, str, str]) -> MLWorkflowStatus:
    status = MLWorkflowStatus(
        history=[
            ModelRecord.model_validate(
                {"version": v, "trigger": "Drift", "specHash": "h", "outcome": outcome, "reason": reason}
            )
            for v, outcome, reason in records
        ]
    )
    status.model = ModelStatus(version=next(v for v, outcome, _ in records if outcome == "Promoted"))
    return status


SETTINGS = tracking.MLflowSettings("http://mlflow:5000", "ml/iris", "ml.iris")


def test_a_decision_starts_a_sync_and_its_success_is_recorded() -> None:
    status = status_after(("v2", "Rejected", "NotBetter"), ("v1", "Promoted", "Initial"))
    events: list[Event] = []
    sync = tracking.plan_sync(SETTINGS, status, [], NOW, events)
    assert isinstance(sync, SyncRequest) and sync.attempt == 1
    assert sync.decisions["served"] == "v1"
    assert [(d["version"], d["outcome"], d["reason"]) for d in sync.decisions["versions"]] == [
        ("v2", "Rejected", "NotBetter"),
        ("v1", "Promoted", "Initial"),
    ]
    job = children.tracking_job(workflow({}), sync, children.RuntimeContext(mlflow_tracking_uri="http://m"))
    assert job["metadata"]["name"] == f"iris-track-{sync.digest[:10]}-1"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "mlworkflow.runtime.tracking",
    ]
    assert status.tracking is not None and status.tracking.state == "Syncing"

    running = TrackingSync(job["metadata"]["name"], sync.digest, 1, "Running")
    assert tracking.plan_sync(SETTINGS, status, [running], NOW, events) is None, "one sync at a time"
    done = TrackingSync(
        running.name, sync.digest, 1, "Succeeded", {"status": "ok", "message": "champion is v1"}, "", NOW
    )
    assert tracking.plan_sync(SETTINGS, status, [done], NOW, events) is None
    assert (status.tracking.state, status.tracking.synced) == ("Synced", sync.digest)
    assert tracking.plan_sync(SETTINGS, status, [], NOW, events) is None, (
        "the Job may be gone: the status says"
    )
    assert events == []
    # A new decision is a new digest: synced again.
    promoted = status_after(("v3", "Promoted", "Better"), ("v2", "Rejected", "NotBetter"))
    promoted.tracking = status.tracking
    again = tracking.plan_sync(SETTINGS, promoted, [done], NOW, events)
    assert again is not None and again.digest != sync.digest and again.decisions["served"] == "v3"


def test_an_unreachable_server_is_told_once_and_tried_again_a_minute_on() -> None:
    status = status_after(("v1", "Promoted", "Initial"))
    first = tracking.plan_sync(SETTINGS, status, [], NOW, [])
    assert first is not None
    down = TrackingSync(
        "iris-track-x-1",
        first.digest,
        1,
        "Succeeded",
        {"status": "unavailable", "message": "ConnectionError: refused"},
        "",
        NOW,
    )
    events: list[Event] = []
    assert tracking.plan_sync(SETTINGS, status, [down], NOW + timedelta(seconds=10), events) is None
    assert status.tracking is not None and status.tracking.state == "NotTracked"
    assert [(e.type, e.reason) for e in events] == [("Warning", "NotTracked")]
    assert "refused" in events[0].message
    retry = tracking.plan_sync(SETTINGS, status, [down], NOW + timedelta(seconds=61), events)
    assert retry is not None and retry.attempt == 2 and retry.digest == first.digest
    assert len(events) == 1, "told once while it lasts"


def test_an_untracked_workflow_has_no_tracking_status() -> None:
    status = status_after(("v1", "Promoted", "Initial"))
    assert tracking.plan_sync(None, status, [], NOW, []) is None and status.tracking is None


def test_failed_versions_and_untracked_runs_make_a_sync() -> None:
    status = status_after(("v2", "Failed", "NoTrialSucceeded"), ("v1", "Promoted", "Initial"))
    first = tracking.plan_sync(SETTINGS, status, [], NOW, [])
    assert first is not None
    assert first.decisions["failed"] == [{"version": "v2", "reason": "NoTrialSucceeded", "message": ""}]
    assert [d["version"] for d in first.decisions["versions"]] == ["v1"]
    done = TrackingSync("iris-track-1", first.digest, 1, "Succeeded", {"status": "ok"}, "", NOW)
    assert tracking.plan_sync(SETTINGS, status, [done], NOW, []) is None
    # A drift check said MLflow did not take its run: a sync of the same decisions logs it.
    retry = tracking.plan_sync(SETTINGS, status, [done], NOW, [], ["iris-drift-29000000"])
    assert retry is not None and retry.digest != first.digest
    assert retry.decisions["untracked"] == ["iris-drift-29000000"]
    result, _ = batch_result([{"status": "ok", "tracking": {"tracked": False}}, {"status": "ok"}])
    assert result["untracked"] == 1
