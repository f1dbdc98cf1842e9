"""The operator (kopf, in-process) against the real API server: kstatus conditions, observedGeneration,
refusals of what the schema let through, and nothing of kopf's in the status."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from mlworkflow.api import v1alpha1
from support import operator_in, wait_for

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def operator(operator_kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator, in-process, as the Helm chart's ServiceAccount."""
    with operator_in(namespace, operator_kubeconfig, monkeypatch):
        yield


def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def read(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = objects(api).get_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
    )
    return result


def conditions(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in workflow.get("status", {}).get("conditions", [])}


def observed(api: client.ApiClient, namespace: str, name: str, generation: int) -> dict[str, Any] | None:
    workflow = read(api, namespace, name)
    return workflow if workflow.get("status", {}).get("observedGeneration") == generation else None


def reconciles() -> float:
    """Reconciles the in-process operator has finished (its Prometheus counter)."""
    from mlworkflow.controller import metrics

    return float(metrics.RECONCILES.labels("success")._value.get())


def workflow(example: str, **model: Any) -> dict[str, Any]:
    document = copy.deepcopy(yaml.safe_load((EXAMPLES / example).read_text()))
    document["spec"]["model"].update(model)
    return dict(document)


def test_a_valid_workflow_is_reconciling_with_kstatus_conditions(
    api: client.ApiClient, namespace: str, operator: None
) -> None:
    body = workflow("webservice-iris.yaml")
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, body
    )
    name = body["metadata"]["name"]
    seen = wait_for(lambda: observed(api, namespace, name, 1), 30, "status for generation 1")

    by_type = conditions(seen)
    assert by_type["Reconciling"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Stalled"]["status"] == "False"
    assert {c["observedGeneration"] for c in by_type.values()} == {1}
    assert seen["status"]["phase"] == "Training"
    assert by_type["Reconciling"]["reason"] == "Training"
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert [j.metadata.name for j in jobs] == [f"{name}-train-v1"]
    # kopf's bookkeeping stays out of the status that users and kstatus read.
    assert set(seen["status"]) <= set(
        v1alpha1.MLWorkflowStatus.model_json_schema(by_alias=True)["properties"]
    )


def test_a_disallowed_estimator_stalls_with_a_reason_and_an_event_and_a_fix_recovers(
    api: client.ApiClient, namespace: str, operator: None
) -> None:
    # xgboost is a valid import path, so the schema lets it through; the operator's allow-list does not.
    body = workflow("webservice-iris.yaml", estimator="xgboost.XGBClassifier", params={})
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, body
    )
    name = body["metadata"]["name"]
    stalled = wait_for(lambda: observed(api, namespace, name, 1), 30, "status for generation 1")
    by_type = conditions(stalled)
    assert by_type["Stalled"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Stalled"]["reason"] == "EstimatorNotAllowed"
    assert "spec.model.estimator" in by_type["Stalled"]["message"]
    assert stalled["status"]["phase"] == "Invalid"

    core = client.CoreV1Api(api)
    events = wait_for(
        lambda: [e for e in core.list_namespaced_event(namespace).items if e.reason == "EstimatorNotAllowed"],
        30,
        "a Warning event EstimatorNotAllowed",
    )
    assert events[0].type == "Warning" and events[0].involved_object.name == name
    # Told once: five more reconciles (a resync a second here) post nothing more.
    done = reconciles()
    wait_for(lambda: reconciles() >= done + 5, 30, "five more reconciles")
    told = [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name]
    assert [(e.reason, e.count) for e in told] == [("EstimatorNotAllowed", 1)]
    # Nothing was created half-way.
    assert not client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert not client.AppsV1Api(api).list_namespaced_deployment(namespace).items

    objects(api).patch_namespaced_custom_object(
        v1alpha1.GROUP,
        v1alpha1.VERSION,
        namespace,
        v1alpha1.PLURAL,
        name,
        {"spec": {"model": {"estimator": "sklearn.ensemble.RandomForestClassifier"}}},
    )
    fixed = wait_for(lambda: observed(api, namespace, name, 2), 30, "status for generation 2")
    by_type = conditions(fixed)
    assert by_type["Stalled"]["status"] == "False"
    assert by_type["Reconciling"]["status"] == "True"
    assert {c["observedGeneration"] for c in by_type.values()} == {2}
