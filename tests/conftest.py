"""Session fixtures: one real control plane and one real Kafka broker for the whole test session, each started
only if a test needs it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

import mlworkflow
from kafkalocal.broker import KafkaBroker, fetch_jars
from kubelocal.controlplane import ControlPlane, build_binaries
from mlflow_server import MLflowServer, mlflow_server
from support import CHART, OPERATOR_NAMESPACE, REPORT, operator_in, wait_for

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "mlworkflow.io_mlworkflows.yaml"


# Reconcile every second in tests (the operator's default is 10 s): progress shows up without waiting.
os.environ.setdefault("MLW_RESYNC_SECONDS", "1")


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    # Pods run the code this session imports (a worktree's, not only the checkout installed in the venv).
    source = str(Path(mlworkflow.__file__).resolve().parents[1])
    plane = ControlPlane(
        build_binaries(), workdir=tmp_path_factory.mktemp("control-plane"), pod_pythonpath=source
    )
    with plane:
        yield plane
        peaks = plane.peak_memory_mib()
    leftovers = [p.pid for p in plane.processes() if p.poll() is None]
    assert not leftovers, f"control-plane processes still running after stop: {leftovers}"
    assert not plane.pod_processes(), "processes of process-node Pods survived the session"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", plane.api_port)) != 0, "the API server port is still open"
    request.config.stash.setdefault(REPORT, []).append(
        f"control plane: started in {plane.start_seconds:.1f}s; peak memory {sum(peaks.values()):.0f} MiB ("
        + ", ".join(f"{name} {mib:.0f}" for name, mib in peaks.items())
        + ")"
    )


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A single-node KRaft Kafka broker on 127.0.0.1 (`kafka.bootstrap_servers`); tests make their topics."""
    broker = KafkaBroker(fetch_jars(), workdir=tmp_path_factory.mktemp("kafka"))
    with broker:
        yield broker
        peak = broker.peak_memory_mib()
    assert not broker.running(), "the Kafka broker still runs after stop"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", broker.port)) != 0, "the Kafka port is still open"
    request.config.stash.setdefault(REPORT, []).append(
        f"kafka broker: started in {broker.start_seconds:.1f}s; peak memory {peak or 0:.0f} MiB"
    )


@pytest.fixture(scope="session")
def tracking_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLflowServer]:
    """A real MLflow tracking server for the session (tests/mlflow_server.py), started only if a test needs
    it."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
    request.config.stash.setdefault(REPORT, []).append(
        f"mlflow server: started in {server.start_seconds:.1f}s"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for line in config.stash.get(REPORT, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> Path:
    """The committed CRD, installed as a user would install it."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    # `kubectl wait` errs instead of waiting while the new CRD has no status.conditions yet: polled.
    wait_for(
        lambda: (
            control_plane.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/mlworkflows.mlworkflow.io",
                "--timeout=60s",
                check=False,
            ).returncode
            == 0
        ),
        60,
        "the CRD established",
    )
    return CRD_FILE


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane, api: client.ApiClient, crd: Path) -> Path:
    """A kubeconfig with a real token of the chart's ServiceAccount: a missing RBAC rule fails the test."""
    control_plane.helm(
        "install",
        "mlw",
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "90s",
        # The operator's own refusal (EstimatorNotAllowed at reconcile) is tested through this release: its
        # admission policy would refuse such workflows first. tests/integration/test_admission.py tests
        # the policy with a release of its own, bound to its namespace.
        "--set",
        "admission.enabled=false",
    )
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            "mlw-mlworkflow-operator", OPERATOR_NAMESPACE, {"spec": {"expirationSeconds": 3600}}
        )
        .status.token
    )
    return control_plane.write_kubeconfig(control_plane.workdir / "operator.kubeconfig", "operator", token)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount in place (Pods need it)."""
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: _has_default_sa(core, name), 30, f"default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name)


@pytest.fixture
def process_namespace(control_plane: ControlPlane, namespace: str) -> str:
    """A fresh namespace whose Pods all land on the process node and really run."""
    control_plane.use_process_node(namespace)
    return namespace


@pytest.fixture
def operator(
    operator_kubeconfig: Path, process_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The operator, in-process, as the Helm chart's ServiceAccount, watching `process_namespace`."""
    with operator_in(process_namespace, operator_kubeconfig, monkeypatch):
        yield


def _has_default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items)
