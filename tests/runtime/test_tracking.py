"""MLflow tracking against a real tracking server (tests/mlflow_server.py): trainings logged and registered by
the training runtime, the operator's decisions (champion/challenger, `lifecycle.decide`) carried to the
Model Registry by the sync (`python -m mlworkflow.runtime.tracking`), and a server that is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from learning import WARM_ROWS, log_of, online_frame, online_spec, progress, published, start_learner, stop
from mlflow_server import MLflowServer, free_port, relay
from mlworkflow.api import exitcodes
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired import tracking as planned
from mlworkflow.desired.lifecycle import Event, TrainingRun, record_finished_runs
from mlworkflow.runtime import data, search, tracking
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import churn_frame, churn_spec, train_apart
from support import wait_for

NAMESPACE = "team-a"


def env_for(uri: str, workflow: str) -> dict[str, str]:
    """What the operator sets in a tracked workflow's runtime Pods (`desired.tracking.MLflowSettings.env`)."""
    return {
        **planned.MLflowSettings(uri, f"{NAMESPACE}/{workflow}", f"{NAMESPACE}.{workflow}").env(NAMESPACE),
        "MLW_SPEC_HASH": "0123456789abcdef",
    }


def decide(
    spec: MLWorkflowSpec, status: MLWorkflowStatus, version: str, trigger: Trigger, summary: dict[str, Any]
) -> list[Event]:
    """The operator's step: fold the finished training into the status, deciding it."""
    events: list[Event] = []
    run = TrainingRun(version, trigger, "0123456789abcdef", "Succeeded", summary, "", datetime.now(UTC))
    record_finished_runs(spec, status, [run], events)
    return events


def sync_apart(store: WorkflowStore, status: MLWorkflowStatus, env: dict[str, str]) -> dict[str, Any]:
    """The sync Job's program, as the operator starts it, with the decisions of `status`."""
    termination = store.root / f"sync-{time.monotonic_ns()}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mlworkflow.runtime.tracking"),
            f"--store={store.root}",
            f"--workflow={store.workflow}",
            "--digest=d1",
            f"--termination-log={termination}",
        ],
        env={**os.environ, **env, "MLW_TRACKING_DECISIONS": json.dumps(planned.decisions(status))},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(termination.read_text()))


def card(store: WorkflowStore, version: str) -> dict[str, Any]:
    return dict(json.loads((store.model_dir(version) / "card.json").read_text()))


def new_store(root: Path, workflow: str) -> WorkflowStore:
    (root / "data").mkdir(parents=True)
    churn_frame(1500).to_csv(root / "data" / "churn-2026-01.csv", index=False)
    return WorkflowStore(root, workflow)


def test_versions_are_logged_registered_and_the_alias_follows_the_decisions(
    tracking_server: MLflowServer, tmp_path: Path
) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.sklearn import load_model

    mlflow.set_tracking_uri(tracking_server.uri)
    mlflow.set_registry_uri(tracking_server.uri)
    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    store = new_store(tmp_path, "churn")
    env = env_for(tracking_server.uri, "churn")
    model = f"{NAMESPACE}.churn"
    status = MLWorkflowStatus()
    stump = churn_spec("sklearn.tree.DecisionTreeClassifier", max_depth=1, random_state=0)

    first = train_apart(stump, store, "v1", env=env)
    assert first["tracking"] == {"tracked": True}
    decide(stump, status, "v1", Trigger.INITIAL, first)
    synced = sync_apart(store, status, env)
    assert synced["status"] == "ok" and synced["champion"] == "v1" and synced["logged"] == []

    written = card(store, "v1")["tracking"]
    # The Job's second Pod trains v1 again (the first ended after logging it): no second version.
    assert train_apart(stump, store, "v1", env=env)["tracking"] == {"tracked": True}
    again = card(store, "v1")["tracking"]
    assert (again["runId"], again["modelVersion"]) == (written["runId"], written["modelVersion"])
    run = client.get_run(written["runId"])
    assert run.info.run_name == "v1"
    assert run.data.params["estimator"] == "sklearn.tree.DecisionTreeClassifier"
    assert run.data.params["param.max_depth"] == "1" and run.data.params["specHash"] == "0123456789abcdef"
    assert run.data.params["preprocessing.oneHot"] == "true"
    assert {"holdout.f1_macro", "holdout.roc_auc", "cv.f1_macro_mean", "cv.f1_macro_std"} <= set(
        run.data.metrics
    )
    assert run.data.metrics["holdout.f1_macro"] == pytest.approx(first["metrics"]["f1_macro"])
    tags = run.data.tags
    assert (tags["mlworkflow.workflow"], tags["mlworkflow.namespace"]) == ("churn", NAMESPACE)
    assert (tags["mlworkflow.version"], tags["mlworkflow.trigger"]) == ("v1", "Initial")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "card")} == {
        "card/card.json",
        "card/card.md",
    }
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.version == written["modelVersion"] and champion.tags["mlworkflow.version"] == "v1"
    assert champion.tags["mlworkflow.outcome"] == "Promoted"
    # The sklearn flavour, with its signature: loadable by anyone with the registry's address.
    rows = churn_frame(20, seed=5).drop(columns=["churn"])
    served = load_model(f"models:/{model}@champion")
    assert len(served.predict(rows)) == 20

    # Drift: new rows arrive; a worse challenger is registered, tagged with why it lost; the alias stays.
    churn_frame(800, seed=1).to_csv(store.root / "data" / "churn-2026-02.csv", index=False)
    dummy = churn_spec("sklearn.dummy.DummyClassifier", strategy="most_frequent")
    # A Pod that ended while logging v2 left its run unfinished with nothing registered: the retry deletes
    # it and registers v2 once.
    keys = {
        "mlworkflow.workflow": "churn",
        "mlworkflow.namespace": NAMESPACE,
        "mlworkflow.version": "v2",
        "mlworkflow.dataSha256": data.load(dummy.data.source, store.root).sha256,
    }
    cut = client.create_run(run.info.experiment_id, tags=keys, run_name="v2").info.run_id
    client.log_param(cut, "specHash", "0123456789abcdef")
    second = train_apart(dummy, store, "v2", "Drift", champion="v1", env=env)
    assert client.get_run(cut).info.lifecycle_stage == "deleted"
    assert card(store, "v2")["tracking"]["runId"] != cut
    decide(dummy, status, "v2", Trigger.DRIFT, second)
    assert status.history[0].outcome == "Rejected" and status.model and status.model.version == "v1"
    synced = sync_apart(store, status, env)
    assert synced["champion"] == "v1"
    rejected = client.get_model_version(model, card(store, "v2")["tracking"]["modelVersion"])
    assert rejected.tags["mlworkflow.outcome"] == "Rejected"
    assert (
        rejected.tags["mlworkflow.reason"] == "NotBetter"
        and "f1_macro" in rejected.tags["mlworkflow.message"]
    )
    run = client.get_run(card(store, "v2")["tracking"]["runId"])
    assert run.data.metrics["champion.f1_macro"] > run.data.metrics["holdout.f1_macro"]
    assert run.data.tags["mlworkflow.champion"] == "v1"
    assert client.get_model_version_by_alias(model, "champion").version == champion.version

    # A better challenger: promoted, and the alias moves to it.
    churn_frame(800, seed=2).to_csv(store.root / "data" / "churn-2026-03.csv", index=False)
    forest = churn_spec()
    third = train_apart(forest, store, "v3", "Drift", champion="v1", env=env)
    decide(forest, status, "v3", Trigger.DRIFT, third)
    assert status.history[0].outcome == "Promoted", status.history[0].message
    assert sync_apart(store, status, env)["champion"] == "v3"
    moved = client.get_model_version_by_alias(model, "champion")
    assert moved.version == card(store, "v3")["tracking"]["modelVersion"] != champion.version
    assert [v.tags["mlworkflow.version"] for v in client.search_model_versions(f"name='{model}'")] == [
        "v3",
        "v2",
        "v1",
    ]


def test_a_server_that_is_down_fails_no_training_and_the_sync_logs_it_later(
    tracking_server: MLflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    store = new_store(tmp_path, "outage")
    down = env_for(f"http://127.0.0.1:{free_port()}", "outage")  # nothing listens there
    spec = churn_spec("sklearn.linear_model.LogisticRegression", max_iter=200)
    status = MLWorkflowStatus()

    started = time.monotonic()
    summary = train_apart(spec, store, "v1", env=down)
    took = time.monotonic() - started
    assert summary["status"] == "ok" and summary["tracking"]["tracked"] is False
    assert "Connection" in summary["tracking"]["reason"], summary["tracking"]
    written = card(store, "v1")
    assert written["tracking"]["tracked"] is False
    assert "Not tracked" in (store.model_dir("v1") / "card.md").read_text()
    assert tracking.read_record(store, "v1") is None
    events = decide(spec, status, "v1", Trigger.INITIAL, summary)
    assert [e.reason for e in events] == ["Promoted", "NotTracked"], events

    # The sync against a server still down says so, and succeeds (the operator tries again later).
    assert sync_apart(store, status, down)["status"] == "unavailable"
    # The server is back: the next sync logs the version from the store and moves the alias.
    synced = sync_apart(store, status, env_for(tracking_server.uri, "outage"))
    assert synced["status"] == "ok" and synced["logged"] == ["v1"] and synced["champion"] == "v1"
    record = tracking.read_record(store, "v1")
    assert record is not None
    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    assert (
        client.get_model_version_by_alias(f"{NAMESPACE}.outage", "champion").version == record["modelVersion"]
    )
    assert client.get_run(record["runId"]).data.params["estimator"].endswith("LogisticRegression")
    print(f"training with the server down: {took:.1f}s")


def test_a_drift_check_and_a_batch_run_are_runs_of_the_experiment(
    tracking_server: MLflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    store = WorkflowStore(tmp_path, "monitored")
    settings = tracking.Settings(
        tracking_server.uri, f"{NAMESPACE}/monitored", f"{NAMESPACE}.monitored", NAMESPACE
    )
    drift = {
        "status": "ok",
        "share": 0.5,
        "drifted": True,
        "threshold": 0.3,
        "driftedColumns": 2,
        "comparedRows": 900,
        "referenceRows": 1200,
        "result": "monitored/drift/20260301T120000Z/result.json",
        "report": "monitored/drift/20260301T120000Z/report.html",
    }
    batch = {
        "runId": "monitored-predict-1",
        "index": 0,
        "indexes": 1,
        "version": "v1",
        "rowsIn": 10,
        "predicted": 9,
    }
    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    for logged in (
        tracking.log_drift_check(settings, store, "v1", drift),
        tracking.log_batch_run(settings, store, {**batch, "rejected": 1}),
    ):
        assert logged["tracked"] is True, logged
    checked = client.get_run(tracking.log_drift_check(settings, store, "v1", drift)["runId"])
    assert checked.info.run_name == "drift-20260301T120000Z"
    assert checked.data.metrics["share"] == 0.5 and checked.data.tags["mlworkflow.drifted"] == "true"
    assert checked.data.tags["mlworkflow.driftReport"] == drift["report"]

    # The server is down: the check and an index of a batch run are kept in the store (a sync that
    # cannot reach the server either keeps them), and the next sync logs them, once each, as they would
    # have been logged then.
    down = tracking.Settings(
        f"http://127.0.0.1:{free_port()}", settings.experiment, settings.registered_model, NAMESPACE
    )
    later = {
        **drift,
        "result": "monitored/drift/20260301T121500Z/result.json",
        "share": 0.25,
        "drifted": False,
    }
    before = int(time.time() * 1000)
    assert tracking.log_drift_check(down, store, "v1", later)["tracked"] is False
    assert tracking.log_batch_run(down, store, {**batch, "index": 1, "indexes": 2})["tracked"] is False
    kept = int(time.time() * 1000)
    with pytest.raises(tracking.NotTracked):
        tracking.sync(down, store, {})
    assert len(list(tracking.untracked_dir(store).glob("*.json"))) == 2
    synced = tracking.sync(settings, store, {})
    assert synced["untracked"] == ["drift-20260301T121500Z", "monitored-predict-1-1"], synced
    assert tracking.sync(settings, store, {})["untracked"] == []
    assert list(tracking.untracked_dir(store).iterdir()) == []
    runs = client.search_runs([checked.info.experiment_id], "tags.`mlworkflow.kind` = 'drift-check'")
    late = [r for r in runs if r.info.run_name == "drift-20260301T121500Z"]
    assert len(late) == 1 and len(runs) == 3, [r.info.run_name for r in runs]
    (late_check,) = late
    assert late_check.data.params == checked.data.params
    assert late_check.data.metrics == {**checked.data.metrics, "share": 0.25}
    mine = {k: v for k, v in late_check.data.tags.items() if k.startswith("mlworkflow.")}
    assert mine == {
        **{k: v for k, v in checked.data.tags.items() if k.startswith("mlworkflow.")},
        "mlworkflow.drifted": "false",
        "mlworkflow.driftResult": later["result"],
    }
    # When it happened, not when the sync logged it.
    assert before <= late_check.info.start_time == late_check.info.end_time <= kept
    (late_batch,) = client.search_runs(
        [checked.info.experiment_id], "attributes.run_name = 'monitored-predict-1-1'"
    )
    assert late_batch.data.params == {"index": "1", "indexes": "2"}
    assert late_batch.data.metrics == {"rowsIn": 10.0, "predicted": 9.0}
    assert late_batch.data.tags["mlworkflow.batchRun"] == "monitored-predict-1"


def test_only_the_newest_untracked_runs_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "UNTRACKED_KEEP", 3)
    store = WorkflowStore(tmp_path, "down")
    down = tracking.Settings(f"http://127.0.0.1:{free_port()}", "x", "x", NAMESPACE)
    batch = {"runId": "down-predict-1", "indexes": 5, "version": "v1", "rowsIn": 1}
    for index in range(5):
        assert tracking.log_batch_run(down, store, {**batch, "index": index})["tracked"] is False
    kept = [json.loads(p.read_text())["name"] for p in sorted(tracking.untracked_dir(store).glob("*.json"))]
    assert kept == ["down-predict-1-2", "down-predict-1-3", "down-predict-1-4"]


def test_search_trials_are_child_runs_of_the_search_run(
    tracking_server: MLflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "AutoML",
            "data": {"source": "sklearn://iris", "target": "target"},
            "training": {"crossValidation": 3},
            "automl": {
                "candidates": [
                    {
                        "estimator": "sklearn.linear_model.LogisticRegression",
                        "params": {"C": {"low": 0.01, "high": 10.0, "log": True}, "max_iter": [300]},
                    },
                    {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": [1, 2, 3]}},
                ],
                "trials": 4,
                "parallelism": 2,
                "seed": 7,
            },
            "storage": {"path": "/unused"},
        }
    )
    monkeypatch.setenv("MLW_SPEC", spec.model_dump_json(by_alias=True))

    def worker(
        index: int, trials: int, env: dict[str, str], search_id: str = "s1", exit_code: int = 0
    ) -> dict[str, Any]:
        with monkeypatch.context() as scoped:
            for key, value in env.items():
                scoped.setenv(key, value)
            termination = tmp_path / f"termination-{time.monotonic_ns()}"
            code = search.main(
                [
                    f"--store={tmp_path}",
                    "--workflow=tuned",
                    f"--search-id={search_id}",
                    "--workers=2",
                    f"--worker={index}",
                    f"--trials={trials}",
                    f"--termination-log={termination}",
                ]
            )
            summary = dict(json.loads(termination.read_text()))
            assert code == exit_code, summary
            return summary

    # Two workers of one search (one after the other here): the first makes the search's run, the second
    # finds it in the study, and every trial is a child run of it.
    env = env_for(tracking_server.uri, "tuned")
    first, second = worker(0, 2, env), worker(1, 4, env)
    parent = first["tracking"]["runId"]
    assert first["tracking"] == second["tracking"] == {"tracked": True, "runId": parent}
    client = MlflowClient(tracking_server.uri)
    searched = client.get_run(parent)
    assert searched.info.run_name == "search-s1"
    assert searched.data.tags["mlworkflow.kind"] == "search"
    assert searched.data.params["metric"] == "f1_macro" and searched.data.params["trials"] == "2"
    children = client.search_runs(
        [searched.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=100
    )
    board = {
        r["trial"]: r for r in json.loads((tmp_path / "tuned/automl/s1/leaderboard.json").read_text())["rows"]
    }
    assert sorted(int(c.data.tags["mlworkflow.trial"]) for c in children) == sorted(board) == [0, 1, 2, 3]
    for child in children:
        row = board[int(child.data.tags["mlworkflow.trial"])]
        assert child.info.run_name == f"s1-{row['trial']}"
        assert child.data.tags["mlworkflow.state"] == row["state"] == "COMPLETE"
        assert child.data.tags["mlworkflow.worker"] == str(row["worker"])
        assert child.data.params["estimator"] == row["estimator"]
        assert {k: json.loads(v) for k, v in child.data.params.items() if k.startswith("param.")} == {
            f"param.{k}": v for k, v in row["params"].items()
        }
        assert child.data.metrics["cv.mean"] == pytest.approx(row["cvMean"])
    assert {int(c.data.tags["mlworkflow.worker"]) for c in children} == {0, 1}

    # A server that is down fails no search: the worker says so once and logs no trial.
    started = time.monotonic()
    down = worker(0, 2, env_for(f"http://127.0.0.1:{free_port()}", "tuned"), "s2")
    assert down["tracking"]["tracked"] is False and "Connection" in down["tracking"]["reason"]
    assert down["trials"]["complete"] == 2 and time.monotonic() - started < 60

    # Each search's winner refit as the version of the search's name (as the operator starts it); the
    # sync after the decision logs the search the workers could not, and links each search with its refit.
    refit = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "sklearn://iris", "target": "target"},
            "model": {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 2}},
            "training": {"crossValidation": 3},
            "storage": {"path": "/unused"},
        }
    )
    store, status = WorkflowStore(tmp_path, "tuned"), MLWorkflowStatus()
    for version, trigger in (("s1", Trigger.INITIAL), ("s2", Trigger.MANUAL)):
        summary = train_apart(
            refit, store, version, trigger, champion=None if version == "s1" else "s1", env=env
        )
        decide(refit, status, version, trigger, summary)
    synced = sync_apart(store, status, env)
    assert synced["status"] == "ok" and synced["searches"] == ["s2"], synced
    assert sync_apart(store, status, env)["searches"] == []  # whole now: not logged twice
    for version in ("s1", "s2"):
        refit_run = client.get_run(card(store, version)["tracking"]["runId"])
        searched = client.get_run(refit_run.data.tags["mlworkflow.searchRunId"])
        assert searched.info.run_name == f"search-{version}"
        assert searched.data.tags["mlworkflow.refitRunId"] == refit_run.info.run_id
        assert searched.data.tags["mlworkflow.refitVersion"] == version
        trials = client.search_runs(
            [searched.info.experiment_id], f"tags.mlflow.parentRunId = '{searched.info.run_id}'"
        )
        assert len(trials) == (4 if version == "s1" else 2)
    assert client.get_run(searched.info.run_id).data.params["sampler"] == "random"

    # A search whose every trial fails (a parameter the estimator refuses), with the server down: its
    # version fails, and the sync after that logs the search, its trials and why it failed, once.
    failing = spec.model_dump(by_alias=True)
    failing["automl"]["candidates"] = [
        {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": [-1.0]}}
    ]
    monkeypatch.setenv("MLW_SPEC", json.dumps(failing))
    failed = worker(0, 2, env_for(f"http://127.0.0.1:{free_port()}", "tuned"), "s3", exitcodes.INVALID_INPUT)
    assert failed["reason"] == "NoTrialSucceeded", failed
    run = TrainingRun("s3", Trigger.MANUAL, "0123456789abcdef", "Failed", failed, "", datetime.now(UTC))
    record_finished_runs(refit, status, [run], [])
    settings = tracking.Settings(tracking_server.uri, f"{NAMESPACE}/tuned", f"{NAMESPACE}.tuned", NAMESPACE)
    assert tracking.sync(settings, store, planned.decisions(status))["searches"] == ["s3"]
    assert tracking.sync(settings, store, planned.decisions(status))["searches"] == []
    (searched,) = client.search_runs(
        [searched.info.experiment_id],
        "tags.`mlworkflow.kind` = 'search' and tags.`mlworkflow.searchId` = 's3'",
    )
    assert searched.info.status == "FAILED"
    assert (searched.data.tags["mlworkflow.outcome"], searched.data.tags["mlworkflow.reason"]) == (
        "Failed",
        "NoTrialSucceeded",
    )
    assert searched.data.tags["mlworkflow.message"].startswith("none of the 2 trials finished")
    trials = client.search_runs(
        [searched.info.experiment_id], f"tags.mlflow.parentRunId = '{searched.info.run_id}'"
    )
    assert sorted(t.data.tags["mlworkflow.state"] for t in trials) == ["FAIL", "FAIL"]
    assert all("C" in t.data.tags["mlworkflow.error"] for t in trials), [t.data.tags for t in trials]


def test_snapshots_wait_while_the_server_is_down_and_are_sent_when_it_is_back(
    tracking_server: MLflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    port = free_port()
    settings = tracking.Settings(
        f"http://127.0.0.1:{port}", f"{NAMESPACE}/online", f"{NAMESPACE}.online", NAMESPACE
    )
    store = WorkflowStore(tmp_path, "online")
    now = datetime.now(UTC)

    def point(step: int) -> tracking.SnapshotPoint:
        return tracking.SnapshotPoint(step, f"v1.{step}", now, {"online.samplesSeen": 100.0 * step})

    snapshots = tracking.SnapshotLog(settings, store, "v1", {"estimator": "SGDClassifier"}, retry_seconds=0.5)
    started = time.monotonic()
    snapshots.log(point(0))
    snapshots.log(point(1))  # never waits for MLflow
    assert time.monotonic() - started < 0.1
    wait_for(lambda: snapshots.status().startswith("not tracked"), 30, "the snapshots not tracked")
    assert "2 snapshot(s) waiting" in snapshots.status()
    with relay(port, tracking_server):
        wait_for(lambda: snapshots.status().startswith("run "), 30, "the snapshots sent")
        snapshots.log(point(2))
        snapshots.close()
        run = client.get_run(snapshots.status().removeprefix("run "))
        assert run.info.run_name == "online-v1" and run.info.status == "FINISHED"
        assert run.data.tags["mlworkflow.kind"] == "online" and run.data.tags["mlworkflow.snapshot"] == "v1.2"
        history = client.get_metric_history(run.info.run_id, "online.samplesSeen")
        assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 100.0), (2, 200.0)]
        # A restarted learner of the same start version logs on into the same run.
        again = tracking.SnapshotLog(settings, store, "v1", {"estimator": "SGDClassifier"})
        again.log(point(3))
        again.close()
        assert again.run_id == run.info.run_id
        assert len(client.get_metric_history(run.info.run_id, "online.samplesSeen")) == 4


def test_the_learners_snapshots_are_steps_of_a_child_run_of_its_start_version(
    tracking_server: MLflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    batch, batches = 256, 5
    spec = online_spec(
        {"path": "incoming/*.csv", "pollIntervalSeconds": 1},
        batchSize=batch,
        maxWaitSeconds=0.2,
        snapshots={"everySamples": batch, "everySeconds": 3600},  # by samples only, on a busy machine too
    )
    frame = online_frame(WARM_ROWS + batches * batch)
    (tmp_path / "data").mkdir()
    frame.iloc[:WARM_ROWS].to_csv(tmp_path / "data" / "warm.csv", index=False)
    store = WorkflowStore(tmp_path, "stream")
    env = env_for(tracking_server.uri, "stream")
    train_apart(spec, store, "v1", env=env)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stream = frame.iloc[WARM_ROWS:]
    for i in range(4):
        stream.iloc[i * batch : (i + 1) * batch].to_csv(incoming / f"part-{i}.csv", index=False)

    learner = start_learner(store, spec, **env)
    try:
        wait_for(
            lambda: (
                progress(store).get("samplesSeen") == 4 * batch
                and published(store).get("online", {}).get("samplesSeen") == 4 * batch
                and progress(store).get("tracking", "").startswith("run ")
            ),
            120,
            "four batches learned, published and logged",
        )
    finally:
        assert stop(learner) == 0, log_of(store)
    run = client.get_run(progress(store)["tracking"].removeprefix("run "))
    assert run.info.run_name == "online-v1" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == card(store, "v1")["tracking"]["runId"]
    newest = published(store)["version"]
    assert run.data.params["startVersion"] == "v1" and run.data.tags["mlworkflow.snapshot"] == newest
    # One step per published snapshot (a snapshot taken while the previous one is saved replaces it).
    seen = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "online.samplesSeen"))
    assert seen[0] == (0, 0.0) and seen[-1] == (int(newest.split(".")[1]), 4.0 * batch), seen
    assert [step for step, _ in seen] == sorted({step for step, _ in seen})
    assert [value for _, value in seen] == sorted(value for _, value in seen)
    assert len(client.get_metric_history(run.info.run_id, "holdout.f1_macro")) == len(seen)

    # A server that is down: the learner learns and publishes on, and says the snapshots wait.
    stream.iloc[4 * batch :].to_csv(incoming / "part-4.csv", index=False)
    learner = start_learner(store, spec, **env_for(f"http://127.0.0.1:{free_port()}", "stream"))
    try:
        wait_for(
            lambda: (
                progress(store).get("samplesSeen") == 5 * batch
                and progress(store).get("tracking", "").startswith("not tracked")
            ),
            120,
            "the new batch learned with the server down",
        )
    finally:
        assert stop(learner) == 0, log_of(store)
    assert published(store)["online"]["samplesSeen"] == 5 * batch
