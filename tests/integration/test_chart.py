"""The Helm chart: lint-clean, its values schema strict, and installable on the real API server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from kubelocal.net import free_port
from support import CHART, OPERATOR_NAMESPACE, REPO, wait_for

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
    assert deployment.status.ready_replicas == 2, "two replicas, one acting (leader election)"
    assert "--leader-elect" in deployment.spec.template.spec.containers[0].args
    budget = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(
        "mlw-mlworkflow-operator", OPERATOR_NAMESPACE
    )
    assert budget.spec.max_unavailable == 1
    container = deployment.spec.template.spec.containers[0]
    assert container.command == ["mlworkflow", "operator"]
    assert container.security_context.run_as_non_root is None  # set at Pod level
    assert deployment.spec.template.spec.security_context.run_as_non_root is True


# --- every documented mode renders and lints ------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4
# Each mode docs/operations.md documents, as values a user would pass.
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "watchNamespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "servingPodMonitor": {"enabled": True},
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "MLOps"}},
    },
    "hardened": {
        "image": {"repository": "registry.example/mlworkflow-operator", "digest": DIGEST},
        "networkPolicy": {
            "enabled": True,
            "apiServerCidrs": ["10.0.0.1/32"],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
    },
    "noAdmission": {"admission": {"enabled": False}},
    "singleReplica": {"replicaCount": 1, "leaderElection": {"enabled": False}},
    "ownServiceAccountAndRbac": {
        "serviceAccount": {"create": False, "name": "mlw"},
        "rbac": {"create": False},
    },
}


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_documented_mode_lints_and_renders_offline(
    control_plane: ControlPlane, tmp_path: Path, mode: str
) -> None:
    values = values_file(tmp_path, MODES[mode])
    control_plane.helm("lint", "--strict", str(CHART), "-f", values)
    # No --kube-version: helm's offline placeholder (v1.20.0), as in a GitOps review without a cluster.
    out = control_plane.helm("template", "mlw", str(CHART), "-f", values).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert "Deployment" in kinds
    assert ("ValidatingAdmissionPolicy" in kinds) is (mode != "noAdmission")


def test_two_replicas_without_leader_election_are_refused(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    values = values_file(tmp_path, {"leaderElection": {"enabled": False}})
    refused = control_plane.helm("template", "mlw", str(CHART), "-f", values, check=False)
    assert refused.returncode != 0 and "needs leaderElection.enabled" in refused.stderr


def test_documented_modes_are_the_documented_ones() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    for mode in MODES:
        assert f"`{mode}`" in operations, f"mode {mode} is not documented in docs/operations.md"


def test_a_cluster_older_than_1_30_is_refused(control_plane: ControlPlane) -> None:
    old = control_plane.helm("template", "mlw", str(CHART), "--kube-version", "1.29.9", check=False)
    assert old.returncode != 0
    assert "needs Kubernetes >= 1.30" in old.stderr and "v1.29.9" in old.stderr
    control_plane.helm("template", "mlw", str(CHART), "--kube-version", "1.30.0")
    # Against the real cluster (1.36): helm talks to it (the lookup answers) and renders.
    control_plane.helm("template", "mlw", str(CHART), "--validate", "--namespace", OPERATOR_NAMESPACE)


# --- values: strict schema, every value documented ----------------------------------------------------------


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


def test_the_schema_covers_every_value_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _paths(values):
        node = schema
        for key in path:
            if key in node.get("properties", {}):
                node = node["properties"][key]
            elif isinstance(node.get("additionalProperties"), dict):
                break  # a map (labels, annotations): its values have their schema
            else:
                patterns = node.get("patternProperties", {})
                assert any(re.match(p, key) for p in patterns), (
                    f"{'.'.join(path)} is not in values.schema.json"
                )
                break

    def strict(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, child in node.items():
                strict(child, f"{where}.{key}")
        elif isinstance(node, list):
            for child in node:
                strict(child, where)

    strict(schema, "values")


def test_every_value_is_documented_where_it_is_defined() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for number, line in enumerate(lines):
        key = re.match(r"^(\s*)([A-Za-z][\w-]*):(.*)$", line)
        if not key:
            continue
        indent = len(key.group(1))
        documented = [(i, d) for i, d in documented if i < indent]
        above = number - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1
        has_doc = above >= 0 and lines[above].strip().startswith("# --")
        documented.append((indent, has_doc))
        leaf = key.group(3).strip() != "" or not (
            number + 1 < len(lines) and lines[number + 1].startswith(" " * (indent + 1))
        )
        if leaf:
            assert any(d for _, d in documented), (
                f"values.yaml:{number + 1}: {key.group(2)} has no '# --' comment"
            )


# --- image, probes, limits ---------------------------------------------------------------------------------


def test_a_digest_pins_the_operator_the_runtime_pods_and_the_test_pod(control_plane: ControlPlane) -> None:
    documents = render(control_plane, "--set", f"image.repository=reg.example/mlw,image.digest={DIGEST}")
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"reg.example/mlw@{DIGEST}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLW_RUNTIME_IMAGE"] == f"reg.example/mlw@{DIGEST}"
    (test_pod,) = [d for d in documents if d["kind"] == "Pod"]
    assert test_pod["spec"]["containers"][0]["image"] == f"reg.example/mlw@{DIGEST}"
    bad = control_plane.helm("template", "mlw", str(CHART), "--set", "image.digest=latest", check=False)
    assert bad.returncode != 0 and "digest" in bad.stderr


def test_the_operator_has_readiness_and_liveness_probes_and_a_cpu_limit(control_plane: ControlPlane) -> None:
    (deployment,) = [d for d in render(control_plane) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["cpu"]


def test_the_network_policy_lets_in_only_metrics_and_the_helm_test(control_plane: ControlPlane) -> None:
    documents = render(
        control_plane, "--set", "networkPolicy.enabled=true,networkPolicy.apiServerCidrs={10.0.0.1/32}"
    )
    policies = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "NetworkPolicy"}
    operator = policies["mlw-mlworkflow-operator"]
    assert {p["port"] for rule in operator["ingress"] for p in rule["ports"]} == {"metrics", "health"}
    egress_ports = {p["port"] for rule in operator["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443}
    assert {"ipBlock": {"cidr": "10.0.0.1/32"}} in operator["egress"][1]["to"]
    (test_pod,) = [d for d in documents if d["kind"] == "Pod"]
    selector = policies["mlw-mlworkflow-operator-test"]["podSelector"]["matchLabels"]
    assert selector.items() <= test_pod["metadata"]["labels"].items()


# --- alerts and dashboard ----------------------------------------------------------------------------------


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _operator_metric_names() -> set[str]:
    from mlworkflow.controller import metrics

    names = set()
    for collector in list(metrics.REGISTRY._collector_to_names):  # the operator's metrics are registered
        names |= set(metrics.REGISTRY._collector_to_names[collector])
    return names


def test_the_prometheus_rule_alerts_link_their_runbooks_and_use_the_operators_metrics(
    control_plane: ControlPlane,
) -> None:
    documents = render(
        control_plane, "--set", "prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true"
    )
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {
        "MLWorkflowDriftDetected",
        "MLWorkflowTrainingFailing",
        "MLWorkflowNoSuccessfulTraining",
        "MLWorkflowReconcileErrors",
        "MLWorkflowServingNotReady",
        "MLWorkflowOperatorDown",
    } <= set(alerts)
    anchors = _anchors((REPO / "docs" / "troubleshooting.md").read_text())
    known = _operator_metric_names()
    for name, alert in alerts.items():
        url = alert["annotations"]["runbook_url"]
        assert url.split("#")[1] in anchors, f"{name}: {url} has no heading in docs/troubleshooting.md"
        for metric in re.findall(r"\bmlworkflow_\w+", alert["expr"]):
            assert metric in known, f"{name}: {metric} is not a metric of the operator"
        assert (
            "{{ $labels" not in alert["annotations"]["summary"]
            or "$labels" in alert["annotations"]["summary"]
        )
    assert alerts["MLWorkflowNoSuccessfulTraining"]["expr"].endswith("> 604800")  # 168 h, the default


def test_the_grafana_dashboard_is_a_sidecar_configmap_with_the_promised_panels(
    control_plane: ControlPlane,
) -> None:
    documents = render(control_plane, "--set", "grafanaDashboard.enabled=true")
    (config_map,) = [
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["mlworkflow-operator.json"])
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    expressions = " ".join(e for exprs in panels.values() for e in exprs)
    for metric in (
        "mlworkflow_workflows",
        "mlworkflow_retrains_total",
        "mlworkflow_model_decisions_total",
        "mlworkflow_drift_share",
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
    ):
        assert metric in expressions
    known = _operator_metric_names()
    for metric in re.findall(r"\bmlworkflow_\w+", expressions):
        assert metric in known, f"{metric} is not a metric of the operator"


# --- helm test -------------------------------------------------------------------------------------------


def test_the_helm_test_pod_checks_health_and_the_crd_for_real(
    control_plane: ControlPlane, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    """The hook's own script, run as the Pod runs it, against a real operator's /healthz and the API server.

    `helm test` itself cannot run here: the release's Pods land on kwok's node (nothing runs), and the
    process node has no cluster DNS for the Service name the Pod calls.
    """
    (pod,) = [d for d in render(control_plane) if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    script = container["args"][0]
    assert pod["spec"]["serviceAccountName"] == "mlw-mlworkflow-operator"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (
        env["HEALTH_URL"] == f"http://mlw-mlworkflow-operator-metrics.{OPERATOR_NAMESPACE}.svc:8080/healthz"
    )

    config = yaml.safe_load(operator_kubeconfig.read_text())
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(config["users"][0]["user"]["token"])
    (account / "ca.crt").write_bytes(
        Path(config["clusters"][0]["cluster"]["certificate-authority"]).read_bytes()
    )
    port = free_port()
    pod_env = {
        **os.environ,
        "HEALTH_URL": f"http://127.0.0.1:{port}/healthz",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(control_plane.api_port),
        "SERVICE_ACCOUNT_DIR": str(account),
    }

    def run_test_pod() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script], env=pod_env, capture_output=True, text=True, timeout=60
        )

    down = run_test_pod()
    assert down.returncode == 1 and "health endpoint" in down.stdout, down.stdout + down.stderr
    namespace = f"hlt-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlworkflow")),
            "operator",
            f"--health-port={port}",
            f"--namespace={namespace}",
        ],
        env={**os.environ, "KUBECONFIG": str(operator_kubeconfig)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        passed = wait_for(
            lambda: (r := run_test_pod()).returncode == 0 and r, 60, "the test Pod's checks to pass"
        )
        assert "mlworkflows served" in passed.stdout
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
