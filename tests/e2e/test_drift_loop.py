"""The closed loop end to end: served traffic drifts, the real drift check (a Job from the CronJob's
template) detects it, the operator retrains on the refreshed data, and champion/challenger decides."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from kubelocal.net import free_port
from mlworkflow.api import v1alpha1
from support import operator_in, wait_for
from workflows import CHECKS_BY_HAND, claim_folder, create_claim, get, patch_spec, regime, run_drift_check

pytestmark = pytest.mark.cluster

NAME = "loop"
METRICS_PORT = free_port()


@pytest.fixture
def operator(
    operator_kubeconfig: Path, process_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The operator, in-process, as the Helm chart's ServiceAccount."""
    with operator_in(process_namespace, operator_kubeconfig, monkeypatch, MLW_METRICS_PORT=str(METRICS_PORT)):
        yield


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "pattern": "WebService",
            "data": {"source": "data/part-*.csv", "target": "label"},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 30, "random_state": 0},
            },
            "training": {"crossValidation": 0},
            "serving": {"replicas": 1},
            "monitoring": {
                "schedule": CHECKS_BY_HAND,
                "driftThreshold": 0.5,
                "minSamples": 200,
                "cooldown": "1s",
                "onDrift": "Retrain",
            },
            # First, demand more than any retraining can give: the challenger is rejected.
            "promotion": {"metric": "f1_macro", "minImprovement": 0.9},
            "storage": {"pvc": {"claimName": "store"}},
        },
    }


def send(control_plane: ControlPlane, ns: str, frame: pd.DataFrame) -> set[str]:
    """Traffic through the Service, spread over its ready endpoints as kube-proxy would.

    Returns the model versions that answered: during a rollout both the old and the new Pod are ready.
    """
    urls = control_plane.service_urls(ns, NAME)
    records = json.loads(frame[["x1", "x2"]].to_json(orient="records"))
    chunk = min(50, math.ceil(len(records) / max(len(urls), 1)))
    versions = set()
    for number, start in enumerate(range(0, len(records), chunk) if urls else []):
        body = json.dumps({"records": records[start : start + chunk]}).encode()
        request = urllib.request.Request(
            f"{urls[number % len(urls)]}/predict", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            versions.add(json.loads(response.read())["model"])
    return versions


def settles_on(control_plane: ControlPlane, ns: str, version: str) -> bool:
    """True once every ready endpoint answers with `version` (a Pod may go away mid-request in a rollout)."""
    try:
        return send(control_plane, ns, regime(10, shifted=True, seed=6)) == {version}
    except (urllib.error.URLError, OSError):
        return False


def history(api: client.ApiClient, ns: str) -> list[dict[str, Any]]:
    return list(get(api, ns, NAME).get("status", {}).get("history", []))


def test_drift_retrains_and_champion_challenger_decides(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str, operator: None
) -> None:
    ns = process_namespace
    core = client.CoreV1Api(api)
    create_claim(api, ns, "store")
    store = claim_folder(api, ns, "store")
    (store / "data").mkdir()
    regime(800, shifted=False, seed=1).to_csv(store / "data" / "part-1.csv", index=False)

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, manifest()
    )
    wait_for(lambda: get(api, ns, NAME).get("status", {}).get("phase") == "Serving", 180, "v1 serving")
    assert send(control_plane, ns, regime(50, shifted=False, seed=2)) == {"v1"}

    # The world changes: shifted traffic, and the data pipeline delivers labelled data of the new regime.
    send(control_plane, ns, regime(300, shifted=True, seed=3))
    regime(1600, shifted=True, seed=4).to_csv(store / "data" / "part-2.csv", index=False)
    run_drift_check(api, ns, NAME, 1)

    rejected = wait_for(
        lambda: (h := history(api, ns)) and h[0]["version"] == "v2" and h, 180, "v2 trained after the drift"
    )
    workflow = get(api, ns, NAME)
    assert workflow["status"]["drift"]["drifted"] is True and workflow["status"]["drift"]["share"] >= 0.5
    drifted = next(c for c in workflow["status"]["conditions"] if c["type"] == "Drifted")
    assert drifted["status"] == "True" and "x1" in drifted["message"]
    assert rejected[0]["trigger"] == "Drift" and rejected[0]["outcome"] == "Rejected"
    assert (
        rejected[0]["reason"] == "NotBetter"
        and "held-out rows, trained on by neither" in rejected[0]["message"]
    )
    assert rejected[0]["holdout"]["excludedRows"] == 640, "v1's training rows never judge it"
    # Lineage: the drift report that asked for it, and the exact data (both files) it read.
    assert (
        rejected[0]["driftReport"].startswith(f"{NAME}/drift/")
        and (store / rejected[0]["driftReport"]).exists()
    )
    assert rejected[0]["dataSha256"] != history(api, ns)[-1]["dataSha256"], "v2 read the refreshed data"
    assert workflow["status"]["model"]["version"] == "v1"
    assert send(control_plane, ns, regime(300, shifted=True, seed=5)) == {"v1"}, "the champion keeps serving"

    # Now a better model is enough: the next drift check's retraining is promoted and rolled out.
    patch_spec(api, ns, NAME, {"promotion": {"minImprovement": 0.0}})
    run_drift_check(api, ns, NAME, 2)
    promoted = wait_for(lambda: (h := history(api, ns)) and h[0]["version"] == "v3" and h, 180, "v3 trained")
    assert promoted[0]["outcome"] == "Promoted" and promoted[0]["trigger"] == "Drift"
    assert promoted[0]["metrics"]["f1_macro"] > rejected[0]["metrics"]["f1_macro"] - 0.05
    wait_for(lambda: settles_on(control_plane, ns, "v3"), 120, "v3 serving alone")
    assert get(api, ns, NAME)["status"]["retrains"] == 2

    # Cooldown: a drift right after a drift retraining waits.
    patch_spec(api, ns, NAME, {"monitoring": {"cooldown": "1h"}})
    send(control_plane, ns, regime(300, shifted=False, seed=7))  # back to the old world: drift against v3
    run_drift_check(api, ns, NAME, 3)
    events = wait_for(
        lambda: [e for e in core.list_namespaced_event(ns).items if e.reason == "RetrainSkipped"],
        120,
        "RetrainSkipped for the cooldown",
    )
    assert "cooldown" in events[0].message
    assert [h["version"] for h in history(api, ns)][:1] == ["v3"], "no retraining within the cooldown"

    # What happened, on the operator's /metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
        scraped = scrape(response.read().decode())
    mine = {"namespace": ns, "workflow": NAME}
    assert (
        scraped[("mlworkflow_model_decisions_total", labels(mine, trigger="Drift", outcome="Rejected"))] == 1
    )
    assert (
        scraped[("mlworkflow_model_decisions_total", labels(mine, trigger="Drift", outcome="Promoted"))] == 1
    )
    assert scraped[("mlworkflow_retrains_total", labels(mine, trigger="Drift"))] == 2
    assert scraped[("mlworkflow_drifted", labels(mine))] == 1
    assert scraped[("mlworkflow_drift_share", labels(mine))] >= 0.5
    served = [k for k in scraped if k[0] == "mlworkflow_serving_model_info" and ("workflow", NAME) in k[1]]
    assert [dict(k[1])["version"] for k in served] == ["v3"]
    assert scraped[("mlworkflow_workflows", labels({}, pattern="WebService", phase="Serving"))] >= 1
    assert scraped[("mlworkflow_reconciles_total", labels({}, result="success"))] > 0
    assert scraped[("mlworkflow_model_trained_timestamp_seconds", labels(mine))] > 1.7e9


def labels(base: dict[str, str], **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({**base, **more}.items())


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
