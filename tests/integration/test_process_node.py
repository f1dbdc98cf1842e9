"""The process node: Pods bound to it really run as local processes, driven by the real Job, ReplicaSet and
scheduler controllers, and report their status as a kubelet would."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from kubelocal.controlplane import ControlPlane
from support import reader_account, wait_for

pytestmark = pytest.mark.cluster


def python(code: str) -> list[str]:
    """A container command running `code` with the project's Python (on the process node's PATH)."""
    return ["python", "-c", textwrap.dedent(code)]


def raw(api: client.ApiClient, path: str) -> dict[str, Any]:
    """An object or list as plain JSON (no client models in the way)."""
    return dict(DynamicClient(api).request("GET", path).to_dict())


def pods(api: client.ApiClient, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(raw(api, f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"])


def pod_in_phase(api: client.ApiClient, namespace: str, name: str, *phases: str) -> dict[str, Any]:
    """The Pod once it is in one of `phases` (waiting up to a minute)."""

    def current() -> dict[str, Any] | None:
        pod = raw(api, f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod if pod["status"].get("phase") in phases else None

    return wait_for(current, 60, f"Pod {name} in phase {' or '.join(phases)}")


def job_condition(api: client.ApiClient, namespace: str, name: str) -> str | None:
    job = raw(api, f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def create(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> None:
    DynamicClient(api).resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"]).create(
        body=manifest, namespace=namespace
    )


def pod_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def job_manifest(
    name: str, backoff_limit: int, container: dict[str, Any], volumes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Job of one container whose Pods are labelled app=<name>."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes or []},
            },
        },
    }


def test_a_job_really_runs_writes_to_its_claim_and_reports_its_termination_message(
    api: client.ApiClient, process_namespace: str
) -> None:
    ns = process_namespace
    create(api, ns, claim("artifacts"))
    container = {
        "name": "main",
        "image": "python:3.11",
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "OUT", "value": "/artifacts/$(POD).txt"},
        ],
        "command": python(
            """
            import json, os
            open(os.environ["OUT"], "w").write("written by " + os.environ["POD"])
            summary = {"status": "ok", "file": os.environ["OUT"]}
            open("/dev/termination-log", "w").write(json.dumps(summary))
            """
        ),
        "volumeMounts": [{"name": "store", "mountPath": "/artifacts"}],
    }
    volumes = [{"name": "store", "persistentVolumeClaim": {"claimName": "artifacts"}}]
    job = job_manifest("writer", 0, container, volumes)
    create(api, ns, job)
    assert wait_for(lambda: job_condition(api, ns, "writer"), 60, "Job writer to finish") == "Complete"

    (pod,) = pods(api, ns, "app=writer")
    assert pod["spec"]["nodeName"] == "process-node-0"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    summary = json.loads(terminated["message"])
    assert summary == {"status": "ok", "file": f"/artifacts/{pod['metadata']['name']}.txt"}
    # The claim is a real folder: the provisioner made a PersistentVolume for it.
    volume_name = raw(api, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/artifacts")["spec"]["volumeName"]
    folder = Path(raw(api, f"/api/v1/persistentvolumes/{volume_name}")["spec"]["hostPath"]["path"])
    assert (folder / f"{pod['metadata']['name']}.txt").read_text() == f"written by {pod['metadata']['name']}"


def test_a_failing_job_fails_after_its_retries_with_the_log_tail_as_message(
    api: client.ApiClient, process_namespace: str
) -> None:
    ns = process_namespace
    container = {
        "name": "main",
        "image": "python:3.11",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "command": python("import sys; print('column target is missing'); sys.exit(3)"),
    }
    job = job_manifest("crasher", 1, container)
    create(api, ns, job)
    assert wait_for(lambda: job_condition(api, ns, "crasher"), 90, "Job crasher to finish") == "Failed"
    failed = pods(api, ns, "app=crasher")
    assert len(failed) == 2, "backoffLimit 1: the first Pod and one retry"
    for pod in failed:
        assert pod["status"]["phase"] == "Failed"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
        assert "column target is missing" in terminated["message"]


SERVER = """
import http.server, os, signal, sys, time
time.sleep(float(os.environ["WARMUP"]))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["HOSTNAME"].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["HTTP_PORT"])), Handler)
def stop(*_):
    print("got SIGTERM, stopping", flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("serving", flush=True)
server.serve_forever()
"""


def deployment(name: str, replicas: int, warmup: float) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": python(SERVER),
                            # 8080 on a real cluster; the process node puts its own port in HTTP_PORT.
                            "env": [
                                {"name": "HTTP_PORT", "value": "8080"},
                                {"name": "WARMUP", "value": str(warmup)},
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_a_deployment_is_ready_only_after_its_probe_passes_and_answers_on_its_port(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str
) -> None:
    ns = process_namespace
    create(api, ns, deployment("web", replicas=2, warmup=2.0))

    def running_pods() -> list[dict[str, Any]]:
        found = pods(api, ns, "app=web")
        states = [p.get("status", {}).get("containerStatuses") or [] for p in found]
        return found if len(found) == 2 and all(s and "running" in s[0]["state"] for s in states) else []

    for pod in wait_for(running_pods, 60, "2 running web Pods"):
        assert not is_ready(pod), "Ready before the readiness probe could pass (the server warms up 2s)"

    ready = wait_for(
        lambda: (
            [p for p in pods(api, ns, "app=web") if is_ready(p)]
            if all(is_ready(p) for p in pods(api, ns, "app=web"))
            else []
        ),
        60,
        "both web Pods Ready",
    )
    names = set()
    for pod in ready:
        port = control_plane.host_port(pod, 8080)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            names.add(response.read().decode())
    assert names == {p["metadata"]["name"] for p in ready}, "each Pod is its own process on its own port"

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    create(api, ns, service)
    urls = wait_for(
        lambda: len(control_plane.service_urls(ns, "web")) == 2 and control_plane.service_urls(ns, "web"),
        30,
        "2 ready endpoints of Service web",
    )
    answers = {urllib.request.urlopen(url, timeout=5).read().decode() for url in urls}
    assert answers == names

    victim = ready[0]["metadata"]["name"]
    client.CoreV1Api(api).delete_namespaced_pod(victim, ns)

    def replaced() -> list[dict[str, Any]]:
        current = pods(api, ns, "app=web")
        names = {p["metadata"]["name"] for p in current}
        return current if victim not in names and len(current) == 2 and all(map(is_ready, current)) else []

    wait_for(replaced, 60, "the ReplicaSet's replacement Pod, Ready")
    assert "got SIGTERM, stopping" in control_plane.container_log(ns, victim, "web")


def test_init_containers_volumes_env_and_side_by_side_containers(
    api: client.ApiClient, control_plane: ControlPlane, process_namespace: str
) -> None:
    ns = process_namespace
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}})
    pod = pod_manifest(
        "combo",
        {
            "restartPolicy": "Never",
            "initContainers": [
                {
                    "name": "first",
                    "image": "x",
                    "command": ["sh", "-c", "echo 1 >> /shared/order"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
                {
                    "name": "second",
                    "image": "x",
                    "command": ["sh", "-c", "echo 2 >> /shared/order"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
            ],
            "containers": [
                {
                    "name": "reader",
                    "image": "x",
                    "env": [
                        {
                            "name": "PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                        }
                    ],
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                    "command": python(
                        """
                    import json, os, time
                    deadline = time.time() + 20
                    while not os.path.exists("/shared/peer") and time.time() < deadline:
                        time.sleep(0.1)
                    result = {
                        "order": open("/shared/order").read().split(),
                        "mode_file": open("/config/mode").read(),
                        "mode_env": os.environ["CFG_mode"],
                        "password": os.environ["PASSWORD"],
                        "peer": open("/shared/peer").read(),
                        "readonly": not os.access("/config/mode", os.W_OK),
                    }
                    open("/dev/termination-log", "w").write(json.dumps(result))
                    """
                    ),
                    "volumeMounts": [
                        {"name": "shared", "mountPath": "/shared"},
                        {"name": "config", "mountPath": "/config", "readOnly": True},
                    ],
                },
                {
                    "name": "peer",
                    "image": "x",
                    "command": ["sh", "-c", "echo alive > /shared/peer"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
            ],
            "volumes": [
                {"name": "shared", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "settings"}},
            ],
        },
    )
    create(api, ns, pod)
    done = pod_in_phase(api, ns, "combo", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", control_plane.container_log(ns, "combo", "reader")
    statuses = {s["name"]: s for s in done["status"]["containerStatuses"]}
    result = json.loads(statuses["reader"]["state"]["terminated"]["message"])
    assert result == {
        "order": ["1", "2"],
        "mode_file": "fast",
        "mode_env": "fast",
        "password": "s3cret",
        "peer": "alive\n",
        "readonly": True,
    }
    assert [s["state"]["terminated"]["exitCode"] for s in done["status"]["initContainerStatuses"]] == [0, 0]


def test_a_failing_liveness_probe_restarts_the_container(
    api: client.ApiClient, process_namespace: str
) -> None:
    ns = process_namespace
    pod = pod_manifest(
        "flaky",
        {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "x",
                    # Healthy for a second, then the health file goes away.
                    "command": ["sh", "-c", "touch /tmp/healthy; sleep 1; rm /tmp/healthy; sleep 600"],
                    "livenessProbe": {
                        "exec": {"command": ["test", "-f", "/tmp/healthy"]},
                        "periodSeconds": 1,
                        "failureThreshold": 2,
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    )
    create(api, ns, pod)

    def restarted() -> dict[str, Any] | None:
        status = raw(api, f"/api/v1/namespaces/{ns}/pods/flaky")["status"]
        container = (status.get("containerStatuses") or [{}])[0]
        return (
            container if container.get("restartCount", 0) >= 1 and "running" in container["state"] else None
        )

    container = wait_for(restarted, 60, "a liveness restart of Pod flaky")
    assert container["lastState"]["terminated"]["exitCode"] in (137, 143)


def test_a_process_uses_its_service_account_in_cluster(api: client.ApiClient, process_namespace: str) -> None:
    ns = process_namespace
    reader_account(api, ns)
    pod = pod_manifest(
        "in-cluster",
        {
            "restartPolicy": "Never",
            "serviceAccountName": "reader",
            "containers": [
                {
                    "name": "main",
                    "image": "x",
                    "command": python(
                        """
                    import json
                    from kubernetes import client, config
                    config.load_incluster_config()
                    core = client.CoreV1Api()
                    namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
                    result = {"configmap": core.read_namespaced_config_map("visible", namespace).data}
                    try:
                        core.read_namespaced_secret("hidden", namespace)
                        result["secret"] = "readable"
                    except client.ApiException as error:
                        result["secret"] = error.status
                    open("/dev/termination-log", "w").write(json.dumps(result))
                    """
                    ),
                }
            ],
        },
    )
    create(api, ns, pod)
    done = pod_in_phase(api, ns, "in-cluster", "Succeeded", "Failed")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", terminated
    assert json.loads(terminated["message"]) == {"configmap": {"k": "v"}, "secret": 403}


def test_deleting_a_pod_stops_its_process(api: client.ApiClient, process_namespace: str) -> None:
    ns = process_namespace
    pod = pod_manifest(
        "sleeper",
        {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "x", "command": ["sleep", "600"]}],
        },
    )
    create(api, ns, pod)
    running = pod_in_phase(api, ns, "sleeper", "Running")
    pid = int(running["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    assert Path(f"/proc/{pid}").exists()
    client.CoreV1Api(api).delete_namespaced_pod("sleeper", ns)
    wait_for(lambda: not pods(api, ns, ""), 30, "Pod sleeper gone")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the Pod's process outlived the Pod"
