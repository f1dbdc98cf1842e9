"""`mlworkflow demo` (`make demo`): the whole loop on this machine in a few minutes.

A WebService workflow trains v1 on generated data and serves it; traffic then shifts and the data pipeline
appends labelled data of the new regime to the same source; the drift check (Evidently) sees it, the
workflow retrains, the challenger is judged against the champion on held-out rows neither was trained on,
and the better model serves. The
runner is `mlworkflow run`'s; this module only plays the world around it (data, traffic). SIGINT (Ctrl-C),
SIGTERM and SIGHUP stop the demo and every process it started (`Stopped`).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml

from mlworkflow.api import v1alpha1
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.local.runner import LocalRunner, stop_signals

NAME = "demo"
T = TypeVar("T")


def regime(rows: int, shifted: bool, seed: int) -> pd.DataFrame:
    """Customers before and after a change: usage and the plan mix move, and only the plan decides churn."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(60 if shifted else 30, 10, rows)
    tenure = rng.normal(24, 8, rows)
    # After the change, most new customers take the basic plan.
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.6, 0.25, 0.15] if shifted else None)
    if shifted:
        churn = (plan == "basic") | (rng.random(rows) < 0.05)
    else:
        churn = (usage - 0.8 * tenure + rng.normal(0, 4, rows)) > 12
    return pd.DataFrame({"usage": usage, "tenure": tenure, "plan": plan, "churn": churn.astype(int)})


def manifest(quick: bool) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME},
        "spec": {
            "pattern": "WebService",
            "data": {"source": "data/part-*.csv", "target": "churn"},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 30 if quick else 100, "random_state": 0},
            },
            "training": {"crossValidation": 0 if quick else 3},
            "serving": {"replicas": 1},
            "monitoring": {
                "schedule": "*/5 * * * *",
                "driftThreshold": 0.5,
                "minSamples": 200,
                "onDrift": "Retrain",
                "cooldown": "1m",
            },
            "promotion": {"metric": "f1_macro", "minImprovement": 0.0},
            "storage": {"path": "."},
        },
    }


class Stopped(Exception):
    """A stop signal ended the demo before the loop closed; its processes are stopped."""

    def __init__(self, received: signal.Signals) -> None:
        super().__init__(f"stopped by {received.name} before the loop closed")
        self.signal = received


def wait(what: str, check: Callable[[], T | None], timeout: float, runner: LocalRunner) -> T:
    """`check()`'s first true value; TimeoutError after `timeout` seconds, Stopped at a stop signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.stop_signal is not None:
            raise Stopped(runner.stop_signal)
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"the demo waited {timeout:.0f}s for {what}")


def predict(endpoint: str, frame: pd.DataFrame) -> str:
    """Send rows in requests of 50, as clients would; returns the model version that answered last."""
    records = json.loads(frame.drop(columns=["churn"]).to_json(orient="records"))
    version = ""
    for start in range(0, len(records), 50):
        body = json.dumps({"records": records[start : start + 50]}).encode()
        request = urllib.request.Request(f"{endpoint}/predict", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            version = json.loads(response.read())["model"]
    return version


def play(runner: LocalRunner, store: Path, rows: int) -> dict[str, Any]:
    """The scenario around the running runner: v1 serves, the world changes, drift, a retraining decided."""
    outcome: dict[str, Any] = {}
    wait("v1 to serve", lambda: runner.status.phase == "Serving", 180, runner)
    outcome["firstVersion"] = predict(runner.endpoint, regime(250, shifted=False, seed=2))
    print(
        f"\n>>> {outcome['firstVersion']} serves. Now the world changes: usage doubles, and only the "
        "plan decides churn. Shifted traffic arrives; the data pipeline delivers labelled new data.\n"
    )
    predict(runner.endpoint, regime(300, shifted=True, seed=3))
    regime(rows * 2, shifted=True, seed=4).to_csv(store / "data" / "part-2.csv", index=False)
    runner.request_drift_check()
    drift = wait(
        "the drift check",
        lambda: (
            runner.status.drift if runner.status.drift and runner.status.drift.drifted is not None else None
        ),
        120,
        runner,
    )
    outcome["driftDetected"], outcome["driftShare"] = drift.drifted, drift.share
    decided = wait(
        "the retraining's decision",
        lambda: next((r for r in runner.status.history if r.trigger == "Drift"), None),
        180,
        runner,
    )
    outcome["retrained"], outcome["decision"] = decided.version, decided.outcome
    if decided.outcome == "Promoted":
        wait(
            f"{decided.version} to serve",
            lambda: (
                runner.status.phase == "Serving"
                and runner.status.model
                and runner.status.model.version == decided.version
            ),
            120,
            runner,
        )
    outcome["servedBy"] = predict(runner.endpoint, regime(100, shifted=True, seed=5))
    # Both scored on the challenger's holdout: rows of either regime that neither model was trained on.
    outcome["metrics"] = {"champion": decided.champion_metrics, "challenger": decided.metrics}
    outcome["reason"], outcome["why"] = decided.reason, decided.message
    if decided.holdout:
        outcome["holdoutRows"] = decided.holdout.rows
        outcome["excludedRows"] = decided.holdout.excluded_rows
    return outcome


def run_demo(store: Path, quick: bool = False, port: int = 3000) -> dict[str, Any]:
    """Play the scenario; returns what happened (also written to <store>/demo/demo-result.json)."""
    rows = 600 if quick else 3000
    (store / "data").mkdir(parents=True, exist_ok=True)
    for old in (store / "data").glob("part-*.csv"):
        old.unlink()
    regime(rows, shifted=False, seed=1).to_csv(store / "data" / "part-1.csv", index=False)
    document = manifest(quick)
    (store / "demo.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    runner = LocalRunner(NAME, MLWorkflowSpec.model_validate(document["spec"]), store, port)
    finished = threading.Event()
    thread = threading.Thread(
        target=runner.run, kwargs={"until": finished.is_set, "interval": 0.5}, daemon=True
    )
    # Signals reach the main thread only: it passes them on to the runner, whose thread stops every process.
    with stop_signals(runner.request_stop):
        thread.start()
        try:
            outcome = play(runner, store, rows)
        except Exception:
            if runner.stop_signal is None:
                raise
            raise Stopped(runner.stop_signal) from None  # or a request to the server as it stopped
        finally:
            finished.set()
            thread.join()
    (runner.store.base / "demo-result.json").write_text(json.dumps(outcome, indent=2))
    print(f"""
>>> The loop closed: drift {outcome["driftShare"]:.0%} of columns -> retrained {outcome["retrained"]}
    -> {outcome["decision"]} ({outcome["reason"]}): {outcome["why"]}
    -> predictions now from {outcome["servedBy"]}.
    Where to look:
      {runner.store.base / "index.html"}   versions, decisions, links to the drift reports
      {runner.store.bentoml_home / "models" / NAME}/<version>/card.md   model cards
      {runner.store.base / "status.json"}   the status the operator would write
""")
    return outcome
