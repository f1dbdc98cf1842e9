"""`mlworkflow run FILE.yaml`: one MLWorkflow on this machine, no cluster.

The same planner as the operator decides; the same runtimes run, as local processes instead of Pods:
training (`mlworkflow.runtime.train`), serving (`bentoml serve` on 127.0.0.1), drift checks
(`mlworkflow.runtime.drift`, on the monitoring schedule), OnlineLearning's learner
(`mlworkflow.runtime.learn`, with its lock file instead of a Lease: its progress is read from
`<store>/<workflow>/online/progress.json`) and serving in follow mode, and AutoML's search workers (their
progress read from `<store>/<workflow>/automl/<version>/progress.json`, as the operator reads the search
Lease's annotation). The status the operator would write is kept in `<store>/<workflow>/status.json`, with
a small HTML page beside it (`index.html`: the story drawn by `mlworkflow.runtime.story`, and tables).

A workflow with `spec.tracking.mlflow` logs to MLflow as on a cluster: every runtime gets the same
settings (namespace `local`; the tracking server by default $MLFLOW_TRACKING_URI, credentials from this
environment), and the same sync (`mlworkflow.runtime.tracking`) carries the decisions to the Model Registry
when the planner asks for one (`mlworkflow.desired.tracking`).

`mlworkflow retrain FILE.yaml` asks a running runner for a retraining (trigger Manual), as the
`mlworkflow.io/retrain` annotation asks the operator: it writes a new value to `<store>/<workflow>/retrain`,
which the runner reads as the annotation.

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the runner and every process it started (`stop_signals`).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Pattern, promotion_metric
from mlworkflow.desired import cron, tracking
from mlworkflow.desired.children import (
    Workflow,
    model_spec_hash,
    monitoring_args,
    tracking_job_name,
    trained_spec,
    training_args,
)
from mlworkflow.desired.lifecycle import (
    BatchRun,
    DriftCheck,
    Event,
    LearnerState,
    Observed,
    RunState,
    SearchRun,
    ServingState,
    SyncRequest,
    TrackingSync,
    TrainingRun,
    TrainRequest,
    batch_result,
    search_result,
)
from mlworkflow.desired.plan import plan
from mlworkflow.desired.validation import check_spec
from mlworkflow.runtime import story, termination
from mlworkflow.runtime.store import WorkflowStore

BIN = Path(sys.executable).parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LEARNER_RESTART_SECONDS = 5.0  # a learner that ended is started again at most this often (a Pod's restarts)
NAMESPACE = "local"  # what the runtimes are told (`desired.tracking.MLflowSettings.env`)


@contextlib.contextmanager
def stop_signals(stop: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Inside, SIGINT, SIGTERM and SIGHUP call `stop(signal)`, which must only note it (it runs in the main
    thread between any two bytecodes: no lock, no I/O); the previous handlers are back on exit. Main thread
    only.

    Installed whatever was inherited: a shell that starts a job in the background makes it ignore SIGINT (and
    Python then raises no KeyboardInterrupt), and SIGTERM or SIGHUP would end the process at once, leaving
    its children running (each in a session of its own, out of reach of the terminal's signals)."""
    previous = {
        signum: signal.signal(signum, lambda received, _frame: stop(signal.Signals(received)))
        for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Process:
    """A runtime started locally: its process, its log, and the file its termination message goes to."""

    popen: subprocess.Popen[bytes]
    log: Path
    result_file: Path
    started_at: datetime
    meta: dict[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None and self.finished_at is None:
            self.finished_at = datetime.now(UTC)
        return code

    def result(self) -> dict[str, Any]:
        """The runtime's summary; an error summary saying so when it is cut or not JSON; else the log tail."""
        with contextlib.suppress(OSError):
            result = termination.read(self.result_file.read_text(errors="replace"))
            if result:
                return result
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:] if self.log.exists() else []
        return {"status": "error", "message": "\n".join(tail) or f"exited with {self.popen.returncode}"}

    def stop(self, grace: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


BatchTrigger = Literal["Promotion", "Schedule", "Manual"]


@dataclass
class LocalBatchRun:
    """A batch run (Forecast) of the local runner: one process per index, as the Indexed Job's Pods."""

    id: str
    version: str
    trigger: BatchTrigger
    indexes: list[Process]
    predict_request: str | None = None

    def observed(self) -> BatchRun:
        """As the operator observes a batch Job: running until every index ended; the indexes' summaries
        added up."""
        codes = [p.poll() for p in self.indexes]
        if any(code is None for code in codes):
            return BatchRun(
                self.id, self.version, self.trigger, "Running", predict_request=self.predict_request
            )
        failed = any(code != 0 for code in codes)
        result, failures = batch_result([p.result() for p in self.indexes])
        return BatchRun(
            self.id,
            self.version,
            self.trigger,
            "Failed" if failed else "Succeeded",
            result,
            failures if failed else "",
            max(p.finished_at or p.started_at for p in self.indexes),
            self.predict_request,
        )


@dataclass
class LocalSearch:
    """A model search (AutoML) of the local runner: one process per worker, as the search Job's Pods."""

    request: TrainRequest
    spec_hash: str
    workers: list[Process]
    progress: Path  # the workers' progress report (the search Lease's annotation on a cluster)

    def observed(self) -> SearchRun:
        """As the operator observes a search Job: running until every worker ended, with the workers' latest
        progress report meanwhile."""
        codes = [p.poll() for p in self.workers]
        train = self.request
        if any(code is None for code in codes):
            return SearchRun(
                train.version, train.trigger, self.spec_hash, "Running", progress=_request(self.progress)
            )
        succeeded = all(code == 0 for code in codes)
        result, failure = search_result([p.result() for p in self.workers], succeeded)
        return SearchRun(
            train.version,
            train.trigger,
            self.spec_hash,
            "Succeeded" if succeeded else "Failed",
            result,
            "" if succeeded else failure,
            max(p.finished_at or p.started_at for p in self.workers),
            train.champion,
            train.drift_report,
            train.retrain_request,
        )


@dataclass
class LocalSync:
    """An MLflow sync of the local runner (`mlworkflow.desired.tracking`): one process, as the sync Job."""

    name: str
    request: SyncRequest
    process: Process

    def observed(self) -> TrackingSync:
        """As the operator observes a sync Job."""
        code = self.process.poll()
        sync = self.request
        if code is None:
            return TrackingSync(self.name, sync.digest, sync.attempt, "Running")
        result = self.process.result()
        return TrackingSync(
            self.name,
            sync.digest,
            sync.attempt,
            "Succeeded" if code == 0 else "Failed",
            result,
            "" if code == 0 else str(result.get("message") or ""),
            self.process.finished_at,
        )


def _request(path: Path) -> str | None:
    """A local annotation: what `mlworkflow retrain` or `mlworkflow predict` wrote last."""
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


class RunnerError(RuntimeError):
    """The workflow cannot run locally as written; the message says what to change."""


class LocalRunner:
    def __init__(
        self,
        name: str,
        spec: MLWorkflowSpec,
        store_root: Path,
        port: int = 3000,
        drift_every: float | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        default_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        refusal = check_spec(spec, DEFAULT_ALLOWED_PREFIXES, default_uri)
        if refusal:
            raise RunnerError(f"{refusal.reason}: {refusal.message}")
        self.tracking = tracking.settings(spec, NAMESPACE, name, default_uri)
        self.name, self.spec, self.port, self.drift_every, self.say = name, spec, port, drift_every, say
        self.store = WorkflowStore(store_root.resolve(), name)
        self.store.base.mkdir(parents=True, exist_ok=True)
        self.work = self.store.base / "local"
        self.work.mkdir(exist_ok=True)
        self.status = MLWorkflowStatus()
        self.trainings: dict[str, Process] = {}
        self.serving: Process | None = None
        self.drift_checks: list[Process] = []
        self.batch_runs: dict[str, LocalBatchRun] = {}
        self.searches: dict[str, LocalSearch] = {}
        self.learner: Process | None = None
        self.syncs: dict[str, LocalSync] = {}
        self.started_at = datetime.now(UTC)
        self.last_drift_check = self.last_batch_schedule = self.started_at
        self._last_line = ""
        self._story: tuple[story.Story, str] | None = None  # the last story drawn, and its HTML
        self._drift_requested = False
        self.stop_signal: signal.Signals | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- one step, as the operator's reconcile ---------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        observed = Observed(
            generation=1,
            spec_hash=model_spec_hash(self.spec),
            status=self.status,
            runs=[self._run(version, p) for version, p in self.trainings.items()],
            serving=self._serving_state(),
            drift=self._latest_drift(),
            created_at=self.started_at,
            retrain_request=_request(self.store.retrain_request),
            batch_runs=[run.observed() for run in self.batch_runs.values()],
            predict_request=_request(self.store.predict_request),
            searches=[search.observed() for search in self.searches.values()],
            learner=self._learner_state(now) if self.spec.pattern == Pattern.ONLINE_LEARNING else None,
            syncs=[sync.observed() for sync in self.syncs.values()],
        )
        step = plan(self.spec, observed, now, self.endpoint, self.tracking)
        if step.train is not None:
            if self.spec.pattern == Pattern.AUTOML:
                self._search(step.train)
            else:
                self._train(step.train)
        if step.refit is not None:
            self._train(step.refit)
        if (
            self.spec.pattern in (Pattern.WEB_SERVICE, Pattern.AUTOML, Pattern.ONLINE_LEARNING)
            and step.deploy is not None
            and (
                self.serving is None
                or self.serving.meta["version"] != step.deploy
                or self.serving.poll() is not None
            )
        ):
            self._serve(step.deploy)
        if self.spec.pattern == Pattern.ONLINE_LEARNING and step.deploy is not None:
            self._learn(step.deploy, now)
        if step.batch_run is not None:
            run = step.batch_run
            self._predict(f"{self.name}-predict-{run.suffix}", run.version, run.trigger, run.predict_request)
        elif step.deploy is not None and self._batch_schedule_due(now):
            self._predict(f"{self.name}-predict-{now:%Y%m%d%H%M}", step.deploy, "Schedule", None)
        if step.deploy is not None and self._drift_due(now):
            self._check_drift(step.deploy, now)
        if step.sync is not None:
            self._sync(step.sync)
        self.status = step.status
        for event in step.events:
            self._event(event)
        self._progress()
        self._write_status()

    def run(self, until: Callable[[], bool] | None = None, interval: float = 1.0) -> None:
        """Tick until `until()` says so or a stop signal arrives, then stop every process. In the main thread
        it takes SIGINT, SIGTERM and SIGHUP itself; in another, the main thread passes them on
        (`request_stop`)."""
        batch = self.spec.batch
        where = (
            f"predictions in {self.store.root / batch.output}"
            if batch is not None
            else f"predictions at {self.endpoint}/predict"
        )
        self.say(f"running {self.name}: store {self.store.base}, {where}")
        in_main_thread = threading.current_thread() is threading.main_thread()
        with stop_signals(self.request_stop) if in_main_thread else contextlib.nullcontext():
            try:
                # A signal only sets `stop_signal`: a step is never cut between starting a process and
                # recording it, so no process escapes `stop()`.
                while self.stop_signal is None and (until is None or not until()):
                    self.tick()
                    time.sleep(interval)
            finally:
                if self.stop_signal is not None:
                    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                        self.say(f"stopping ({self.stop_signal.name})")
                self.stop()

    def request_stop(self, received: signal.Signals) -> None:
        """Stop after the current step, as `received` asks (safe in a signal handler or another thread)."""
        self.stop_signal = self.stop_signal or received

    def stop(self) -> None:
        for process in [
            *self.trainings.values(),
            *self.drift_checks,
            *(p for run in self.batch_runs.values() for p in run.indexes),
            *(p for search in self.searches.values() for p in search.workers),
            *([self.learner] if self.learner else []),
            *([self.serving] if self.serving else []),
            *(sync.process for sync in self.syncs.values()),
        ]:
            process.stop()

    # --- carrying the plan out ------------------------------------------------------------------------

    def _start(self, kind: str, argv: list[str], env: dict[str, str] | None = None, **meta: Any) -> Process:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        log = self.work / f"{kind}-{stamp}.log"
        result_file = self.work / f"{kind}-{stamp}.json"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={
                    **os.environ,
                    "MLW_TERMINATION_LOG": str(result_file),
                    **(self.tracking.env(NAMESPACE) if self.tracking else {}),
                    **(env or {}),
                },
            )
        return Process(popen, log, result_file, datetime.now(UTC), meta)

    def _workflow(self) -> Workflow:
        return Workflow(self.name, NAMESPACE, "local", self.spec)

    def _train(self, train: TrainRequest) -> None:
        workflow = self._workflow()
        argv = [
            sys.executable,
            "-m",
            "mlworkflow.runtime.train",
            *training_args(workflow, train, str(self.store.root)),
        ]
        env = {
            "MLW_SPEC": trained_spec(self.spec, train).model_dump_json(by_alias=True, exclude_none=True),
            "MLW_SPEC_HASH": model_spec_hash(self.spec),
        }
        self.trainings[train.version] = self._start(
            "train", argv, env, request=train, spec_hash=model_spec_hash(self.spec)
        )

    def _search(self, train: TrainRequest) -> None:
        """AutoML: `spec.automl.parallelism` search workers on one study, as the search Job's Pods."""
        automl = self.spec.automl
        assert automl is not None
        warm = self.store.base / "automl" / (train.champion or "") / "leaderboard.json"
        common = [
            f"--store={self.store.root}",
            f"--workflow={self.name}",
            f"--search-id={train.version}",
            f"--workers={automl.parallelism}",
            f"--sampler={automl.search}",
            f"--trials={automl.trials}",
            f"--max-failed={automl.max_failed_trials}",
            f"--pruning={automl.pruning}",
            *([f"--time-budget={automl.time_budget_seconds}"] if automl.time_budget_seconds else []),
            *([f"--warm-start={warm}"] if train.champion and warm.exists() else []),
            *([f"--champion={train.champion}"] if train.champion else []),
        ]
        env = {"MLW_SPEC": self.spec.model_dump_json(by_alias=True, exclude_none=True)}
        workers = [
            self._start(
                f"search-{worker}",
                [sys.executable, "-m", "mlworkflow.runtime.search", *common, f"--worker={worker}"],
                env,
            )
            for worker in range(automl.parallelism)
        ]
        progress = self.store.base / "automl" / train.version / "progress.json"
        self.searches[train.version] = LocalSearch(train, model_spec_hash(self.spec), workers, progress)

    def _sync(self, sync: SyncRequest) -> None:
        """MLflow: the decisions in the Model Registry, by the sync Job's program."""
        name = tracking_job_name(self._workflow(), sync)
        argv = [
            sys.executable,
            "-m",
            "mlworkflow.runtime.tracking",
            f"--store={self.store.root}",
            f"--workflow={self.name}",
            f"--digest={sync.digest}",
        ]
        env = {"MLW_TRACKING_DECISIONS": json.dumps(sync.decisions, sort_keys=True)}
        self.syncs[name] = LocalSync(name, sync, self._start("track", argv, env))

    def _learn(self, start: str, now: datetime) -> None:
        """OnlineLearning: one learner from `start` (the promoted version), as the learner Deployment runs
        it: a new start version replaces it (the old one stops first), one that ended starts again."""
        learner = self.learner
        if learner is not None and learner.meta["start"] == start and learner.poll() is None:
            return
        if learner is not None and learner.meta["start"] == start and learner.finished_at is not None:
            if (now - learner.finished_at).total_seconds() < LEARNER_RESTART_SECONDS:
                return
            self.say(f"{now:%H:%M:%S} ! the learner ended ({learner.result().get('message', '')}); again")
        if learner is not None:
            learner.stop()
        argv = [
            sys.executable,
            "-m",
            "mlworkflow.runtime.learn",
            f"--store={self.store.root}",
            f"--workflow={self.name}",
        ]
        env = {
            "MLW_SPEC": self.spec.model_dump_json(by_alias=True, exclude_none=True),
            "MLW_START_VERSION": start,
            "HOSTNAME": "local-learner",
        }
        self.learner = self._start("learn", argv, env, start=start)

    def _learner_state(self, now: datetime) -> LearnerState | None:
        """The learner as the operator sees its Lease: held while its process runs; its progress report."""
        if self.learner is None:
            return None
        running = self.learner.poll() is None
        return LearnerState(
            f"local-learner-{self.learner.popen.pid}" if running else None,
            now + timedelta(seconds=LEARNER_RESTART_SECONDS) if running else None,
            _request(self.store.online_progress),
        )

    def _serve(self, version: str) -> None:
        if self.serving is not None:
            self.serving.stop()  # one local port: the old version stops before the new one starts
        argv = [
            str(BIN / "bentoml"),
            "serve",
            "mlworkflow.runtime.serve:ModelService",
            "--host=127.0.0.1",
            f"--port={self.port}",
        ]
        env = {
            "BENTOML_HOME": str(self.store.bentoml_home),
            "MODEL_TAG": f"{self.name}:{version}",
            "HOSTNAME": "local",
            "BENTOML_DO_NOT_TRACK": "true",
            # OnlineLearning: serve the learner's newest snapshot of `version`, swapped in without a restart.
            **({"MLW_FOLLOW_LATEST": "1"} if self.spec.pattern == Pattern.ONLINE_LEARNING else {}),
        }
        self.serving = self._start("serve", argv, env, version=version)

    def _predict(self, run_id: str, version: str, trigger: BatchTrigger, predict_request: str | None) -> None:
        """A batch run: `spec.batch.parallelism` processes, as the Indexed Job's Pods."""
        assert self.spec.batch is not None
        indexes = self.spec.batch.parallelism
        env = {"MLW_SPEC": self.spec.model_dump_json(by_alias=True, exclude_none=True)}
        processes = [
            self._start(
                f"predict-{index}",
                [
                    sys.executable,
                    "-m",
                    "mlworkflow.runtime.predict",
                    f"--store={self.store.root}",
                    f"--workflow={self.name}",
                    f"--version={version}",
                    f"--run-id={run_id}",
                    f"--indexes={indexes}",
                    f"--index={index}",
                ],
                env,
            )
            for index in range(indexes)
        ]
        self.batch_runs[run_id] = LocalBatchRun(run_id, version, trigger, processes, predict_request)

    def _batch_schedule_due(self, now: datetime) -> bool:
        """`spec.batch.schedule` fired since the last look, and no run runs (concurrencyPolicy Forbid)."""
        schedule = self.spec.batch.schedule if self.spec.batch else None
        if not schedule or cron.last_fire(schedule, self.last_batch_schedule, now) is None:
            return False
        self.last_batch_schedule = now
        return all(run.observed().state != "Running" for run in self.batch_runs.values())

    def _drift_due(self, now: datetime) -> bool:
        if any(p.poll() is None for p in self.drift_checks):
            return False
        if self._drift_requested:
            self._drift_requested = False
            return True
        if self.drift_every is not None:
            return (now - self.last_drift_check).total_seconds() >= self.drift_every
        return cron.last_fire(self.spec.monitoring.schedule, self.last_drift_check, now) is not None

    def _check_drift(self, version: str, now: datetime) -> None:
        self.last_drift_check = now
        argv = [
            sys.executable,
            "-m",
            "mlworkflow.runtime.drift",
            *monitoring_args(self.name, self.spec, version, str(self.store.root)),
        ]
        self.drift_checks.append(self._start("drift", argv))

    def request_drift_check(self) -> None:
        """Check at the next tick, whatever the schedule (the local `kubectl create job --from=cronjob`)."""
        self._drift_requested = True

    # --- observing --------------------------------------------------------------------------------------

    def _run(self, version: str, process: Process) -> TrainingRun:
        code = process.poll()
        request: TrainRequest = process.meta["request"]
        trigger, spec_hash = request.trigger, process.meta["spec_hash"]
        if code is None:
            return TrainingRun(
                version, trigger, spec_hash, "Running", retrain_request=request.retrain_request
            )
        result = process.result()
        state: RunState = "Succeeded" if code == 0 and result.get("status") == "ok" else "Failed"
        return TrainingRun(
            version,
            trigger,
            spec_hash,
            state,
            result,
            result.get("message", ""),
            process.finished_at,
            request.retrain_request,
        )

    def _serving_state(self) -> ServingState:
        if self.serving is None or self.serving.poll() is not None:
            return ServingState()
        try:
            with urllib.request.urlopen(f"{self.endpoint}/readyz", timeout=1) as response:
                ready = response.status == 200
        except OSError:
            ready = False
        return ServingState(self.serving.meta["version"], ready)

    def _latest_drift(self) -> DriftCheck | None:
        finished = [p for p in self.drift_checks if p.poll() is not None]
        if not finished:
            return None
        latest = max(finished, key=lambda p: p.started_at)
        return DriftCheck(latest.log.stem, latest.started_at, latest.result())

    # --- reporting ------------------------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        mark = "!" if event.type == "Warning" else "·"
        self.say(f"{datetime.now(UTC):%H:%M:%S} {mark} {event.reason}: {event.message}")

    def _progress(self) -> None:
        model = self.status.model
        name = promotion_metric(self.spec)
        metric = (name, model.metrics[name]) if model and name in model.metrics else None
        drift = self.status.drift
        line = (
            f"phase={self.status.phase} model={model.version if model else '-'}"
            + (f" {metric[0]}={metric[1]:.3f}" if metric else "")
            + (f" drift={drift.share:.2f}" if drift and drift.share is not None else "")
            + f" retrains={self.status.retrains}"
            + self._search_progress()
            + self._online_progress()
        )
        if line != self._last_line:
            self.say(f"{datetime.now(UTC):%H:%M:%S}   {line}")
            self._last_line = line

    def _online_progress(self) -> str:
        online = self.status.online
        if online is None:
            return ""
        return (
            f" samples={online.samples_seen} batches={online.batches_applied}"
            f" quarantined={online.batches_quarantined}"
        )

    def _search_progress(self) -> str:
        """A running search as status.search shows it (its workers' latest report): trials finished of the
        budget, failed, pruned; best so far; the time budget left."""
        search, automl = self.status.search, self.spec.automl
        if search is None or search.state != "Running" or automl is None:
            return ""
        if search.reported_at is None:
            return f" searching {search.version}"
        finished = (search.trials_complete or 0) + (search.trials_failed or 0) + (search.trials_pruned or 0)
        best = f" best={search.best_score:.4f}" if search.best_score is not None else ""
        left = ""
        if automl.time_budget_seconds and search.started_at is not None:
            spent = (datetime.now(UTC) - search.started_at).total_seconds()
            left = f" {max(0, automl.time_budget_seconds - spent):.0f}s left"
        return (
            f" searching {search.version}: {finished}/{search.trials} trials "
            f"({search.trials_failed or 0} failed, {search.trials_pruned or 0} pruned){best}{left}"
        )

    def _write_status(self) -> None:
        status = self.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        _write_atomically(self.store.base / "status.json", json.dumps(status, indent=2))
        _write_atomically(
            self.store.base / "index.html",
            status_page(self.name, self.status, self.store, promotion_metric(self.spec), self._story_html()),
        )

    def _story_html(self) -> str:
        """The story figure for the status page, drawn again only when the story changed (a drawing costs
        ~70 ms; a tick runs every second); plotly.js is written once beside the page."""
        served = self.status.model.version if self.status.model else None
        outcomes = {r.version: (r.outcome, r.reason or "") for r in self.status.history}
        now = story.read(self.store, promotion_metric(self.spec), served, outcomes)
        if self._story is None or self._story[0] != now:
            script = story.plotly_js(self.store.base)
            self._story = now, f'<p>{story.EXPLAINED}</p><script src="{script}"></script>\n{story.embed(now)}'
        return self._story[1]


def _write_atomically(path: Path, text: str) -> None:
    """Readers (a browser, a script polling status.json) never see a half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def status_page(
    name: str, status: MLWorkflowStatus, store: WorkflowStore, metric: str, story_html: str = ""
) -> str:
    """The workflow at a glance: its story drawn (`story_html`, from `mlworkflow.runtime.story`), versions
    with their cards and metrics, decisions (both models' `metric` on the rows that decided), drift
    reports."""
    rows = []
    for record in status.history:
        card = store.model_dir(record.version) / "card.md"
        report = (
            f'<a href="../{html.escape(record.drift_report)}">drift report</a>' if record.drift_report else ""
        )
        card_link = f'<a href="{card.relative_to(store.base)}">card</a>' if card.exists() else ""
        judged, champion = record.holdout, record.champion
        held_out = (
            f"{judged.rows}"
            + (f" ({judged.excluded_rows} seen by {record.champion})" if record.champion else "")
            if judged
            else ""
        )
        rows.append(
            f"<tr><td>{record.version}</td><td>{record.trigger}</td>"
            f"<td>{record.outcome}{f' ({record.reason})' if record.reason else ''}</td>"
            f"<td>{_score(record.metrics, metric)}</td>"
            f"<td>{_score(record.champion_metrics, metric)}{f' ({champion})' if champion else ''}</td>"
            f"<td>{held_out}</td><td>{html.escape(record.message)}</td><td>{card_link} {report}</td></tr>"
        )
    reports = sorted((store.base / "drift").glob("*/report.html"), reverse=True)
    links = "".join(f'<li><a href="{p.relative_to(store.base)}">{p.parent.name}</a></li>' for p in reports)
    conditions = "".join(
        f"<tr><td>{c.type}</td><td>{c.status}</td><td>{c.reason}</td><td>{html.escape(c.message)}</td></tr>"
        for c in status.conditions
    )
    drift = status.drift
    checked = f"{drift.share:.0%} of columns drifted" if drift and drift.share is not None else "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>{name}</title>
<style>body{{font-family:sans-serif;margin:2em}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}</style>
</head><body>
<h1>{name}: {status.phase or "Pending"}</h1>
<p>Serving <b>{status.model.version if status.model else "nothing yet"}</b>
({status.model.backend if status.model else ""}) at {status.endpoint or "-"}; retrains: {status.retrains};
last drift check: {checked}.</p>
{f"<h2>The story so far</h2>{story_html}" if story_html else ""}
<h2>Model versions</h2>
<p>Each retraining is judged against the champion on held-out rows that neither model was trained on.</p>
<table><tr><th>version</th><th>trigger</th><th>decision</th><th>{metric}</th><th>champion's {metric}</th>
<th>held-out rows (excluded)</th><th>why</th><th></th></tr>
{"".join(rows)}</table>
{_batch_runs(status)}{_leaderboard(status)}
<h2>Conditions</h2><table><tr><th>type</th><th>status</th><th>reason</th><th>message</th></tr>{conditions}</table>
<h2>Drift reports (Evidently)</h2><ul>{links or "<li>none yet</li>"}</ul>
</body></html>
"""


def _leaderboard(status: MLWorkflowStatus) -> str:
    """AutoML: the latest search's best trials, with a link to all of them."""
    search = status.search
    if search is None:
        return ""
    rows = "".join(
        f"<tr><td>{e.rank}</td><td>{html.escape(e.estimator)}</td><td>{html.escape(json.dumps(e.params))}</td>"
        f"<td>{e.score if e.score is not None else ''}</td><td>{e.std if e.std is not None else ''}</td>"
        f"<td>{e.seconds if e.seconds is not None else ''}</td></tr>"
        for e in search.leaderboard
    )
    counts = (
        f"{search.trials_complete or 0} trials complete, {search.trials_failed or 0} failed, "
        f"{search.trials_pruned or 0} pruned, of {search.trials}"
    )
    return f"""<h2>Model search {search.version}: {search.state}</h2>
<p>{counts}; ranked by {search.metric}.
<a href="automl/{search.version}/leaderboard.csv">every trial (CSV)</a></p>
<table><tr><th>rank</th><th>estimator</th><th>params</th><th>CV mean</th><th>CV std</th><th>seconds</th></tr>
{rows}</table>"""


def _batch_runs(status: MLWorkflowStatus) -> str:
    """Forecast: the latest runs, each with a link to its published output."""
    if status.batch is None:
        return ""
    rows = "".join(
        f"<tr><td>{run.id}</td><td>{run.version}</td><td>{run.trigger}</td><td>{run.state}</td>"
        f"<td>{run.predicted if run.predicted is not None else ''}</td>"
        f"<td>{run.rejected if run.rejected is not None else ''}</td>"
        + (
            f'<td><a href="../{html.escape(run.output)}/_manifest.json">{html.escape(run.output)}</a></td>'
            if run.output and run.state == "Succeeded"
            else "<td></td>"
        )
        + f"<td>{html.escape(run.message)}</td></tr>"
        for run in status.batch.runs
    )
    return f"""<h2>Batch runs</h2>
<table><tr><th>run</th><th>version</th><th>trigger</th><th>state</th><th>predicted</th><th>rejected</th>
<th>output</th><th>why</th></tr>{rows or '<tr><td colspan="8">none yet</td></tr>'}</table>"""


def _score(metrics: dict[str, float], metric: str) -> str:
    return f"{metrics[metric]:.4f}" if metric in metrics else ""
