"""A real single-node Kafka broker on 127.0.0.1: one JVM in KRaft mode (broker and controller together, no
ZooKeeper), started from the jars hack/build-kafka.sh caches, on free ports with a fresh log dir.

    with KafkaBroker(fetch_jars()) as broker:
        broker.create_topic("events", partitions=2)
        Producer({"bootstrap.servers": broker.bootstrap_servers})

The JVM runs in its own process group with a parent-death signal (kubelocal's `Component`), so it never
outlives the Python process that started it. A failed storage format, a JVM that exits while starting or a
listener that does not answer in time raises `ComponentError` naming "kafka", with the tail of its log and
its first errors (the cause; the tail of a failed start is the shutdown's chatter).
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from kubelocal.controlplane import Component, ComponentError
from kubelocal.net import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-kafka.sh"
NAME = "kafka"
NODE_ID = 1
FORMAT_TIMEOUT = 60  # seconds; a format takes ~2 s


def fetch_jars() -> Path:
    """Fetch (or find in the cache) the broker's jars; returns their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def cluster_id() -> str:
    """A fresh KRaft cluster id: a UUID in unpadded base64url, as `kafka-storage random-uuid` prints, and
    like Kafka's `Uuid.randomUuid` never starting with '-' (one in 64 would: `format -t -x...` then reads
    the id as an option and fails with an empty cluster id)."""
    while (found := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return found


class KafkaBroker:
    """One KRaft broker+controller JVM on 127.0.0.1; `bootstrap_servers` is "127.0.0.1:<port>".

    `port` defaults to a free port; `properties` are added to (or override) the server properties;
    `heap_mib` caps the JVM heap. `start_seconds` (after start) is the time from format to a listener that
    answers metadata requests.
    """

    def __init__(
        self,
        libs: Path,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        properties: Mapping[str, str] | None = None,
        heap_mib: int = 512,
        start_timeout: float = 60.0,
    ) -> None:
        self.libs = libs
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mlw-kafka-"))
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.heap_mib = heap_mib
        self.start_timeout = start_timeout
        self.log_path = self.workdir / "kafka.log"
        self.properties_path = self.workdir / "server.properties"
        self.properties = self._properties(properties or {})
        self.component: Component | None = None
        self.start_seconds = 0.0
        self._admin: AdminClient | None = None

    def _properties(self, extra: Mapping[str, str]) -> dict[str, str]:
        listener = f"PLAINTEXT://127.0.0.1:{self.port}"
        return {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": f"{listener},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": listener,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A consumer group's first member gets its partitions at once, not after the default 3 s.
            "group.initial.rebalance.delay.ms": "0",
            # Two cores: no more threads than the machine has.
            "num.network.threads": "2",
            "num.io.threads": "2",
            **extra,
        }

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> KafkaBroker:
        started = time.monotonic()
        try:
            self._format_storage()
            argv = [*self._java("kafka.Kafka", heap=True), str(self.properties_path)]
            self.component = Component(NAME, argv, self.log_path, self._ready)
            self.component.start()
            self.component.wait_healthy(self.start_timeout)
        except ComponentError as error:
            # The files stay for a look: the message names the log.
            self._owns_workdir = False
            self.stop()
            raise ComponentError(f"{error}\nfirst errors in the log:\n{self.first_errors()}") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """SIGTERM to the JVM's process group, SIGKILL after 20 s (a clean shutdown takes a few)."""
        self._admin = None
        if self.component is not None:
            self.component.stop(grace=20.0)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.component.process.pid if self.component and self.component.process else None

    def running(self) -> bool:
        return bool(self.component and self.component.process and self.component.process.poll() is None)

    def _java(self, main_class: str, heap: bool = False) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise ComponentError(f"{NAME}: no `java` on PATH (the broker needs Java 17 or newer)")
        memory = [f"-Xmx{self.heap_mib}m", "-Xms64m"] if heap else ["-Xmx128m"]
        # Serial GC: one small broker's smallest footprint (measured: peak RSS 311 MiB, G1 355 MiB).
        logging = [
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        ]
        return [java, *memory, "-XX:+UseSerialGC", *logging, "-cp", f"{self.libs}/*", main_class]

    def _format_storage(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        argv = self._java("kafka.tools.StorageTool")
        argv += ["format", "-t", cluster_id(), "-c", str(self.properties_path)]
        with open(self.log_path, "ab") as log:
            try:
                result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=FORMAT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ComponentError(f"{NAME}: formatting the log dir took over {FORMAT_TIMEOUT}s") from None
        if result.returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise ComponentError(
                f"{NAME}: formatting the log dir failed with code {result.returncode}; "
                f"log {self.log_path}:\n{tail}"
            )

    def _ready(self) -> bool:
        """The listener accepts connections and answers a metadata request naming this broker."""
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        return NODE_ID in self.admin().list_topics(timeout=2).brokers

    # --- use ---------------------------------------------------------------------------------------------

    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        return self._admin

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 30.0) -> None:
        """Create `name` with `partitions` partitions (one replica) and wait until every partition has a
        leader, so the first produce does not meet an unknown partition. Raises the broker's KafkaException
        (e.g. TOPIC_ALREADY_EXISTS)."""
        deadline = time.monotonic() + timeout
        futures = self.admin().create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        futures[name].result(timeout=timeout)
        while time.monotonic() < deadline:
            topic = self.admin().list_topics(name, timeout=max(deadline - time.monotonic(), 0.1)).topics[name]
            led = [p for p in topic.partitions.values() if p.leader >= 0]
            if topic.error is None and len(led) == partitions:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{NAME}: not all {partitions} partitions of {name} had a leader after {timeout}s")

    def peak_memory_mib(self) -> float | None:
        """Peak resident memory (VmHWM) of the JVM so far, in MiB; None once it has exited."""
        if not self.running():
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def first_errors(self, lines: int = 12) -> str:
        """The log's first ERROR lines, each with the line after it (the exception), and their causes."""
        try:
            log = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        picked = [
            line
            for before, line in zip(["", *log], log, strict=False)
            if " ERROR " in line or " ERROR " in before or line.startswith("Caused by:")
        ]
        return "\n".join(picked[:lines]) or "(none)"
