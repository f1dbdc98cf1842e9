"""OnlineLearning with the local runner and a file source: `mlworkflow run examples/onlinelearning-wine.yaml`
trains v1, learns from the files dropped into the store, serves each snapshot without a failed request, and
quarantines a poisoned file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_wine

from kubelocal.net import free_port
from serving import post
from support import REPO, wait_for

MLWORKFLOW = str(Path(sys.executable).parent / "mlworkflow")


def status(store: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((store / "wine-online" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_the_local_runner_learns_from_files_and_serves_each_snapshot(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "store"
    (store / "stream").mkdir(parents=True)
    wine = load_wine(as_frame=True).frame
    record = wine.drop(columns="target").iloc[0].to_dict()
    runner = subprocess.Popen(
        [
            MLWORKFLOW,
            "run",
            str(REPO / "examples" / "onlinelearning-wine.yaml"),
            f"--store={store}",
            f"--port={port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(post(f"http://127.0.0.1:{port}/predict", {"records": [record]}))

    thread = threading.Thread(target=client)
    try:
        wait_for(
            lambda: status(store).get("phase") == "Learning", 90, "the learner to run and a snapshot to serve"
        )
        thread.start()
        wait_for(lambda: len(answers) > 10, 20, "answers from the first snapshot")
        first = answers[-1][1]["model"]
        rng = np.random.default_rng(0)
        clean = wine.sample(120, random_state=0).reset_index(drop=True)
        clean.iloc[:, :-1] *= rng.normal(1, 0.01, (120, wine.shape[1] - 1))
        clean.to_csv(store / "stream" / "wine-001.csv", index=False)
        wait_for(
            lambda: (status(store).get("online") or {}).get("samplesSeen", 0) >= 60, 60, "samples learned"
        )
        wait_for(lambda: answers[-1][1].get("model") != first, 30, "a newer snapshot to be served")
        poisoned = wine.sample(64, random_state=1).copy()
        poisoned["target"] = (poisoned["target"] + 1) % 3  # every label flipped
        poisoned.to_csv(store / "stream" / "wine-002.csv", index=False)
        wait_for(
            lambda: (status(store).get("online") or {}).get("batchesQuarantined", 0) >= 1, 60, "a quarantine"
        )
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        runner.send_signal(signal.SIGTERM)
        output = runner.communicate(timeout=60)[0]
    assert runner.returncode == 0, output[-3000:]
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:3]
    versions = [a[1]["model"] for a in answers]
    assert versions[0].startswith("v1.") and len(set(versions)) >= 2
    online = status(store)["online"]
    assert online["startVersion"] == "v1" and online["quarantines"], online
    assert "BatchQuarantined" in output and "stopping (SIGTERM)" in output
