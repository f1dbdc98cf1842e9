"""The process node: a Node whose Pods really run, as local processes (no Docker, no kubelet).

    python -m kubelocal.processnode --kubeconfig K --name process-node-0 --root DIR --api-port P

What a kubelet does, kept to what the project's Pods need (docs/process-node.md says exactly what):
- registers a labelled, tainted Node and keeps it alive with a Lease;
- runs each Pod bound to it: init containers in order, then its containers side by side, each in a private
  mount namespace with its volumes bind-mounted at their mountPaths (PVC folders shared between Pods,
  emptyDir per Pod, ConfigMaps, Secrets, the projected ServiceAccount token);
- gives each containerPort a free local port, in the env var `<PORTNAME>_PORT` and the Pod annotation
  `kubelocal.mlworkflow.io/host-ports`;
- reports Pod status like a kubelet (phase, container states, restarts, readiness from probes, exit codes,
  termination messages), restarts by restartPolicy and liveness, deletes gracefully;
- provisions a PersistentVolume (a folder) for each claim of the default StorageClass `local`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubelocal.net import free_port
from kubelocal.rest import JSON, STRATEGIC, ApiError, Rest

NODE_LABEL = "mlworkflow.io/process-node"
PORTS_ANNOTATION = "kubelocal.mlworkflow.io/host-ports"
STORAGE_CLASS = "local"
PROVISIONER = "kubelocal.mlworkflow.io/local"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
# The kubelet's limits (pkg/kubelet/container): MaxContainerTerminationMessageLength,
# MaxContainerTerminationMessageLogLines and MaxContainerTerminationMessageLogLength.
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
MAX_FALLBACK_LOG_BYTES = 2048
TICK = 0.2
MAX_BACKOFF = 8.0
# Namespace annotations that put every Pod of a namespace on the process node (admission plugins
# PodNodeSelector and PodTolerationRestriction), so a test's manifests need nothing test-specific.
NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": f"{NODE_LABEL}=true",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}]
    ),
}


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tail_bytes(data: bytes, limit: int) -> str:
    """The last `limit` bytes as text; a split UTF-8 character becomes U+FFFD, as the API server's JSON
    encoding turns the kubelet's raw bytes into a string."""
    return data[-limit:].decode(errors="replace")


def micro_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ConfigError(Exception):
    """The Pod cannot start yet (a missing ConfigMap, an unbound claim): CreateContainerConfigError."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` escapes, the rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(replace, text)


def port_env_name(port: JSON) -> str:
    if port.get("name"):
        return re.sub(r"[^A-Z0-9_]", "_", str(port["name"]).upper()) + "_PORT"
    return f"PORT_{port['containerPort']}"


# --- one container --------------------------------------------------------------------------------------


@dataclass
class Probe:
    spec: JSON
    next_at: float
    successes: int = 0
    failures: int = 0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))


@dataclass
class Container:
    spec: JSON
    init: bool
    log_dir: Path
    termination_file: Path
    launch_file: Path
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started_at: str | None = None
    terminated: JSON | None = None
    last_terminated: JSON | None = None
    restart_at: float | None = None
    ready: bool = False
    started: bool = False
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.terminated is None

    def log_path(self) -> Path:
        return self.log_dir / f"{self.restart_count}.log"

    def status(self) -> JSON:
        if self.running:
            state: JSON = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            waiting: JSON = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready and self.running,
            "restartCount": self.restart_count,
            "started": self.running and self.started,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.process is not None:
            status["containerID"] = f"process://{self.process.pid}"
        return status


# --- one Pod --------------------------------------------------------------------------------------------


class PodWorker(threading.Thread):
    """Drives one Pod from its first start to its end (or its deletion), like a kubelet's pod worker."""

    def __init__(self, node: ProcessNode, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.dir = node.root / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.log_root = node.root / "logs" / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.deleting = threading.Event()
        self.start_time = timestamp()
        self.pod_ip = node.next_pod_ip()
        self.host_ports: dict[int, int] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.mounts: dict[str, list[JSON]] = {}
        self.containers: list[Container] = []
        self.init_containers: list[Container] = []
        self.pod_message = ""
        self._last_status: str | None = None

    # -- events from the node's watch --

    def update(self, pod: JSON) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"

    # -- lifecycle --

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:
            self.node.log(f"pod {self.namespace}/{self.pod_name}: worker failed: {error!r}")
            self._kill_all(grace=0)
            with contextlib.suppress(Exception):
                self.pod_message = f"process node error: {error}"
                self._send_status("Failed")
        finally:
            self.node.worker_done(self)

    def _run(self) -> None:
        self._prepare_containers()
        self._send_status("Pending")
        while not self.deleting.is_set():
            try:
                self._prepare_volumes()
                break
            except ConfigError as error:
                for container in self.init_containers + self.containers:
                    container.waiting_reason, container.waiting_message = (
                        "CreateContainerConfigError",
                        str(error),
                    )
                self._send_status("Pending")
                self.deleting.wait(1.0)
        if not self.deleting.is_set():
            for container in self.init_containers + self.containers:
                container.waiting_reason, container.waiting_message = "PodInitializing", ""
            if self._run_init_containers():
                for container in self.containers:
                    self._start(container)
                self._supervise()
        if self.deleting.is_set():
            self._terminate()

    def _prepare_containers(self) -> None:
        spec = self.pod["spec"]
        for init, key in ((True, "initContainers"), (False, "containers")):
            for container_spec in spec.get(key) or []:
                name = container_spec["name"]
                container = Container(
                    spec=container_spec,
                    init=init,
                    log_dir=self.log_root / name,
                    termination_file=self.dir / "termination" / name,
                    launch_file=self.dir / "launch" / f"{name}.json",
                )
                for kind in ("readiness", "liveness", "startup"):
                    probe_spec = container_spec.get(f"{kind}Probe")
                    if probe_spec and not init:
                        initial = float(probe_spec.get("initialDelaySeconds", 0))
                        setattr(container, kind, Probe(probe_spec, next_at=time.monotonic() + initial))
                (self.init_containers if init else self.containers).append(container)
        ports = {}
        for container in self.containers:
            for port in container.spec.get("ports") or []:
                self.host_ports[int(port["containerPort"])] = free_port()
                ports[str(port["containerPort"])] = self.host_ports[int(port["containerPort"])]
        if ports:
            self.node.rest.patch(
                self.path, {"metadata": {"annotations": {PORTS_ANNOTATION: json.dumps(ports)}}}
            )

    def _prepare_volumes(self) -> None:
        volumes = {v["name"]: self.node.volume_source(self, v) for v in self.pod["spec"].get("volumes") or []}
        for container in self.init_containers + self.containers:
            mounts = []
            for mount in container.spec.get("volumeMounts") or []:
                source = volumes[mount["name"]]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                    source.mkdir(parents=True, exist_ok=True)
                mounts.append(
                    {
                        "source": str(source),
                        "target": mount["mountPath"],
                        "readOnly": bool(mount.get("readOnly")),
                        "file": source.is_file(),
                    }
                )
            container.termination_file.parent.mkdir(parents=True, exist_ok=True)
            container.termination_file.write_text("")
            target = container.spec.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)
            mounts.append({"source": str(container.termination_file), "target": target, "file": True})
            self.mounts[container.name] = mounts
            self.env[container.name] = self.node.container_env(self, container.spec)

    def _run_init_containers(self) -> bool:
        for container in self.init_containers:
            while True:
                self._start(container)
                while container.running and not self.deleting.is_set():
                    self._reap(container)
                    time.sleep(TICK)
                if self.deleting.is_set():
                    return False
                if container.terminated and container.terminated["exitCode"] == 0:
                    break
                if self.restart_policy == "Never":
                    self._send_status("Failed")
                    return False
                self._send_status("Pending")
                self.deleting.wait(self._backoff(container))
                if self.deleting.is_set():
                    return False
                container.last_terminated, container.terminated = container.terminated, None
                container.restart_count += 1
        return True

    def _supervise(self) -> None:
        while not self.deleting.is_set():
            now = time.monotonic()
            for container in self.containers:
                self._reap(container)
                if container.running:
                    self._probe(container, now)
                elif container.restart_at is not None and now >= container.restart_at:
                    container.restart_at = None
                    container.last_terminated, container.terminated = container.terminated, None
                    container.restart_count += 1
                    self._start(container)
            phase = self._phase()
            self._send_status(phase)
            if phase in ("Succeeded", "Failed"):
                return
            self.deleting.wait(TICK)

    def _phase(self) -> str:
        if any(c.running or c.restart_at is not None for c in self.containers):
            return "Running"
        if all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers):
            return "Succeeded"
        return "Failed"

    # -- processes --

    def _start(self, container: Container) -> None:
        env = self.env[container.name]
        command = [expand(part, env) for part in container.spec.get("command") or []]
        args = [expand(part, env) for part in container.spec.get("args") or []]
        if not command:
            # There is no image to read an entrypoint from: the Pod must name its command.
            container.terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": "the process node has no image entrypoint: set the container's command",
                "startedAt": timestamp(),
                "finishedAt": timestamp(),
            }
            container.restart_at = None
            return
        workdir = container.spec.get("workingDir")
        if not workdir:  # an image would bring its own; here each container gets a scratch folder
            workdir = str(self.dir / "work" / container.name)
            Path(workdir).mkdir(parents=True, exist_ok=True)
        container.launch_file.parent.mkdir(parents=True, exist_ok=True)
        container.launch_file.write_text(
            json.dumps(
                {"argv": command + args, "env": env, "cwd": workdir, "mounts": self.mounts[container.name]}
            )
        )
        container.log_dir.mkdir(parents=True, exist_ok=True)
        with open(container.log_path(), "ab") as log:
            container.process = subprocess.Popen(
                [sys.executable, "-m", "kubelocal.launch", str(container.launch_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={
                    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                    "PATH": os.environ.get("PATH", ""),
                },
            )
        container.started_at = timestamp()
        container.terminated = None
        container.ready = False
        container.started = container.startup is None
        for probe in (container.readiness, container.liveness, container.startup):
            if probe:
                probe.successes = probe.failures = 0
                probe.next_at = time.monotonic() + float(probe.spec.get("initialDelaySeconds", 0))

    def _reap(self, container: Container) -> None:
        if not container.running:
            return
        assert container.process is not None
        code = container.process.poll()
        if code is None:
            return
        self._record_exit(container, code)
        if container.init:
            return
        policy = self.restart_policy
        if not self.deleting.is_set() and (policy == "Always" or (policy == "OnFailure" and code != 0)):
            container.restart_at = time.monotonic() + self._backoff(container)

    def _record_exit(self, container: Container, code: int, reason: str | None = None) -> None:
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a runtime reports it
        # As the kubelet (getTerminationMessage): the file's *last* 4,096 bytes, and the log tail only when
        # the file is empty. Bytes, not characters: a cut may split a UTF-8 character, as on a real node.
        message = _tail_bytes(container.termination_file.read_bytes(), MAX_TERMINATION_MESSAGE)
        policy = container.spec.get("terminationMessagePolicy", "File")
        if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = self._log_tail(container)
        container.terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": container.started_at,
            "finishedAt": timestamp(),
            "containerID": f"process://{container.process.pid if container.process else 0}",
        }
        if message:
            container.terminated["message"] = message
        container.ready = False

    def _log_tail(self, container: Container) -> str:
        """The kubelet's fallback: the last 80 lines of the log, then the last 2,048 bytes of those."""
        try:
            lines = container.log_path().read_bytes().splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        except FileNotFoundError:
            return ""
        return _tail_bytes(b"".join(lines), MAX_FALLBACK_LOG_BYTES)

    def _backoff(self, container: Container) -> float:
        return min(0.5 * 2**container.restart_count, MAX_BACKOFF)

    def _signal(self, container: Container, signum: int) -> None:
        if container.running and container.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signum)

    def _stop_container(self, container: Container, grace: float, reason: str | None = None) -> None:
        if not container.running:
            return
        assert container.process is not None
        self._signal(container, signal.SIGTERM)
        try:
            code = container.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(container, signal.SIGKILL)
            code = container.process.wait()
        self._record_exit(container, code, reason)

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.init_containers + self.containers if c.running]
        for container in running:
            self._signal(container, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for container in running:
            assert container.process is not None
            try:
                code = container.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(container, signal.SIGKILL)
                code = container.process.wait()
            self._record_exit(container, code)
        for container in self.containers:
            container.restart_at = None

    def _terminate(self) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after the grace period, final status, then the Pod goes."""
        meta = self.pod["metadata"]
        grace = float(
            meta.get("deletionGracePeriodSeconds", self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        )
        self._kill_all(grace)
        phase = (
            "Succeeded"
            if all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers)
            else "Failed"
        )
        with contextlib.suppress(ApiError):
            self._send_status(phase)
        self.node.finalize_deletion(self.namespace, self.pod_name, self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- probes --

    def _probe(self, container: Container, now: float) -> None:
        if container.startup and not container.started:
            result = self._run_probe(container, container.startup, now)
            if result is True and container.startup.successes >= 1:
                container.started = True
            elif result is False and container.startup.failures >= int(
                container.startup.spec.get("failureThreshold", 3)
            ):
                self._liveness_kill(container, "startup probe failed")
            return
        if container.liveness:
            result = self._run_probe(container, container.liveness, now)
            if result is False and container.liveness.failures >= int(
                container.liveness.spec.get("failureThreshold", 3)
            ):
                self._liveness_kill(container, "liveness probe failed")
                return
        if container.readiness:
            probe = container.readiness
            result = self._run_probe(container, probe, now)
            if result is True and probe.successes >= int(probe.spec.get("successThreshold", 1)):
                container.ready = True
            elif result is False and probe.failures >= int(probe.spec.get("failureThreshold", 3)):
                container.ready = False
        else:
            container.ready = container.started

    def _liveness_kill(self, container: Container, why: str) -> None:
        self.node.log(f"pod {self.namespace}/{self.pod_name}: {container.name}: {why}, restarting")
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._stop_container(container, min(grace, 10.0))
        policy = self.restart_policy
        if policy == "Always" or (
            policy == "OnFailure" and container.terminated and container.terminated["exitCode"]
        ):
            container.restart_at = time.monotonic() + self._backoff(container)

    def _run_probe(self, container: Container, probe: Probe, now: float) -> bool | None:
        """None when the probe is not due yet; otherwise its result, with the streak counters updated."""
        if now < probe.next_at:
            return None
        probe.next_at = now + probe.period
        ok = self._check(container, probe.spec)
        if ok:
            probe.successes, probe.failures = probe.successes + 1, 0
        else:
            probe.successes, probe.failures = 0, probe.failures + 1
        return ok

    def _check(self, container: Container, spec: JSON) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        if "httpGet" in spec:
            get = spec["httpGet"]
            port = self._host_port(container, get["port"])
            url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            except (urllib.error.URLError, OSError, ValueError):
                return False
        if "tcpSocket" in spec:
            try:
                with socket.create_connection(
                    ("127.0.0.1", self._host_port(container, spec["tcpSocket"]["port"])), timeout
                ):
                    return True
            except OSError:
                return False
        if "exec" in spec:
            launch = json.loads(container.launch_file.read_text())
            launch["argv"] = spec["exec"]["command"]
            probe_file = container.launch_file.with_suffix(".probe.json")
            probe_file.write_text(json.dumps(launch))
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "kubelocal.launch", str(probe_file)],
                    capture_output=True,
                    timeout=timeout,
                    env={
                        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                        "PATH": os.environ.get("PATH", ""),
                    },
                )
            except subprocess.TimeoutExpired:
                return False
            return result.returncode == 0
        return False  # grpc probes are not supported: never ready, rather than silently ready

    def _host_port(self, container: Container, port: int | str) -> int:
        if isinstance(port, str) and not port.isdigit():
            named = [p for p in container.spec.get("ports") or [] if p.get("name") == port]
            if not named:
                return 0
            port = named[0]["containerPort"]
        return self.host_ports.get(int(port), int(port))

    # -- status --

    def _send_status(self, phase: str) -> None:
        initialized = all(c.terminated and c.terminated["exitCode"] == 0 for c in self.init_containers)
        ready = phase == "Running" and all(c.ready and c.running for c in self.containers)
        status: JSON = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", True),
                self._condition("Initialized", initialized),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.pod_message:
            status["message"] = self.pod_message
        comparable = json.dumps(status, sort_keys=True)
        if comparable == self._last_status:
            return
        self._last_status = comparable
        self.node.rest.patch(f"{self.path}/status", {"status": status}, STRATEGIC)

    def _condition(self, type_: str, value: bool) -> JSON:
        previous = next(
            (c for c in (self.pod.get("status") or {}).get("conditions") or [] if c["type"] == type_), None
        )
        status = "True" if value else "False"
        changed = previous is None or previous["status"] != status
        return {
            "type": type_,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": timestamp() if changed else previous["lastTransitionTime"],  # type: ignore[index]
        }


# --- the node -------------------------------------------------------------------------------------------


class ProcessNode:
    def __init__(
        self, rest: Rest, name: str, root: Path, api_port: int, pythonpath: str | None = None
    ) -> None:
        self.rest = rest
        self.pythonpath = pythonpath
        self.name = name
        self.root = root
        self.api_port = api_port
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.venv_bin = str(Path(sys.executable).parent)
        self._pod_numbers = itertools.count(1)  # next() on a count is atomic under the GIL

    def next_pod_ip(self) -> str:
        """A nominal, unique Pod IP. The process listens on 127.0.0.1, but the API refuses loopback
        addresses in EndpointSlices, so Services would have no endpoints with 127.0.0.1."""
        n = next(self._pod_numbers)
        return f"10.244.{(n // 250) % 256}.{n % 250 + 2}"

    def log(self, message: str) -> None:
        print(f"[{timestamp()}] {message}", flush=True)

    # -- registration and heartbeat --

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    NODE_LABEL: "true",
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"taints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}]},
        }
        try:
            self.rest.create("/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            self.rest.patch(
                f"/api/v1/nodes/{self.name}", {"metadata": node["metadata"], "spec": node["spec"]}
            )
        self.node_uid = self.rest.get(f"/api/v1/nodes/{self.name}")["metadata"]["uid"]
        self.report_node_status()
        self.ensure_storage_class()

    def report_node_status(self) -> None:
        now = timestamp()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "100Gi"}

        def condition(type_: str, status: str, reason: str) -> JSON:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "message": reason,
            }

        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "conditions": [
                condition("Ready", "True", "ProcessNodeReady"),
                condition("MemoryPressure", "False", "ProcessNodeHasSufficientMemory"),
                condition("DiskPressure", "False", "ProcessNodeHasNoDiskPressure"),
                condition("PIDPressure", "False", "ProcessNodeHasSufficientPID"),
            ],
            "nodeInfo": {
                "machineID": "process-node",
                "systemUUID": "process-node",
                "bootID": str(os.getpid()),
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": "v0.0.0-process-node",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.rest.patch(f"/api/v1/nodes/{self.name}/status", {"status": status}, STRATEGIC)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": micro_timestamp()}
        try:
            self.rest.patch(path, {"spec": spec})
        except ApiError as error:
            if error.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.node_uid}
            self.rest.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": self.name, "ownerReferences": [owner]}, "spec": spec},
            )

    def heartbeat_loop(self) -> None:
        beats = 0
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                self.renew_lease()
                if beats % 6 == 0:
                    self.report_node_status()
            beats += 1
            self.stop.wait(10)

    # -- storage --

    def ensure_storage_class(self) -> None:
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        with contextlib.suppress(ApiError):
            self.rest.create("/apis/storage.k8s.io/v1/storageclasses", storage_class)

    def provision_once(self) -> None:
        for claim in self.rest.get("/api/v1/persistentvolumeclaims")["items"]:
            spec, meta = claim["spec"], claim["metadata"]
            if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
                continue
            name = f"pvc-{meta['uid']}"
            folder = self.root / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # any Pod user may write, as on a fresh volume with fsGroup
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {
                        "storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
                    },
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(folder), "type": "Directory"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            with contextlib.suppress(ApiError):
                self.rest.create("/api/v1/persistentvolumes", volume)
        for volume in self.rest.get("/api/v1/persistentvolumes")["items"]:
            if volume["spec"].get("storageClassName") == STORAGE_CLASS and volume.get("status", {}).get(
                "phase"
            ) in ("Released", "Failed"):
                with contextlib.suppress(ApiError):
                    self.rest.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
                shutil.rmtree(volume["spec"]["hostPath"]["path"], ignore_errors=True)

    def provisioner_loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.provision_once()
            except Exception as error:
                self.log(f"provisioner: {error!r}")
            self.stop.wait(0.5)

    # -- volumes and env for a Pod --

    def volume_source(self, worker: PodWorker, volume: JSON) -> Path:
        name = volume["name"]
        folder = worker.dir / "volumes" / name
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
        if "persistentVolumeClaim" in volume:
            claim_name = volume["persistentVolumeClaim"]["claimName"]
            claim = self._get(f"/api/v1/namespaces/{worker.namespace}/persistentvolumeclaims/{claim_name}")
            if claim is None or not claim["spec"].get("volumeName"):
                raise ConfigError(f"persistentvolumeclaim {claim_name!r} is not bound")
            pv = self.rest.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
            if "hostPath" not in pv["spec"]:
                raise ConfigError(
                    f"volume {pv['metadata']['name']} has no hostPath: not one of the process node's"
                )
            return Path(pv["spec"]["hostPath"]["path"])
        files: dict[str, tuple[bytes, int]] = {}
        if "configMap" in volume or "secret" in volume:
            kind = "configMap" if "configMap" in volume else "secret"
            self._object_files(worker, volume, files, int(volume[kind].get("defaultMode", 0o644)))
        elif "projected" in volume:
            mode = int(volume["projected"].get("defaultMode", 0o644))
            for source in volume["projected"].get("sources") or []:
                self._object_files(worker, source, files, mode)
        elif "downwardAPI" in volume:
            for item in volume["downwardAPI"].get("items") or []:
                files[item["path"]] = (
                    self.field_value(worker, item["fieldRef"]["fieldPath"]).encode(),
                    0o644,
                )
        else:
            kinds = sorted(volume.keys() - {"name"})
            raise ConfigError(f"volume {name!r}: type {kinds} is not supported by the process node")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path, (content, mode) in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
        return folder

    def _object_files(
        self, worker: PodWorker, source: JSON, files: dict[str, tuple[bytes, int]], mode: int
    ) -> None:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            files[token["path"]] = (self.service_account_token(worker, token).encode(), 0o600)
            return
        if "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                files[item["path"]] = (self.field_value(worker, item["fieldRef"]["fieldPath"]).encode(), mode)
            return
        kind = "configMap" if "configMap" in source else "secret"
        ref = source[kind]
        name = ref.get("name") or ref.get("secretName")
        data = self._object_data(worker.namespace, kind, name, bool(ref.get("optional")))
        items = ref.get("items")
        for key, value in data.items():
            if items is None:
                files[key] = (value, mode)
        for item in items or []:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"{kind} {name!r} has no key {item['key']!r}")
            files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))

    def _object_data(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        plural = "configmaps" if kind == "configMap" else "secrets"
        found = self._get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if found is None:
            if optional:
                return {}
            raise ConfigError(f"{kind} {name!r} not found")
        if kind == "configMap":
            data = {k: v.encode() for k, v in (found.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()})
            return data
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def _get(self, path: str) -> JSON | None:
        try:
            return self.rest.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def service_account_token(self, worker: PodWorker, token: JSON) -> str:
        account = worker.pod["spec"].get("serviceAccountName", "default")
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [token["audience"]] if token.get("audience") else None,
                "expirationSeconds": int(token.get("expirationSeconds", 3607)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": worker.pod_name,
                    "uid": worker.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{worker.namespace}/serviceaccounts/{account}/token"
        return str(self.rest.create(path, request)["status"]["token"])

    def field_value(self, worker: PodWorker, field_path: str) -> str:
        pod = worker.pod
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": worker.pod_ip,
            "status.podIPs": worker.pod_ip,
        }
        if field_path not in simple:
            raise ConfigError(f"fieldRef {field_path!r} is not supported by the process node")
        return str(simple[field_path])

    def container_env(self, worker: PodWorker, container: JSON) -> dict[str, str]:
        env = {
            "PATH": f"{self.venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(worker.dir / "work" / container["name"]),
            "HOSTNAME": worker.pod_name,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
        }
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        for source in container.get("envFrom") or []:
            kind = "configMap" if "configMapRef" in source else "secret"
            ref = source[f"{kind}Ref"]
            data = self._object_data(worker.namespace, kind, ref["name"], bool(ref.get("optional")))
            env.update({source.get("prefix", "") + k: v.decode() for k, v in data.items()})
        for variable in container.get("env") or []:
            name = variable["name"]
            if "valueFrom" not in variable:
                env[name] = expand(str(variable.get("value", "")), env)
                continue
            value_from = variable["valueFrom"]
            if "fieldRef" in value_from:
                env[name] = self.field_value(worker, value_from["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
                kind = "configMap" if "configMapKeyRef" in value_from else "secret"
                ref = value_from[f"{kind}KeyRef"]
                data = self._object_data(worker.namespace, kind, ref["name"], bool(ref.get("optional")))
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise ConfigError(f"{kind} {ref['name']!r} has no key {ref['key']!r} (env {name})")
            elif "resourceFieldRef" in value_from:
                resource = value_from["resourceFieldRef"]["resource"]
                kind, _, which = resource.partition(".")
                env[name] = str((container.get("resources") or {}).get(kind, {}).get(which, "0"))
        for port in container.get("ports") or []:
            env[port_env_name(port)] = str(worker.host_ports[int(port["containerPort"])])
        return env

    # -- Pods --

    def sync(self, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self.finalize_deletion(meta["namespace"], meta["name"], uid)
                return
            if meta.get("deletionTimestamp") and phase != "Running":
                self.finalize_deletion(meta["namespace"], meta["name"], uid)
                return
            worker = PodWorker(self, pod)
            worker.update(pod)
            self.workers[uid] = worker
        worker.start()

    def worker_done(self, worker: PodWorker) -> None:
        with self.lock:
            self.workers.pop(worker.uid, None)

    def finalize_deletion(self, namespace: str, name: str, uid: str) -> None:
        with contextlib.suppress(ApiError):
            self.rest.request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )

    def pod_loop(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        while not self.stop.is_set():
            try:
                listing = self.rest.get("/api/v1/pods", **selector)
                for pod in listing["items"]:
                    self.sync(pod)
                version = listing["metadata"]["resourceVersion"]
                while not self.stop.is_set():
                    for event in self.rest.watch("/api/v1/pods", version, timeout_seconds=30, **selector):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), json.dumps(obj))
                        version = obj["metadata"]["resourceVersion"]
                        if kind in ("ADDED", "MODIFIED"):
                            self.sync(obj)
                        elif kind == "DELETED":
                            with self.lock:
                                worker = self.workers.get(obj["metadata"]["uid"])
                            if worker:
                                worker.update(
                                    {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": timestamp()}}
                                )
            except Exception as error:
                if not self.stop.is_set():
                    self.log(f"pod watch: {error!r}; listing again")
                    self.stop.wait(0.5)

    def run(self) -> None:
        self.register()
        threads = [
            threading.Thread(target=loop, name=loop.__name__, daemon=True)
            for loop in (self.heartbeat_loop, self.provisioner_loop, self.pod_loop)
        ]
        for thread in threads:
            thread.start()
        self.log(f"process node {self.name} ready; root {self.root}")
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker._kill_all(grace=2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--name", default="process-node-0")
    parser.add_argument("--root", type=Path, required=True, help="folder for volumes, Pod files and logs")
    parser.add_argument(
        "--api-port", type=int, required=True, help="port of the API server, for in-cluster clients"
    )
    parser.add_argument(
        "--pythonpath",
        help="PYTHONPATH of every container (a Pod's own env wins): the checkout whose code the Pods run, "
        "as an image built from it would hold",
    )
    args = parser.parse_args()
    node = ProcessNode(
        Rest.from_kubeconfig(args.kubeconfig), args.name, args.root, args.api_port, args.pythonpath
    )
    signal.signal(signal.SIGTERM, lambda *_: node.stop.set())
    signal.signal(signal.SIGINT, lambda *_: node.stop.set())
    node.run()


if __name__ == "__main__":
    main()
