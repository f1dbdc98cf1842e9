"""The operator's training Job on the real Job controller (process node): a data error fails it with its first
Pod, while a crash is still retried up to `backoffLimit`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import mlworkflow
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Trigger
from mlworkflow.desired.children import RuntimeContext, Workflow, training_job
from mlworkflow.desired.lifecycle import TrainRequest
from mlworkflow.kube import Kube
from support import wait_for

pytestmark = pytest.mark.cluster

# The Pods run the trainer this test imports (a worktree, not only the installed checkout).
SOURCE = str(Path(mlworkflow.__file__).resolve().parents[1])


def ended(batch: client.BatchV1Api, ns: str, name: str) -> dict[str, Any] | None:
    """The Job's Complete or Failed condition, once it has one."""
    for condition in batch.read_namespaced_job_status(name, ns).status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return {"type": condition.type, "reason": condition.reason, "message": condition.message}
    return None


def test_a_data_error_fails_the_training_job_with_one_pod_and_a_crash_is_retried(
    api: client.ApiClient, process_namespace: str, tmp_path: Path
) -> None:
    ns = process_namespace
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/missing.csv", "target": "target"},
            "model": {"estimator": "sklearn.tree.DecisionTreeClassifier"},
            "training": {"backoffLimit": 1, "crossValidation": 0},
            "storage": {"path": str(tmp_path)},
        }
    )
    workflow = Workflow("broken", ns, "00000000-0000-0000-0000-000000000001", spec)
    jobs = {}
    for version in ("v1", "v2"):
        job = training_job(workflow, TrainRequest(version, Trigger.INITIAL), RuntimeContext())
        job["metadata"].pop("ownerReferences")  # no MLWorkflow object here: nothing to own the Job
        container = job["spec"]["template"]["spec"]["containers"][0]
        container["env"].append({"name": "PYTHONPATH", "value": SOURCE})
        if version == "v2":  # a crash, not invalid input: the trainer dies on a KeyError without its spec
            container["env"] = [e for e in container["env"] if e["name"] != "MLW_SPEC"]
        jobs[version] = job
    batch = client.BatchV1Api(api)
    started = time.monotonic()
    for job in jobs.values():
        batch.create_namespaced_job(ns, job)
    names = {version: job["metadata"]["name"] for version, job in jobs.items()}

    invalid = wait_for(lambda: ended(batch, ns, names["v1"]), 90, "the data error's Job to end")
    seconds = time.monotonic() - started
    crashed = wait_for(lambda: ended(batch, ns, names["v2"]), 90, "the crashed Job to end")

    core = client.CoreV1Api(api)
    pods = {v: core.list_namespaced_pod(ns, label_selector=f"job-name={n}").items for v, n in names.items()}
    assert (invalid["type"], invalid["reason"]) == ("Failed", "PodFailurePolicy"), invalid
    assert len(pods["v1"]) == 1, "a data error is not retried"
    assert pods["v1"][0].status.container_statuses[0].state.terminated.exit_code == 2
    assert seconds < 30, f"{seconds:.0f}s from the Job's creation to its failure"
    assert (crashed["type"], crashed["reason"]) == ("Failed", "BackoffLimitExceeded"), crashed
    assert len(pods["v2"]) == 2, "a crash is retried up to backoffLimit (1)"

    # What the operator reads of it: a failed run with the trainer's message.
    runs = {run.version: run for run in Kube(api).training_runs(ns, "broken")}
    assert runs["v1"].state == "Failed" and runs["v1"].result["reason"] == "DataInvalid"
    assert "no file matches 'data/missing.csv'" in runs["v1"].message
