"""Desired-state builders: the manifests the operator applies, checked without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from mlworkflow.api import exitcodes
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Trigger
from mlworkflow.desired import children
from mlworkflow.desired.lifecycle import Event, TrainRequest
from mlworkflow.desired.patterns import webservice

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webservice-iris.yaml"
CONTEXT = children.RuntimeContext(image="registry.invalid/mlw:1", allowed_estimator_prefixes=("sklearn.",))


def workflow(**spec_changes: object) -> children.Workflow:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec.update(spec_changes)
    return children.Workflow("iris", "ml", "uid-1", MLWorkflowSpec.model_validate(spec))


def test_every_child_is_owned_and_labelled() -> None:
    wf = workflow()
    for manifest in (
        children.training_job(wf, TrainRequest("v1", Trigger.INITIAL), CONTEXT),
        webservice.serving_deployment(wf, "v1", CONTEXT),
        webservice.serving_service(wf),
    ):
        meta = manifest["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mlworkflow.io/v1alpha1",
                "kind": "MLWorkflow",
                "name": "iris",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mlworkflow-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "iris"


def test_training_job_runs_the_trainer_non_root_with_the_spec() -> None:
    job = children.training_job(workflow(), TrainRequest("v3", Trigger.SPEC_CHANGE), CONTEXT)
    assert job["metadata"]["name"] == "iris-train-v3"
    assert job["metadata"]["annotations"][children.TRIGGER_ANNOTATION] == "SpecChange"
    assert children.RETRAIN_REQUEST_ANNOTATION not in job["metadata"]["annotations"]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "mlworkflow.runtime.train"]
    assert "--version=v3" in container["args"] and container["image"] == "registry.invalid/mlw:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert MLWorkflowSpec.model_validate_json(env["MLW_SPEC"]) == workflow().spec
    assert env["MLW_ALLOWED_ESTIMATOR_PREFIXES"] == "sklearn."
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["volumes"] == [{"name": "store", "persistentVolumeClaim": {"claimName": "ml-artifacts"}}]
    assert job["spec"]["backoffLimit"] == 2


def test_an_invalid_input_fails_the_job_at_once_and_evictions_are_not_counted() -> None:
    wf = workflow()
    drift_jobs = children.monitoring_cronjob(wf, "v1", CONTEXT)["spec"]["jobTemplate"]
    for job in (children.training_job(wf, TrainRequest("v1", Trigger.INITIAL), CONTEXT), drift_jobs):
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never", "the API server refuses a podFailurePolicy otherwise"
        (container,) = pod["containers"]
        assert job["spec"]["podFailurePolicy"]["rules"] == [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container["name"],
                    "operator": "In",
                    "values": [exitcodes.INVALID_INPUT],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
        assert job["spec"]["backoffLimit"] >= 1, "any other failure is still retried"


def test_serving_rolls_out_readiness_gated_with_probes() -> None:
    deployment = webservice.serving_deployment(workflow(), "v2", CONTEXT)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][children.VERSION_LABEL] == "v2"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert children.VERSION_LABEL not in selector, "a version change must roll the same Deployment"
    container = template["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_TAG"] == "iris:v2" and env["BENTOML_HOME"] == "/artifacts/iris/bentoml"
    assert "--port=$(HTTP_PORT)" in container["args"]
    assert env["MLW_ACCESS_LOG"] == "false"


def test_the_admin_may_turn_the_serving_access_log_on() -> None:
    context = children.RuntimeContext(serving_access_log=True)
    container = webservice.serving_deployment(workflow(), "v1", context)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert {"name": "MLW_ACCESS_LOG", "value": "true"} in container["env"]


def test_autoscaling_gives_an_hpa_and_leaves_replicas_to_it() -> None:
    wf = workflow(serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 6}})
    assert "replicas" not in webservice.serving_deployment(wf, "v1", CONTEXT)["spec"]
    hpa = webservice.serving_autoscaler(wf)
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert webservice.serving_autoscaler(workflow()) is None


def test_only_model_shaping_fields_change_the_spec_hash() -> None:
    base = children.model_spec_hash(workflow().spec)
    assert children.model_spec_hash(workflow(serving={"replicas": 5}).spec) == base
    assert children.model_spec_hash(workflow(monitoring={"driftThreshold": 0.5}).spec) == base
    changed = workflow()
    assert changed.spec.model is not None
    changed.spec.model.params = {"n_estimators": 10}
    assert children.model_spec_hash(changed.spec) != base


def test_a_manual_training_job_carries_the_request_it_answers() -> None:
    job = children.training_job(
        workflow(), TrainRequest("v4", Trigger.MANUAL, champion="v3", retrain_request="1764500000"), CONTEXT
    )
    assert job["metadata"]["annotations"][children.RETRAIN_REQUEST_ANNOTATION] == "1764500000"
    assert "--champion=v3" in job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_an_event_is_named_by_what_it_tells() -> None:
    meta = {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 2}
    told = Event("Normal", "TrainingStarted", "training v2 (trigger Drift)")
    first = children.event(meta, told, datetime(2026, 1, 1, tzinfo=UTC), "operator-a")
    again = children.event(meta, told, datetime(2026, 1, 1, 0, 5, tzinfo=UTC), "operator-b")
    assert first["metadata"]["name"] == again["metadata"]["name"], "the same occurrence, told twice, is one"
    assert first["metadata"]["name"].startswith("iris.") and first["count"] == 1
    assert first["involvedObject"] == {
        "apiVersion": "mlworkflow.io/v1alpha1",
        "kind": "MLWorkflow",
        "name": "iris",
        "namespace": "ml",
        "uid": "uid-1",
    }
    others = [
        children.event({**meta, "generation": 3}, told, datetime(2026, 1, 1, tzinfo=UTC), "a"),
        children.event(
            meta,
            Event("Normal", "TrainingStarted", told.message, key="x"),
            datetime(2026, 1, 1, tzinfo=UTC),
            "a",
        ),
        children.event(
            meta, Event("Normal", "TrainingStarted", "training v3"), datetime(2026, 1, 1, tzinfo=UTC), "a"
        ),
    ]
    assert len({first["metadata"]["name"], *(o["metadata"]["name"] for o in others)}) == 4
