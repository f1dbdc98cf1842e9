"""The Helm chart: lint-clean, its values schema strict, and installable on the real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from support import CHART, OPERATOR_NAMESPACE

pytestmark = pytest.mark.cluster


def render(control_plane: ControlPlane, *values: str) -> list[dict[str, Any]]:
    out = control_plane.helm(
        "template", "mlw", str(CHART), "--namespace", OPERATOR_NAMESPACE, "--kube-version", "1.36.3", *values
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_lint_is_clean(control_plane: ControlPlane) -> None:
    control_plane.helm("lint", "--strict", str(CHART))


def test_unknown_values_are_refused(control_plane: ControlPlane) -> None:
    failed = control_plane.helm("template", "mlw", str(CHART), "--set", "replicas=3", check=False)
    assert failed.returncode != 0 and "replicas" in failed.stderr


def test_watching_namespaces_grants_workflow_rights_there_only(control_plane: ControlPlane) -> None:
    documents: list[dict[str, Any]] = render(control_plane, "--set", "watchNamespaces={a,b}")
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in documents}
    assert {("Role", "a"), ("Role", "b"), ("RoleBinding", "a"), ("RoleBinding", "b")} <= kinds
    (cluster_role,) = [d for d in documents if d["kind"] == "ClusterRole"]
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}


def test_no_wildcards_in_rbac(control_plane: ControlPlane) -> None:
    for document in render(control_plane):
        for rule in document.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {document['kind']}: {rule}"


def test_installed_release_runs_its_operator_pod(
    api: client.ApiClient, operator_kubeconfig: Path, crd: Path
) -> None:
    # `helm install --wait` in the fixture waited for the Deployment (its Pod runs on the kwok node).
    deployment = client.AppsV1Api(api).read_namespaced_deployment(
        "mlw-mlworkflow-operator", OPERATOR_NAMESPACE
    )
    assert deployment.status.ready_replicas == 1
    container = deployment.spec.template.spec.containers[0]
    assert container.command == ["mlworkflow", "operator"]
    assert container.security_context.run_as_non_root is None  # set at Pod level
    assert deployment.spec.template.spec.security_context.run_as_non_root is True
