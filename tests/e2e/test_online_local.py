"""OnlineLearning with the local runner: `mlworkflow run examples/onlinelearning-wine.yaml` trains v1, learns
from the files dropped into the store, serves each snapshot without a failed request, and quarantines a
poisoned file; `examples/onlinelearning-kafka.yaml`, pointed at the session's real broker, learns every
message of its topic, commits their offsets and serves a snapshot that learned them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from sklearn.datasets import load_wine

from kubelocal.net import free_port
from mlworkflow.runtime.store import WorkflowStore
from serving import post
from support import REPO, wait_for

MLWORKFLOW = str(Path(sys.executable).parent / "mlworkflow")


def status(store: Path, workflow: str = "wine-online") -> dict[str, Any]:
    try:
        return dict(json.loads((store / workflow / "status.json").read_text()))
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


def test_the_local_runner_learns_from_kafka_and_serves_a_snapshot_that_learned_it(
    kafka: Any, tmp_path: Path
) -> None:
    topic = f"wine-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    manifest = yaml.safe_load((REPO / "examples" / "onlinelearning-kafka.yaml").read_text())
    manifest["spec"]["online"]["source"]["kafka"].update(
        bootstrapServers=kafka.bootstrap_servers, topic=topic
    )
    example = tmp_path / "onlinelearning-kafka.yaml"
    example.write_text(yaml.safe_dump(manifest))
    port, store, log = free_port(), tmp_path / "store", tmp_path / "runner.log"
    wine = load_wine(as_frame=True).frame

    def card(version: str | None) -> dict[str, Any]:
        """A snapshot's card ({} before it is saved)."""
        try:
            path = WorkflowStore(store, "wine-kafka").model_dir(version or "") / "card.json"
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    with log.open("wb") as output:
        runner = subprocess.Popen(
            [MLWORKFLOW, "run", str(example), f"--store={store}", f"--port={port}"],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: status(store, "wine-kafka").get("phase") == "Learning", 90, "the learner and v1.0")
        rng = np.random.default_rng(0)
        clean = wine.sample(120, random_state=0).reset_index(drop=True)
        clean.iloc[:, :-1] *= rng.normal(1, 0.01, (120, wine.shape[1] - 1))
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
        for record in clean.to_dict("records"):
            producer.produce(topic, json.dumps(record).encode())
        assert producer.flush(30) == 0
        # The status names the snapshot once the learner reports it (a snapshot every 2 s by default).
        learned = wait_for(
            lambda: (
                (o := status(store, "wine-kafka").get("online") or {}).get("lag") == 0
                and card(o.get("snapshot")).get("online", {}).get("samplesSeen") == len(clean)
                and o
            ),
            60,
            "a snapshot that learned every message",
        )
        record = wine.drop(columns="target").iloc[0].to_dict()
        answer = wait_for(
            lambda: (
                (a := post(f"http://127.0.0.1:{port}/predict", {"records": [record]}))[0] == 200
                and a[1]["model"] == learned["snapshot"]
                and a
            ),
            30,
            "that snapshot served",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(60)
    assert runner.returncode == 0, log.read_text()[-3000:]
    assert learned["snapshot"].startswith("v1.") and learned["snapshot"] != "v1.0", learned
    assert learned["batchesQuarantined"] == 0 and answer[1]["model"] == learned["snapshot"]
    assert card(learned["snapshot"])["online"]["position"] == {"topic": topic, "offsets": {"0": len(clean)}}
    # Offsets committed to the learner's consumer group once the rows were applied.
    group = {"bootstrap.servers": kafka.bootstrap_servers, "group.id": "mlworkflow.local.wine-kafka"}
    consumer = Consumer(group)
    try:
        (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    finally:
        consumer.close()
    assert committed.offset == len(clean)
