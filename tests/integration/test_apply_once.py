"""Server-side apply that does not rewrite what is already there (`Kube.apply` with `Kube.observed`)."""

from __future__ import annotations

import pytest
from kubernetes import client

from mlworkflow.kube import APPLIED_HASH_ANNOTATION, Kube

pytestmark = pytest.mark.cluster


def service(namespace: str, port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"mlworkflow.io/workflow": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": port}]},
    }


def test_a_watched_child_is_written_once_until_it_changes_or_goes(
    api: client.ApiClient, namespace: str
) -> None:
    kube, core = Kube(api), client.CoreV1Api(api)
    assert kube.apply(service(namespace, 80)) is True
    version = core.read_namespaced_service("web", namespace).metadata.resource_version
    assert kube.apply(service(namespace, 80)) is False, "unchanged: no request at all"
    assert core.read_namespaced_service("web", namespace).metadata.resource_version == version
    assert kube.apply(service(namespace, 81)) is True, "the desired state changed"

    # Another writer replaces the object (its annotation with it): the watch reports it, it is applied again.
    edited = core.read_namespaced_service("web", namespace)
    edited.metadata.annotations[APPLIED_HASH_ANNOTATION] = "someone-else"
    edited = core.replace_namespaced_service("web", namespace, edited)
    kube.observed("Service", client.ApiClient().sanitize_for_serialization(edited), deleted=False)
    assert kube.apply(service(namespace, 81)) is True
    assert kube.apply(service(namespace, 81)) is False

    # Deleted: applied again, so it comes back.
    gone = client.ApiClient().sanitize_for_serialization(core.read_namespaced_service("web", namespace))
    core.delete_namespaced_service("web", namespace)
    kube.observed("Service", gone, deleted=True)
    assert kube.apply(service(namespace, 81)) is True
    assert core.read_namespaced_service("web", namespace).spec.ports[0].port == 81


def test_a_child_deleted_once_is_not_deleted_again_until_a_watch_sees_it_back(
    api: client.ApiClient, namespace: str
) -> None:
    kube, batch = Kube(api), client.BatchV1Api(api)
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "check", "namespace": namespace, "labels": {"mlworkflow.io/workflow": "web"}},
        "spec": {
            "schedule": "@daily",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
                    }
                }
            },
        },
    }
    kube.delete("CronJob", namespace, "check")  # never there: 404 is fine, and remembered
    # Someone else makes it; until a watch reports it, the operator makes no request for it.
    made = batch.create_namespaced_cron_job(namespace, cronjob)
    kube.delete("CronJob", namespace, "check")
    assert batch.read_namespaced_cron_job("check", namespace).metadata.uid == made.metadata.uid
    kube.observed("CronJob", client.ApiClient().sanitize_for_serialization(made), deleted=False)
    kube.delete("CronJob", namespace, "check")
    gone = batch.list_namespaced_cron_job(namespace).items
    assert [c.metadata.name for c in gone if not c.metadata.deletion_timestamp] == []
