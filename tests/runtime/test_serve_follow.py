"""Follow mode (OnlineLearning): the service swaps in each new snapshot named in `online/latest` while a
client keeps sending requests — no failed request, no restart, versions in order — and its /metrics says
which snapshot it serves."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_wine

from learning import WINE_SPEC
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import train_apart
from serving import post, serve
from support import wait_for


def snapshot(store: WorkflowStore, start: str, version: str) -> None:
    """A snapshot as the learner saves it: a model version of its own (here a copy of `start`)."""
    shutil.copytree(store.model_dir(start), store.model_dir(version))
    card_path = store.model_dir(version) / "card.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "version": version}))


def name_latest(store: WorkflowStore, version: str) -> None:
    store.online.mkdir(parents=True, exist_ok=True)
    partial = store.online / ".latest.partial"
    partial.write_text(version + "\n")
    os.replace(partial, store.online_latest)


def served_snapshot(url: str) -> float | None:
    """The serving Pod's `mlworkflow_serving_snapshot` of start version v1 (None when absent)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlworkflow_serving_snapshot" and sample.labels == {"model_version": "v1"}:
                return float(sample.value)
    return None


def test_new_snapshots_are_served_without_a_failed_request(tmp_path: Path) -> None:
    store = WorkflowStore(tmp_path / "store", "wine")
    store.root.mkdir()
    train_apart(WINE_SPEC, store, "v1")
    for n in (1, 2, 3):
        snapshot(store, "v1", f"v1.{n}")
    record = load_wine(as_frame=True).frame.drop(columns="target").iloc[0].to_dict()
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    with serve(store.bentoml_home, "wine:v1", tmp_path, {"MLW_FOLLOW_LATEST": "1"}) as served:

        def client() -> None:
            while not stop.is_set():
                code, body = post(f"{served.url}/predict", {"records": [record]})
                answers.append((code, body.get("model") if isinstance(body, dict) else None))

        assert served_snapshot(served.url) == -1, "the start version serves before any snapshot"
        thread = threading.Thread(target=client)
        thread.start()
        try:
            swaps = []
            for version in ("v1.1", "v1.2", "v1.3"):
                wait_for(lambda: len(answers) > 20, 30, "requests before the swap")
                answers_before = len(answers)
                named = time.monotonic()
                name_latest(store, version)
                wait_for(
                    lambda v=version, since=answers_before: any(m == v for _, m in answers[since:]),  # type: ignore[misc]
                    10,
                    f"{version} to be served",
                )
                swaps.append(time.monotonic() - named)
        finally:
            stop.set()
            thread.join(10)
        log = served.log.read_text()
        assert served_snapshot(served.url) == 3, "v1.3 serves"
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    # Each swap is told in the Pod's log (BentoML's server logging drops INFO records of other loggers).
    assert [v for v in ("v1.1", "v1.2", "v1.3") if f"now serving wine {v}" in log] == ["v1.1", "v1.2", "v1.3"]
    seen = [m for _, m in answers]
    order = [m for i, m in enumerate(seen) if i == 0 or m != seen[i - 1]]
    assert order == ["v1", "v1.1", "v1.2", "v1.3"], order
    assert max(swaps) < 3, swaps  # polled every 0.5 s, loaded off the request path
    print(f"{len(answers)} requests, 0 failed; swap seen after {', '.join(f'{s:.2f}s' for s in swaps)}")
