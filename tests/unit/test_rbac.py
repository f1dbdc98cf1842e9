"""The chart's RBAC grants every verb the operator's code uses, kind by kind: a child the code starts to
apply or delete without its rule fails here, not as a 403 in a cluster."""

from __future__ import annotations

import re

import yaml
from kubernetes import client

from mlworkflow.kube import Kube
from support import CHART

RESOURCES = {
    "Job": "jobs",
    "CronJob": "cronjobs",
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


def granted() -> dict[str, set[str]]:
    """Verbs per resource in the chart's `mlworkflow-operator.rules` helper."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "mlworkflow-operator.rules" -}}\n(.*?){{- end }}', helpers, re.S)
    assert block is not None
    verbs: dict[str, set[str]] = {}
    for rule in yaml.safe_load(block.group(1)):
        for resource in rule["resources"]:
            verbs.setdefault(resource, set()).update(rule["verbs"])
    return verbs


def test_every_kind_the_operator_applies_or_deletes_is_granted() -> None:
    kube = Kube(client.ApiClient())
    rules = granted()
    for kind in kube.appliable():
        assert {"patch", "create"} <= rules.get(RESOURCES[kind], set()), f"server-side apply of {kind}"
    for kind in kube.deletable():
        assert "delete" in rules.get(RESOURCES[kind], set()), f"delete of {kind}"
    assert {"list"} <= rules["jobs"] and {"list"} <= rules["pods"], "observing Jobs and their Pods"
    assert {"get", "create"} <= rules["leases"], "creating and reading the learner's Lease (OnlineLearning)"


def test_the_operator_holds_every_verb_the_roles_it_writes_grant() -> None:
    """RBAC refuses a Role (or RoleBinding) granting verbs its writer does not hold (escalation)."""
    from mlworkflow.api.v1alpha1 import MLWorkflowSpec
    from mlworkflow.desired.children import Workflow
    from mlworkflow.desired.patterns import online

    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "OnlineLearning",
            "data": {"source": "sklearn://wine", "target": "target"},
            "model": {"estimator": "sklearn.linear_model.SGDClassifier"},
            "online": {"source": {"path": "stream/*.csv"}},
            "storage": {"path": "/tmp/store"},
        }
    )
    rules = granted()
    [role] = [m for m in online.learner_access(Workflow("w", "ns", "u", spec)) if m["kind"] == "Role"]
    for rule in role["rules"]:
        for resource in rule["resources"]:
            assert set(rule["verbs"]) <= rules.get(resource, set()), resource
