"""The test Kafka broker is a real one: topics with partitions, a consumer group with manual commits that
resumes where it committed; and a broker that cannot start says so, with its log tail."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from kafkalocal.broker import KafkaBroker, fetch_jars
from kubelocal.controlplane import ComponentError

MESSAGES = 1000


def consumer(broker: KafkaBroker, group: str, topic: str) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    return c


def take(c: Consumer, count: int, timeout: float = 30.0) -> list[Message]:
    """Exactly `count` messages (fewer only if the deadline passes first)."""
    taken: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and time.monotonic() < deadline:
        for message in c.consume(num_messages=count - len(taken), timeout=0.5):
            assert message.error() is None, message.error()
            taken.append(message)
    return taken


def next_offsets(messages: list[Message]) -> dict[int, int]:
    """Per partition, the offset after the last message taken: what a consumer commits."""
    offsets: dict[int, int] = {}
    for message in messages:
        offsets[message.partition()] = max(offsets.get(message.partition(), 0), message.offset() + 1)
    return offsets


def test_a_consumer_group_resumes_at_its_committed_offsets(kafka: KafkaBroker) -> None:
    topic, group = f"events-{uuid.uuid4().hex[:8]}", f"learner-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    for i in range(MESSAGES):
        producer.produce(topic, key=str(i).encode(), value=json.dumps({"id": i, "x": i / 10}).encode())
    assert producer.flush(30) == 0, "messages left undelivered"

    first = consumer(kafka, group, topic)
    head = take(first, 400)
    assert len(head) == 400
    committed = next_offsets(head)
    first.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()], asynchronous=False)
    first.close()

    second = consumer(kafka, group, topic)
    rest = take(second, MESSAGES - len(head))
    second.commit(asynchronous=False)
    after = second.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    second.close()

    ids = [json.loads(m.value())["id"] for m in head + rest]
    assert sorted(ids) == list(range(MESSAGES)), "every message exactly once across the restart"
    assert {m.partition() for m in head + rest} == {0, 1}, "keys spread over both partitions"
    for partition, offset in committed.items():
        resumed = [m.offset() for m in rest if m.partition() == partition]
        assert not resumed or min(resumed) == offset, f"partition {partition} resumed at its committed offset"
    ends = {p: kafka_end for p in (0, 1) if (kafka_end := _high_watermark(kafka, topic, p)) is not None}
    assert {tp.partition: tp.offset for tp in after} == ends


def _high_watermark(broker: KafkaBroker, topic: str, partition: int) -> int:
    c = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "watermarks"})
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
    finally:
        c.close()


def test_a_taken_port_fails_the_start_with_the_brokers_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        broker = KafkaBroker(fetch_jars(), tmp_path, port=taken.getsockname()[1], start_timeout=60)
        with pytest.raises(ComponentError, match="kafka exited with code") as failed:
            broker.start()
    assert "Address already in use" in str(failed.value)
    assert not broker.running(), "a failed start leaves no JVM behind"


def test_a_bad_property_fails_the_format_with_its_reason(tmp_path: Path) -> None:
    broker = KafkaBroker(fetch_jars(), tmp_path, properties={"num.io.threads": "none"})
    with pytest.raises(ComponentError, match="kafka: formatting the log dir failed") as failed:
        broker.start()
    assert "num.io.threads" in str(failed.value)
    assert broker.component is None, "no broker started after a failed format"


def test_a_broker_not_ready_in_time_is_stopped_with_a_clear_error(tmp_path: Path) -> None:
    broker = KafkaBroker(fetch_jars(), tmp_path, start_timeout=1)
    with pytest.raises(ComponentError, match=r"kafka was not healthy after 1s"):
        broker.start()
    assert not broker.running(), "the JVM that was still starting was stopped"
