"""OnlineLearning end to end: the operator (as the chart's ServiceAccount) against the real API server, the
training Job, the learner and the serving Pod really running on the process node, the learner reading a real
Kafka broker. v1 trains; the learner holds its Lease and learns the messages produced to the topic; the
serving Pod answers with each newer snapshot while a client asks without a pause and without one failed
request; a poisoned mini-batch is quarantined, counted in status.online and told by an Event."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from kubernetes import client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_wine

from kubelocal.controlplane import ControlPlane
from mlworkflow.api import v1alpha1
from serving import post
from support import REPORT, wait_for
from workflows import create_claim, get, objects

pytestmark = pytest.mark.cluster

NAME = "wine-online"
LEARNER = f"{NAME}-learner"
METRICS_PORT = 9090  # the learner container's port `metrics`


def manifest(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "pattern": "OnlineLearning",
            "data": {"source": "sklearn://wine", "target": "target"},
            "model": {
                "estimator": "sklearn.linear_model.SGDClassifier",
                "params": {"loss": "log_loss", "alpha": 0.0001, "random_state": 0},
            },
            "training": {"crossValidation": 0},
            "online": {
                "source": {"kafka": {"bootstrapServers": bootstrap, "topic": topic}},
                "batchSize": 40,
                "maxWaitSeconds": 0.5,
                "guardrails": {"maxMetricDrop": 0.2},
                "snapshots": {"everySamples": 80, "everySeconds": 1, "keep": 5},
            },
            "serving": {"replicas": 1},
            "storage": {"pvc": {"claimName": "ml-artifacts"}},
        },
    }


def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """One JSON object a message, as a data pipeline would write them."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for record in records:
        producer.produce(topic, json.dumps(record).encode())
    assert producer.flush(30) == 0


def online(api: client.ApiClient, ns: str) -> dict[str, Any]:
    return dict(get(api, ns, NAME).get("status", {}).get("online") or {})


def lease_holder(api: client.ApiClient, ns: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEARNER, ns)
    except client.ApiException:
        return None
    return lease.spec.holder_identity if lease.spec else None


def running_pods(api: client.ApiClient, ns: str, component: str) -> list[str]:
    selector = f"app.kubernetes.io/component={component}"
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector)
    return [p.metadata.name for p in pods.items if p.status.phase == "Running"]


def scrape(
    control_plane: ControlPlane, api: client.ApiClient, ns: str, pod: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The learner Pod's Prometheus samples: (name, sorted labels) -> value."""
    annotations = client.CoreV1Api(api).read_namespaced_pod(pod, ns).metadata.annotations
    port = control_plane.host_port({"metadata": {"annotations": annotations}}, METRICS_PORT)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


class Client:
    """Asks the serving Pod for a prediction over and over, from a thread, and keeps every answer."""

    def __init__(self, url: str, record: dict[str, Any]) -> None:
        self.url, self.record = url, record
        self.answers: list[tuple[int, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(post(f"{self.url}/predict", {"records": [self.record]}))
            except (urllib.error.URLError, OSError) as error:
                self.answers.append((0, repr(error)))

    def versions(self) -> list[str]:
        return [a[1]["model"] for a in self.answers if a[0] == 200]

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_the_learner_learns_from_kafka_and_serving_follows_its_snapshots(
    api: client.ApiClient,
    control_plane: ControlPlane,
    process_namespace: str,
    kafka: Any,
    operator: None,
    request: pytest.FixtureRequest,
) -> None:
    ns, started = process_namespace, time.monotonic()
    topic = f"wine-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    create_claim(api, ns, "ml-artifacts")
    objects(api).create_namespaced_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, ns, v1alpha1.PLURAL, manifest(kafka.bootstrap_servers, topic)
    )

    # v1 trains (the warm-up); the learner starts from it and holds its Lease; v1.0 serves.
    learning = wait_for(
        lambda: (w := get(api, ns, NAME)).get("status", {}).get("phase") == "Learning" and w,
        150,  # ~35-70 s on two busy cores: the training Job, then BentoML and the learner starting together
        "phase Learning",
    )
    assert learning["status"]["history"][0]["version"] == "v1"
    assert learning["status"]["history"][0]["outcome"] == "Promoted"
    (pod,) = running_pods(api, ns, "learner")
    (serving_pod,) = running_pods(api, ns, "serving")
    assert lease_holder(api, ns) == pod, "the learner's Pod holds the Lease"
    assert learning["status"]["online"]["learner"] == pod
    assert learning["status"]["online"]["startVersion"] == "v1"
    (url,) = wait_for(lambda: control_plane.service_urls(ns, NAME), 30, "the serving Pod ready")
    ready_at = time.monotonic() - started

    wine = load_wine(as_frame=True).frame
    record = wine.drop(columns="target").iloc[0].to_dict()
    rng = np.random.default_rng(0)
    clean = wine.sample(160, random_state=0).reset_index(drop=True)
    features = clean.columns[:-1]
    clean[features] = clean[features] * rng.normal(1, 0.01, (len(clean), len(features)))
    with Client(url, record) as asker:
        wait_for(lambda: len(asker.answers) >= 5, 20, "answers before any learning")
        first = asker.versions()[0]
        assert first in ("v1", "v1.0"), first

        produce(kafka.bootstrap_servers, topic, clean.to_dict("records"))
        produced = time.monotonic()
        learned = wait_for(
            lambda: (o := online(api, ns)).get("samplesSeen", 0) >= len(clean) and o.get("lag") == 0 and o,
            60,
            "every clean message learned, none left in the topic",
        )
        in_status = time.monotonic() - produced
        assert learned["batchesApplied"] >= len(clean) // 40
        assert learned["snapshot"].startswith("v1.") and learned["snapshot"] != "v1.0"
        assert learned["batchesQuarantined"] == 0, learned["quarantines"]
        newer = wait_for(
            lambda: (v := asker.versions()[-1]) not in ("v1", "v1.0") and v, 30, "a newer snapshot served"
        )
        assert newer.startswith("v1.")
        served = time.monotonic() - produced

        # A poisoned mini-batch: one feature column missing from every message.
        poisoned = wine.sample(40, random_state=1).drop(columns="proline")
        produce(kafka.bootstrap_servers, topic, poisoned.to_dict("records"))
        quarantined = wait_for(
            lambda: (o := online(api, ns)).get("batchesQuarantined", 0) >= 1 and o, 60, "a quarantine"
        )

    failed = [a for a in asker.answers if a[0] != 200]
    assert not failed, (len(failed), len(asker.answers), failed[:3])
    assert len(set(asker.versions())) >= 2
    assert quarantined["quarantines"][0]["reason"] == "MissingColumn", quarantined["quarantines"]
    assert quarantined["samplesSeen"] == learned["samplesSeen"], "the poisoned rows were not learned"
    workflow = get(api, ns, NAME)
    assert workflow["status"]["model"]["version"] == workflow["status"]["online"]["snapshot"]
    (condition,) = [c for c in workflow["status"]["conditions"] if c["type"] == "Quarantining"]
    assert (condition["status"], condition["reason"]) == ("True", "MissingColumn"), condition
    events = wait_for(
        lambda: [
            e
            for e in client.CoreV1Api(api).list_namespaced_event(ns).items
            if e.reason == "BatchQuarantined" and e.involved_object.name == NAME
        ],
        10,
        "a BatchQuarantined Event",
    )
    assert "MissingColumn" in events[0].message
    # The serving Pod never restarted: it swapped the snapshots in, and says so in its log.
    assert running_pods(api, ns, "serving") == [serving_pod]
    restarts = client.CoreV1Api(api).read_namespaced_pod(serving_pod, ns).status.container_statuses
    assert [c.restart_count for c in restarts] == [0]
    log = control_plane.container_log(ns, serving_pod, "serve")
    assert f"now serving {NAME} {newer}" in log, log[-2000:]
    # The learner's Prometheus metrics, on its Pod's port `metrics`.
    metrics = scrape(control_plane, api, ns, pod)
    assert metrics[("mlworkflow_online_samples_total", ())] == learned["samplesSeen"]
    quarantines = (("outcome", "quarantined"), ("reason", "MissingColumn"))
    assert metrics[("mlworkflow_online_batches_total", quarantines)] >= 1
    assert metrics[("mlworkflow_online_lag", ())] == 0
    # The served snapshot, as the serving Pod says (its /metrics) and as the operator exports it.
    snapshot = workflow["status"]["online"]["snapshot"]
    gauge = f'mlworkflow_serving_snapshot{{model_version="v1"}} {float(snapshot.partition(".")[2])}'
    wait_for(lambda: gauge in read(f"{url}/metrics"), 10, f"the serving Pod's /metrics: {gauge}")
    mine = {"namespace": ns, "workflow": NAME}
    info = {**mine, "version": snapshot, "backend": workflow["status"]["model"].get("backend") or ""}
    assert REGISTRY.get_sample_value("mlworkflow_serving_model_info", info) == 1, info
    assert REGISTRY.get_sample_value("mlworkflow_online_samples_seen", mine) == learned["samplesSeen"]
    assert (REGISTRY.get_sample_value("mlworkflow_online_batches_quarantined", mine) or 0) >= 1
    table = control_plane.kubectl("get", "mlw", NAME, "-n", ns).stdout.splitlines()[1].split()
    assert table[1:3] == ["OnlineLearning", "Learning"] and table[3].startswith("v1."), table
    versions = sorted(set(asker.versions()), key=lambda v: int(v.partition(".")[2] or -1))
    request.config.stash.setdefault(REPORT, []).append(
        f"OnlineLearning e2e: learning and serving {ready_at:.0f}s after creation; {len(clean)} messages "
        f"learned (status) in {in_status:.1f}s, served by a newer snapshot after {served:.1f}s; "
        f"{len(asker.answers)} answers by {versions}, none failed; {time.monotonic() - started:.0f}s in all"
    )
