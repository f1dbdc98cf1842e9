"""The online learner on a real Kafka broker (the session's `kafka` fixture): killed with SIGKILL mid-stream
and restarted, it learns every produced example exactly once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Consumer, Producer, TopicPartition

from learning import (
    WARM_ROWS,
    archived,
    log_of,
    online_frame,
    online_spec,
    progress,
    published,
    start_learner,
    stop,
    warm_up,
)
from support import wait_for

PRODUCED = 3000


def produce(bootstrap: str, topic: str, frame: pd.DataFrame) -> None:
    """One JSON object per message, as the learner reads them."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for record in frame.to_dict("records"):
        producer.produce(topic, json.dumps(record).encode())
    assert producer.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        consumer.close()


def test_a_killed_learner_resumes_exactly_after_its_last_snapshot(kafka: Any, tmp_path: Path) -> None:
    topic = f"examples-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=2)
    frame = online_frame(WARM_ROWS + PRODUCED)
    spec = online_spec(
        {"kafka": {"bootstrapServers": kafka.bootstrap_servers, "topic": topic}},
        batchSize=50,
        maxWaitSeconds=0.2,
        # A clean stream: this test counts examples; the guardrails are test_learn.py's.
        guardrails={"maxMetricDrop": 1, "maxClassShift": 1},
        snapshots={"everySamples": 200, "keep": 5},
    )
    store = warm_up(tmp_path, "kafka", frame.iloc[:WARM_ROWS], spec)
    produce(kafka.bootstrap_servers, topic, frame.iloc[WARM_ROWS:])

    learner = start_learner(store, spec)
    try:
        wait_for(
            lambda: published(store).get("online", {}).get("samplesSeen", 0) >= 800,
            60,
            "a snapshot with 800 samples",
            interval=0.01,
        )
    finally:
        learner.kill()  # SIGKILL: no clean shutdown, the batch in hand and the unsnapshotted ones are lost
        learner.wait(10)
    at_kill = published(store)["online"]["samplesSeen"]
    assert at_kill < PRODUCED, "the learner was not killed mid-stream"

    # Credentials come as a mounted Secret's files: one librdkafka property per file.
    secret = tmp_path / "kafka-secret"
    secret.mkdir()
    (secret / "client.id").write_text("mlworkflow-learner\n")
    learner = start_learner(store, spec, MLW_KAFKA_CONFIG_DIR=str(secret))
    try:
        wait_for(
            lambda: (
                published(store).get("online", {}).get("samplesSeen") == PRODUCED
                and progress(store).get("lag") == 0
            ),
            60,
            "every produced example learned after the restart",
        )
    finally:
        assert stop(learner) == 0, log_of(store)

    newest = published(store)
    assert newest["online"]["samplesSeen"] == PRODUCED, log_of(store)
    assert sum(newest["online"]["position"]["offsets"].values()) == PRODUCED
    assert newest["online"]["batchesQuarantined"] == 0
    # The archive holds each produced example once: none lost, none learned twice.
    rows = archived(store)
    assert len(rows) == PRODUCED and not rows.duplicated().any()
    group = f"mlworkflow.local.{store.workflow}"
    assert committed(kafka.bootstrap_servers, group, topic, 2) == PRODUCED
