"""One worker of an AutoML model search: `python -m mlworkflow.runtime.search` (a search Pod's program).

    python -m mlworkflow.runtime.search --store DIR --workflow NAME --search-id ID \\
        [--workers N] [--worker I] [--sampler random|grid|tpe] [--trials N] [--time-budget SECONDS] \\
        [--max-failed N] [--pruning none|median|successive-halving] [--warm-start PATH] \\
        [--champion VERSION] [--termination-log PATH]
    (the workflow's spec as JSON in $MLW_SPEC; --worker defaults to $JOB_COMPLETION_INDEX, set by an
    Indexed Job, else 0; the estimator allow-list in $MLW_ALLOWED_ESTIMATOR_PREFIXES)

Any number of workers share one Optuna study, stored in the artifact store as Optuna's journal file (an
append-only log behind a lock file: it works across processes and Pods sharing a volume, as Optuna's
documentation for `JournalFileBackend` says). Each worker takes one trial at a time from the study until the
budget is spent: together they run exactly `--trials` trials (COMPLETE, FAIL and PRUNED all count), because
a trial is only created under a second lock (`claim.lock`) after counting those already created. A worker
helps the trials other workers run before it starts a new one (with pruning: only once the budget is
spent): it takes their folds from the last one down while each trial's own worker takes them from the
first one up (each fold claimed under the same lock, its score written to the trial's user attributes),
so that no trial, the search's last and costliest included, runs one fold at a time while other workers
idle (a trial's cost varies 100-fold with its parameters).

Each trial picks a candidate (`spec.automl.candidates`, or the preset of the task: `mlworkflow.api.search`)
and its parameters, builds the training pipeline (`mlworkflow.runtime.pipeline.build`) and scores it by
k-fold cross-validation on the training rows only: the data is read, checked and split exactly as
`mlworkflow.runtime.train` does (same seed, same holdout share, the champion's rows kept out of the holdout),
so the rows a trial sees are the rows the winner's refit trains on, and the holdout is never seen by the
search. A trial that raises (a bad parameter combination, a fit that fails) is recorded FAIL with its error
and the search goes on, until more than `--max-failed` trials of the study have failed.

Outputs in `<store>/<workflow>/automl/<search-id>/`, rewritten atomically by each worker when it ends:

    journal.log         the Optuna study (every trial, its params, user attrs and per-fold values)
    leaderboard.json    {searchId, metric, direction, trials: counts, rows: [every finished trial],
                        mlflowRunId: the search's MLflow run or null, params: that run's params}
    leaderboard.csv     rank, trial, estimator, params (JSON), cvMean, cvStd, seconds, state, error
    winner.json         {estimator, params, cvMean, cvStd, trial, metric}: the refit's model spec

    progress.json       how the search stands (below), when there is no Lease to report it on

While it runs, each worker reports how the whole study stands — after each trial it finishes, at most every
`PROGRESS_EVERY` seconds, and once more when it ends — as the JSON

    {searchId, metric, complete, failed, pruned, running, trials (the budget), best: {estimator, score} or
     null, started, reported (ISO 8601 UTC)}

on the Lease $MLW_LEASE (its `mlworkflow.io/progress` annotation, in $POD_NAMESPACE: the operator shows it
in status.search while the search Job runs), else in progress.json. Every worker reads the whole study, so
any worker's report is the full picture and the last write wins. A report that cannot be written is logged
and never fails a trial.

Trials are ranked by CV mean (in the metric's own units: errors lower is better), then lower CV std, then
lower trial number, so the winner is the same whoever computes it. The worker ends with one line of JSON
in the termination message: the study's counts, best trial and top ten so far (the last worker's holds the
final winner). Exit code 2 (`INVALID_INPUT`) for invalid data (DataInvalid), an unusable space
(InvalidSearchSpace, ...), too many failed trials (TooManyFailedTrials), or no trial succeeding
(NoTrialSucceeded): the same search would fail the same way.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sklearn.base import clone
from sklearn.metrics import get_scorer
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from mlworkflow.api import exitcodes
from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES
from mlworkflow.api.search import (
    CandidateSpace,
    Choice,
    FloatRange,
    IntRange,
    Search,
    SearchSpace,
    SearchSpaceError,
    search_space,
)
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, ModelSpec
from mlworkflow.runtime import data, holdout, lease, pipeline, tracking
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

Pruning = Literal["none", "median", "successive-halving"]
# spec.training.crossValidation 0 turns CV off for training; a search cannot rank without it.
DEFAULT_FOLDS = 5
LEADERBOARD_TOP = 10
MAX_ERROR_CHARS = 1000
# Enqueued trials (a warm start's best, then the preset's starting points) take at most this share of the
# budget: the rest is left to the sampler.
MAX_ENQUEUED_SHARE = 0.5
WARM_START_TRIALS = 5
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
# The study's user attribute naming the search's MLflow run (the parent of every trial's run).
MLFLOW_RUN_ATTR = "mlflowRunId"
# Seconds: a worker reports progress at most this often (each report is an API write), and always at its end.
PROGRESS_EVERY = 2.0
MAX_ESTIMATOR_CHARS = 256
# A trial's worker waits this long, or 3 times its own slowest fold of the trial if longer, for a fold that
# a helper claimed before it scores that fold itself (the helper may have ended).
HELPER_PATIENCE_SECONDS = 60.0
HELPER_POLL_SECONDS = 0.05


def fold_attr(step: int, what: Literal["claim", "score", "error"]) -> str:
    """The trial's user attribute of fold `step`: `claim` {worker, at (epoch seconds)}, set by the worker
    that takes the fold; `score` (the metric's value) or `error` (the fit's), set when it is done."""
    return f"fold{step}.{what}"


class FoldFailed(Exception):
    """A fold that a helper ran raised: its message is the helper's error, as the trial's would be."""


class SearchFailed(Exception):
    """The search cannot go on: `reason` (CamelCase) and a message for the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Options:
    """What the API does not (yet) say, from the command line."""

    search_id: str
    worker: int = 0
    workers: int = 1
    sampler: Search = "random"
    trials: int = 20
    time_budget: float | None = None
    max_failed: int | None = None
    pruning: Pruning = "none"
    warm_start: Path | None = None
    champion: str | None = None


@dataclass(frozen=True)
class TrainingRows:
    """The rows every trial is scored on: exactly those the refit trains on (`train.train`)."""

    x: pd.DataFrame
    y: pd.Series
    schema: data.FeatureSchema
    hashes: holdout.Hashes  # one per training row, as in the refit's trained-rows.npy
    folds: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]  # (fit, validate) positions into x


def training_rows(spec: MLWorkflowSpec, store: WorkflowStore, champion: str | None = None) -> TrainingRows:
    """Read, check and split the data as `mlworkflow.runtime.train.train` does; raises DataError.

    The rows and folds are training's own (`holdout.prepare`, `holdout.folds`)."""
    task = spec.model.task if spec.model else "classification"
    k = spec.training.cross_validation or DEFAULT_FOLDS
    rows = holdout.prepare(spec, store, champion, k)
    folds = holdout.folds(task, rows.y_train, k, rows.forward)
    return TrainingRows(
        rows.x_train, rows.y_train, rows.schema, rows.trained, list(folds.split(rows.x_train, rows.y_train))
    )


def metric_of(spec: MLWorkflowSpec) -> str:
    """The metric that ranks trials: spec.automl.metric, else the promotion metric, else its default."""
    task = spec.model.task if spec.model else "classification"
    chosen = (spec.automl.metric if spec.automl else None) or spec.promotion.metric
    return chosen or ("r2" if task == "regression" else "f1_macro")


class Worker:
    """One worker's loop over the shared study."""

    def __init__(
        self,
        spec: MLWorkflowSpec,
        store: WorkflowStore,
        options: Options,
        allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
        reporter: lease.Reporter | None = None,
    ) -> None:
        self.spec, self.store, self.options, self.prefixes = spec, store, options, allowed_prefixes
        self.task = spec.model.task if spec.model else "classification"
        self.preprocessing = spec.model.preprocessing if spec.model else ModelSpec().preprocessing
        self.folder = store.base / "automl" / options.search_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = training_rows(spec, store, options.champion)
        self.space = search_space(spec, options.sampler, allowed_prefixes, len(self.rows.x))
        self.grid = self.space.grid() if options.sampler == "grid" else []
        # A grid of fewer points than trials is done when every point is: a repeat would add nothing.
        self.budget = min(options.trials, len(self.grid)) if self.grid else options.trials
        self.metric = metric_of(spec)
        self.maximize = self.metric not in pipeline.LOWER_IS_BETTER
        self.scorer = get_scorer(pipeline.scorer(self.metric, self.rows.y.nunique()))
        self.storage = JournalStorage(JournalFileBackend(str(self.folder / "journal.log")))
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=options.search_id,
            direction="maximize" if self.maximize else "minimize",
            sampler=self._sampler(),
            pruner=self._pruner(),
            load_if_exists=True,
        )
        self.claim = JournalFileOpenLock(str(self.folder / "claim"))
        self.mlflow = tracking.Settings.from_env()
        # Where this worker's trials went: {tracked, runId (the search's run)} or {tracked: false, reason}.
        self.tracking: dict[str, Any] | None = None
        self.reporter = reporter or lease.ProgressFile(self.folder / "progress.json")
        self._reported_at = -math.inf  # time.monotonic() of this worker's last report

    def _sampler(self) -> optuna.samplers.BaseSampler:
        # Each worker its own seed, so that two workers of one search never draw the same sequence; the
        # same (seed, worker) draws the same sequence again.
        seed = self._seed(self.options.worker)
        # A grid search's trials are all enqueued points: its sampler never draws.
        if self.options.sampler == "tpe":
            # constant_liar: the other workers' running trials count as bad ones while they run, so that
            # two workers do not sample next to each other (Optuna's advice for distributed TPE; without
            # it, both workers ran the same costly 480-tree forest in turn on the benchmark).
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def _seed(self, worker: int) -> int:
        """spec.automl.seed mixed with a worker's index (numpy's SeedSequence: independent streams)."""
        base = self.spec.automl.seed if self.spec.automl else 0
        return int(np.random.SeedSequence([base, worker]).generate_state(1)[0])

    def _pruner(self) -> optuna.pruners.BasePruner:
        """Pruning on the running CV mean after each fold (Optuna's pruners compare a trial's intermediate
        values with other trials' at the same step). Median: not before 5 trials finished nor before the
        second fold (one fold is too noisy). Successive halving (Jamieson & Talwalkar 2016, as Optuna
        implements it): rungs after 1, 2, 4 folds, keeping the better half at each."""
        if self.options.pruning == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
        if self.options.pruning == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
        return optuna.pruners.NopPruner()

    @contextmanager
    def _claiming(self) -> Iterator[None]:
        """Held while counting trials and creating one: the budget's only gate. Optuna's own lock guards
        each journal write but not a count followed by a create, which two workers could interleave."""
        self.claim.acquire()
        try:
            yield
        finally:
            self.claim.release()

    def run(self) -> None:
        """Run trials until the budget (trials or time) is spent; raises SearchFailed."""
        with self._claiming():
            self._recover()
            self._enqueue_once()
            self._open_search_run()
        self.report_progress()
        # The workers of one machine share its cores: each takes its share for the native thread pools
        # (OpenMP of HistGradientBoosting, BLAS), as joblib's loky does for scikit-learn's n_jobs.
        # Oversubscribed, HistGradientBoosting on two busy cores ran 10 times slower.
        threads = max(1, len(os.sched_getaffinity(0)) // self.options.workers)
        with threadpool_limits(threads):
            while True:
                # A running trial's folds before a new trial: the workers share each trial's folds, as
                # scikit-learn's searches share (trial, fold) fits, so the last one is never left to one
                # worker, and each new trial is sampled knowing more finished ones. With pruning, a trial's
                # later folds may never be needed: they are helped with only once no trial is left.
                fold = self._helped_fold() if self.options.pruning == "none" else None
                if fold is not None:
                    self._help(*fold)
                elif (trial := self._next_trial()) is not None:
                    self._run_trial(trial)
                else:
                    break
            while (fold := self._helped_fold()) is not None:
                self._help(*fold)

    def _recover(self) -> None:
        """Fail this worker's trials left RUNNING: its previous Pod ended during them (one Pod per index at
        a time), and nobody else will ever finish them."""
        for stale in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if stale.user_attrs.get("worker") == self.options.worker:
                # A FrozenTrial's id is private but is the storage's key of the trial: no public way.
                self.storage.set_trial_user_attr(
                    stale._trial_id, "error", "the worker running this trial ended before it finished"
                )
                self.study.tell(stale.number, state=TrialState.FAIL)

    def _enqueue_once(self) -> None:
        """First worker in: the warm start's best trials, then the preset's starting points, enqueued."""
        if "startedAt" in self.study.user_attrs:
            return
        self.study.set_user_attr("startedAt", time.time())
        if self.grid:
            # The grid's points in a seeded random order, as Optuna's GridSampler takes them (its
            # after_trial stops an optimize() loop, which these workers do not run): each point is one
            # enqueued trial, so workers never take the same point, and a budget under the grid's size
            # gets a fair sample of it.
            order = np.random.default_rng(self._seed(worker=0)).permutation(len(self.grid))
            for point in order[: self.budget]:
                self.study.enqueue_trial({"point": int(point)})
            return
        limit = max(1, int(self.budget * MAX_ENQUEUED_SHARE))
        points = warm_start_points(self.options.warm_start, self.space) if self.options.warm_start else []
        points += [(i, dict(c.start)) for i, c in enumerate(self.space.candidates) if c.start]
        for index, params in points[:limit]:
            self.study.enqueue_trial(optuna_params(index, self.space.candidates[index], params))

    def _open_search_run(self) -> None:
        """The search's MLflow run, parent of the trials' runs: made by the first worker in (under the claim
        lock) and named in the study for the others; a worker that cannot make it logs no trial."""
        if self.mlflow is None:
            return
        known = self.study.user_attrs.get(MLFLOW_RUN_ATTR)
        if known:
            self.tracking = {"tracked": True, "runId": known}
            return
        self.tracking = tracking.log_search(
            self.mlflow, self.store, self.options.search_id, self.tracking_params()
        )
        if self.tracking["tracked"]:
            self.study.set_user_attr(MLFLOW_RUN_ATTR, self.tracking["runId"])

    def tracking_params(self) -> dict[str, str]:
        """The search's options, as its MLflow run's params."""
        options = self.options
        return {
            "metric": self.metric,
            "sampler": options.sampler,
            "trials": str(self.budget),
            "workers": str(options.workers),
            "pruning": options.pruning,
            "timeBudget": str(options.time_budget),
        }

    def _log_trial(self, number: int) -> None:
        """A finished trial as a child run of the search's; after a failure this worker logs no more (a
        server that does not answer would cost every trial its timeout). Never raises for MLflow."""
        parent = (self.tracking or {}).get("runId")
        if self.mlflow is None or not parent:
            return
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number == number]
        (row,) = leaderboard_rows(trials, self.maximize)
        logged = tracking.log_trial(self.mlflow, self.store, self.options.search_id, parent, row)
        if not logged["tracked"]:
            self.tracking = logged

    def _next_trial(self) -> optuna.Trial | None:
        """A new trial of the study, or None when the budget is spent; raises SearchFailed."""
        with self._claiming():
            trials = self.study.get_trials(deepcopy=False)
            failed = sum(t.state == TrialState.FAIL for t in trials)
            if self.options.max_failed is not None and failed > self.options.max_failed:
                raise SearchFailed(
                    "TooManyFailedTrials",
                    f"{failed} trials failed, more than the {self.options.max_failed} allowed; the last: "
                    + next(
                        t.user_attrs.get("error", "") for t in reversed(trials) if t.state == TrialState.FAIL
                    ),
                )
            started = float(self.study.user_attrs["startedAt"])
            if self.options.time_budget is not None and time.time() - started >= self.options.time_budget:
                return None
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and len(trials) >= self.budget:
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", self.options.worker)
            return trial

    def _run_trial(self, trial: optuna.Trial) -> None:
        started = time.monotonic()
        scores: list[float] = []
        try:
            index, params = self._suggest(trial)
            candidate = self.space.candidates[index]
            trial.set_user_attr("estimator", candidate.estimator)
            trial.set_user_attr("params", params)
            mean, std = self._cross_validate(trial, candidate.estimator, params, scores)
        except optuna.TrialPruned:
            self._finish(trial, started, scores, TrialState.PRUNED)
        # Whatever a trial raises (scikit-learn raises ValueError, TypeError, LinAlgError, ... for bad
        # parameter combinations) is that trial's failure, not the search's.
        except Exception as error:
            trial.set_user_attr("error", _error(error))
            self._finish(trial, started, scores, TrialState.FAIL)
        else:
            trial.set_user_attr("cvStd", std)
            self._finish(trial, started, scores, TrialState.COMPLETE, mean)

    def _finish(
        self,
        trial: optuna.Trial,
        started: float,
        scores: list[float],
        state: TrialState,
        value: float | None = None,
    ) -> None:
        trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
        trial.set_user_attr("folds", scores)
        self.study.tell(trial, value, state=state)
        self._log_trial(trial.number)
        self.report_progress()

    def report_progress(self, final: bool = False) -> None:
        """Report how the study stands (see the module's docstring), unless this worker did less than
        `PROGRESS_EVERY` seconds ago and this is not its `final` report. Never raises: progress is for
        display, and a trial or a search must not fail for it."""
        now = time.monotonic()
        if not final and now - self._reported_at < PROGRESS_EVERY:
            return
        self._reported_at = now
        try:
            self.reporter.report(progress(self, self.study.get_trials(deepcopy=False)))
        # Whatever goes wrong (the API server unreachable, refused, a full volume) is logged, and the search
        # goes on.
        except Exception as error:
            print(f"search: progress not reported: {type(error).__name__}: {error}", flush=True)

    def _suggest(self, trial: optuna.Trial) -> tuple[int, dict[str, Any]]:
        """The candidate's index and its parameters' values for this trial."""
        if self.grid:
            # Every grid trial is enqueued with its point (_enqueue_once): this reads it back. An integer, not
            # a categorical, keeps the grid's size out of each trial's record in the journal.
            point = trial.suggest_int("point", 0, len(self.grid) - 1)
            return self.grid[point]
        index = trial.suggest_categorical("candidate", list(range(len(self.space.candidates))))
        candidate = self.space.candidates[index]
        params: dict[str, Any] = {}
        for name, domain in candidate.params.items():
            key = f"{index}.{name}"
            if isinstance(domain, IntRange):
                params[name] = trial.suggest_int(key, domain.low, domain.high, log=domain.log)
            elif isinstance(domain, FloatRange):
                params[name] = trial.suggest_float(key, domain.low, domain.high, log=domain.log)
            elif len(domain.values) == 1:
                params[name] = domain.values[0]
            else:
                # Optuna stores a choice's position: a value may be any JSON (a list, a mapping), which
                # Optuna's categorical distribution cannot hold.
                params[name] = domain.values[trial.suggest_categorical(key, list(range(len(domain.values))))]
        return index, params

    def _cross_validate(
        self, trial: optuna.Trial, estimator: str, params: dict[str, Any], scores: list[float]
    ) -> tuple[float, float]:
        """Mean and standard deviation of the metric over the folds (appended to `scores` in fold order as
        they come); with pruning, the running mean is reported after each fold and the trial may be pruned.

        With other workers, this worker takes the folds from the first up, another worker takes them from
        the last down before it starts a trial of its own (`_helped_fold`), and this one waits for those
        at the end."""
        model = self._model(estimator, params)
        k = len(self.rows.folds)
        # A Trial's id is private but is the storage's key of the trial (its fresh user attributes): no
        # public way.
        done: dict[int, float] = {}
        slowest = 0.0
        while len(scores) < k:
            step = self._own_fold(trial._trial_id, done)
            if step is None:
                done.update(self._helpers_folds(trial._trial_id, done, slowest, model))
            else:
                started = time.monotonic()
                done[step] = self._fold_score(model, step)
                slowest = max(slowest, time.monotonic() - started)
            while len(scores) in done:
                scores.append(done[len(scores)])
                if self.options.pruning != "none":
                    trial.report(float(np.mean(scores)), len(scores) - 1)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
        if not all(math.isfinite(s) for s in scores):
            raise ValueError(f"the {self.metric} of a fold is not a number: {scores}")
        return float(np.mean(scores)), float(np.std(scores))

    def _model(self, estimator: str, params: dict[str, Any]) -> Any:
        spec = ModelSpec(estimator=estimator, params=params, task=self.task, preprocessing=self.preprocessing)
        return pipeline.build(spec, self.rows.schema, self.prefixes)

    def _fold_score(self, model: Any, step: int) -> float:
        """The metric of `model` fitted on fold `step`'s fitting rows, on its validation rows."""
        fit, validate = self.rows.folds[step]
        x, y = self.rows.x, self.rows.y
        fitted = clone(model).fit(x.iloc[fit], y.iloc[fit])
        sign = 1.0 if self.maximize else -1.0  # scikit-learn's error scorers are negated
        return sign * float(self.scorer(fitted, x.iloc[validate], y.iloc[validate]))

    def _claim(self, trial_id: int, step: int) -> None:
        self.storage.set_trial_user_attr(
            trial_id, fold_attr(step, "claim"), {"worker": self.options.worker, "at": time.time()}
        )

    def _own_fold(self, trial_id: int, done: dict[int, float]) -> int | None:
        """The first fold of this worker's trial that nobody took yet, now claimed; None when all are."""
        k = len(self.rows.folds)
        if self.options.workers == 1:
            return next((step for step in range(k) if step not in done), None)
        with self._claiming():
            attrs = self.storage.get_trial(trial_id).user_attrs
            step = next((s for s in range(k) if fold_attr(s, "claim") not in attrs), None)
            if step is not None:
                self._claim(trial_id, step)
            return step

    def _helpers_folds(
        self, trial_id: int, done: dict[int, float], slowest: float, model: Any
    ) -> dict[int, float]:
        """Scores of folds that helpers took, waited for until at least one is there (FoldFailed with a
        helper's error). A fold still unscored `patience` seconds after its claim is scored here."""
        patience = max(HELPER_PATIENCE_SECONDS, 3 * slowest)
        while True:
            attrs = self.storage.get_trial(trial_id).user_attrs
            waiting = [step for step in range(len(self.rows.folds)) if step not in done]
            for step in waiting:
                if fold_attr(step, "error") in attrs:
                    raise FoldFailed(attrs[fold_attr(step, "error")])
            scored = {
                s: float(attrs[fold_attr(s, "score")]) for s in waiting if fold_attr(s, "score") in attrs
            }
            if scored:
                return scored
            for step in waiting:
                if time.time() - float(attrs[fold_attr(step, "claim")]["at"]) > patience:
                    return {step: self._fold_score(model, step)}
            time.sleep(HELPER_POLL_SECONDS)

    def _helped_fold(self) -> tuple[int, int, str, dict[str, Any]] | None:
        """A fold of a trial that another worker runs, now claimed by this one (the last fold nobody took,
        of the trial with most such folds): (trial id, fold, estimator, params); None when there is none."""
        if self.options.workers == 1:
            return None
        k = len(self.rows.folds)
        with self._claiming():
            chosen: tuple[FrozenTrial, list[int]] | None = None
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                attrs = trial.user_attrs
                free = [s for s in range(k) if fold_attr(s, "claim") not in attrs]
                if "params" in attrs and free and (chosen is None or len(free) > len(chosen[1])):
                    chosen = (trial, free)
            if chosen is None:
                return None
            trial, free = chosen
            # A FrozenTrial's id is private but is the storage's key of the trial: no public way.
            self._claim(trial._trial_id, free[-1])
            return trial._trial_id, free[-1], trial.user_attrs["estimator"], trial.user_attrs["params"]

    def _help(self, trial_id: int, step: int, estimator: str, params: dict[str, Any]) -> None:
        """Score fold `step` of another worker's trial into that trial's user attributes."""
        outcome: tuple[str, float | str]
        try:
            outcome = fold_attr(step, "score"), self._fold_score(self._model(estimator, params), step)
        except Exception as error:  # the trial's failure, told by its own worker (see _run_trial)
            outcome = fold_attr(step, "error"), _error(error)
        # Its worker may have finished it meanwhile (pruned, failed, or scored this fold itself).
        with suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(trial_id, *outcome)


def _error(error: Exception) -> str:
    """A trial's error as recorded: a helper's as it wrote it, else the exception's type and message."""
    text = str(error) if isinstance(error, FoldFailed) else f"{type(error).__name__}: {error}"
    return text[:MAX_ERROR_CHARS]


def optuna_params(index: int, candidate: CandidateSpace, params: dict[str, Any]) -> dict[str, Any]:
    """`params` of candidate `index` as the study's parameters (see Worker._suggest), for enqueue_trial."""
    fixed: dict[str, Any] = {"candidate": index}
    for name, value in params.items():
        domain = candidate.params.get(name)
        if isinstance(domain, Choice):
            if len(domain.values) > 1:
                fixed[f"{index}.{name}"] = next(
                    i for i, choice in enumerate(domain.values) if json.dumps(choice) == json.dumps(value)
                )
        elif domain is not None:
            fixed[f"{index}.{name}"] = value
    return fixed


def warm_start_points(path: Path, space: SearchSpace) -> list[tuple[int, dict[str, Any]]]:
    """The best trials of a previous search (its winner.json, or its leaderboard.json's completed rows in
    rank order, at most WARM_START_TRIALS) that are points of this space, each with its candidate's index.
    A trial of an estimator no longer listed, or outside its new space, is skipped."""
    saved = json.loads(path.read_text())
    if isinstance(saved, dict) and "rows" in saved:
        rows = [r for r in saved["rows"] if r.get("state") == "COMPLETE"]
    else:
        rows = [saved]
    points = []
    for row in rows:
        index = next(
            (
                i
                for i, candidate in enumerate(space.candidates)
                if candidate.estimator == row.get("estimator") and candidate.contains(row.get("params", {}))
            ),
            None,
        )
        if index is not None and (index, row["params"]) not in points:
            points.append((index, row["params"]))
    return points[:WARM_START_TRIALS]


# --- results ---------------------------------------------------------------------------------------------


def rank(rows: list[dict[str, Any]], maximize: bool) -> list[dict[str, Any]]:
    """`rows` with a `rank`, best first: completed trials by CV mean (higher or lower is better as the
    metric says), then lower CV std, then lower trial number; then the pruned and failed (rank None) by
    trial number."""
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    complete.sort(key=lambda r: (-r["cvMean"] if maximize else r["cvMean"], r["cvStd"], r["trial"]))
    others = sorted((r for r in rows if r["state"] != "COMPLETE"), key=lambda r: r["trial"])
    return [{**r, "rank": i + 1} for i, r in enumerate(complete)] + [{**r, "rank": None} for r in others]


def leaderboard_rows(trials: Sequence[FrozenTrial], maximize: bool) -> list[dict[str, Any]]:
    """Every finished trial, ranked (`rank`)."""
    rows = []
    for trial in trials:
        if trial.state not in FINISHED:
            continue
        attrs = trial.user_attrs
        folds = attrs.get("folds") or []
        rows.append(
            {
                "trial": trial.number,
                "estimator": attrs.get("estimator"),
                "params": attrs.get("params"),
                # A pruned trial's mean is over the folds it ran.
                "cvMean": trial.value
                if trial.state == TrialState.COMPLETE
                else (float(np.mean(folds)) if folds else None),
                "cvStd": attrs.get("cvStd"),
                "seconds": attrs.get("seconds"),
                "state": trial.state.name,
                "error": attrs.get("error"),
                "worker": attrs.get("worker"),
            }
        )
    return rank(rows, maximize)


def counts(trials: Sequence[FrozenTrial], budget: int) -> dict[str, int]:
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "total": budget,
    }


def write_results(worker: Worker) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """leaderboard.json, leaderboard.csv and (once a trial completed) winner.json, each replaced atomically;
    returns the counts and the ranked rows."""
    trials = worker.study.get_trials(deepcopy=False)
    rows = leaderboard_rows(trials, worker.maximize)
    tally = counts(trials, worker.budget)
    board = {
        "searchId": worker.options.search_id,
        "metric": worker.metric,
        "direction": "maximize" if worker.maximize else "minimize",
        "trials": tally,
        "rows": rows,
        # MLflow: the search's run (None: not tracked, or not logged), and its params for the sync that
        # logs what the workers could not (`tracking.sync`).
        "mlflowRunId": worker.study.user_attrs.get(MLFLOW_RUN_ATTR),
        "params": worker.tracking_params(),
    }
    _replace(worker.folder / "leaderboard.json", json.dumps(board, indent=1), worker.options.worker)
    _replace(worker.folder / "leaderboard.csv", _csv(rows), worker.options.worker)
    if rows and rows[0]["rank"] == 1:
        best = rows[0]
        winner = {
            "estimator": best["estimator"],
            "params": best["params"],
            "cvMean": best["cvMean"],
            "cvStd": best["cvStd"],
            "trial": best["trial"],
            "metric": worker.metric,
        }
        _replace(worker.folder / "winner.json", json.dumps(winner, indent=1), worker.options.worker)
    return tally, rows


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = ["rank", "trial", "estimator", "params", "cvMean", "cvStd", "seconds", "state", "error"]
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "params": json.dumps(row["params"], sort_keys=True)})
    return out.getvalue()


def _replace(path: Path, text: str, worker: int) -> None:
    """Write `path` whole or not at all (a reader never sees half a file): a temporary file per worker,
    then an atomic rename over it."""
    temporary = path.with_name(f".{path.name}.{worker}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def summary(
    worker: Worker, tally: dict[str, int], rows: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """The termination message's content (see the module's docstring); scores and float parameters of the
    leaderboard are rounded for display, the best trial's parameters are exact (they make the refit)."""
    best = rows[0] if rows and rows[0]["rank"] == 1 else None
    return {
        "status": "ok",
        "searchId": worker.options.search_id,
        "worker": worker.options.worker,
        "metric": worker.metric,
        "trials": {k: tally[k] for k in ("complete", "failed", "pruned", "total")},
        "best": {
            "estimator": best["estimator"],
            "params": best["params"],
            "score": best["cvMean"],
            "std": best["cvStd"],
            "trial": best["trial"],
        }
        if best
        else None,
        "leaderboard": [
            {
                "rank": r["rank"],
                "estimator": r["estimator"],
                "params": {k: _round(v) for k, v in (r["params"] or {}).items()},
                "score": _round(r["cvMean"]),
                "std": _round(r["cvStd"]),
                "seconds": r["seconds"],
            }
            for r in rows[:LEADERBOARD_TOP]
            if r["rank"] is not None
        ],
        "seconds": round(seconds, 3),
        **({"tracking": worker.tracking} if worker.tracking is not None else {}),
    }


def _round(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value


def progress(worker: Worker, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """How the search stands, as the workers report it (see the module's docstring): its counts, the best
    trial so far (ranked as the leaderboard is), and when it started (the first worker's clock)."""
    tally = counts(trials, worker.budget)
    rows = leaderboard_rows(trials, worker.maximize)
    best = rows[0] if rows and rows[0]["rank"] == 1 else None
    started = worker.study.user_attrs.get("startedAt")
    return {
        "searchId": worker.options.search_id,
        "metric": worker.metric,
        **{k: tally[k] for k in ("complete", "failed", "pruned", "running")},
        "trials": worker.budget,
        "best": {"estimator": str(best["estimator"])[:MAX_ESTIMATOR_CHARS], "score": best["cvMean"]}
        if best
        else None,
        "started": _iso(float(started)) if started is not None else None,
        "reported": _iso(time.time()),
    }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reporter_from_env(folder: Path) -> lease.Reporter:
    """The Lease $MLW_LEASE's annotation (in $POD_NAMESPACE) when it names one, else `folder`/progress.json;
    the file too when the Pod has no API access (its token or the API server's address missing)."""
    name = os.environ.get("MLW_LEASE")
    if name:
        try:
            return lease.Annotation(name, os.environ.get("POD_NAMESPACE") or "default")
        except (OSError, KeyError) as error:
            print(f"search: no progress on Lease {name} ({error}); in progress.json instead", flush=True)
    return lease.ProgressFile(folder / "progress.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="root of the artifact store")
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--search-id", required=True, help="the study: <store>/<workflow>/automl/<id>/")
    parser.add_argument("--workers", type=int, help="workers of the search (default spec.automl.parallelism)")
    parser.add_argument("--worker", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", "0")))
    parser.add_argument("--sampler", choices=["random", "grid", "tpe"], help="default spec.automl.search")
    parser.add_argument("--trials", type=int, help="trials of the whole search (default spec.automl.trials)")
    parser.add_argument(
        "--time-budget", type=float, help="seconds from the search's start; no new trial after"
    )
    parser.add_argument("--max-failed", type=int, help="the search fails when more trials than this failed")
    parser.add_argument("--pruning", choices=["none", "median", "successive-halving"], default="none")
    parser.add_argument("--warm-start", type=Path, help="a previous search's winner.json or leaderboard.json")
    parser.add_argument("--champion", help="the served version: its training rows stay out of the holdout")
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    prefixes = tuple(p for p in os.environ.get("MLW_ALLOWED_ESTIMATOR_PREFIXES", "").split(",") if p)
    started = time.monotonic()
    spec = MLWorkflowSpec.model_validate_json(os.environ["MLW_SPEC"])
    automl = spec.automl
    options = Options(
        search_id=args.search_id,
        worker=args.worker,
        workers=args.workers or (automl.parallelism if automl else 1),
        sampler=args.sampler or (automl.search if automl else "random"),
        trials=args.trials or (automl.trials if automl else 20),
        time_budget=args.time_budget,
        max_failed=args.max_failed,
        pruning=args.pruning,
        warm_start=args.warm_start,
        champion=args.champion,
    )
    if not 0 <= options.worker < options.workers:
        parser.error(f"--worker {options.worker} is not one of the {options.workers} workers")
    error: dict[str, Any] = {"status": "error", "searchId": options.search_id, "worker": options.worker}
    try:
        store = WorkflowStore(args.store, args.workflow)
        reporter = reporter_from_env(store.base / "automl" / options.search_id)
        worker = Worker(spec, store, options, prefixes or DEFAULT_ALLOWED_PREFIXES, reporter)
    except data.DataError as failure:
        report({**error, "reason": "DataInvalid", "message": str(failure)}, args.termination_log)
        return exitcodes.INVALID_INPUT
    except SearchSpaceError as failure:
        report({**error, "reason": failure.reason, "message": str(failure)}, args.termination_log)
        return exitcodes.INVALID_INPUT
    failed: SearchFailed | None = None
    try:
        worker.run()
    except SearchFailed as failure:
        failed = failure
    tally, rows = write_results(worker)
    worker.report_progress(final=True)
    result = summary(worker, tally, rows, time.monotonic() - started)
    if failed is None and not tally["complete"] and not tally["running"]:
        failed = SearchFailed(
            "NoTrialSucceeded", f"none of the {tally['failed']} trials finished: see leaderboard.csv"
        )
    if failed is not None:
        report({**result, **error, "reason": failed.reason, "message": str(failed)}, args.termination_log)
        return exitcodes.INVALID_INPUT
    report(result, args.termination_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
