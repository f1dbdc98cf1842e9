"""The generated CRD on a real API server: examples accepted, malformed workflows refused by name."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from mlworkflow.api.v1alpha1 import Condition, DriftStatus, MLWorkflowStatus, ModelStatus

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / name).read_text()))


WEB = "webservice-iris.yaml"
FORECAST = "forecast-diabetes.yaml"
AUTOML = "automl-breast-cancer.yaml"


def create(
    api: client.ApiClient, namespace: str, body: dict[str, Any], dry_run: bool = True
) -> dict[str, Any]:
    objects = client.CustomObjectsApi(api)
    result: dict[str, Any] = objects.create_namespaced_custom_object(
        v1alpha1.GROUP,
        v1alpha1.VERSION,
        namespace,
        v1alpha1.PLURAL,
        body,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )
    return result


def refusal(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> str:
    """The API server's message for a refused workflow (the test fails if it is accepted)."""
    with pytest.raises(client.ApiException) as refused:
        create(api, namespace, body)
    assert refused.value.status in (400, 422), refused.value.body
    return str(json.loads(refused.value.body)["message"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted(api: client.ApiClient, crd: Path, namespace: str, path: Path) -> None:
    created = create(api, namespace, yaml.safe_load(path.read_text()))
    assert created["spec"]["pattern"] in {p.value for p in v1alpha1.Pattern}


def test_the_server_fills_in_the_documented_defaults(
    api: client.ApiClient, crd: Path, namespace: str
) -> None:
    spec = create(api, namespace, load(WEB))["spec"]
    defaults = v1alpha1.MLWorkflowSpec.model_validate(load(WEB)["spec"]).model_dump(by_alias=True)
    assert spec["training"]["crossValidation"] == defaults["training"]["crossValidation"] == 5
    assert spec["monitoring"]["maxRetrainsPerDay"] == defaults["monitoring"]["maxRetrainsPerDay"]
    assert spec["data"]["features"] == {"numeric": [], "categorical": []}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets `a.b.c` (creating maps on the way) — or deletes it when value is DELETE."""

    def mutate(document: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value

    return mutate


DELETE = object()

# (example, mutation, what the message must name)
INVALID: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "pattern-missing": (WEB, _set("spec.pattern", DELETE), "spec.pattern: Required value"),
    "pattern-unknown": (WEB, _set("spec.pattern", "Batch"), 'spec.pattern: Unsupported value: "Batch"'),
    "forecast-without-batch": (FORECAST, _set("spec.batch", DELETE), "spec.batch is required"),
    "webservice-with-batch": (WEB, _set("spec.batch", {"input": "a.csv", "output": "out/"}), "spec.batch"),
    "online-without-online": (WEB, _set("spec.pattern", "OnlineLearning"), "spec.online is required"),
    "automl-without-automl": (WEB, _set("spec.pattern", "AutoML"), "spec.automl is required"),
    "webservice-with-automl": (
        WEB,
        _set("spec.automl", {"candidates": [{"estimator": "sklearn.svm.SVC"}]}),
        "spec.automl is only allowed when spec.pattern is AutoML",
    ),
    "estimator-missing": (WEB, _set("spec.model.estimator", DELETE), "spec.model.estimator is required"),
    "automl-with-estimator": (
        AUTOML,
        _set("spec.model.estimator", "sklearn.svm.SVC"),
        "spec.model.estimator is not used by AutoML",
    ),
    "forecast-with-serving": (FORECAST, _set("spec.serving", {"replicas": 1}), "spec.serving is not allowed"),
    "holdout-one": (WEB, _set("spec.training.holdout", 1.0), "spec.training.holdout"),
    "holdout-zero": (WEB, _set("spec.training.holdout", 0), "spec.training.holdout"),
    "cross-validation-one": (WEB, _set("spec.training.crossValidation", 1), "spec.training.crossValidation"),
    "threshold-zero": (WEB, _set("spec.monitoring.driftThreshold", 0), "spec.monitoring.driftThreshold"),
    "threshold-above-one": (
        WEB,
        _set("spec.monitoring.driftThreshold", 1.5),
        "spec.monitoring.driftThreshold",
    ),
    "parallelism-zero": (AUTOML, _set("spec.automl.parallelism", 0), "spec.automl.parallelism"),
    "parallelism-above-trials": (AUTOML, _set("spec.automl.parallelism", 50), "spec.automl.parallelism"),
    "monitoring-schedule-not-cron": (
        WEB,
        _set("spec.monitoring.schedule", "every 5 minutes"),
        "spec.monitoring.schedule",
    ),
    "training-schedule-three-fields": (
        WEB,
        _set("spec.training.schedule", "0 * *"),
        "spec.training.schedule",
    ),
    "source-is-a-url": (WEB, _set("spec.data.source", "https://example.com/data.csv"), "spec.data.source"),
    "source-escapes-the-store": (WEB, _set("spec.data.source", "../../etc/passwd"), "spec.data.source"),
    "source-unknown-dataset": (WEB, _set("spec.data.source", "sklearn://mnist"), "spec.data.source"),
    "target-is-a-feature": (WEB, _set("spec.data.features", {"numeric": ["target"]}), "spec.data.target"),
    "time-column-is-the-target": (WEB, _set("spec.data.timeColumn", "target"), "spec.data.timeColumn"),
    "time-column-is-a-feature": (
        WEB,
        _set(
            "spec.data", {"source": "d.csv", "target": "y", "timeColumn": "t", "features": {"numeric": ["t"]}}
        ),
        "spec.data.timeColumn orders the rows",
    ),
    "min-holdout-rows-zero": (WEB, _set("spec.promotion.minHoldoutRows", 0), "spec.promotion.minHoldoutRows"),
    "fairness-gate-without-groups": (
        WEB,
        _set("spec.promotion.maxFairnessGap", 0.1),
        "spec.promotion.maxFairnessGap needs spec.monitoring.fairness.sensitiveFeatures",
    ),
    "fairness-gap-above-one": (
        WEB,
        _set("spec.promotion.maxFairnessGap", 1.5),
        "spec.promotion.maxFairnessGap",
    ),
    "fairness-gap-unknown": (
        WEB,
        _set("spec.monitoring.fairness", {"sensitiveFeatures": ["sex"], "gap": "Parity"}),
        "spec.monitoring.fairness.gap",
    ),
    "batch-labels-without-id-column": (
        FORECAST,
        _set("spec.batch.labels", "labels/*.csv"),
        "spec.batch.labels are joined to the predictions on spec.batch.idColumn",
    ),
    "batch-labels-outside-the-store": (
        FORECAST,
        _set("spec.batch", {"input": "in/*.csv", "output": "out", "idColumn": "id", "labels": "../l.csv"}),
        "spec.batch.labels must stay inside the artifact store",
    ),
    "estimator-not-an-import-path": (
        WEB,
        _set("spec.model.estimator", "os; rm -rf /"),
        "spec.model.estimator",
    ),
    "metric-wrong-for-task": (WEB, _set("spec.promotion.metric", "mse"), "spec.promotion.metric"),
    "automl-metric-wrong-for-task": (AUTOML, _set("spec.automl.metric", "r2"), "spec.automl.metric"),
    "autoscaling-min-above-max": (
        WEB,
        _set("spec.serving", {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}}),
        "spec.serving.autoscaling.minReplicas",
    ),
    "replicas-and-autoscaling": (
        WEB,
        _set("spec.serving.autoscaling", {"minReplicas": 1, "maxReplicas": 2}),
        "spec.serving.replicas",
    ),
    "storage-missing": (WEB, _set("spec.storage", DELETE), "spec.storage: Required value"),
    "storage-pvc-and-path": (WEB, _set("spec.storage.path", "/data"), "spec.storage"),
    "cooldown-not-a-duration": (WEB, _set("spec.monitoring.cooldown", "1 hour"), "spec.monitoring.cooldown"),
    "unknown-field": (WEB, _set("spec.trainnig", {"holdout": 0.1}), 'unknown field "spec.trainnig"'),
    "name-too-long": (WEB, _set("metadata.name", "n" * 41), "metadata.name must be at most 40 characters"),
}


@pytest.mark.parametrize("case", INVALID, ids=str)
def test_malformed_workflows_are_refused_naming_the_field(
    api: client.ApiClient, crd: Path, namespace: str, case: str
) -> None:
    example, mutate, names = INVALID[case]
    document = copy.deepcopy(load(example))
    mutate(document)
    assert names in refusal(api, namespace, document)


def test_pattern_is_immutable(api: client.ApiClient, crd: Path, namespace: str) -> None:
    created = create(api, namespace, load(WEB), dry_run=False)
    # Otherwise valid for OnlineLearning: only the change of pattern is refused.
    created["spec"]["pattern"] = "OnlineLearning"
    created["spec"]["online"] = {"source": {"path": "stream/*.csv"}}
    created["spec"]["model"]["estimator"] = "sklearn.linear_model.SGDClassifier"
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(api).replace_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, created["metadata"]["name"], created
        )
    assert "spec.pattern is immutable" in json.loads(refused.value.body)["message"]


def test_kubectl_get_shows_the_printer_columns(
    api: client.ApiClient, control_plane: ControlPlane, crd: Path, namespace: str
) -> None:
    name = create(api, namespace, load(WEB), dry_run=False)["metadata"]["name"]
    now = datetime.now(UTC).replace(microsecond=0)
    status = MLWorkflowStatus(
        observed_generation=1,
        phase="Serving",
        model=ModelStatus(version="v3", metrics={"f1_macro": 0.93}, trained_at=now, trigger="Drift"),
        drift=DriftStatus(checked_at=now, share=0.42, drifted=True, report="reports/drift-1.html"),
        conditions=[
            Condition(
                type="Ready", status="True", observed_generation=1, last_transition_time=now, reason="Serving"
            )
        ],
        retrains=2,
    )
    # The status the operator will write is accepted by the status schema as it is.
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        v1alpha1.GROUP,
        v1alpha1.VERSION,
        namespace,
        v1alpha1.PLURAL,
        name,
        {"status": status.model_dump(by_alias=True, exclude_none=True, mode="json")},
    )
    table = control_plane.kubectl("get", "mlw", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PATTERN", "PHASE", "MODEL", "DRIFT", "READY", "AGE"]
    assert table[1].split()[:6] == [name, "WebService", "Serving", "v3", "0.42", "True"]
    # The category and the short name work as with built-in kinds.
    assert name in control_plane.kubectl("get", "ml", "-n", namespace, "-o", "name").stdout
