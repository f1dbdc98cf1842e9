"""WebService workflows for the end-to-end tests: the manifest, and reading, patching and asking them."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from support import REPO, wait_for

#: Selects the training Jobs (the drift CronJob also makes Jobs, whenever its minute comes).
TRAINING = "app.kubernetes.io/component=training"

IRIS_ROW = {
    "sepal length (cm)": 6.3,
    "sepal width (cm)": 3.3,
    "petal length (cm)": 6.0,
    "petal width (cm)": 2.5,
}


def workflow_manifest() -> dict[str, Any]:
    document = copy.deepcopy(yaml.safe_load((REPO / "examples" / "webservice-iris.yaml").read_text()))
    document["spec"]["model"]["params"] = {"n_estimators": 20, "max_depth": 4}
    document["spec"]["training"]["crossValidation"] = 3
    document["spec"]["serving"] = {"replicas": 1}
    return dict(document)


def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        objects(api).get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
        )
    )


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    objects(api).patch_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name, {"spec": spec}
    )


def condition(workflow: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in workflow.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def predict(control_plane: ControlPlane, namespace: str, service: str) -> dict[str, Any] | None:
    """A prediction through the Service's (single) ready endpoint, or None while there is none."""
    urls = control_plane.service_urls(namespace, service)
    if len(urls) != 1:
        return None
    request = urllib.request.Request(
        f"{urls[0]}/predict",
        json.dumps({"records": [IRIS_ROW]}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))
    except (urllib.error.URLError, OSError):
        return None


def create_claim(api: client.ApiClient, namespace: str, name: str) -> None:
    """A ReadWriteMany claim for the artifact store (the process node provisions a folder for it)."""
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def create_workflow(api: client.ApiClient, namespace: str) -> str:
    """The artifact store's claim and a small iris WebService workflow in `namespace`; returns its name."""
    create_claim(api, namespace, "ml-artifacts")
    manifest = workflow_manifest()
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, manifest
    )
    return str(manifest["metadata"]["name"])


def claim_folder(api: client.ApiClient, ns: str, claim: str) -> Path:
    """The process node's folder behind a bound PersistentVolumeClaim (its hostPath volume)."""
    core = client.CoreV1Api(api)
    volume = wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(claim, ns).spec.volume_name,
        30,
        "the claim bound",
    )
    return Path(core.read_persistent_volume(volume).spec.host_path.path)


def regime(rows: int, shifted: bool, seed: int) -> pd.DataFrame:
    """Before: label = x1 + x2 > 0 around x1 = 0. After: x1 moved to 3 and only x2 decides (concept drift)."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(3.0 if shifted else 0.0, 1.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    label = (x2 > 0) if shifted else (x1 + x2 > 0)
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label.astype(int)})


# 31 February: the CronJob never fires by itself, so a check at its minute cannot race the checks a test
# runs by hand (run_drift_check) after it has prepared the window.
CHECKS_BY_HAND = "0 0 31 2 *"


def run_drift_check(api: client.ApiClient, ns: str, name: str, number: int) -> None:
    """What the CronJob does at its next tick, now: a Job from its template."""
    cronjob = client.BatchV1Api(api).read_namespaced_cron_job(f"{name}-drift", ns)
    template = client.ApiClient().sanitize_for_serialization(cronjob.spec.job_template)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-drift-manual-{number}",
            "labels": template["metadata"]["labels"],
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob.metadata.name,
                    "uid": cronjob.metadata.uid,
                }
            ],
        },
        "spec": template["spec"],
    }
    client.BatchV1Api(api).create_namespaced_job(ns, job)
