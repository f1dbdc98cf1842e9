"""`bentoml serve` of one model version on 127.0.0.1, and small HTTP helpers for the serving tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubelocal.net import free_port
from support import wait_for


@dataclass(frozen=True)
class Served:
    url: str
    log: Path  # the server's stdout and stderr


@contextmanager
def serve(
    bentoml_home: Path, tag: str, folder: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Served]:
    """The model `tag` served from `bentoml_home` until the block ends; its log and cwd in `folder`;
    `extra_env` added to the server's environment."""
    port = free_port()
    log = folder / "bentoml.log"
    (folder / "cwd").mkdir()
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "MODEL_TAG": tag,
        "HOSTNAME": "test-pod",
        "MLW_SAMPLE_MAX_ROWS": "50",
        "BENTOML_DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "bentoml"),
                "serve",
                "mlworkflow.runtime.serve:ModelService",
                "--host=127.0.0.1",
                f"--port={port}",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=folder / "cwd",
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: (process.poll() is None and status(f"{url}/readyz") == 200) or process.poll() is not None,
            90,
            "bentoml serve to be ready",
        )
        assert process.poll() is None, log.read_text()
        yield Served(url, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def post(url: str, body: bytes | dict[str, Any], content_type: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def inference_inputs(rows: list[dict[str, Any]], categorical: frozenset[str]) -> list[dict[str, Any]]:
    """Open Inference Protocol inputs, one per feature column: BYTES for `categorical`, else FP64."""
    return [
        {
            "name": name,
            "datatype": "BYTES" if name in categorical else "FP64",
            "shape": [len(rows)],
            "data": [r[name] for r in rows],
        }
        for name in rows[0]
    ]
