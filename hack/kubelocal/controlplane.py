"""A real Kubernetes control plane on 127.0.0.1, without Docker: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, started as local processes (as controller-runtime's
envtest does, plus the controllers and scheduler so Jobs and Deployments get Pods).

Every process is started in its own process group with a parent-death signal, so none outlives the Python
process that started it, even when that one is killed. A component that does not become healthy in time
raises `ComponentError` naming it, with the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubelocal.net import free_port
from kubelocal.processnode import NAMESPACE_ANNOTATIONS, PORTS_ANNOTATION
from kubelocal.rest import Rest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-control-plane.sh"
ADMIN_TOKEN_NAME = "admin"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok's stages, as kwokctl installs them: nodes become Ready and keep a Lease; Pods become Ready;
# Pods owned by a Job complete; deleted Pods go away.
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)

# A training Pod of the operator (desired.children labels it so) on kwok's node.
TRAINING_POD_LABELS = {"app.kubernetes.io/component": "training"}

PROCESS_NODE = "process-node-0"


def training_result_stage(summary: Mapping[str, Any]) -> str:
    """A kwok Stage (YAML) that completes the training Pods on kwok's node with `summary` as each
    container's termination message, as the training runtime would end (runtime/termination.py).

    It matches what the stock pod-complete stage matches, restricted to `TRAINING_POD_LABELS`; its weight
    of 1 makes kwok pick it over pod-complete's 0 (kwok drops zero-weight candidates when some weigh more).
    """
    # A JSON string is a YAML double-quoted scalar; JSON never holds "{{" (an object's "{" is followed by a
    # quote or "}"), so Go's template leaves it alone.
    message = json.dumps(json.dumps(dict(summary), separators=(", ", ": ")))
    labels = "\n".join(f"      {key}: {json.dumps(value)}" for key, value in TRAINING_POD_LABELS.items())
    return f"""apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete-training
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  weight: 1
  selector:
    matchLabels:
{labels}
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values:
      - 'Job'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      containerStatuses:
      {{{{ range $index, $item := .spec.containers }}}}
      - image: {{{{ $item.image | Quote }}}}
        name: {{{{ $item.name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{{{ $now | Quote }}}}
            reason: Completed
            message: {message}
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Succeeded
"""


class ComponentError(RuntimeError):
    """A control-plane component failed to start or to become healthy."""


def build_binaries() -> Path:
    """Build (or find in the cache) the control plane's binaries; returns their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def _die_with_parent() -> None:
    """Run in the child before exec: a new process group, and SIGKILL when the parent dies."""
    os.setpgrp()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Component:
    """One process of the control plane: its command, its log, and how to tell it is healthy."""

    name: str
    argv: list[str]
    log_path: Path
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            preexec_fn=_die_with_parent,
        )
        log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise ComponentError(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if self.healthy():
                    return
            time.sleep(0.2)
        raise ComponentError(
            f"{self.name} was not healthy after {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http_ok(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _node_ready(rest: Rest, name: str) -> bool:
    node = rest.get(f"/api/v1/nodes/{name}")
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, on 127.0.0.1."""

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path | None = None,
        start_timeout: float = 90.0,
        extra_kwok_stages: Sequence[str] = (),
        pod_pythonpath: str | None = None,
    ) -> None:
        """`extra_kwok_stages`: kwok Stage documents (YAML) added to the stock ones, e.g.
        `training_result_stage(...)`. `pod_pythonpath`: the PYTHONPATH of the process node's containers
        (None: the project's virtualenv alone, i.e. the checkout installed in it)."""
        self.bin_dir = bin_dir
        self.extra_kwok_stages = tuple(extra_kwok_stages)
        self.pod_pythonpath = pod_pythonpath
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mlw-control-plane-"))
        self.start_timeout = start_timeout
        self.components: list[Component] = []
        self.token = os.urandom(16).hex()
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        # etcd's data lives in memory when it can: faster, and nothing left on disk.
        shm = Path("/dev/shm")
        self._etcd_dir = Path(tempfile.mkdtemp(prefix="mlw-etcd-", dir=shm if shm.is_dir() else None))

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            self._prepare_files()
            self._start(self._etcd())
            self._start(self._apiserver())
            self._write_kubeconfig()
            self._start(self._controller_manager())
            self._start(self._scheduler())
            self._start(self._kwok())
            self.add_kwok_node("kwok-node-0")
            self._start(self._process_node())
            self._wait_for_default_service_account(time.monotonic() - started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()
        shutil.rmtree(self._etcd_dir, ignore_errors=True)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, component: Component) -> None:
        self.components.append(component)
        component.start()
        component.wait_healthy(self.start_timeout)

    # --- files -------------------------------------------------------------------------------------------

    def _prepare_files(self) -> None:
        (self.workdir / "certs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        key = self.workdir / "service-account.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(
                [
                    "openssl",
                    "rsa",
                    "-in",
                    str(key),
                    "-pubout",
                    "-out",
                    str(self.workdir / "service-account.pub"),
                ],
                check=True,
                capture_output=True,
            )
        (self.workdir / "tokens.csv").write_text(
            f'{self.token},{ADMIN_TOKEN_NAME},admin-uid,"system:masters"\n'
        )

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, user=ADMIN_TOKEN_NAME)

    def write_kubeconfig(self, path: Path, user: str, token: str | None = None) -> Path:
        """A kubeconfig for this control plane with `token` (default: the admin's)."""
        user_entry: dict[str, object] = {"token": token or self.token}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        # JSON is YAML: no YAML library needed here.
        path.write_text(json.dumps(config, indent=2))
        return path

    # --- components --------------------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _etcd(self) -> Component:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        return Component(
            "etcd",
            [
                self.binary("etcd"),
                f"--data-dir={self._etcd_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self._log("etcd"),
            lambda: _http_ok(f"{self.etcd_url}/health"),
        )

    def _apiserver(self) -> Component:
        certs = self.workdir / "certs"
        return Component(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--cert-dir={certs}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.workdir / 'service-account.pub'}",
                f"--service-account-signing-key-file={self.workdir / 'service-account.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                # Namespace annotations can then send all of a namespace's Pods to the process node.
                "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
                "--v=1",
            ],
            self._log("kube-apiserver"),
            lambda: _http_ok(f"{self.server}/readyz", self.token, _insecure_context()),
        )

    def _controller_manager(self) -> Component:
        port = free_port()
        kubeconfig = str(self.kubeconfig)
        return Component(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--service-account-private-key-file={self.workdir / 'service-account.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=true",
                "--v=1",
            ],
            self._log("kube-controller-manager"),
            lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", context=_insecure_context()),
        )

    def _scheduler(self) -> Component:
        port = free_port()
        kubeconfig = str(self.kubeconfig)
        return Component(
            "kube-scheduler",
            [
                self.binary("kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--v=1",
            ],
            self._log("kube-scheduler"),
            lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", context=_insecure_context()),
        )

    def _kwok(self) -> Component:
        stages_dir = self.bin_dir.parent / "kwok-stages"
        config = self.workdir / "kwok.yaml"
        stages = [(stages_dir / stage).read_text() for stage in KWOK_STAGES]
        config.write_text("\n---\n".join([*stages, *self.extra_kwok_stages]))
        port = free_port()
        return Component(
            "kwok",
            [
                self.binary("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--server-address=127.0.0.1:{port}",
                # Keeps a Lease per node; without it the node controller marks kwok's node NotReady (and
                # its Pods unready) after the 50 s grace period.
                "--node-lease-duration-seconds=40",
            ],
            self._log("kwok"),
            lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"),
        )

    def _process_node(self) -> Component:
        rest = Rest.from_kubeconfig(self.kubeconfig)
        return Component(
            PROCESS_NODE,
            [
                sys.executable,
                "-m",
                "kubelocal.processnode",
                f"--kubeconfig={self.kubeconfig}",
                f"--name={PROCESS_NODE}",
                f"--root={self.process_node_root}",
                f"--api-port={self.api_port}",
                *([f"--pythonpath={self.pod_pythonpath}"] if self.pod_pythonpath else []),
            ],
            self._log(PROCESS_NODE),
            lambda: _node_ready(rest, PROCESS_NODE),
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    # --- objects -----------------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane."""
        return self.run_tool("kubectl", *args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this control plane."""
        return self.run_tool("helm", *args, check=check)

    def run_tool(
        self, tool: str, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary(tool), f"--kubeconfig={self.kubeconfig}", *args],
                check=check,
                capture_output=True,
                text=True,
                input=input,
                timeout=120,
            )
        except subprocess.CalledProcessError as failed:
            # The exception alone does not show what the tool said.
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({failed.returncode}):\n{failed.stderr}"
            ) from None

    def add_kwok_node(self, name: str) -> None:
        """A fake Node managed by kwok: Pods scheduled to it look Running, Job Pods complete."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))
        self._wait(
            f"node {name} Ready",
            lambda: (
                self.kubectl(
                    "get",
                    "node",
                    name,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                    check=False,
                ).stdout
                == "True"
            ),
            component="kwok",
        )

    def _wait_for_default_service_account(self, elapsed: float) -> None:
        # The ServiceAccount controller creates `default` in every namespace: Pods need it.
        self._wait(
            "the default ServiceAccount",
            lambda: (
                self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
            ),
            component="kube-controller-manager",
        )

    def _wait(
        self, what: str, done: Callable[[], bool], component: str, timeout: float | None = None
    ) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.2)
        owner = next((c for c in self.components if c.name == component), None)
        tail = owner.log_tail() if owner else ""
        raise ComponentError(f"timed out waiting for {what} ({component}); log tail:\n{tail}")

    def peak_memory_mib(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of each running component so far, in MiB."""
        peaks = {}
        for component in self.components:
            if component.process is None or component.process.poll() is not None:
                continue
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{component.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[component.name] = int(line.split()[1]) / 1024
        return peaks

    # --- the process node --------------------------------------------------------------------------------

    @property
    def process_node_root(self) -> Path:
        return self.workdir / "process-node"

    def use_process_node(self, namespace: str) -> None:
        """Send every Pod of `namespace` to the process node, where it really runs."""
        patch = json.dumps({"metadata": {"annotations": NAMESPACE_ANNOTATIONS}})
        self.kubectl("patch", "namespace", namespace, "--type=merge", "-p", patch)

    def host_port(self, pod: dict[str, Any], container_port: int) -> int:
        """The local port the process node gave `container_port` of `pod` (a Pod object as a dict)."""
        ports = json.loads(pod["metadata"]["annotations"][PORTS_ANNOTATION])
        return int(ports[str(container_port)])

    def service_urls(self, namespace: str, service: str, port: int | str | None = None) -> list[str]:
        """http://127.0.0.1:<host port> of each ready process-node endpoint behind a Service.

        The EndpointSlice controller records each Pod's containerPort; on the process node every Pod has
        its own local port for it instead, which the Pod's host-ports annotation maps.
        """
        rest = Rest.from_kubeconfig(self.kubeconfig)
        spec = rest.get(f"/api/v1/namespaces/{namespace}/services/{service}")["spec"]
        service_port = next(p for p in spec["ports"] if port is None or port in (p.get("name"), p["port"]))
        slices = rest.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            labelSelector=f"kubernetes.io/service-name={service}",
        )["items"]
        urls = []
        for endpoint_slice in slices:
            slice_port = next(
                p["port"]
                for p in endpoint_slice.get("ports") or []
                if p.get("name", "") == service_port.get("name", "")
            )
            for endpoint in endpoint_slice.get("endpoints") or []:
                target = endpoint.get("targetRef") or {}
                if not endpoint.get("conditions", {}).get("ready") or target.get("kind") != "Pod":
                    continue
                pod = rest.get(f"/api/v1/namespaces/{namespace}/pods/{target['name']}")
                if PORTS_ANNOTATION in pod["metadata"].get("annotations", {}):
                    urls.append(f"http://127.0.0.1:{self.host_port(pod, slice_port)}")
        return sorted(urls)

    def container_log(self, namespace: str, pod: str, container: str, restart: int | None = None) -> str:
        """What a container of a process-node Pod wrote (its latest run, or run `restart`)."""
        folders = sorted((self.process_node_root / "logs").glob(f"{namespace}_{pod}_*/{container}"))
        if not folders:
            return ""
        runs = sorted(folders[-1].glob("*.log"), key=lambda p: int(p.stem))
        chosen = [r for r in runs if restart is None or int(r.stem) == restart]
        return chosen[-1].read_text(errors="replace") if chosen else ""

    def pod_processes(self) -> list[int]:
        """Pids of processes still running for the process node's Pods (their HOME is under its root)."""
        marker = f"HOME={self.process_node_root}".encode()
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with contextlib.suppress(OSError):
                if marker in environ.read_bytes():
                    pids.append(int(environ.parent.name))
        return pids

    def processes(self) -> Iterator[subprocess.Popen[bytes]]:
        """Every process this control plane started, running or not."""
        for component in self.components:
            if component.process is not None:
                yield component.process
