"""AutoML end to end: a search of two workers on one study (an Indexed Job on the process node), its winner
trained as v1 and served, the leaderboard in status; a long search shows its live progress (reported by its
workers on their Lease) while it runs; deleting the workflow mid-search leaves nothing running.
Real API server, real Optuna, scikit-learn and BentoML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from support import wait_for
from workflows import create_claim, get, objects

pytestmark = pytest.mark.cluster


def manifest(name: str, trials: int) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {
            "pattern": "AutoML",
            "data": {"source": "sklearn://breast_cancer", "target": "target"},
            "model": {"task": "classification"},
            "training": {"crossValidation": 3},
            "automl": {
                "trials": trials,
                "parallelism": 2,
                "metric": "roc_auc",
                "seed": 1,
                "candidates": [
                    {
                        "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"C": {"low": 0.01, "high": 10.0, "log": True}, "max_iter": [500]},
                    },
                    {
                        "estimator": "sklearn.ensemble.RandomForestClassifier",
                        "params": {"n_estimators": [10, 20], "max_depth": {"low": 2, "high": 6}},
                    },
                ],
            },
            "serving": {"replicas": 1},
            "storage": {"pvc": {"claimName": "store"}},
        },
    }


def create(api: client.ApiClient, ns: str, document: dict[str, Any]) -> None:
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, document
    )


def test_the_winner_of_a_parallel_search_serves(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str, operator: None
) -> None:
    ns = process_namespace
    create_claim(api, ns, "store")
    create(api, ns, manifest("cancer", trials=6))
    wait_for(lambda: get(api, ns, "cancer").get("status", {}).get("phase") == "Searching", 60, "Searching")
    serving = wait_for(
        lambda: (w := get(api, ns, "cancer")).get("status", {}).get("phase") == "Serving" and w,
        420,
        "the winner serving",
    )
    status = serving["status"]
    search = status["search"]
    assert search["state"] == "Succeeded" and search["version"] == "v1" and search["metric"] == "roc_auc"
    assert search["trialsComplete"] + search["trialsFailed"] + search["trialsPruned"] == 6, (
        "exactly the budget"
    )
    board = search["leaderboard"]
    assert 1 <= len(board) <= 6 and [row["rank"] for row in board] == list(range(1, len(board) + 1))
    assert board == sorted(board, key=lambda row: -row["score"]), "best first"
    record = status["history"][0]
    assert (record["version"], record["outcome"], record["reason"]) == ("v1", "Promoted", "Initial")
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="job-name=cancer-search-v1").items
    workers = sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert workers == ["0", "1"], "two workers, one Pod each"
    condition = next(c for c in status["conditions"] if c["type"] == "Searched")
    winner = board[0]["estimator"].rsplit(".", 1)[-1]
    assert condition["status"] == "True" and f"best {winner} roc_auc" in condition["message"]
    assert search["bestEstimator"] == board[0]["estimator"]
    events = {e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items}
    assert {"SearchStarted", "SearchSucceeded", "TrainingStarted", "Promoted", "RolledOut"} <= events
    # The workers reported on their Lease, through the ServiceAccount the operator made for them; the last
    # report is a worker's final one (which may have seen the other's last trial still running).
    lease = client.CoordinationV1Api(api).read_namespaced_lease("cancer-search", ns)
    reported = json.loads(lease.metadata.annotations["mlworkflow.io/progress"])
    assert reported["searchId"] == "v1" and reported["trials"] == 6
    assert sum(reported[k] for k in ("complete", "failed", "pruned", "running")) == 6

    # A search deleted mid-way: its workflow goes, and so does everything it started.
    create(api, ns, manifest("doomed", trials=200))
    wait_for(
        lambda: [
            p
            for p in client.CoreV1Api(api)
            .list_namespaced_pod(ns, label_selector="job-name=doomed-search-v1")
            .items
            if p.status.phase == "Running"
        ],
        120,
        "the doomed search running",
    )

    # 200 trials take minutes: while its Job runs, the status shows the workers' counts as they come.
    def searching() -> dict[str, Any] | None:
        workflow = get(api, ns, "doomed")
        search = workflow.get("status", {}).get("search") or {}
        return (
            workflow
            if search.get("state") == "Running" and (search.get("trialsComplete") or 0) >= 2
            else None
        )

    live = wait_for(searching, 180, "live search progress in status")
    shown = live["status"]["search"]
    assert shown["version"] == "v1" and shown["trials"] == 200 and shown["bestScore"] > 0.5
    assert shown["reportedAt"] and shown["startedAt"] and shown["leaderboard"] == []
    searched = next(c for c in live["status"]["conditions"] if c["type"] == "Searched")
    assert (
        searched["status"] == "Unknown"
        and f"{shown['trialsComplete']} of 200 trials complete" in searched["message"]
    )
    assert live["status"]["phase"] == "Searching"
    job = client.BatchV1Api(api).read_namespaced_job("doomed-search-v1", ns)
    assert not [c for c in job.status.conditions or [] if c.type in ("Complete", "Failed")], "still running"
    labels = {"namespace": ns, "workflow": "doomed"}
    assert (
        REGISTRY.get_sample_value("mlworkflow_search_current_trials", {**labels, "state": "complete"}) or 0
    ) >= 2
    objects(api).delete_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, "doomed"
    )

    def doomed() -> list[str]:
        return [
            p.metadata.name
            for p in client.CoreV1Api(api).list_namespaced_pod(ns).items
            if p.metadata.name.startswith("doomed-")
        ] + [
            j.metadata.name
            for j in client.BatchV1Api(api).list_namespaced_job(ns).items
            if j.metadata.name.startswith("doomed-")
        ]

    wait_for(lambda: not doomed(), 120, "nothing of the deleted search left")
    wait_for(lambda: not worker_processes("doomed-"), 60, "no worker process left")


def worker_processes(prefix: str) -> list[int]:
    """Pids of the process node's processes for Pods named `prefix`... (a Pod's HOSTNAME is its name)."""
    marker = f"HOSTNAME={prefix}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids
