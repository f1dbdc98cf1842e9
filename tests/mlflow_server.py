"""A real MLflow tracking server for the tests: `mlflow server` from its own virtualenv (`make mlflow-server`;
the full mlflow package pins pyarrow<26, the project has 26), with a SQLite backend and an artifact root in
a temporary folder, on a free port of 127.0.0.1. The runtimes under test reach it with mlflow-skinny's
client, as they would reach a team's server; the tests read it back through the same client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import REPO

# Neither the server nor the tests' client sends MLflow's usage telemetry anywhere.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
MLFLOW = Path(os.environ.get("MLFLOW_SERVER", REPO / ".venv-mlflow" / "bin" / "mlflow"))
START_TIMEOUT = 240  # seconds; its first start creates the SQLite schema (about 40 migrations)


@dataclass(frozen=True)
class MLflowServer:
    uri: str
    start_seconds: float


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[MLflowServer]:
    """Start the server, wait until /health answers, yield it; stop it and every process it started."""
    assert MLFLOW.exists(), f"{MLFLOW} is missing: run `make mlflow-server` (or set MLFLOW_SERVER)"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    log = (workdir / "mlflow-server.log").open("wb")
    server = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            f"--backend-store-uri=sqlite:///{workdir / 'mlflow.db'}",
            # Artifacts go through the server (mlflow-artifacts:/), as with a team's remote server.
            f"--artifacts-destination={workdir / 'artifacts'}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its uvicorn workers are stopped with it, as one process group
    )
    try:
        deadline = started + START_TIMEOUT
        while not _healthy(uri):
            assert server.poll() is None, (
                f"mlflow server exited: {(workdir / 'mlflow-server.log').read_text()}"
            )
            assert time.monotonic() < deadline, f"mlflow server not healthy after {START_TIMEOUT}s"
            time.sleep(0.2)
        # The first request to each store opens it (the registry's took 13 s on a loaded machine, more than
        # a runtime's first request may wait): made here, so that no test pays for it.
        for store in ("experiments", "registered-models"):
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{store}/search?max_results=1", timeout=120).close()
        yield MLflowServer(uri, time.monotonic() - started)
    finally:
        with_group = os.getpgid(server.pid) if server.poll() is None else None
        if with_group is not None:
            os.killpg(with_group, signal.SIGTERM)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(with_group, signal.SIGKILL)
                server.wait()
        log.close()


@contextmanager
def relay(port: int, server: MLflowServer) -> Iterator[None]:
    """The server reachable at 127.0.0.1:`port` too, while inside (a TCP relay): a tracking server that was
    down at that address and came back, for the retries of the runtimes that logged there."""
    import select
    import socketserver
    import threading
    from urllib.parse import urlparse

    target = urlparse(server.uri)

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection((target.hostname, target.port)) as upstream:
                ends = {self.request: upstream, upstream: self.request}
                while True:
                    readable, _, _ = select.select(list(ends), [], [], 30)
                    if not readable:
                        return
                    for end in readable:
                        data = end.recv(65536)
                        if not data:
                            return
                        ends[end].sendall(data)

    class Relay(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Relay(("127.0.0.1", port), Pipe) as relayed:
        thread = threading.Thread(target=relayed.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            relayed.shutdown()
