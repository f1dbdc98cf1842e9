"""Operator scale benchmark: N WebService workflows on the test control plane, against the floor.

    python bench/operator_scale/run.py [--workflows 100 ...] [--full] [--resync 10] [--windows 5]

The control plane is the tests' (hack/kubelocal): a real kube-apiserver, etcd, controller-manager and
scheduler, and kwok nodes where nothing runs. kwok completes each training Pod with the training runtime's
summary as its termination message (`training_result_stage`) and makes the serving Pods ready.

For each N, in one run:

- the floor: a script creates the N MLWorkflow objects (no operator watches their namespace) and, for
  each, the children the operator would apply (training Job, serving Deployment and Service, drift-check
  CronJob; the manifests of `mlworkflow.desired`, owned by the workflow), applied once with the Python
  client; timed until every serving Deployment is available;
- the operator: `mlworkflow operator --namespace NS` as a subprocess (admin kubeconfig), started before
  the N workflows are created; timed until every workflow's condition Ready is True; its peak resident
  memory (VmHWM) read from /proc;
- steady state: `--windows` resync intervals with the operator running and nothing changing, then the
  same length with the operator stopped (the baseline: the control plane's own traffic, kwok's node
  heartbeats, the process node's polling). The API server's `apiserver_request_total` has no user label,
  so the operator's requests are the difference of the two windows, by verb and resource.

Requests during a ramp are all the API server served (the creation of the workflows, and the controllers,
scheduler and kwok acting on the children included) minus the baseline's rate over the ramp's length and
minus this script's polls (it counts them); the floor's ramp (its applies included) is counted the same
way, so the difference is what the operator costs beyond applying the children once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

from kubelocal.controlplane import ControlPlane, build_binaries, training_result_stage  # noqa: E402
from mlworkflow.api import v1alpha1  # noqa: E402
from mlworkflow.api.v1alpha1 import MLWorkflowStatus, Pattern, Trigger  # noqa: E402
from mlworkflow.controller.config import OperatorConfig  # noqa: E402
from mlworkflow.desired import children  # noqa: E402
from mlworkflow.desired.lifecycle import Plan, TrainRequest  # noqa: E402
from mlworkflow.desired.patterns import PATTERNS  # noqa: E402
from mlworkflow.kube import Kube  # noqa: E402

WRITES = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
PODS_PER_KWOK_NODE = 100  # kwok's node allows 110
# What the training runtime ends with (runtime/train.py's report): promoted as the first version.
SUMMARY = {
    "status": "ok",
    "version": "v1",
    "metrics": {"accuracy": 0.95, "f1_macro": 0.95},
    "backend": "sklearn",
    "rows": 150,
    "holdout": {"rows": 30},
}


def workflow_manifest(name: str) -> dict[str, Any]:
    """The iris WebService example, one replica, its drift check once a year (never during a run)."""
    document = yaml.safe_load((REPO / "examples" / "webservice-iris.yaml").read_text())
    document["metadata"] = {"name": name}
    document["spec"]["serving"] = {"replicas": 1}
    document["spec"]["monitoring"]["schedule"] = "0 0 1 1 *"
    return dict(document)


class Api:
    """The admin's clients, counting this script's own requests (they are subtracted from the totals)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.client = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.objects = client.CustomObjectsApi(self.client)
        self.requests = 0

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        response = method(*args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    def request_counts(self) -> Counter[tuple[str, str]]:
        """apiserver_request_total summed by (verb, resource) (this scrape counts as one of ours)."""
        text = self.call_raw("/metrics")
        counts: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    resource = sample.labels.get("resource") or "(non-resource)"
                    sub = sample.labels.get("subresource")
                    counts[(sample.labels["verb"], f"{resource}/{sub}" if sub else resource)] += int(
                        sample.value
                    )
        return counts

    def call_raw(self, path: str) -> str:
        self.requests += 1
        request = urllib.request.Request(
            self.plane.server + path, headers={"Authorization": f"Bearer {self.plane.token}"}
        )
        context = ssl.create_default_context(cafile=str(self.plane.ca_file))
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return str(response.read().decode())

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.call(self.core.create_namespace, {"metadata": {"name": name}})
        self.wait(
            lambda: any(
                sa["metadata"]["name"] == "default"
                for sa in self.call(self.core.list_namespaced_service_account, name)["items"]
            ),
            60,
            f"the default ServiceAccount of {name}",
        )
        self.call(
            self.core.create_namespaced_persistent_volume_claim,
            name,
            {
                "metadata": {"name": "ml-artifacts"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )
        return name

    def delete_namespaces(self, timeout: float) -> None:
        """Delete the bench's namespaces and wait until they are gone (the next N starts on a quiet plane)."""

        def ours() -> list[str]:
            names = [n["metadata"]["name"] for n in self.call(self.core.list_namespace)["items"]]
            return [name for name in names if name.startswith(("floor-", "op-"))]

        for name in ours():
            # kopf's finalizer (kopf adds one for the timer) would hold the workflows: no operator is left.
            for workflow in self.call(
                self.objects.list_namespaced_custom_object,
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                name,
                v1alpha1.PLURAL,
            )["items"]:
                with contextlib.suppress(client.ApiException):
                    self.call(
                        self.objects.patch_namespaced_custom_object,
                        v1alpha1.GROUP,
                        v1alpha1.VERSION,
                        name,
                        v1alpha1.PLURAL,
                        workflow["metadata"]["name"],
                        {"metadata": {"finalizers": None}},
                    )
            with contextlib.suppress(client.ApiException):
                self.call(self.core.delete_namespace, name)
        self.wait(lambda: not ours(), timeout, "the namespaces deleted", interval=2.0)

    def create_workflow(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self.call(
                self.objects.create_namespaced_custom_object,
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                namespace,
                v1alpha1.PLURAL,
                workflow_manifest(name),
            )
        )

    def ready_workflows(self, namespace: str) -> int:
        items = self.call(
            self.objects.list_namespaced_custom_object,
            v1alpha1.GROUP,
            v1alpha1.VERSION,
            namespace,
            v1alpha1.PLURAL,
        )["items"]
        return sum(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (w.get("status") or {}).get("conditions") or []
            )
            for w in items
        )

    def available_deployments(self, namespace: str) -> int:
        items = self.call(self.apps.list_namespaced_deployment, namespace)["items"]
        return sum(
            (d.get("status") or {}).get("availableReplicas", 0) == d["spec"].get("replicas", 1)
            and (d.get("status") or {}).get("observedGeneration", 0) >= d["metadata"]["generation"]
            for d in items
        )

    def wait(self, done: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def floor_children(workflow: dict[str, Any], runtime: children.RuntimeContext) -> list[dict[str, Any]]:
    """What the operator ends up applying for a new WebService workflow (as `mlworkflow render` does)."""
    owner = children.Workflow.from_body(workflow)
    train = TrainRequest("v1", Trigger.INITIAL)
    plan = Plan(MLWorkflowStatus(), train, "v1")
    assert owner.spec.pattern == Pattern.WEB_SERVICE
    return [
        children.training_job(owner, train, runtime),
        *PATTERNS[Pattern.WEB_SERVICE].children_for(owner, plan, runtime).apply,
        children.monitoring_cronjob(owner, "v1", runtime),
    ]


@dataclass
class Ramp:
    seconds: float
    requests: Counter[tuple[str, str]]  # all the API server served in the ramp
    ours: int  # the bench's polls and scrapes among them (not the creation of the workflows or children)


def measure_ramp(api: Api, start: Callable[[], None], done: Callable[[], bool], timeout: float) -> Ramp:
    before = api.request_counts()
    began = time.monotonic()
    start()
    created = api.requests
    api.wait(done, timeout, "the ramp", interval=1.0)
    seconds = time.monotonic() - began
    after = api.request_counts()
    # Ours: the polls while waiting and the first scrape; what `start` sent is the contender's own work.
    return Ramp(seconds, after - before, api.requests - created + 1)


def floor_ramp(api: Api, n: int, timeout: float) -> Ramp:
    namespace = api.namespace("floor")
    kube = Kube(api.client)
    runtime = OperatorConfig.from_env().runtime

    def create() -> None:
        for i in range(n):
            workflow = api.create_workflow(namespace, f"wf-{i:04d}")
            for manifest in floor_children(workflow, runtime):
                kube.apply(manifest)
                api.requests += 1

    return measure_ramp(api, create, lambda: api.available_deployments(namespace) >= n, timeout)


@dataclass
class OperatorRun:
    ramp: Ramp
    steady: Counter[tuple[str, str]]
    baseline: Counter[tuple[str, str]]
    window: float
    peak_mib: float
    events: int  # Event objects that appeared in the operator's namespace during the steady window


def operator_run(api: Api, n: int, resync: float, windows: int, timeout: float, log: Path) -> OperatorRun:
    namespace = api.namespace("op")
    env = {
        **os.environ,
        "KUBECONFIG": str(api.plane.kubeconfig),
        "MLW_RESYNC_SECONDS": str(resync),
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log, "wb") as output:
        operator = subprocess.Popen(
            [sys.executable, "-m", "mlworkflow.cli", "operator", "--namespace", namespace],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(5)  # kopf's start: watches opened before the first workflow arrives
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.returncode}; log {log}")

        def create() -> None:
            for i in range(n):
                api.create_workflow(namespace, f"wf-{i:04d}")

        ramp = measure_ramp(api, create, lambda: api.ready_workflows(namespace) >= n, timeout)
        time.sleep(2 * resync)  # the last reconciles of the ramp settle
        window = windows * resync
        events_before = len(api.call(api.core.list_namespaced_event, namespace)["items"])
        steady = _window(api, window)
        events = len(api.call(api.core.list_namespaced_event, namespace)["items"]) - events_before
        peak = status_kib(operator.pid, "VmHWM") / 1024
    finally:
        stop(operator)
    time.sleep(2)
    baseline = _window(api, window)
    return OperatorRun(ramp, steady, baseline, window, peak, events)


def _window(api: Api, seconds: float) -> Counter[tuple[str, str]]:
    # Includes the first scrape (counted once it is answered), in both windows alike.
    before = api.request_counts()
    time.sleep(seconds)
    return api.request_counts() - before


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmHWM: the peak resident memory); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _total(counts: Counter[tuple[str, str]], writes_only: bool = False) -> int:
    return sum(v for (verb, _), v in counts.items() if not writes_only or verb in WRITES)


def _net(ramp: Ramp, rate: float) -> float:
    """A ramp's requests without the bench's own and the idle control plane's (baseline rate times length)."""
    return _total(ramp.requests) - ramp.ours - rate * ramp.seconds


def report(n: int, floor: Ramp, run: OperatorRun) -> list[str]:
    base_rate = _total(run.baseline) / run.window
    minutes = run.window / 60
    operator_only = run.steady.copy()
    operator_only.subtract(run.baseline)
    steady = _total(run.steady) - _total(run.baseline)
    steady_writes = _total(run.steady, True) - _total(run.baseline, True)
    rows = [
        f"| {n:,} | floor: children applied directly | {floor.seconds:.1f} | 1.00x | "
        f"{_net(floor, base_rate) / n:.1f} | - | - | - |",
        f"| {n:,} | operator | {run.ramp.seconds:.1f} | {run.ramp.seconds / floor.seconds:.2f}x | "
        f"{_net(run.ramp, base_rate) / n:.1f} | {steady / n / minutes:.3f} | "
        f"{steady_writes / n / minutes:.3f} | {run.peak_mib:.0f} |",
    ]
    print(
        f"\nN={n}: steady window {run.window:.0f}s with the operator: {_total(run.steady)} requests; "
        f"without: {_total(run.baseline)}; Event objects new in the operator's namespace: {run.events} "
        "(the only Events it posts). By verb and resource (with - without):"
    )
    for (verb, resource), count in sorted(operator_only.items(), key=lambda kv: -abs(kv[1])):
        if count:
            print(
                f"  {verb:8} {resource:40} {count:+6d}  "
                f"(with {run.steady[(verb, resource)]}, without {run.baseline[(verb, resource)]})"
            )
    print(f"N={n}: ramp requests per workflow by verb and resource where operator and floor differ:")
    for key in sorted(set(run.ramp.requests) | set(floor.requests), key=lambda k: (k[1], k[0])):
        ours, theirs = run.ramp.requests[key] / n, floor.requests[key] / n
        if abs(ours - theirs) >= 0.2:
            print(f"  {key[0]:8} {key[1]:40} operator {ours:6.2f}  floor {theirs:6.2f}")
    print("\n".join(rows), flush=True)  # the table comes again at the end, after the namespaces are gone
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workflows", type=int, nargs="+", help="N to run (default: 100; --full: 100 500 1000)"
    )
    parser.add_argument("--full", action="store_true", help="run 100, 500 and 1,000 workflows")
    parser.add_argument("--resync", type=float, default=10.0, help="MLW_RESYNC_SECONDS of the operator")
    parser.add_argument("--windows", type=int, default=5, help="resync intervals in each steady window")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a ramp may take")
    args = parser.parse_args()
    sizes = args.workflows or ([100, 500, 1000] if args.full else [100])

    workdir = Path(tempfile.mkdtemp(prefix="mlw-bench-scale-"))
    plane = ControlPlane(
        build_binaries(), workdir=workdir, extra_kwok_stages=[training_result_stage(SUMMARY)]
    )
    rows = []
    with plane:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd/mlworkflows.mlworkflow.io", "--timeout=60s")
        api = Api(plane)
        nodes = 1
        for n in sizes:
            # Both namespaces' serving Pods at once (finished training Pods take no room).
            while nodes * PODS_PER_KWOK_NODE < 2 * n + 10:
                plane.add_kwok_node(f"kwok-node-{nodes}")
                nodes += 1
            print(f"N={n}: floor ...", flush=True)
            floor = floor_ramp(api, n, args.timeout)
            print(f"N={n}: floor {floor.seconds:.1f}s; operator ...", flush=True)
            run = operator_run(api, n, args.resync, args.windows, args.timeout, workdir / f"operator-{n}.log")
            print(f"N={n}: operator {run.ramp.seconds:.1f}s, peak {run.peak_mib:.0f} MiB", flush=True)
            rows += report(n, floor, run)
            api.delete_namespaces(args.timeout)
    print(
        "\n| workflows | contender | seconds to all Ready | vs floor | ramp requests per workflow "
        "| steady requests per workflow per minute | steady writes per workflow per minute | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nresync {args.resync:.0f}s, steady windows {args.windows} resyncs; logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
