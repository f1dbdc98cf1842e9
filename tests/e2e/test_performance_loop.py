"""Model decay end to end: the served model's inputs stay the same while the relation between inputs and
labels changes; predictions through the serving Service return ids, the labels come back by `POST /feedback`,
the real monitoring Job (from the CronJob's template) measures the decay that the drift check cannot see,
the operator sets Degraded, retrains with trigger Performance, and champion/challenger judges the new
version."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from serving import post
from support import wait_for
from workflows import CHECKS_BY_HAND, claim_folder, condition, create_claim, get, run_drift_check

pytestmark = pytest.mark.cluster

NAME = "decay"


def world(rows: int, flipped: bool, seed: int) -> pd.DataFrame:
    """x1, x2 standard normal in both worlds; the label is x1 + x2 > 0 (with noise), then x1 - x2 > 0."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, rows), rng.normal(0, 1, rows)
    score = (x1 - x2 if flipped else x1 + x2) + rng.normal(0, 0.3, rows)
    return pd.DataFrame({"x1": x1, "x2": x2, "label": (score > 0).astype(int)})


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "pattern": "WebService",
            "data": {"source": "data/part-*.csv", "target": "label"},
            "model": {"estimator": "sklearn.linear_model.LogisticRegression"},
            "training": {"crossValidation": 0},
            "serving": {"replicas": 1},
            "monitoring": {
                "schedule": CHECKS_BY_HAND,
                # Both columns would have to drift: the unchanged inputs never do.
                "driftThreshold": 1.0,
                "onDrift": "Alert",
                "minSamples": 200,
                "cooldown": "1s",
                "performance": {"tolerance": 0.1, "minLabelledRows": 200, "onDecay": "Retrain"},
            },
            "promotion": {"metric": "f1_macro"},
            "storage": {"pvc": {"claimName": "store"}},
        },
    }


def answer(url: str, body: dict[str, Any]) -> dict[str, Any]:
    code, answered = post(url, body)
    assert code == 200, answered
    return dict(answered)


def test_decay_is_measured_on_feedback_and_retrained_on(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str, operator: None
) -> None:
    ns = process_namespace
    core = client.CoreV1Api(api)
    create_claim(api, ns, "store")
    store = claim_folder(api, ns, "store")
    (store / "data").mkdir()
    world(800, flipped=False, seed=1).to_csv(store / "data" / "part-1.csv", index=False)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, manifest()
    )
    wait_for(lambda: get(api, ns, NAME).get("status", {}).get("phase") == "Serving", 180, "v1 serving")

    # The world changes where the inputs cannot show it: same x1, x2; the label follows another rule.
    served = world(300, flipped=True, seed=2)
    (url,) = control_plane.service_urls(ns, NAME)
    ids: list[str] = []
    for start in range(0, len(served), 100):
        chunk = served.iloc[start : start + 100]
        records = json.loads(chunk[["x1", "x2"]].to_json(orient="records"))
        predicted = answer(f"{url}/predict", {"records": records})
        assert predicted["model"] == "v1" and len(predicted["ids"]) == len(chunk) == len(
            set(predicted["ids"])
        )
        ids += predicted["ids"]
    labels = [{"id": i, "label": int(label)} for i, label in zip(ids, served["label"], strict=True)]
    assert answer(f"{url}/feedback", {"labels": labels})["recorded"] == 300
    # The data pipeline meanwhile delivers labelled rows of the new world.
    world(1600, flipped=True, seed=3).to_csv(store / "data" / "part-2.csv", index=False)
    run_drift_check(api, ns, NAME, 1)

    history = wait_for(
        lambda: (
            (h := get(api, ns, NAME).get("status", {}).get("history", []))
            and h[0]["version"] == "v2"
            and h[0].get("outcome")
            and h
        ),
        180,
        "v2 trained and judged after the decay",
    )
    workflow = get(api, ns, NAME)
    status = workflow["status"]
    assert status["drift"]["drifted"] is False, "the inputs did not move"
    performance = status["performance"]
    assert performance["version"] == "v1" and performance["labelledRows"] == 300
    assert performance["unknownLabels"] == 0 and performance["degraded"] is True
    assert performance["baseline"] > 0.85 and performance["measured"] < performance["baseline"] - 0.3
    degraded = condition(workflow, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PerformanceDegraded", degraded
    assert "300 labelled predictions of v1" in degraded["message"]
    events = [e for e in core.list_namespaced_event(ns).items if e.reason == "PerformanceDegraded"]
    assert events and events[0].type == "Warning"

    record = history[0]
    assert record["trigger"] == "Performance" and record["driftReport"] == performance["report"]
    # Judged on rows neither model was trained on: v1's held-out rows and the new world's unseen ones.
    assert record["holdout"]["excludedRows"] == 640
    assert (record["outcome"], record["reason"]) == ("Promoted", "Better"), record["message"]
    assert record["metrics"]["f1_macro"] > record["championMetrics"]["f1_macro"] + 0.1
    assert status["retrains"] == 1
