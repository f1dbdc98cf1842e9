"""The learner's single writer (`mlworkflow.runtime.lease.Lease`) against the real API server, with a
ServiceAccount token allowed only what the operator grants a learner: get and update on its own Lease."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.runtime.lease import PROGRESS_ANNOTATION, Lease, Lost
from support import wait_for

pytestmark = pytest.mark.cluster
NAME = "wf-learner"


def learner_token(api: client.ApiClient, namespace: str, folder: Path) -> Path:
    """A token of ServiceAccount wf-learner, whose Role allows get, update and patch on Lease wf-learner
    only (as the operator makes it), in a file as a Pod mounts it; the Lease itself, metadata only."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": NAME}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": NAME},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [NAME],
                    "verbs": ["get", "update", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
    )
    client.CoordinationV1Api(api).create_namespaced_lease(namespace, {"metadata": {"name": NAME}})
    token = core.create_namespaced_service_account_token(
        NAME, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    path = folder / "token"
    path.write_text(token.status.token)
    return path


def test_one_learner_holds_the_lease_until_it_stops_renewing(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    token = learner_token(api, namespace, tmp_path)

    def learner(name: str) -> Lease:
        return Lease(
            NAME,
            namespace,
            name,
            server=control_plane.server,
            token_file=token,
            ca_file=control_plane.ca_file,
            duration=3,
            renew_every=0.5,
        )

    coordination = client.CoordinationV1Api(api)
    first, second = learner("learner-a"), learner("learner-b")
    assert first.acquire(timeout=10)
    first.check()
    first.report({"samplesSeen": 42, "snapshot": "v1.3"})

    def progress() -> dict[str, object]:
        annotations = coordination.read_namespaced_lease(NAME, namespace).metadata.annotations or {}
        return dict(json.loads(annotations.get(PROGRESS_ANNOTATION, "{}")))

    assert wait_for(lambda: progress().get("samplesSeen") == 42, 10, "the progress in the annotation")
    held = coordination.read_namespaced_lease(NAME, namespace).spec
    assert held.holder_identity == "learner-a" and held.lease_duration_seconds == 3

    # Longer than a lease duration: the first learner's renewals keep the second one out.
    assert not second.acquire(timeout=4.5)
    first.check()

    # The first learner hangs (its renewals stop): after a lease duration the second one takes over.
    first._stop.set()
    started = time.monotonic()
    assert second.acquire(timeout=15)
    assert time.monotonic() - started >= 1.5  # it waited for the expiry
    spec = coordination.read_namespaced_lease(NAME, namespace).spec
    assert spec.holder_identity == "learner-b" and spec.lease_transitions == 1

    # The first one, back, finds the Lease taken and stops writing.
    first.renew()
    with pytest.raises(Lost, match="held by 'learner-b'"):
        first.check()
    assert progress().get("samplesSeen") == 42  # its renewal wrote nothing

    second.release()
    assert coordination.read_namespaced_lease(NAME, namespace).spec.holder_identity is None
