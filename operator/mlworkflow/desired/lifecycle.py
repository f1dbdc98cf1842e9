"""The lifecycle every pattern shares — train, decide (champion/challenger), deploy, monitor, retrain — as
pure functions, and the types the planner reads and returns. No I/O.

What is observed of a workflow (`Observed`) goes in; `mlworkflow.desired.plan` composes these steps with
the pattern's own "deploy" step (`mlworkflow.desired.patterns`) into a `Plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from mlworkflow.api.conditions import STALLED, Outcome, find, set_condition
from mlworkflow.api.v1alpha1 import (
    ConditionStatus,
    DriftStatus,
    MLWorkflowSpec,
    MLWorkflowStatus,
    ModelRecord,
    ModelStatus,
    PerformanceStatus,
    Trigger,
    promotion_metric,
)
from mlworkflow.desired import cron

HISTORY_LIMIT = 20
TRAINED, SERVING, DRIFTED, DEGRADED = "Trained", "Serving", "Drifted", "Degraded"
# Retrainings the monitoring asks for: they share spec.monitoring's cooldown and daily cap.
MONITORING_TRIGGERS = frozenset({Trigger.DRIFT, Trigger.PERFORMANCE})
LOWER_IS_BETTER = frozenset({"mse", "mae"})

RunState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class TrainingRun:
    """A training Job as observed: its version, why and for which spec it ran, and how it ended."""

    version: str
    trigger: Trigger
    spec_hash: str
    state: RunState
    result: dict[str, Any] = field(default_factory=dict)  # the termination message, parsed
    message: str = ""  # why it failed, for a human
    finished_at: datetime | None = None
    retrain_request: str | None = None  # the retrain annotation's value this run answers
    searching: bool = False  # AutoML: the model search that comes before this version's training


@dataclass(frozen=True)
class SearchRun:
    """A model search Job (AutoML) as observed: the version whose estimator it chooses, the request that
    started it (trigger, spec, champion, lineage), how it stands, its workers' final summary, and while it
    runs their latest progress report."""

    version: str
    trigger: Trigger
    spec_hash: str
    state: RunState
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    finished_at: datetime | None = None
    champion: str | None = None
    drift_report: str | None = None
    retrain_request: str | None = None
    # While it runs: the workers' latest progress report as written (the search Lease's annotation, or
    # progress.json locally); it may be an earlier search's (the pattern checks its searchId).
    progress: str | None = None


@dataclass(frozen=True)
class DriftCheck:
    """The finished monitoring Job (drift check, and performance check under `performance` of its result)
    that started last: its summary (termination message) and when it started. Checks are ordered by their
    start, when they read their window: a check that started earlier and finished later saw older data."""

    name: str
    started_at: datetime
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingState:
    version: str | None = None
    ready: bool = False  # rolled out: every replica updated and available


@dataclass(frozen=True)
class BatchRun:
    """A batch prediction Job (Forecast) as observed: its run id (the Job's name), the version that
    predicts, why it runs, and its indexes' summaries added up (`rowsIn`, `predicted`, `rejected`,
    `output`, `seconds`)."""

    id: str
    version: str
    trigger: Literal["Promotion", "Schedule", "Manual"]
    state: RunState
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    finished_at: datetime | None = None
    predict_request: str | None = None  # the predict annotation's value this run answers


def batch_result(summaries: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """A batch run's result from its indexes' summaries (termination messages): rows added up, the longest
    index's seconds, the published output, how many indexes MLflow did not take (`untracked`); and what
    failed, once per distinct message."""
    result: dict[str, Any] = {
        key: sum(int(s.get(key) or 0) for s in summaries) for key in ("rowsIn", "predicted", "rejected")
    }
    result["untracked"] = sum((s.get("tracking") or {}).get("tracked") is False for s in summaries)
    result["seconds"] = max((float(s.get("seconds") or 0) for s in summaries), default=0.0)
    result["output"] = next((s["output"] for s in summaries if s.get("output")), None)
    failures = [str(s["message"]) for s in summaries if s.get("status") != "ok" and s.get("message")]
    return result, "; ".join(dict.fromkeys(failures))


def _finished_trials(summary: dict[str, Any]) -> int:
    trials = summary.get("trials") or {}
    return sum(int(trials.get(state) or 0) for state in ("complete", "failed", "pruned"))


def search_result(summaries: list[dict[str, Any]], succeeded: bool) -> tuple[dict[str, Any], str]:
    """A search's result from its workers' summaries: every worker reports the study as it stood when it
    ended, so the one that saw most trials finished is final; a failed search says why through a failed
    worker."""
    ok = [s for s in summaries if s.get("status") == "ok"]
    if succeeded and ok:
        return max(ok, key=_finished_trials), ""
    failed = [s for s in summaries if s.get("status") != "ok"]
    return (failed[0], str(failed[0].get("message") or "")) if failed else ({}, "")


@dataclass(frozen=True)
class TrackingSync:
    """An MLflow sync Job (`mlworkflow.desired.tracking`) as observed: the digest it syncs, its attempt, how
    it stands and its summary."""

    name: str
    digest: str
    attempt: int
    state: RunState
    result: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    finished_at: datetime | None = None


@dataclass(frozen=True)
class SyncRequest:
    """A sync to start: its Job is `<workflow>-track-<digest[:10]>-<attempt>`; `decisions` is what it
    carries (the environment variable MLW_TRACKING_DECISIONS)."""

    digest: str
    attempt: int
    decisions: dict[str, Any]


@dataclass(frozen=True)
class LearnerState:
    """The learner's Lease (OnlineLearning) as observed: who holds it, until when (renewTime plus
    leaseDurationSeconds), and its progress annotation as written (the pattern parses it)."""

    holder: str | None = None
    held_until: datetime | None = None
    progress: str | None = None


@dataclass(frozen=True)
class Observed:
    generation: int
    spec_hash: str
    status: MLWorkflowStatus
    runs: list[TrainingRun] = field(default_factory=list)
    serving: ServingState = field(default_factory=ServingState)
    drift: DriftCheck | None = None
    created_at: datetime | None = None
    retrain_request: str | None = None  # the value of the workflow's retrain annotation
    batch_runs: list[BatchRun] = field(default_factory=list)
    predict_request: str | None = None  # the value of the workflow's predict annotation
    searches: list[SearchRun] = field(default_factory=list)
    syncs: list[TrackingSync] = field(default_factory=list)  # MLflow syncs (`mlworkflow.desired.tracking`)
    learner: LearnerState | None = None  # OnlineLearning: its Lease (None: there is none yet)


@dataclass(frozen=True)
class TrainRequest:
    version: str
    trigger: Trigger
    champion: str | None = None  # the served version the new one must beat
    drift_report: str | None = None  # the drift check that asked for it (lineage)
    retrain_request: str | None = None  # the retrain annotation's value it answers
    model: dict[str, Any] | None = None  # AutoML: the search's winner ({estimator, params}) to refit


@dataclass(frozen=True)
class Decision:
    """What becomes of a trained version: its outcome, a one-word reason and a sentence."""

    outcome: Literal["Promoted", "Rejected"]
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the workflow: once per change of state. Two events with the same
    reason, message and `key` for the same generation are the same occurrence (see `desired.children.event`),
    so concurrent or repeated reconciles that see the same change post it once."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    key: str = ""  # what tells apart two occurrences with the same message, e.g. the drift check's name


@dataclass(frozen=True)
class BatchRunRequest:
    """A batch run to start now: its Job is named `<workflow>-predict-<suffix>`."""

    suffix: str
    version: str
    trigger: Literal["Promotion", "Manual"]
    predict_request: str | None = None


@dataclass(frozen=True)
class Deployment:
    """A pattern's "deploy" step: the version its children run (None: nothing to deploy yet), where that
    leaves the workflow when nothing trains, and a batch run to start (Forecast)."""

    version: str | None
    outcome: Outcome
    batch_run: BatchRunRequest | None = None
    refit: TrainRequest | None = None


@dataclass(frozen=True)
class Plan:
    status: MLWorkflowStatus
    train: TrainRequest | None = None  # AutoML: the search that chooses what to train
    deploy: str | None = None  # the version the pattern's children run (serving, batch); None: none yet
    batch_run: BatchRunRequest | None = None
    events: list[Event] = field(default_factory=list)
    refit: TrainRequest | None = None  # AutoML: train a search's winner as its version
    sync: SyncRequest | None = None  # MLflow: the decisions to sync (`mlworkflow.desired.tracking`)


def lineage(version: str) -> str:
    """The trained version a served one is or descends from: an OnlineLearning snapshot `v1.12` is learned
    from `v1`; a trained version is its own."""
    return version.partition(".")[0]


def version_number(version: str) -> int:
    match = re.fullmatch(r"v(\d+)", version)
    return int(match.group(1)) if match else 0


def with_searches(observed: Observed) -> Observed:
    """The observation with each model search (AutoML) whose version has no training yet counted as that
    version's training: running while it searches and until its winner's training starts, failed when the
    search failed. So the lifecycle starts nothing else meanwhile, and a failed search is a failed version."""
    trained = {r.version for r in observed.runs}
    pending = [
        TrainingRun(
            search.version,
            search.trigger,
            search.spec_hash,
            "Failed" if search.state == "Failed" else "Running",
            search.result,
            search.message,
            search.finished_at,
            search.retrain_request,
            searching=True,
        )
        for search in observed.searches
        if search.version not in trained
    ]
    return replace(observed, runs=[*observed.runs, *pending]) if pending else observed


def next_version(status: MLWorkflowStatus, runs: list[TrainingRun]) -> str:
    numbers = [version_number(r.version) for r in status.history] + [version_number(r.version) for r in runs]
    return f"v{max(numbers, default=0) + 1}"


@dataclass(frozen=True)
class Training:
    """The training side of one reconcile: what to start, what runs, and whether the spec's latest
    training failed (and nothing is retrying it)."""

    train: TrainRequest | None
    running: list[TrainingRun]
    failed: ModelRecord | None


def plan_training(
    spec: MLWorkflowSpec, observed: Observed, status: MLWorkflowStatus, now: datetime, events: list[Event]
) -> Training:
    """Whether to train now, and why: a new spec (Initial, SpecChange), a retrain request (Manual), the
    training schedule (Schedule), drift (Drift) or performance decay (Performance). One run at a time; a
    spec whose latest training failed waits for a change or a retrain request. The model in use is a
    champion to beat only for a retraining of the spec it was trained for (an OnlineLearning snapshot: of
    the spec its start version was trained for). Folds the monitoring check (drift, performance) into
    `status` and records the request it answers."""
    running = [r for r in observed.runs if r.state == "Running"]
    tried = [r for r in status.history if r.spec_hash == observed.spec_hash]
    served = status.model.version if status.model else None
    champion = served if served and lineage(served) in {r.version for r in tried} else None
    request = _pending_retrain_request(status, observed)
    train: TrainRequest | None = None
    if not running and not tried:
        trigger = Trigger.INITIAL if not status.history else Trigger.SPEC_CHANGE
        train = TrainRequest(next_version(status, observed.runs), trigger, retrain_request=request)
    drift_retrain = _record_drift(spec, status, observed.drift, running, now, events)
    performance_retrain = _record_performance(spec, status, observed.drift, running, now, events)
    if train is None and request is not None and not running:
        train = TrainRequest(
            next_version(status, observed.runs), Trigger.MANUAL, champion=champion, retrain_request=request
        )
    if train is None and not running and champion and _schedule_due(spec, status, observed.created_at, now):
        train = TrainRequest(next_version(status, observed.runs), Trigger.SCHEDULE, champion=champion)
    if train is None and (drift_retrain or performance_retrain) and champion:
        finding = status.drift if drift_retrain else status.performance
        train = TrainRequest(
            next_version(status, observed.runs),
            Trigger.DRIFT if drift_retrain else Trigger.PERFORMANCE,
            champion=champion,
            drift_report=finding.report if finding else None,
        )
    if train is not None:
        if train.retrain_request is not None:
            status.last_handled_retrain = train.retrain_request
        events.append(
            Event("Normal", "TrainingStarted", f"training {train.version} (trigger {train.trigger})")
        )
    failed = tried[0] if tried and tried[0].outcome == "Failed" and not running and train is None else None
    return Training(train, running, failed)


def trained_condition(status: MLWorkflowStatus, training: Training) -> tuple[ConditionStatus, str, str]:
    if training.failed:
        return ConditionStatus.FALSE, "TrainingFailed", training.failed.message
    if training.running:
        return ConditionStatus.FALSE, "Training", f"training {training.running[0].version}"
    if status.model and status.model.version:
        return ConditionStatus.TRUE, "Trained", f"{status.model.version} trained"
    return ConditionStatus.FALSE, "NotTrained", "no model trained yet"


def stall_events(before: MLWorkflowStatus, after: MLWorkflowStatus) -> list[Event]:
    """A Warning Event when the workflow becomes Stalled, or stalls for another reason or generation: every
    Stalled reason is told once, never again at each reconcile while it lasts."""
    stalled = find(after.conditions, STALLED)
    if stalled is None or stalled.status != ConditionStatus.TRUE:
        return []
    was = find(before.conditions, STALLED)
    if (
        was is not None
        and was.status == ConditionStatus.TRUE
        and (was.reason, was.message, was.observed_generation)
        == (stalled.reason, stalled.message, stalled.observed_generation)
    ):
        return []
    return [Event("Warning", stalled.reason, stalled.message)]


def pending_request(
    request: str | None, handled: str | None, answered: Iterable[str | None]
) -> tuple[str | None, str | None]:
    """An annotation's request (retrain, predict) still to answer, and the value now handled: a request is
    answered once the status records it as handled or a Job carries it (either survives an operator
    restart)."""
    if not request or request == handled:
        return None, handled
    if request in set(answered):
        return None, request
    return request, handled


def _pending_retrain_request(status: MLWorkflowStatus, observed: Observed) -> str | None:
    """The retrain annotation's value when no training answered it yet."""
    request, status.last_handled_retrain = pending_request(
        observed.retrain_request, status.last_handled_retrain, (run.retrain_request for run in observed.runs)
    )
    return request


def record_finished_runs(
    spec: MLWorkflowSpec, status: MLWorkflowStatus, runs: list[TrainingRun], events: list[Event]
) -> MLWorkflowStatus:
    """Fold finished runs not yet in the history into it, deciding each: promoted, rejected or failed."""
    known = {r.version for r in status.history}
    for run in sorted(
        (r for r in runs if r.state != "Running" and r.version not in known),
        key=lambda r: version_number(r.version),
    ):
        if run.state == "Succeeded" and run.result.get("status") == "ok":
            metrics = {k: float(v) for k, v in (run.result.get("metrics") or {}).items()}
            decision = decide(spec, run, metrics)
            record = _record(run, decision.outcome, metrics, decision.reason, decision.message)
            if decision.outcome == "Rejected":
                reason = "InsufficientHoldout" if decision.reason == "InsufficientHoldout" else "Rejected"
                events.append(Event("Warning", reason, f"{run.version} rejected: {decision.message}"))
            else:
                status.model = ModelStatus(
                    version=run.version,
                    metrics=metrics,
                    trained_at=run.finished_at,
                    trigger=run.trigger,
                    backend=record.backend,
                )
                events.append(Event("Normal", "Promoted", f"{run.version} promoted: {decision.message}"))
            if run.trigger != Trigger.INITIAL:
                status.retrains += 1
            tracked = run.result.get("tracking") or {}
            if tracked.get("tracked") is False:
                events.append(
                    Event(
                        "Warning",
                        "NotTracked",
                        f"{run.version} was not logged to MLflow: {tracked.get('reason')}; the next sync "
                        "logs it",
                    )
                )
        else:
            message = run.result.get("message") or run.message or "the training Job failed"
            reason = run.result.get("reason") or "JobFailed"
            record = _record(run, "Failed", {}, reason, message[:4096])
            events.append(Event("Warning", "TrainingFailed", f"{run.version}: {message}"))
        status.history = [record, *status.history][:HISTORY_LIMIT]
    return status


def _record(
    run: TrainingRun, outcome: str, metrics: dict[str, float], reason: str, message: str
) -> ModelRecord:
    """A history entry with the run's lineage: trigger, data hash, the drift report that asked for it, and
    the rows it was judged on."""
    champion = run.result.get("champion") or {}
    judged = run.result.get("holdout")
    return ModelRecord.model_validate(
        {
            "version": run.version,
            "trigger": run.trigger,
            "specHash": run.spec_hash,
            "outcome": outcome,
            "reason": reason,
            "metrics": metrics,
            "backend": run.result.get("backend"),
            "trainedAt": run.finished_at,
            "message": message,
            "dataSha256": run.result.get("dataSha256"),
            "driftReport": run.result.get("driftReport"),
            "champion": champion.get("version"),
            "championMetrics": champion.get("metrics") or {},
            "holdout": judged if isinstance(judged, dict) else None,
        }
    )


def decide(spec: MLWorkflowSpec, run: TrainingRun, metrics: dict[str, float]) -> Decision:
    """Champion/challenger: whether a trained version replaces the served one.

    A first version, or one trained for a changed spec, is promoted as it is (the user changed what the
    model is). A retraining of the same spec (drift, schedule, manual) is judged against the champion on
    held-out rows that neither was trained on: with fewer than `promotion.minHoldoutRows` of them, or too
    few to score the challenger (under two), the champion stays (InsufficientHoldout); otherwise the
    challenger must be at least `promotion.minImprovement` better on `promotion.metric` (mse and mae: lower
    is better), and its fairness gap on the holdout (the training result's `fairness`) within
    `promotion.maxFairnessGap` when one is set (FairnessGap); a gap that could not be measured does not hold
    it back.
    """
    champion = run.result.get("champion") or {}
    judged = run.result.get("holdout") or {}
    rows = judged.get("rows")
    metric = promotion_metric(spec)
    if run.trigger == Trigger.INITIAL:
        return Decision("Promoted", "Initial", f"the first version; {_on_rows(metric, metrics, rows)}")
    if run.trigger == Trigger.SPEC_CHANGE:
        return Decision("Promoted", "SpecChange", f"the spec changed; {_on_rows(metric, metrics, rows)}")
    if not champion.get("version"):
        return Decision("Promoted", "NoChampion", f"no champion to beat; {_on_rows(metric, metrics, rows)}")
    version = champion["version"]
    excluded = judged.get("excludedRows")
    seen = (
        f"{excluded} rows excluded as seen by {version}"
        if excluded is not None
        else f"{version}'s training rows are not recorded, none excluded"
    )
    needed = spec.promotion.min_holdout_rows
    if rows is not None and rows < needed:
        return Decision(
            "Rejected",
            "InsufficientHoldout",
            f"only {rows} held-out rows that neither it nor {version} was trained on ({seen}); at least "
            f"{needed} are needed to decide (spec.promotion.minHoldoutRows): {version} keeps serving",
        )
    if metric not in metrics:  # the trainer scores no holdout of fewer than two rows
        return Decision(
            "Rejected",
            "InsufficientHoldout",
            f"no {metric} on {rows} held-out rows that neither it nor {version} was trained on ({seen}): "
            f"{version} keeps serving",
        )
    bound, fair = spec.promotion.max_fairness_gap, run.result.get("fairness") or {}
    gap = fair.get("value")
    if bound is not None and isinstance(gap, int | float) and gap > bound:
        return Decision(
            "Rejected",
            "FairnessGap",
            f"its {fair.get('gap')} difference between the groups of {fair.get('feature')!r} is {gap:.4f} on "
            f"{rows} held-out rows, above spec.promotion.maxFairnessGap {bound}: {version} keeps serving",
        )
    old_metrics = champion.get("metrics") or {}
    if metric not in old_metrics:
        return Decision(
            "Promoted",
            "ChampionUnscored",
            f"{version} could not be scored on the holdout; {_on_rows(metric, metrics, rows)}",
        )
    new, old = metrics[metric], float(old_metrics[metric])
    gain = (old - new) if metric in ("mse", "mae") else (new - old)
    compared = (
        f"{metric} {new:.4f} against {version}'s {old:.4f} on the same {rows} held-out rows, trained on by "
        f"neither ({seen})"
    )
    if gain >= spec.promotion.min_improvement:
        return Decision("Promoted", "Better", compared)
    return Decision(
        "Rejected",
        "NotBetter",
        f"{compared}; at least {spec.promotion.min_improvement} better is required",
    )


def _on_rows(metric: str, metrics: dict[str, float], rows: int | None) -> str:
    value = f"{metric} {metrics[metric]:.4f}" if metric in metrics else f"no {metric}"
    return f"{value} on {rows} held-out rows" if rows is not None else value


def _record_drift(
    spec: MLWorkflowSpec,
    status: MLWorkflowStatus,
    check: DriftCheck | None,
    running: list[TrainingRun],
    now: datetime,
    events: list[Event],
) -> bool:
    """Fold a new drift check into the status; True when it asks for a retraining now."""
    if check is None or (
        status.drift and status.drift.checked_at and status.drift.checked_at >= check.started_at
    ):
        return False
    result = check.result
    generation = status.observed_generation or 0
    state = result.get("status")
    if state == "ok":
        drifted = bool(result.get("drifted"))
        listed = [str(c.get("column")) for c in result.get("columns") or [] if isinstance(c, dict)]
        more = int(result.get("driftedColumns") or len(listed)) - len(listed)  # the summary lists the first
        columns = ", ".join(listed) + (f" and {more} more" if more > 0 else "") or "none"
        message = (
            f"{result.get('share', 0):.0%} of the feature columns drifted ({columns}); "
            f"threshold {result.get('threshold')}"
        )
        status.drift = DriftStatus(
            checked_at=check.started_at,
            share=float(result.get("share", 0.0)),
            drifted=drifted,
            report=result.get("report") or result.get("result"),
        )
        reason = "DriftDetected" if drifted else "NoDrift"
        status.conditions = set_condition(
            status.conditions,
            DRIFTED,
            ConditionStatus.TRUE if drifted else ConditionStatus.FALSE,
            reason,
            message,
            generation,
            now,
        )
        events.append(Event("Warning" if drifted else "Normal", reason, message, key=check.name))
    else:
        reason = "NotEnoughData" if state == "insufficient" else "DriftCheckFailed"
        message = result.get("message") or check.name + " failed"
        status.drift = DriftStatus(
            checked_at=check.started_at,
            share=status.drift.share if status.drift else None,
            drifted=None,
            report=status.drift.report if status.drift else None,
        )
        status.conditions = set_condition(
            status.conditions, DRIFTED, ConditionStatus.UNKNOWN, reason, message, generation, now
        )
        events.append(
            Event("Normal" if state == "insufficient" else "Warning", reason, message, key=check.name)
        )
        return False
    if not drifted or spec.monitoring.on_drift != "Retrain":
        return False
    return _retrain_allowed(spec, status, running, now, events, "drift", check.name)


def _retrain_allowed(
    spec: MLWorkflowSpec,
    status: MLWorkflowStatus,
    running: list[TrainingRun],
    now: datetime,
    events: list[Event],
    finding: str,
    key: str,
) -> bool:
    """Whether a retraining the monitoring asks for (on `finding`) may start now; an Event when not."""
    blocked = _retrain_blocked(spec, status, running, now, finding)
    if blocked:
        events.append(Event("Normal", "RetrainSkipped", blocked, key=key))
        return False
    return True


def _record_performance(
    spec: MLWorkflowSpec,
    status: MLWorkflowStatus,
    check: DriftCheck | None,
    running: list[TrainingRun],
    now: datetime,
    events: list[Event],
) -> bool:
    """Fold a new performance check (the monitoring Job's `performance`) into the status: the Degraded
    condition, an Event; True when it asks for a retraining now (trigger Performance).

    Degraded when the promotion metric measured on labelled predictions is worse than the served version's
    holdout value by more than spec.monitoring.performance.tolerance. Without enough labels, the estimate
    (CBPE) may stand in for it, but only as spec.monitoring.performance.onEstimatedDecay says: labels,
    when there are enough, always decide."""
    result = (check.result.get("performance") if check else None) or {}
    if check is None or not isinstance(result, dict) or not result:
        return False
    if (
        status.performance
        and status.performance.checked_at
        and status.performance.checked_at >= check.started_at
    ):
        return False
    settings = spec.monitoring.performance
    metric = str(result.get("metric") or promotion_metric(spec))
    baseline, measured, estimated = (_number(result.get(k)) for k in ("baseline", "measured", "estimated"))
    rows = int(result.get("labelledRows") or 0)
    version = result.get("version")
    state = result.get("status")
    status.performance = PerformanceStatus(
        checked_at=check.started_at,
        version=version,
        metric=metric,
        measured=measured,
        estimated=estimated,
        baseline=baseline,
        labelled_rows=rows,
        unknown_labels=result.get("unknownLabels"),
        degraded=None,
        report=result.get("result") or (status.performance.report if status.performance else None),
    )
    generation = status.observed_generation or 0
    key = f"{check.name}/performance"

    def worse(value: float | None) -> float | None:
        if value is None or baseline is None:
            return None
        return value - baseline if metric in LOWER_IS_BETTER else baseline - value

    against = f"against {baseline:.4f} on its holdout" if baseline is not None else "with no holdout value"
    tolerance = f"tolerance {settings.tolerance}"
    decay, estimated_decay = worse(measured), worse(estimated)
    if state == "ok" and decay is not None:
        degraded = decay > settings.tolerance
        status.performance.degraded = degraded
        message = (
            f"{metric} {measured:.4f} on {rows} labelled predictions of {version}, {against}; {tolerance}"
        )
        reason = "PerformanceDegraded" if degraded else "PerformanceHolds"
        status.conditions = set_condition(
            status.conditions,
            DEGRADED,
            ConditionStatus.TRUE if degraded else ConditionStatus.FALSE,
            reason,
            message,
            generation,
            now,
        )
        events.append(Event("Warning" if degraded else "Normal", reason, message, key=key))
        if not degraded or settings.on_decay != "Retrain":
            return False
        return _retrain_allowed(spec, status, running, now, events, "performance decay", key)
    if state not in ("ok", "insufficient"):
        message = str(result.get("message") or "the performance check failed")
        status.conditions = set_condition(
            status.conditions,
            DEGRADED,
            ConditionStatus.UNKNOWN,
            "PerformanceCheckFailed",
            message,
            generation,
            now,
        )
        events.append(Event("Warning", "PerformanceCheckFailed", message, key=key))
        return False
    if (
        estimated_decay is not None
        and estimated_decay > settings.tolerance
        and settings.on_estimated_decay != "Ignore"
    ):
        assert estimated is not None
        message = (
            f"{metric} estimated at {estimated:.4f} on the predictions of {version} since the last check "
            f"(confidence-based, before their labels), {against}; {tolerance}; {rows} labelled so far"
        )
        status.performance.degraded = True
        status.conditions = set_condition(
            status.conditions, DEGRADED, ConditionStatus.TRUE, "EstimatedDecay", message, generation, now
        )
        events.append(Event("Warning", "EstimatedDecay", message, key=key))
        if settings.on_estimated_decay != "Retrain":
            return False
        return _retrain_allowed(spec, status, running, now, events, "estimated performance decay", key)
    if rows or find(status.conditions, DEGRADED) is not None:
        # No condition until labels come at all: most workflows never send any.
        message = str(
            result.get("message") or f"fewer than {settings.min_labelled_rows} labelled predictions"
        )
        status.conditions = set_condition(
            status.conditions, DEGRADED, ConditionStatus.UNKNOWN, "NotEnoughLabels", message, generation, now
        )
    return False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _schedule_due(
    spec: MLWorkflowSpec, status: MLWorkflowStatus, created_at: datetime | None, now: datetime
) -> bool:
    """Whether `training.schedule` fired since the last scheduled training (or since the workflow began)."""
    if not spec.training.schedule:
        return False
    scheduled = [r.trained_at for r in status.history if r.trigger == Trigger.SCHEDULE and r.trained_at]
    since = max([*scheduled, *([created_at] if created_at else [])], default=now)
    return cron.last_fire(spec.training.schedule, since, now) is not None


def cooldown_seconds(text: str) -> int:
    return sum(int(n) * {"s": 1, "m": 60, "h": 3600}[unit] for n, unit in re.findall(r"(\d+)([smh])", text))


def _retrain_blocked(
    spec: MLWorkflowSpec, status: MLWorkflowStatus, running: list[TrainingRun], now: datetime, finding: str
) -> str | None:
    """Why a retraining on the monitoring's `finding` (drift, performance decay) may not start now: a
    training runs, or the retrainings the monitoring triggered (Drift and Performance alike) are in their
    cooldown or at their daily cap."""
    if running:
        return f"{finding} seen while {running[0].version} trains: at most one training at a time"
    triggered = [r.trained_at for r in status.history if r.trigger in MONITORING_TRIGGERS and r.trained_at]
    cooldown = cooldown_seconds(spec.monitoring.cooldown)
    if triggered and (now - max(triggered)).total_seconds() < cooldown:
        last = max(triggered)
        return (
            f"{finding}: retraining on the monitoring's findings is in its cooldown "
            f"({spec.monitoring.cooldown} since {last:%H:%M:%S})"
        )
    today = [t for t in triggered if (now - t).total_seconds() < 86400]
    if len(today) >= spec.monitoring.max_retrains_per_day:
        cap = spec.monitoring.max_retrains_per_day
        return (
            f"{finding}: {len(today)} retrainings on the monitoring's findings in 24 hours: the daily cap "
            f"is {cap}"
        )
    return None
