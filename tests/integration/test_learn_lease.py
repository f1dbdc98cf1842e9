"""The learner's single writer (`mlworkflow.runtime.lease.Lease`) and the search workers' progress reports
(`mlworkflow.runtime.lease.Annotation`) against the real API server, each with a ServiceAccount token allowed
only what the operator grants it on its own Lease: the learner get, update and patch; a search worker
patch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from mlworkflow.runtime.lease import PROGRESS_ANNOTATION, Annotation, Lease, Lost
from support import wait_for

pytestmark = pytest.mark.cluster
NAME = "wf-learner"


def learner_token(
    api: client.ApiClient,
    namespace: str,
    folder: Path,
    name: str = NAME,
    verbs: tuple[str, ...] = ("get", "update", "patch"),
) -> Path:
    """A token of ServiceAccount `name`, whose Role allows `verbs` on Lease `name` only (as the operator
    makes it), in a file as a Pod mounts it; the Lease itself, metadata only."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [name],
                    "verbs": list(verbs),
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    client.CoordinationV1Api(api).create_namespaced_lease(namespace, {"metadata": {"name": name}})
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    path = folder / f"token-{name}"
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


def test_search_workers_patch_their_progress_on_their_own_lease_only(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    token = learner_token(api, namespace, tmp_path, "wf-search", ("patch",))

    def reporter(lease: str) -> Annotation:
        return Annotation(
            lease, namespace, server=control_plane.server, token_file=token, ca_file=control_plane.ca_file
        )

    coordination = client.CoordinationV1Api(api)
    coordination.patch_namespaced_lease(
        "wf-search", namespace, {"metadata": {"labels": {"mlworkflow.io/workflow": "wf"}}}
    )
    reporter("wf-search").report({"searchId": "v1", "complete": 1})
    reporter("wf-search").report({"searchId": "v1", "complete": 2})  # another worker: the last write wins
    lease = coordination.read_namespaced_lease("wf-search", namespace)
    assert json.loads(lease.metadata.annotations[PROGRESS_ANNOTATION]) == {"searchId": "v1", "complete": 2}
    assert lease.metadata.labels == {"mlworkflow.io/workflow": "wf"}, "a merge patch of the annotation only"
    coordination.create_namespaced_lease(namespace, {"metadata": {"name": "other"}})
    with pytest.raises(OSError, match="HTTP 403"):
        reporter("other").report({"searchId": "v1"})
