"""The operator converges from what is in the cluster, never from memory: across its own restart in the
middle of a training, and across a lost connection to the API server."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from support import operator_in, wait_for
from workflows import TRAINING, create_workflow, get, patch_spec

pytestmark = pytest.mark.cluster


class CuttableProxy:
    """A TCP forwarder to the API server that a test can cut (every connection dropped, new ones refused
    at once) and restore: what a client sees when the API server restarts or the network goes away."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for connection in self.sockets:
                with contextlib.suppress(OSError):  # already shut by the other end
                    connection.shutdown(socket.SHUT_RDWR)  # its relay thread wakes up and closes it

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                downstream.close()
                continue
            with self.lock:
                self.sockets |= {downstream, upstream}
            threading.Thread(target=self._relay, args=(downstream, upstream), daemon=True).start()

    def _relay(self, one: socket.socket, other: socket.socket) -> None:
        """Both directions of one connection; only this thread closes its sockets (no descriptor reuse)."""
        try:
            while True:
                readable, _, _ = select.select([one, other], [], [])
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (other if source is one else one).sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.sockets -= {one, other}
            for end in (one, other):
                end.close()


def training_jobs(api: client.ApiClient, ns: str) -> list[str]:
    jobs = client.BatchV1Api(api).list_namespaced_job(ns, label_selector=TRAINING).items
    return sorted(job.metadata.name for job in jobs)


def serving(api: client.ApiClient, ns: str, name: str, version: str) -> dict[str, Any] | None:
    workflow = get(api, ns, name)
    status = workflow.get("status", {})
    done = status.get("phase") == "Serving" and status.get("model", {}).get("version") == version
    return workflow if done else None


def test_a_restarted_operator_picks_up_a_training_it_did_not_see_finish(
    api: client.ApiClient, operator_kubeconfig: Path, process_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = process_namespace
    with operator_in(ns, operator_kubeconfig, monkeypatch):
        name = create_workflow(api, ns)
        wait_for(
            lambda: (
                training_jobs(api, ns) and get(api, ns, name).get("status", {}).get("phase") == "Training"
            ),
            60,
            "the v1 training Job, recorded in status",
        )
    # The operator is gone; the Job it started runs on and finishes without it. (On a loaded machine the
    # operator may see the Job finish while it stops: then the phase it left is already past Training.)
    left = get(api, ns, name)["status"]["phase"]
    batch = client.BatchV1Api(api)
    wait_for(lambda: batch.read_namespaced_job(f"{name}-train-v1", ns).status.succeeded, 180, "v1 trained")
    assert get(api, ns, name)["status"]["phase"] == left, "nobody acts on the workflow without an operator"

    with operator_in(ns, operator_kubeconfig, monkeypatch):
        workflow = wait_for(lambda: serving(api, ns, name, "v1"), 180, "the new operator to serve v1")
    assert training_jobs(api, ns) == [f"{name}-train-v1"], "the finished training was not started again"
    assert [record["version"] for record in workflow["status"]["history"]] == ["v1"]


def test_a_workflow_goes_at_once_when_deleted_while_the_operator_is_down(
    api: client.ApiClient, operator_kubeconfig: Path, process_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = process_namespace
    with operator_in(ns, operator_kubeconfig, monkeypatch):
        name = create_workflow(api, ns)
        workflow = wait_for(
            lambda: (w := get(api, ns, name)).get("status", {}).get("phase") and w, 60, "status"
        )
    assert not workflow["metadata"].get("finalizers"), "nothing may hold a deletion for the operator"
    objects = client.CustomObjectsApi(api)
    objects.delete_namespaced_custom_object("mlworkflow.io", "v1alpha1", ns, "mlworkflows", name)
    wait_for(
        lambda: (
            not objects.list_namespaced_custom_object("mlworkflow.io", "v1alpha1", ns, "mlworkflows")["items"]
        ),
        30,
        "the workflow gone without an operator",
    )


def test_the_operator_rides_out_a_lost_api_connection(
    api: client.ApiClient, operator_kubeconfig: Path, process_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = process_namespace
    config = yaml.safe_load(operator_kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert server.hostname and server.port
    proxy = CuttableProxy(server.hostname, server.port)
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    proxied = operator_kubeconfig.with_name(f"operator-proxied-{ns}.kubeconfig")
    proxied.write_text(yaml.safe_dump(config))
    try:
        with operator_in(ns, proxied, monkeypatch):
            name = create_workflow(api, ns)
            wait_for(lambda: serving(api, ns, name, "v1"), 240, "v1 serving")

            proxy.cut()
            # While the operator cannot reach the API server, the spec changes under it.
            patch_spec(api, ns, name, {"model": {"params": {"n_estimators": 10, "max_depth": 3}}})
            time.sleep(5)  # the outage: its watch and its resync timer both fail meanwhile
            assert training_jobs(api, ns) == [f"{name}-train-v1"]
            proxy.restore()

            workflow = wait_for(lambda: serving(api, ns, name, "v2"), 240, "v2 serving after the outage")
    finally:
        proxy.close()
    assert workflow["status"]["observedGeneration"] == workflow["metadata"]["generation"]
    assert training_jobs(api, ns) == [f"{name}-train-v1", f"{name}-train-v2"]
