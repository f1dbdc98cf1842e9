"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "mlworkflow-operator"
OPERATOR_NAMESPACE = "mlw-system"
#: Lines printed at the end of the session (timings of the session's fixtures and of tests that measure).
REPORT = pytest.StashKey[list[str]]()


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def operator_in(
    namespace: str, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> Iterator[None]:
    """The operator in-process (kopf's KopfRunner), watching `namespace` with `kubeconfig`'s credentials."""
    from kopf.testing import KopfRunner
    from kubernetes.config import kube_config

    # kopf logs in through the kubernetes client, which read $KUBECONFIG when it was imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["run", "--standalone", "--namespace", namespace, "-m", "mlworkflow.controller.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield
    assert runner.exception is None, runner.output


def reader_account(api: Any, namespace: str) -> None:
    """ServiceAccount `reader`, allowed to get ConfigMaps and nothing else; ConfigMap `visible` and Secret
    `hidden` ({"k": "v"} each) to try it on."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}, "data": {"k": "v"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hidden"}, "stringData": {"k": "v"}})


def story_traces(page: str) -> dict[str, dict[str, Any]]:
    """The story figure's traces in a page (`mlworkflow.runtime.story`), by name; fails if the page loads a
    script from a network or has no figure."""
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page), "the page loads nothing from a network"
    found = re.search(r'<script type="application/json" id="story-figure">(.*?)</script>', page, re.S)
    assert found, "the figure's JSON is in the page"
    return {trace["name"]: trace for trace in json.loads(found[1])["data"]}
