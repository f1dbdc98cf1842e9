"""Online learning benchmark: our learner reading Kafka against a bare `partial_fit` loop, and freshness.

    PYTHONPATH=operator:hack:tests python bench/online/run.py [--samples 60000] [--estimator sgd]

One real Kafka broker (hack/kafkalocal), one generated stream (3 classes, 40 numeric features, the tests'
`learning.online_frame`), a warm-up version v1 trained by our training runtime on 600 rows (half of them
its holdout: the canary). Measured in one run:

- the floor: `partial_fit` of v1's estimator over the stream's mini-batches of 256, in memory, already
  preprocessed (the cost of learning alone); and the same with the frozen preprocessing applied to each
  mini-batch (what any loop over DataFrames also pays);
- the source alone: our Kafka source's `poll` of 256 over the same topic (confluent-kafka's consume and
  the JSON decoding of one message per example), nothing learned: a ceiling for any learner reading
  this topic one example a message;
- ours: `python -m mlworkflow.runtime.learn` reading the same rows as JSON messages from a topic (produced
  before it starts), guardrails on (their defaults), batch 256, default snapshots (every 1,000 samples or
  2 s): samples/s from its first applied batch to its last, read from its Prometheus counter;
- freshness: with the learner running on defaults (batch 256, maxWaitSeconds 1, snapshots every 1,000
  samples or 2 s) and a serving process in follow mode (`bentoml serve` of the service, as the serving Pods
  run it) answering a client that asks without a pause, labelled messages trickle in (`--rate` a second);
  for each, the time from its produce to the first answer by a snapshot whose stored offsets cover it
  (p50, p95), and to the moment `online/latest` named that snapshot (the learner's share).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from confluent_kafka import Producer

from kafkalocal.broker import KafkaBroker, fetch_jars
from learning import WARM_ROWS, online_frame
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime.sources import KafkaSource
from mlworkflow.runtime.store import WorkflowStore
from serving import post, serve

BATCH = 256
ESTIMATORS = {
    "sgd": {
        "estimator": "sklearn.linear_model.SGDClassifier",
        "params": {"loss": "log_loss", "learning_rate": "constant", "eta0": 0.01, "random_state": 0},
    },
    "mlp": {
        "estimator": "sklearn.neural_network.MLPClassifier",
        "params": {"hidden_layer_sizes": [64], "random_state": 0, "max_iter": 200},
    },
}


def spec_for(estimator: str, topic: str, bootstrap: str, every_samples: int = 1000) -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "OnlineLearning",
            "data": {"source": "data/warm.csv", "target": "label"},
            "model": ESTIMATORS[estimator],
            "training": {"holdout": 0.5},
            "online": {
                "source": {"kafka": {"bootstrapServers": bootstrap, "topic": topic}},
                "batchSize": BATCH,
                "snapshots": {"everySamples": every_samples},
            },
            "storage": {"path": "/unused"},
        }
    )


def train(spec: MLWorkflowSpec, store: WorkflowStore) -> None:
    """v1, by the training runtime in a process of its own (one BentoML store per process)."""
    subprocess.run(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.train"),
            *(f"--store={store.root}", f"--workflow={store.workflow}", "--version=v1"),
            f"--termination-log={store.root / 'termination'}",
        ],
        env={**os.environ, "MLW_SPEC": spec.model_dump_json(by_alias=True)},
        check=True,
        stdout=subprocess.DEVNULL,
    )


def floors(store: WorkflowStore, stream: Any) -> tuple[float, float]:
    """Samples/s of partial_fit alone over preprocessed mini-batches, and with the preprocessing per batch."""
    model = joblib.load(store.model_dir("v1") / "pipeline.joblib")
    features, estimator = model.named_steps["features"], model.named_steps["estimator"]
    x, y = stream.drop(columns=["label"]), stream["label"].to_numpy()
    classes = np.unique(y)
    transformed = features.transform(x)
    started = time.perf_counter()
    for i in range(0, len(y), BATCH):
        estimator.partial_fit(transformed[i : i + BATCH], y[i : i + BATCH], classes=classes)
    bare = len(y) / (time.perf_counter() - started)
    estimator = model.named_steps["estimator"]
    batches = [x.iloc[i : i + BATCH] for i in range(0, len(y), BATCH)]
    started = time.perf_counter()
    for n, batch in enumerate(batches):
        estimator.partial_fit(features.transform(batch), y[n * BATCH : (n + 1) * BATCH], classes=classes)
    return bare, len(y) / (time.perf_counter() - started)


def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000}
    )
    for record in records:
        producer.produce(topic, json.dumps(record).encode())
        producer.poll(0)
    assert producer.flush(60) == 0


def source_rate(bootstrap: str, topic: str, samples: int) -> float:
    """Samples/s of the learner's Kafka source alone: polls of BATCH (waiting at most 1 s, the learner's
    default maxWaitSeconds) from the beginning of the topic."""
    source = KafkaSource(bootstrap, topic, f"{topic}-source-alone", {})
    try:
        source.seek({})
        read = len(source.poll(BATCH, 10).rows)  # the first fetch (connection, metadata) not counted
        first = read
        started = time.perf_counter()
        deadline = time.monotonic() + 300
        while read < samples and time.monotonic() < deadline:
            read += len(source.poll(BATCH, 1.0).rows)
        assert read >= samples, "the topic ended early"
        return (read - first) / (time.perf_counter() - started)
    finally:
        source.close()


def learner(store: WorkflowStore, spec: MLWorkflowSpec, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.learn"),
            *(f"--store={store.root}", f"--workflow={store.workflow}", f"--port={port}"),
            f"--termination-log={store.root / 'learn-termination'}",
        ],
        env={**os.environ, "MLW_SPEC": spec.model_dump_json(by_alias=True), "MLW_START_VERSION": "v1"},
        stdout=(store.root / f"learn-{store.workflow}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels on the learner's /metrics (0 before it answers)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)(\{.*\})? (\S+)", line)
        if found and found[1] == name and all(f'{k}="{v}"' in (found[2] or "") for k, v in labels.items()):
            total += float(found[3])
    return total


def learner_rate(store: WorkflowStore, spec: MLWorkflowSpec, samples: int, port: int) -> dict[str, float]:
    """Samples/s through the learner from its first applied batch until every produced row was applied or
    quarantined (its counters, read every 50 ms)."""
    process = learner(store, spec, port)
    try:
        first = last = None
        deadline = time.monotonic() + 600
        while last is None and time.monotonic() < deadline:
            learned = metric(port, "mlworkflow_online_samples_total")
            quarantined = metric(port, "mlworkflow_online_batches_total", outcome="quarantined")
            now = time.perf_counter()
            if learned and first is None:
                first = (now, learned)
            if learned and learned + quarantined * BATCH >= samples:
                last = (now, learned)
            time.sleep(0.05)
        assert first is not None and last is not None, "the learner did not finish in time"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return {"rate": (last[1] - first[1]) / (last[0] - first[0]), "quarantined": quarantined}


def freshness(
    store: WorkflowStore,
    spec: MLWorkflowSpec,
    bootstrap: str,
    topic: str,
    stream: Any,
    seconds: float,
    rate: float,
    folder: Path,
) -> tuple[list[float], list[float]]:
    """Seconds from producing each message to a published snapshot that learned it, and to the first
    answer of the serving process by such a snapshot."""
    process = learner(store, spec, 0)
    produced: dict[int, float] = {}  # offset -> produce time (one partition)
    covers: dict[str, tuple[int, float]] = {}  # published version -> (offsets it learned, when published)
    answered: dict[str, float] = {}  # version -> its first answer
    failed: list[int] = []  # status codes of failed requests (none expected)
    record = stream.drop(columns=["label"]).iloc[0].to_dict()
    try:
        deadline = time.monotonic() + 120
        while not store.online_latest.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        stop = threading.Event()

        def watch() -> None:
            published = None
            while not stop.is_set():
                version = store.online_latest.read_text().strip()
                if version != published:
                    published = version
                    card = json.loads((store.model_dir(version) / "card.json").read_text())
                    offsets = card["online"]["position"].get("offsets", {})
                    covers[version] = (int(offsets.get("0", 0)), time.perf_counter())
                time.sleep(0.01)

        def ask(url: str) -> None:
            while not stop.is_set():
                code, answer = post(f"{url}/predict", {"records": [record]})
                if code != 200:
                    failed.append(code)
                    continue
                answered.setdefault(answer["model"], time.perf_counter())

        with serve(store.bentoml_home, f"{store.workflow}:v1", folder, {"MLW_FOLLOW_LATEST": "1"}) as served:
            threads = [
                threading.Thread(target=watch, daemon=True),
                threading.Thread(target=ask, args=(served.url,), daemon=True),
            ]
            for thread in threads:
                thread.start()
            records = stream.to_dict("records")
            sent = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent_at = time.perf_counter()

                def delivered(error: Any, message: Any, at: float = sent_at) -> None:
                    if error is None:
                        produced[message.offset()] = at

                producer.produce(
                    topic, json.dumps(records[sent % len(records)]).encode(), on_delivery=delivered
                )
                producer.flush(10)
                sent += 1
                time.sleep(1 / rate)
            last = max(produced)
            wait_until = time.monotonic() + 30
            while time.monotonic() < wait_until and not any(
                covered > last and version in answered for version, (covered, _) in covers.items()
            ):
                time.sleep(0.05)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    to_published, to_served = [], []
    for offset, at in produced.items():
        learned = [when for covered, when in covers.values() if covered > offset]
        if learned:
            to_published.append(min(learned) - at)
            served_at = [
                answered[v] for v, (covered, _) in covers.items() if covered > offset and v in answered
            ]
            if served_at:
                to_served.append(min(served_at) - at)
    assert not failed, f"{len(failed)} requests failed: {failed[:5]}"
    return to_published, to_served


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument(
        "--every-samples", type=int, action="append", help="throughput: snapshot settings to measure (1000)"
    )
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), action="append")
    parser.add_argument("--seconds", type=float, default=30, help="freshness: how long messages trickle in")
    parser.add_argument("--rate", type=float, default=20, help="freshness: messages a second")
    args = parser.parse_args()
    estimators = args.estimator or ["sgd"]
    frame = online_frame(WARM_ROWS + args.samples)
    stream = frame.iloc[WARM_ROWS:].reset_index(drop=True)
    records = stream.to_dict("records")
    rows = []
    with tempfile.TemporaryDirectory() as folder, KafkaBroker(fetch_jars(), Path(folder) / "kafka") as broker:
        root = Path(folder) / "store"
        (root / "data").mkdir(parents=True)
        frame.iloc[:WARM_ROWS].to_csv(root / "data" / "warm.csv", index=False)
        for name in estimators:
            for every in args.every_samples or [1000]:
                topic = f"bench-{name}-{every}"
                broker.create_topic(topic, partitions=1)
                spec = spec_for(name, topic, broker.bootstrap_servers, every)
                store = WorkflowStore(root, f"rate-{name}-{every}")
                train(spec, store)
                bare, preprocessed = floors(store, stream)
                produce(broker.bootstrap_servers, topic, records)
                ours = learner_rate(store, spec, len(records), 18000 + len(rows))
                alone = source_rate(broker.bootstrap_servers, topic, len(records))
                rows.append((name, every, bare, preprocessed, alone, ours))
        topic = "bench-fresh"
        broker.create_topic(topic, partitions=1)
        spec = spec_for(estimators[0], topic, broker.bootstrap_servers)
        store = WorkflowStore(root, "fresh")
        train(spec, store)
        (Path(folder) / "serve").mkdir()
        published, delays = freshness(
            store,
            spec,
            broker.bootstrap_servers,
            topic,
            stream,
            args.seconds,
            args.rate,
            Path(folder) / "serve",
        )

    print(f"\n{args.samples} samples, batch {BATCH}, 40 numeric features, 3 classes\n")
    print(
        "| estimator | snapshots | bare partial_fit (floor) | + preprocessing per batch | Kafka source alone "
        "| ours from Kafka | vs floor | vs floor with preprocessing | vs source alone | quarantined batches |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, every, bare, preprocessed, alone, ours in rows:
        print(
            f"| {ESTIMATORS[name]['estimator'].rsplit('.', 1)[1]} | {every:,} samples or 2 s | "
            f"{bare:,.0f}/s | {preprocessed:,.0f}/s | {alone:,.0f}/s | "
            f"{ours['rate']:,.0f}/s | {ours['rate'] / bare:.2f}x | {ours['rate'] / preprocessed:.2f}x | "
            f"{ours['rate'] / alone:.2f}x | {ours['quarantined']:.0f} |"
        )
    for what, seconds in (("to a served answer", delays), ("to the published snapshot", published)):
        quantiles = statistics.quantiles(seconds, n=20) if len(seconds) > 1 else seconds * 19
        print(
            f"\nfreshness {what} ({len(seconds)} messages at {args.rate:g}/s, default snapshots): "
            f"p50 {statistics.median(seconds):.2f} s, p95 {quantiles[18]:.2f} s, max {max(seconds):.2f} s"
        )


if __name__ == "__main__":
    main()
