"""Termination messages on the process node, cut as a kubelet cuts them, and the operator's readers of them:
a drift summary of hundreds of long-named drifted columns arrives whole, an over-long message is named as cut.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubernetes import client

import mlworkflow
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.desired.children import (
    TRAINING,
    VERSION_LABEL,
    WORKFLOW_LABEL,
    RuntimeContext,
    Workflow,
    monitoring_cronjob,
)
from mlworkflow.kube import Kube
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import MAX_BYTES
from runtime.conftest import train_apart
from support import wait_for

pytestmark = pytest.mark.cluster

# The Pods run the runtimes this test imports (a worktree, not only the installed checkout).
SOURCE = str(Path(mlworkflow.__file__).resolve().parents[1])


def store_claim(api: client.ApiClient, ns: str) -> Path:
    """A claim `store`, bound; its folder on this machine."""
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "store"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    volume = wait_for(
        lambda: core.read_namespaced_persistent_volume_claim("store", ns).spec.volume_name, 30, "claim bound"
    )
    return Path(core.read_persistent_volume(volume).spec.host_path.path)


def test_a_drift_summary_of_hundreds_of_long_named_columns_arrives_whole(
    api: client.ApiClient, process_namespace: str
) -> None:
    ns, name = process_namespace, "wide"
    root = store_claim(api, ns)
    # 200 columns with 180-character names, all drifted: 20 of them named in the summary were 4.5 KB.
    columns = [f"{i:03d}_" + "reading_of_a_sensor_with_a_long_descriptive_name_" * 4 for i in range(200)]
    rng = np.random.default_rng(0)
    (root / "data").mkdir()
    training = pd.DataFrame(rng.normal(size=(120, len(columns))), columns=columns)
    training.assign(label=np.where(training[columns[0]] > 0, "a", "b")).to_csv(
        root / "data" / "wide.csv", index=False
    )
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/wide.csv", "target": "label", "features": {"numeric": columns}},
            "model": {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 2}},
            "training": {"crossValidation": 0},
            "monitoring": {"driftThreshold": 0.5, "minSamples": 100},
            "storage": {"pvc": {"claimName": "store"}},
        }
    )
    store = WorkflowStore(root, name)
    train_apart(spec, store, "v1")
    store.samples.mkdir()
    served = pd.DataFrame(rng.normal(5.0, 1.0, size=(150, len(columns))), columns=columns)
    with (store.samples / "pod-a.jsonl").open("w") as out:  # as the serving Pods record them
        for record in served.to_dict(orient="records"):
            out.write(json.dumps({"ts": time.time(), "features": record}) + "\n")

    # The real drift Job, from the operator's CronJob template (without the HTML report, 30 s of widgets).
    workflow = Workflow(name, ns, str(uuid.uuid4()), spec)
    template = monitoring_cronjob(workflow, "v1", RuntimeContext())["spec"]["jobTemplate"]
    container = template["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [a for a in container["args"] if a != "--html"]
    container["env"].append({"name": "PYTHONPATH", "value": SOURCE})
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-drift-1", **template["metadata"]},
    }
    client.BatchV1Api(api).create_namespaced_job(ns, {**job, "spec": template["spec"]})

    check = wait_for(lambda: Kube(api).latest_drift_check(ns, name), 180, "the drift Job to finish")
    summary = check.result
    assert summary["status"] == "ok", summary
    assert (summary["share"], summary["drifted"], summary["driftedColumns"]) == (1.0, True, 200)
    named = summary["columns"]
    assert 0 < len(named) < 20 and [c["column"] for c in named] == columns[: len(named)], "whole names"
    assert summary["truncated"]["columns"] == 20 - len(named), "how many more the summary had"
    saved = json.loads((root / summary["result"]).read_text())
    assert len(saved["columns"]) == 200 and all(c["drifted"] for c in saved["columns"])
    (pod,) = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"job-name={name}-drift-1").items
    message = pod.status.container_statuses[0].state.terminated.message
    assert len(message.encode()) <= MAX_BYTES


def test_an_over_long_message_keeps_its_last_bytes_and_the_operator_says_it_was_cut(
    api: client.ApiClient, process_namespace: str
) -> None:
    ns = process_namespace
    # An unbounded JSON summary of 6,031 bytes (as a runtime wrote it before the bound), in which the cut
    # splits a two-byte character.
    written = json.dumps({"note": "é" * 3000, "status": "error"}, ensure_ascii=False)
    assert len(written.encode()) == 6031
    labels = {WORKFLOW_LABEL: "long", "app.kubernetes.io/component": TRAINING, VERSION_LABEL: "v1"}
    code = f"open('/dev/termination-log', 'w', encoding='utf-8').write({written!r})"
    container = {"name": "main", "image": "x", "command": ["python", "-c", code]}
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "long-v1", "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }
    client.BatchV1Api(api).create_namespaced_job(ns, job)

    def finished() -> Any:
        runs = Kube(api).training_runs(ns, "long")
        return runs and runs[0].state != "Running" and runs[0]

    run = wait_for(finished, 60, "Job long-v1 to finish")
    (pod,) = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="job-name=long-v1").items
    message = pod.status.container_statuses[0].state.terminated.message
    # The kubelet keeps the last 4,096 bytes: the first of them is the second half of "é".
    assert message == "\ufffd" + written.encode()[-MAX_BYTES + 1 :].decode()
    assert run.result["status"] == "error" and run.result["reason"] == "ResultCut"
    assert "cut at the termination message's limit of 4096 bytes" in run.message
