"""MLflow tracking end to end: a tracked WebService workflow, the operator (as the chart's ServiceAccount)
against the real API server, its training and sync Jobs running on the process node and logging to a real
MLflow tracking server (tests/mlflow_server.py) on 127.0.0.1, read back with MLflow's client."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubelocal.controlplane import ControlPlane
from mlflow_server import MLflowServer
from mlworkflow.api import v1alpha1
from support import REPORT, wait_for
from workflows import TRAINING, create_claim, get, objects, workflow_manifest

pytestmark = pytest.mark.cluster

CHAMPION = "champion"


def tracked_workflow(api: client.ApiClient, ns: str, uri: str) -> str:
    """The tests' iris WebService workflow, logging to the MLflow server at `uri`; returns its name."""
    create_claim(api, ns, "ml-artifacts")
    manifest = workflow_manifest()
    manifest["spec"]["tracking"] = {"mlflow": {"trackingUri": uri}}
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, manifest
    )
    return str(manifest["metadata"]["name"])


def synced(api: client.ApiClient, ns: str, name: str, version: str) -> dict[str, Any] | None:
    """The workflow once `version` is decided and status.tracking says MLflow shows that decision."""
    workflow = get(api, ns, name)
    status = workflow.get("status") or {}
    history = status.get("history") or []
    tracking = status.get("tracking") or {}
    if not history or history[0]["version"] != version or tracking.get("state") != "Synced":
        return None
    return workflow


def registered(mlflow: MlflowClient, model: str, version: str) -> Any:
    """The registered model version tagged with our `version` (every trained version is registered)."""
    found = [
        v
        for v in mlflow.search_model_versions(f"name='{model}'")
        if v.tags.get("mlworkflow.version") == version
    ]
    assert len(found) == 1, [(v.version, v.tags) for v in found]
    return mlflow.get_model_version(model, found[0].version)


def test_runs_versions_and_the_champion_alias_in_mlflow(
    request: pytest.FixtureRequest,
    api: client.ApiClient,
    control_plane: ControlPlane,
    process_namespace: str,
    operator: None,
    tracking_server: MLflowServer,
) -> None:
    ns = process_namespace
    mlflow = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    started = time.monotonic()
    name = tracked_workflow(api, ns, tracking_server.uri)
    model = f"{ns}.{name}"

    # v1 trains, is logged and registered by its training Pod; the operator's sync Job tags and aliases it.
    first = wait_for(lambda: synced(api, ns, name, "v1"), 240, "v1 decided and synced to MLflow")
    took_v1 = time.monotonic() - started
    assert first["status"]["model"]["version"] == "v1"
    assert first["status"]["tracking"]["registeredModel"] == model
    assert "champion is v1" in first["status"]["tracking"]["message"]
    experiment = mlflow.get_experiment_by_name(f"{ns}/{name}")
    assert experiment is not None
    (run,) = mlflow.search_runs([experiment.experiment_id], "attributes.run_name = 'v1'")
    assert run.data.tags["mlworkflow.workflow"] == name
    assert run.data.tags["mlworkflow.namespace"] == ns
    assert run.data.tags["mlworkflow.trigger"] == "Initial"
    assert run.data.params["estimator"] == "sklearn.ensemble.RandomForestClassifier"
    assert run.data.params["param.n_estimators"] == "20"
    assert run.data.params["specHash"] == first["status"]["history"][0]["specHash"]
    assert run.data.metrics["holdout.f1_macro"] == pytest.approx(
        first["status"]["model"]["metrics"]["f1_macro"]
    )
    assert "cv.f1_macro_mean" in run.data.metrics
    v1 = registered(mlflow, model, "v1")
    assert v1.run_id == run.info.run_id
    assert (v1.tags["mlworkflow.outcome"], v1.tags["mlworkflow.reason"]) == ("Promoted", "Initial")
    assert mlflow.get_model_version_by_alias(model, CHAMPION).version == v1.version

    # A manual retraining on the same data: v2 is registered, tagged with the decision, the alias follows it.
    control_plane.kubectl(
        "annotate", "--overwrite", f"mlw/{name}", "-n", ns, f"{v1alpha1.RETRAIN_ANNOTATION}=tracked"
    )
    second = wait_for(lambda: synced(api, ns, name, "v2"), 240, "v2 decided and synced to MLflow")
    decided = second["status"]["history"][0]
    v2 = registered(mlflow, model, "v2")
    assert v2.tags["mlworkflow.outcome"] == decided["outcome"]
    assert v2.tags["mlworkflow.reason"] == decided["reason"]
    assert mlflow.get_run(v2.run_id).data.tags["mlworkflow.trigger"] == "Manual"
    served = second["status"]["model"]["version"]
    assert served == ("v2" if decided["outcome"] == "Promoted" else "v1")
    assert (
        mlflow.get_model_version_by_alias(model, CHAMPION).version
        == registered(mlflow, model, served).version
    )
    assert registered(mlflow, model, "v1").tags["mlworkflow.outcome"] == "Promoted"

    # One sync Job per decision to carry, none failed.
    jobs = client.BatchV1Api(api).list_namespaced_job(
        ns, label_selector="app.kubernetes.io/component=tracking"
    )
    assert len(jobs.items) == 2 and all(j.status.succeeded == 1 for j in jobs.items), [
        (j.metadata.name, j.status) for j in jobs.items
    ]
    trainings = client.BatchV1Api(api).list_namespaced_job(ns, label_selector=TRAINING).items
    assert sorted(j.metadata.name for j in trainings) == [f"{name}-train-v1", f"{name}-train-v2"]
    request.config.stash.setdefault(REPORT, []).append(
        f"mlflow e2e: v1 synced {took_v1:.0f}s after the workflow was created, v2 after "
        f"{time.monotonic() - started:.0f}s"
    )
