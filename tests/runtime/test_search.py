"""The AutoML search runtime with real Optuna and scikit-learn: workers sharing a study through the journal
file, failing trials, the failure limit, the tie-break, warm starts, and the holdout kept from the search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from mlworkflow.api.exitcodes import INVALID_INPUT
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime import holdout
from mlworkflow.runtime.search import (
    Options,
    Worker,
    fold_attr,
    main,
    rank,
    summary,
    training_rows,
    write_results,
)
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import churn_frame, train_apart
from support import REPO

# By the name worker processes import it under (tests/ is on PYTHONPATH), whatever pytest named this module.
STUB = "runtime.test_search.Stub"
LOGISTIC = "runtime.test_search.Logistic"
PREFIXES = "sklearn.,runtime.test_search."


def meet() -> None:
    """With TEST_SEARCH_MEET naming a folder, hold each worker's fits until both workers have begun one
    (or 60 s passed): on a loaded machine one worker could otherwise run the whole budget before the other
    has imported its libraries (found in use, load average 17)."""
    folder = os.environ.get("TEST_SEARCH_MEET")
    if not folder:
        return
    Path(folder, os.environ.get("JOB_COMPLETION_INDEX", "0")).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)


class Stub(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Predicts the majority class after `delay` seconds; `mode` raise makes its fit fail, as a bad parameter
    combination does."""

    def __init__(self, mode: str = "ok", delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay

    def fit(self, x: Any, y: Any) -> Stub:
        meet()
        time.sleep(self.delay)
        if self.mode == "raise":
            raise ValueError("mode raise cannot fit")
        values, counts = np.unique(y, return_counts=True)
        self.classes_ = values
        self.majority_ = values[np.argmax(counts)]
        return self

    def predict(self, x: Any) -> Any:
        return np.full(len(x), self.majority_)


class Logistic(LogisticRegression):  # type: ignore[misc]
    """scikit-learn's logistic regression, meeting the other worker first (`meet`)."""

    def fit(self, x: Any, y: Any, sample_weight: Any = None) -> Logistic:
        meet()
        return super().fit(x, y, sample_weight)  # type: ignore[no-any-return]


def spec_of(
    *candidates: dict[str, Any], trials: int = 8, source: str = "sklearn://iris", target: str = "target"
) -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "AutoML",
            "data": {"source": source, "target": target},
            "training": {"crossValidation": 3},
            "automl": {"candidates": list(candidates), "trials": trials, "parallelism": 2, "seed": 7},
            "storage": {"path": "/unused"},
        }
    )


def search(
    store: Path, spec: MLWorkflowSpec, *args: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    """One worker in this process; its exit code and termination message."""
    monkeypatch.setenv("MLW_SPEC", spec.model_dump_json(by_alias=True))
    monkeypatch.setenv("MLW_ALLOWED_ESTIMATOR_PREFIXES", PREFIXES)
    termination = store / f"termination-{time.monotonic_ns()}"
    code = main(
        [f"--store={store}", "--workflow=w", "--search-id=s", f"--termination-log={termination}", *args]
    )
    return code, json.loads(termination.read_text())


def leaderboard(store: Path) -> dict[str, Any]:
    return dict(json.loads((store / "w" / "automl" / "s" / "leaderboard.json").read_text()))


def test_two_worker_processes_run_exactly_the_budget_together_never_a_trial_twice(tmp_path: Path) -> None:
    spec = spec_of(
        {"estimator": STUB, "params": {"delay": {"low": 0.02, "high": 0.08}}},
        {"estimator": LOGISTIC, "params": {"C": {"low": 0.01, "high": 10.0, "log": True}}},
        trials=10,
    )
    (meeting := tmp_path / "meet").mkdir()
    env = {
        **os.environ,
        "MLW_SPEC": spec.model_dump_json(by_alias=True),
        "MLW_ALLOWED_ESTIMATOR_PREFIXES": PREFIXES,
        "TEST_SEARCH_MEET": str(meeting),
        # The workers import the stub as `runtime.test_search.Stub`: tests/ and hack/ on their path too, as
        # pytest puts them on its own (pyproject's pythonpath).
        "PYTHONPATH": os.pathsep.join(
            filter(None, [*(str(REPO / d) for d in ("tests", "hack")), os.environ.get("PYTHONPATH")])
        ),
    }
    workers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "mlworkflow.runtime.search"),
                *(f"--store={tmp_path}", "--workflow=w", "--search-id=s", "--workers=2"),
                f"--termination-log={tmp_path / f'termination-{index}'}",
            ],
            env={**env, "JOB_COMPLETION_INDEX": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in (0, 1)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
    board = leaderboard(tmp_path)
    assert sorted(r["trial"] for r in board["rows"]) == list(range(10)), "each trial number once, none more"
    assert {r["worker"] for r in board["rows"]} == {0, 1}, "both workers took trials"
    assert board["trials"] == {"complete": 10, "failed": 0, "pruned": 0, "running": 0, "total": 10}
    drawn = [json.dumps(r["params"], sort_keys=True) for r in board["rows"]]
    assert len(set(drawn)) == 10, "per-worker seeds: no two trials drew the same parameters"
    messages = [json.loads((tmp_path / f"termination-{i}").read_text()) for i in (0, 1)]
    assert {m["worker"] for m in messages} == {0, 1}
    assert all(m["status"] == "ok" and m["trials"]["total"] == 10 for m in messages)
    winner = json.loads((tmp_path / "w" / "automl" / "s" / "winner.json").read_text())
    assert winner["estimator"] == LOGISTIC, "a real model beats the majority"
    last = max(messages, key=lambda m: m["trials"]["complete"])
    assert last["best"]["trial"] == winner["trial"] and last["leaderboard"][0]["rank"] == 1
    # Without a Lease, the workers report progress in the store; the last write is either worker's final
    # report, which may have seen the other's last trial still running.
    progress = json.loads((tmp_path / "w" / "automl" / "s" / "progress.json").read_text())
    assert progress["searchId"] == "s" and progress["trials"] == 10 and progress["running"] <= 1
    assert progress["complete"] + progress["failed"] + progress["pruned"] + progress["running"] == 10


class Reports:
    """A progress reporter that keeps every report, or fails every write as an unreachable API server."""

    def __init__(self, fail: bool = False) -> None:
        self.reports: list[dict[str, Any]] = []
        self.fail = fail

    def report(self, progress: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("PATCH https://127.0.0.1:1/...: connection refused")
        self.reports.append(progress)


def test_a_worker_reports_progress_after_each_trial_and_the_counts_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlworkflow.runtime.search.PROGRESS_EVERY", 0.0)  # every report, not one per 2 s
    spec = spec_of(
        {"estimator": STUB, "params": {"mode": ["ok", "raise"], "delay": [0.0, 0.001, 0.002]}}, trials=6
    )
    reports = Reports()
    options = Options(search_id="s", trials=6, sampler="grid")
    worker = Worker(spec, WorkflowStore(tmp_path, "w"), options, PREFIXES.split(","), reports)
    worker.run()
    write_results(worker)
    worker.report_progress(final=True)
    finished = [r["complete"] + r["failed"] + r["pruned"] for r in reports.reports]
    assert finished == [0, 1, 2, 3, 4, 5, 6, 6], "one report at the start, one per trial, one at the end"
    assert all(r["searchId"] == "s" and r["trials"] == 6 and r["running"] == 0 for r in reports.reports)
    last = reports.reports[-1]
    assert (last["complete"], last["failed"]) == (3, 3)
    assert last["best"] == {"estimator": STUB, "score": leaderboard(tmp_path)["rows"][0]["cvMean"]}
    assert reports.reports[0]["best"] is None and last["started"] <= last["reported"]
    assert len(json.dumps(last)) < 1024, "bounded"


def test_a_progress_report_that_fails_never_fails_a_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_of({"estimator": STUB, "params": {"delay": [0.0, 0.001, 0.002]}}, trials=3)
    options = Options(search_id="s", trials=3, sampler="grid")
    worker = Worker(spec, WorkflowStore(tmp_path, "w"), options, PREFIXES.split(","), Reports(fail=True))
    worker.run()
    worker.report_progress(final=True)
    tally, _ = write_results(worker)
    assert tally == {"complete": 3, "failed": 0, "pruned": 0, "running": 0, "total": 3}
    assert "search: progress not reported: OSError" in capsys.readouterr().out


def test_a_worker_with_no_trial_left_scores_the_last_folds_of_a_running_trial(tmp_path: Path) -> None:
    spec = spec_of({"estimator": STUB, "params": {"delay": [0.5]}}, trials=1)
    store, prefixes = WorkflowStore(tmp_path, "w"), tuple(PREFIXES.split(","))
    owner, helper = (
        Worker(spec, store, Options(search_id="s", worker=i, workers=2, trials=1), prefixes) for i in (0, 1)
    )
    running = threading.Thread(target=owner.run)
    running.start()
    deadline = time.monotonic() + 30
    while not any("params" in t.user_attrs for t in helper.study.get_trials(deepcopy=False)):
        assert time.monotonic() < deadline, "the owner's trial never got its parameters"
        time.sleep(0.01)
    helper.run()  # the budget is spent: it helps, then returns when no fold is left to take
    running.join(timeout=30)
    (trial,) = helper.study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    claims = [trial.user_attrs[fold_attr(step, "claim")]["worker"] for step in range(3)]
    assert claims[0] == 0 and claims[2] == 1, (
        "the owner from the first fold up, the helper from the last down"
    )
    assert fold_attr(2, "score") in trial.user_attrs
    # The same folds, in order, as one worker scores them (the delay changes no prediction).
    alone = owner._model(STUB, {"delay": 0.0})
    assert trial.user_attrs["folds"] == [owner._fold_score(alone, step) for step in range(3)]
    assert trial.value == np.mean(trial.user_attrs["folds"])


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of({"estimator": STUB, "params": {"mode": ["ok", "raise"], "delay": [0.0, 0.001]}}, trials=8)
    code, message = search(tmp_path, spec, "--sampler=grid", monkeypatch=monkeypatch)
    assert code == 0 and message["status"] == "ok"
    assert message["trials"] == {"complete": 2, "failed": 2, "pruned": 0, "total": 4}, (
        "the grid caps the budget"
    )
    failed = [r for r in leaderboard(tmp_path)["rows"] if r["state"] == "FAIL"]
    assert [r["params"]["mode"] for r in failed] == ["raise", "raise"]
    assert all(r["error"] == "ValueError: mode raise cannot fit" and r["rank"] is None for r in failed)
    csv = (tmp_path / "w" / "automl" / "s" / "leaderboard.csv").read_text().splitlines()
    assert csv[0] == "rank,trial,estimator,params,cvMean,cvStd,seconds,state,error" and len(csv) == 5


def test_more_failed_trials_than_allowed_stop_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of({"estimator": STUB, "params": {"mode": ["raise"], "delay": [0.0, 0.001, 0.002, 0.003]}})
    code, message = search(tmp_path, spec, "--sampler=grid", "--max-failed=1", monkeypatch=monkeypatch)
    assert code == INVALID_INPUT == 2
    assert message["status"] == "error" and message["reason"] == "TooManyFailedTrials"
    assert message["message"].startswith("2 trials failed, more than the 1 allowed; the last: ValueError")
    assert message["trials"]["failed"] == 2, "no trial is started once the limit is passed"
    code, message = search(tmp_path, spec, "--sampler=grid", monkeypatch=monkeypatch)
    assert code == INVALID_INPUT and message["reason"] == "NoTrialSucceeded"


def test_ties_go_to_the_lower_std_then_the_lower_trial_number() -> None:
    rows = [
        {"trial": 0, "cvMean": 0.9, "cvStd": 0.02, "state": "COMPLETE"},
        {"trial": 1, "cvMean": 0.9, "cvStd": 0.01, "state": "COMPLETE"},
        {"trial": 2, "cvMean": 0.95, "cvStd": 0.05, "state": "COMPLETE"},
        {"trial": 3, "cvMean": None, "cvStd": None, "state": "FAIL"},
        {"trial": 4, "cvMean": 0.9, "cvStd": 0.01, "state": "COMPLETE"},
    ]
    assert [(r["trial"], r["rank"]) for r in rank(rows, maximize=True)] == [
        (2, 1),
        (1, 2),
        (4, 3),
        (0, 4),
        (3, None),
    ]
    # An error (mse, mae): lower is better, ties as before.
    assert [r["trial"] for r in rank(rows, maximize=False)] == [1, 4, 0, 2, 3]


def test_a_warm_start_enqueues_the_previous_best_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(
        {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": {"low": 1, "high": 20}}},
        trials=3,
    )
    previous = tmp_path / "previous.json"
    board = {
        "rows": [
            {
                "estimator": "sklearn.tree.DecisionTreeClassifier",
                "params": {"max_depth": 17},
                "state": "COMPLETE",
            },
            {
                "estimator": "sklearn.tree.DecisionTreeClassifier",
                "params": {"max_depth": 40},
                "state": "COMPLETE",
            },
            {"estimator": "sklearn.svm.SVC", "params": {"C": 1.0}, "state": "COMPLETE"},
        ]
    }
    previous.write_text(json.dumps(board))
    code, _ = search(tmp_path, spec, f"--warm-start={previous}", monkeypatch=monkeypatch)
    assert code == 0
    rows = sorted(leaderboard(tmp_path)["rows"], key=lambda r: r["trial"])
    # Outside the space (max_depth 40) or of an estimator no longer searched: skipped.
    assert rows[0]["params"] == {"max_depth": 17}
    assert len(rows) == 3


def test_a_worker_fails_the_trial_its_previous_pod_left_running(tmp_path: Path) -> None:
    spec = spec_of(
        {"estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": [2, 3]}}, trials=3
    )
    options = Options(search_id="s", worker=1, workers=2, trials=3)
    first = Worker(spec, WorkflowStore(tmp_path, "w"), options)
    with first._claiming():
        first._enqueue_once()
    orphan = first.study.ask()
    orphan.set_user_attr("worker", 1)  # its Pod died here
    Worker(spec, WorkflowStore(tmp_path, "w"), options).run()
    trials = optuna.load_study(study_name="s", storage=first.storage).get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["error"] == "the worker running this trial ended before it finished"
    assert len(trials) == 3


def test_the_trials_see_exactly_the_refits_training_rows(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    churn_frame(400).to_csv(tmp_path / "data" / "churn.csv", index=False)
    store = WorkflowStore(tmp_path, "w")
    searched = spec_of(
        {"estimator": "sklearn.linear_model.LogisticRegression"}, source="data/churn.csv", target="churn"
    )
    rows = training_rows(searched, store)
    # Every training row is validated once across the folds, and no other row.
    assert sorted(np.concatenate([validate for _, validate in rows.folds])) == list(range(len(rows.x)))
    # The refit: the training runtime with the winner, on the same data and training section.
    refit = MLWorkflowSpec.model_validate(
        {
            **searched.model_dump(by_alias=True, exclude={"automl", "model"}),
            "pattern": "WebService",
            "model": {"estimator": "sklearn.linear_model.LogisticRegression"},
        }
    )
    train_apart(refit, store, "v1")
    trained = holdout.load_rows(store.bentoml_home / "models" / "w" / "v1")
    assert trained is not None and np.array_equal(np.unique(rows.hashes), trained)
    assert len(rows.x) == 320, "400 rows less the 20% holdout, never seen by a trial"


def test_invalid_data_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_of({"estimator": "sklearn.linear_model.LogisticRegression"}, target="no_such_column")
    code, message = search(tmp_path, spec, monkeypatch=monkeypatch)
    assert code == INVALID_INPUT and message["reason"] == "DataInvalid"
    assert "'no_such_column' (spec.data.target) is missing" in message["message"]


def test_the_preset_with_tpe_and_pruning_ranks_real_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of({"estimator": STUB}, trials=8)
    assert spec.automl is not None
    # In process: the API does not take an empty list yet (spec.automl.candidates has min_length 1).
    spec.automl = spec.automl.model_copy(update={"candidates": []})
    options = Options(search_id="s", sampler="tpe", trials=8, pruning="median")
    worker = Worker(spec, WorkflowStore(tmp_path, "w"), options)
    worker.run()
    tally, ranked = write_results(worker)
    message = summary(worker, tally, ranked, 1.0)
    assert tally["complete"] + tally["failed"] + tally["pruned"] == tally["total"] == 8
    # The preset's starting points go first (cheapest family first), at most half the budget.
    rows = sorted(leaderboard(tmp_path)["rows"], key=lambda r: r["trial"])
    assert [r["estimator"].rsplit(".", 1)[1] for r in rows[:4]] == [
        "LogisticRegression",
        "KNeighborsClassifier",
        "HistGradientBoostingClassifier",
        "ExtraTreesClassifier",
    ]
    assert rows[0]["params"] == {"C": 1.0, "max_iter": 1000}
    assert message["best"]["score"] > 0.9, "iris is easy"
