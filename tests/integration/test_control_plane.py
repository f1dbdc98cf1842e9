"""The local control plane behaves as a cluster: Jobs and Deployments get Pods, the garbage collector follows
ownerReferences, RBAC refuses what a ServiceAccount may not do, and server-side apply tracks field owners."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from kubelocal.controlplane import ControlPlane
from support import reader_account, wait_for

pytestmark = pytest.mark.cluster

APPLY = "application/apply-patch+yaml"


def pod_template(labels: dict[str, str], restart_policy: str) -> dict[str, object]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
        },
    }


def test_a_job_on_the_kwok_node_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": pod_template({"app": "hello"}, "Never")},
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        conditions = batch.read_namespaced_job_status("hello", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_for(complete, 60, "Job hello to complete")
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=hello").items
    assert [p.spec.node_name for p in pods] == ["kwok-node-0"]
    assert pods[0].status.phase == "Succeeded"


def test_a_deployments_pods_become_ready_and_its_children_are_garbage_collected(
    api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template({"app": "web"}, "Always"),
        },
    }
    apps.create_namespaced_deployment(namespace, deployment)
    wait_for(
        lambda: apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas == 2,
        60,
        "2 ready replicas of Deployment web",
    )
    assert len(apps.list_namespaced_replica_set(namespace).items) == 1

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    core = client.CoreV1Api(api)
    wait_for(
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace).items
        ),
        60,
        "the garbage collector to delete the ReplicaSet and Pods of Deployment web",
    )


def test_rbac_lets_a_service_account_do_only_what_its_role_allows(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    reader_account(api, namespace)
    core = client.CoreV1Api(api)

    # A real ServiceAccount token from the TokenRequest API, as a Pod would get it.
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    configuration = client.Configuration()
    configuration.host = control_plane.server
    configuration.ssl_ca_cert = str(control_plane.ca_file)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(configuration))

    assert as_reader.read_namespaced_config_map("visible", namespace).data == {"k": "v"}
    with pytest.raises(client.ApiException) as refused:
        as_reader.read_namespaced_secret("hidden", namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in json.loads(refused.value.body)["message"]


def test_server_side_apply_tracks_field_owners(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"a": "1"}}
    core.patch_namespaced_config_map("owned", namespace, manifest, field_manager="alpha", _content_type=APPLY)

    manifest["data"] = {"a": "2"}
    with pytest.raises(client.ApiException) as conflict:
        core.patch_namespaced_config_map(
            "owned", namespace, manifest, field_manager="beta", _content_type=APPLY
        )
    assert conflict.value.status == 409 and ".data.a" in conflict.value.body

    forced = core.patch_namespaced_config_map(
        "owned", namespace, manifest, field_manager="beta", force=True, _content_type=APPLY
    )
    assert forced.data == {"a": "2"}
    assert [(m.manager, m.operation) for m in forced.metadata.managed_fields] == [("beta", "Apply")]
