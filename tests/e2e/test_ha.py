"""Two operator replicas, as the chart runs them: one holds the Lease and acts, the other stands by; kill the
leader in the middle of a training and the standby takes over, with no second Job and no lost result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from kubelocal.net import free_port
from support import OPERATOR_NAMESPACE, wait_for
from workflows import TRAINING, create_workflow, get

pytestmark = pytest.mark.cluster

LEASE = "mlw-mlworkflow-operator"  # the chart's Role lets its ServiceAccount renew this Lease only
# Shorter than the chart's defaults (15/10/2 s) to keep the test short; the rules are the same.
TIMING = ["--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5"]


def holder(api: client.ApiClient) -> tuple[str | None, int]:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    except client.ApiException as error:
        if error.status == 404:
            return None, 0
        raise
    return lease.spec.holder_identity, lease.spec.lease_transitions or 0


def test_one_of_two_operators_acts_and_the_other_takes_over_in_the_middle_of_a_training(
    api: client.ApiClient, operator_kubeconfig: Path, process_namespace: str, tmp_path: Path
) -> None:
    ns = process_namespace
    command = [
        str(Path(sys.executable).parent / "mlworkflow"),
        "operator",
        "--namespace",
        ns,
        "--leader-elect",
    ]
    command += ["--lease-namespace", OPERATOR_NAMESPACE, "--lease-name", LEASE, *TIMING]
    replicas: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}
    try:
        for identity in ("operator-a", "operator-b"):
            log, port = tmp_path / f"{identity}.log", free_port()
            # The production resync (60 s), not the session's 1 s: the Job finishing and the Deployment
            # rolling out must wake the new leader, as they do in a cluster.
            env = {
                **os.environ,
                "KUBECONFIG": str(operator_kubeconfig),
                "POD_NAME": identity,
                "MLW_RESYNC_SECONDS": "60",
            }
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [*command, "--health-port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            replicas[identity] = (process, log, port)
        leader = wait_for(lambda: holder(api)[0], 60, "one replica to hold the Lease")
        standby = next(identity for identity in replicas if identity != leader)
        _, transitions = holder(api)
        # The standby is healthy (its probes pass) while it waits.
        health = f"http://127.0.0.1:{replicas[standby][2]}/healthz"
        wait_for(
            lambda: urllib.request.urlopen(health, timeout=2).status == 200, 30, "the standby's /healthz"
        )

        name = create_workflow(api, ns)
        batch = client.BatchV1Api(api)
        job = wait_for(
            lambda: (jobs := batch.list_namespaced_job(ns, label_selector=TRAINING).items) and jobs[0],
            60,
            "the v1 training Job",
        )
        assert not job.status.succeeded, "the leader is killed while the training runs"
        assert "Handler" not in replicas[standby][1].read_text(), "the standby must not act"

        replicas[leader][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: holder(api)[0] == standby, 30, f"{standby} to take the Lease over")
        takeover = time.monotonic() - killed
        workflow = wait_for(
            lambda: (w := get(api, ns, name)).get("status", {}).get("model", {}).get("version") == "v1" and w,
            180,
            f"{standby} to record the training and serve v1",
        )
        assert takeover < 4 + 2, f"took {takeover:.1f}s: at most the lease duration and a retry or two"
        assert holder(api)[1] == transitions + 1
        jobs = batch.list_namespaced_job(ns, label_selector=TRAINING).items
        assert [j.metadata.name for j in jobs] == [f"{name}-train-v1"], "no second training"
        assert [(r["version"], r["outcome"]) for r in workflow["status"]["history"]] == [("v1", "Promoted")]
    finally:
        for process, _, _ in replicas.values():
            process.send_signal(signal.SIGKILL)
            process.wait(10)
