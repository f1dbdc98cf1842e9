"""Forecast end to end: the operator trains, an Indexed Job of two Pods predicts the batch input into the
artifact store (published with _SUCCESS), drift in a batch's inputs retrains, and the next run uses the new
version. Real API server, Jobs on the process node, real scikit-learn, pyarrow and Evidently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from support import story_traces, wait_for
from workflows import CHECKS_BY_HAND, claim_folder, create_claim, get, regime, run_drift_check

pytestmark = pytest.mark.cluster

NAME = "sales"


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "pattern": "Forecast",
            "data": {"source": "data/part-*.csv", "target": "label", "features": {"numeric": ["x1", "x2"]}},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 20, "random_state": 0},
            },
            "training": {"crossValidation": 0},
            "batch": {
                "input": "incoming/*.parquet",
                "output": "predictions",
                "parallelism": 2,
                "passthroughColumns": ["row_id"],
                # The truth of a run's rows comes later, in files keyed by the row id.
                "idColumn": "row_id",
                "labels": "outcomes/*.parquet",
            },
            "monitoring": {
                "schedule": CHECKS_BY_HAND,
                "driftThreshold": 0.5,
                "minSamples": 100,
                "cooldown": "1s",
                "performance": {"onDecay": "Alert"},  # drift is this test's trigger
            },
            "promotion": {"minHoldoutRows": 50},
            "storage": {"pvc": {"claimName": "store"}},
        },
    }


def incoming(store: Path, frame: pd.DataFrame, name: str) -> None:
    """What the data pipeline drops for the next run: rows to predict, with their id."""
    folder = store / "incoming"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rows = frame.drop(columns=["label"]).assign(row_id=[f"{name}-{i}" for i in range(len(frame))])
    # Two files, so that each of the two indexes has one.
    half = len(rows) // 2
    rows.iloc[:half].to_parquet(folder / f"{name}-a.parquet", index=False)
    rows.iloc[half:].to_parquet(folder / f"{name}-b.parquet", index=False)


def runs(api: client.ApiClient, ns: str) -> list[dict[str, Any]]:
    return list(get(api, ns, NAME).get("status", {}).get("batch", {}).get("runs", []))


def predictions(store: Path, run: dict[str, Any]) -> pd.DataFrame:
    folder = store / run["output"]
    assert (folder / "_SUCCESS").exists(), f"{folder} is not published"
    return pd.concat(pd.read_parquet(part) for part in sorted(folder.glob("part-*.parquet")))


def test_forecast_predicts_in_an_indexed_job_and_retrains_on_drifted_inputs(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str, operator: None
) -> None:
    ns = process_namespace
    create_claim(api, ns, "store")
    store = claim_folder(api, ns, "store")
    (store / "data").mkdir()
    regime(800, shifted=False, seed=1).to_csv(store / "data" / "part-1.csv", index=False)
    incoming(store, regime(300, shifted=False, seed=2), "monday")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, manifest()
    )

    first = wait_for(
        lambda: (r := runs(api, ns)) and r[0]["state"] != "Running" and r[0], 240, "the first batch run"
    )
    assert (first["id"], first["version"], first["trigger"], first["state"]) == (
        f"{NAME}-predict-v1",
        "v1",
        "Promotion",
        "Succeeded",
    )
    assert (first["rowsIn"], first["predicted"], first["rejected"]) == (300, 300, 0)
    predicted = predictions(store, first)
    assert sorted(predicted["row_id"]) == sorted(f"monday-{i}" for i in range(300)), "every row exactly once"
    assert set(predicted["model_version"]) == {"v1"}
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"job-name={first['id']}").items
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
    ]
    workflow = get(api, ns, NAME)
    assert workflow["status"]["phase"] == "Predicted"
    table = control_plane.kubectl("get", "mlw", NAME, "-n", ns).stdout.splitlines()[1].split()
    assert table[1:4] == ["Forecast", "Predicted", "v1"]

    # The world changes: this week's rows are of the new regime, and labelled rows of it join the data.
    tuesday = regime(300, shifted=True, seed=3)
    incoming(store, tuesday, "tuesday")
    regime(1600, shifted=True, seed=4).to_csv(store / "data" / "part-2.csv", index=False)
    control_plane.kubectl("annotate", f"mlw/{NAME}", "-n", ns, f"{v1alpha1.PREDICT_ANNOTATION}=tuesday")
    wait_for(
        lambda: len(runs(api, ns)) == 2 and runs(api, ns)[0]["state"] == "Succeeded", 240, "Tuesday's run"
    )
    (store / "outcomes").mkdir()
    outcomes = pd.DataFrame({"row_id": [f"tuesday-{i}" for i in range(300)], "label": tuesday["label"]})
    outcomes.to_parquet(store / "outcomes" / "tuesday.parquet", index=False)
    run_drift_check(api, ns, NAME, 1)  # its inputs, sampled by the run, against v1's training data

    retrained = wait_for(
        lambda: (r := runs(api, ns)) and r[0]["version"] == "v2" and r[0]["state"] != "Running" and r,
        300,
        "drift, v2 trained and promoted, and its batch run",
    )
    workflow = get(api, ns, NAME)
    assert workflow["status"]["drift"]["drifted"] is True
    # Tuesday's outcomes joined to its predictions on row_id: v1 measured on them, as served ones are.
    performance = workflow["status"]["performance"]
    assert performance["version"] == "v1" and performance["labelledRows"] == 300, performance
    assert performance["measured"] is not None and performance["unknownLabels"] == 0
    # The check drew the story so far into the store: v1, the drifted check and its threshold, the measure.
    drawn = story_traces((store / NAME / "reports" / "story.html").read_text())
    assert drawn["promoted version"]["text"] == ["v1"] and set(drawn["drift threshold"]["y"]) == {0.5}
    assert drawn["drift share"]["y"] == [workflow["status"]["drift"]["share"]]
    assert drawn["measured"]["y"] == [performance["measured"]]
    assert workflow["status"]["history"][0]["trigger"] == "Drift"
    assert workflow["status"]["history"][0]["outcome"] == "Promoted"
    assert [(r["version"], r["trigger"]) for r in retrained] == [
        ("v2", "Promotion"),
        ("v1", "Manual"),
        ("v1", "Promotion"),
    ]
    assert set(predictions(store, retrained[0])["model_version"]) == {"v2"}, (
        "the next run uses the new version"
    )
    events = {e.reason for e in client.CoreV1Api(api).list_namespaced_event(ns).items}
    assert {"BatchRunStarted", "BatchRunSucceeded", "DriftDetected", "Promoted"} <= events
    # The operator's metrics counted the runs' rows (the in-process operator's registry).
    from prometheus_client import REGISTRY

    def sample(metric: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(metric, {"namespace": ns, "workflow": NAME, **labels})

    assert sample("mlworkflow_batch_runs_total", state="Succeeded") == 3
    assert sample("mlworkflow_batch_rows_total", outcome="predicted") == 900
    assert (sample("mlworkflow_batch_last_success_timestamp_seconds") or 0) > 1.7e9
