"""The chart's ValidatingAdmissionPolicy: `kubectl apply` of a workflow naming an estimator outside the
admin's allow-list fails on the real API server, naming the field, with the operator's own message.

The release here is bound to a namespace of its own (`watchNamespaces`), so the session's release (whose
policy is off: the operator's reconcile-time refusal is tested through it) and other tests are untouched.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from support import CHART, REPO, wait_for

pytestmark = pytest.mark.cluster

REFUSED = "is not under an allowed module prefix"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def apply(control_plane: ControlPlane, namespace: str, body: dict[str, Any], *flags: str) -> tuple[bool, str]:
    """`kubectl apply` as a user runs it: whether the API server took it, and what kubectl said."""
    done = control_plane.kubectl(
        "apply", "-n", namespace, *flags, "-f", "-", check=False, input=yaml.safe_dump(body)
    )
    return done.returncode == 0, done.stdout + done.stderr


def with_estimator(body: dict[str, Any], estimator: str, name: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["metadata"]["name"] = name
    changed["spec"]["model"]["estimator"] = estimator
    changed["spec"]["model"]["params"] = {}
    return changed


@pytest.fixture(scope="module")
def policy_namespace(control_plane: ControlPlane, api: client.ApiClient, crd: object) -> Iterator[str]:
    """A namespace with a release of the chart (admission on, default allow-list) watching it only."""
    namespace = f"adm-{uuid.uuid4().hex[:6]}"
    release = namespace
    control_plane.helm(
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--set", f"watchNamespaces={{{namespace}}}", "--wait", "--timeout", "90s",
    )  # fmt: skip
    # The API server picks a new policy and binding up from its informers: wait until it refuses.
    bad = with_estimator(example("webservice-iris.yaml"), "xgboost.XGBClassifier", "probe")
    wait_for(
        lambda: REFUSED in apply(control_plane, namespace, bad, "--dry-run=server")[1],
        30,
        "the policy active",
    )
    yield namespace
    control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
    client.CoreV1Api(api).delete_namespace(namespace)


def test_a_model_estimator_outside_the_allow_list_is_refused_naming_the_field(
    control_plane: ControlPlane, policy_namespace: str
) -> None:
    bad = with_estimator(example("webservice-iris.yaml"), "xgboost.XGBClassifier", "forbidden")
    took, said = apply(control_plane, policy_namespace, bad)
    assert not took
    assert (
        "spec.model.estimator: xgboost.XGBClassifier is not under an allowed module prefix (sklearn.); "
        "the operator's admin sets the allow-list" in said
    ), said
    assert (
        "ValidatingAdmissionPolicy" in said and f"{policy_namespace}-mlworkflow-operator-estimators" in said
    )


def test_an_automl_candidate_outside_the_allow_list_is_refused_naming_its_index(
    control_plane: ControlPlane, policy_namespace: str
) -> None:
    body = example("automl-breast-cancer.yaml")
    body["spec"]["automl"]["candidates"][1]["estimator"] = "os.system"
    took, said = apply(control_plane, policy_namespace, body)
    assert not took
    assert "spec.automl.candidates[1].estimator: os.system is not under an allowed module prefix" in said, (
        said
    )


def test_allowed_estimators_are_accepted(control_plane: ControlPlane, policy_namespace: str) -> None:
    for name in ("webservice-iris.yaml", "automl-breast-cancer.yaml"):
        took, said = apply(control_plane, policy_namespace, example(name))
        assert took, said


def test_the_admin_widens_the_allow_list_through_the_chart_and_narrowing_spares_existing_workflows(
    control_plane: ControlPlane, api: client.ApiClient, policy_namespace: str
) -> None:
    release = namespace = policy_namespace
    body = with_estimator(example("webservice-iris.yaml"), "xgboost.XGBClassifier", "widened")

    def upgrade(prefixes: str) -> None:
        control_plane.helm(
            "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
            "--set", f"allowedEstimatorPrefixes={{{prefixes}}}",
        )  # fmt: skip

    upgrade("sklearn.,xgboost.")
    try:
        # One list for both checks: the policy's parameter and the operator's environment.
        deployment = client.AppsV1Api(api).read_namespaced_deployment(
            f"{release}-mlworkflow-operator", namespace
        )
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
        assert env["MLW_ALLOWED_ESTIMATOR_PREFIXES"] == "sklearn.,xgboost."
        wait_for(lambda: apply(control_plane, namespace, body)[0], 30, "xgboost accepted once allowed")
    finally:
        upgrade("sklearn.")
    changed = copy.deepcopy(body)
    changed["spec"]["model"]["params"] = {"n_estimators": 10}
    wait_for(lambda: REFUSED in apply(control_plane, namespace, changed)[1], 30, "a spec change refused")
    # Annotations, finalizers and status of a workflow admitted before still go through (the operator's
    # kopf bookkeeping, `kubectl annotate ... mlworkflow.io/retrain`); the operator stalls it with a reason.
    annotated = control_plane.kubectl(
        "annotate", "-n", namespace, "mlw/widened", "example.com/note=kept", check=False
    )
    assert annotated.returncode == 0, annotated.stderr


def test_other_namespaces_are_not_bound(
    control_plane: ControlPlane, policy_namespace: str, namespace: str
) -> None:
    # The release watches its own namespace only: workflows elsewhere belong to other operators (the
    # session's release here, whose policy is off).
    bad = with_estimator(example("webservice-iris.yaml"), "xgboost.XGBClassifier", "elsewhere")
    took, said = apply(control_plane, namespace, bad, "--dry-run=server")
    assert took, said
