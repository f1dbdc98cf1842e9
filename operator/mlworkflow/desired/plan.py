"""The planner: from an MLWorkflow and what is observed of it, the next state. Pure, no I/O.

The controller observes (training runs, the serving Deployment), calls `plan`, then carries the plan out:
start the training it asks for, apply serving for the version it names, write the status it returns,
post its events. The local runner carries out the same plans with local processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mlworkflow.api.conditions import Outcome, Progress, apply_outcome, find, set_condition
from mlworkflow.api.v1alpha1 import (
    ConditionStatus,
    MLWorkflowSpec,
    MLWorkflowStatus,
    ModelRecord,
    ModelStatus,
    Pattern,
    Trigger,
)

HISTORY_LIMIT = 20
TRAINED, SERVING = "Trained", "Serving"

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


@dataclass(frozen=True)
class ServingState:
    exists: bool = False
    version: str | None = None
    ready: bool = False  # rolled out: every replica updated and available


@dataclass(frozen=True)
class Observed:
    generation: int
    spec_hash: str
    status: MLWorkflowStatus
    runs: list[TrainingRun] = field(default_factory=list)
    serving: ServingState = field(default_factory=ServingState)


@dataclass(frozen=True)
class TrainRequest:
    version: str
    trigger: Trigger


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: MLWorkflowStatus
    train: TrainRequest | None = None
    serve: str | None = None  # the version serving should run (None: no serving yet)
    events: list[Event] = field(default_factory=list)


def version_number(version: str) -> int:
    match = re.fullmatch(r"v(\d+)", version)
    return int(match.group(1)) if match else 0


def next_version(status: MLWorkflowStatus, runs: list[TrainingRun]) -> str:
    numbers = [version_number(r.version) for r in status.history] + [version_number(r.version) for r in runs]
    return f"v{max(numbers, default=0) + 1}"


def plan(spec: MLWorkflowSpec, observed: Observed, now: datetime, endpoint: str | None = None) -> Plan:
    """The next state of a workflow."""
    if spec.pattern != Pattern.WEB_SERVICE:
        outcome = Outcome(
            Progress.STALLED,
            "PatternNotSupported",
            f"this operator version runs the WebService pattern; {spec.pattern} is not implemented yet",
            phase="Unsupported",
        )
        return Plan(apply_outcome(observed.status, outcome, observed.generation, now))

    status = observed.status.model_copy(deep=True)
    events: list[Event] = []
    status = _record_finished_runs(status, observed.runs, events)

    # Training: one run at a time; a spec whose latest training failed waits for a change.
    running = [r for r in observed.runs if r.state == "Running"]
    tried = [r for r in status.history if r.spec_hash == observed.spec_hash]
    train: TrainRequest | None = None
    if not running and not tried:
        trigger = Trigger.INITIAL if not status.history else Trigger.SPEC_CHANGE
        train = TrainRequest(next_version(status, observed.runs), trigger)
        events.append(Event("Normal", "TrainingStarted", f"training {train.version} (trigger {trigger})"))
    failed_for_spec = bool(tried) and tried[0].outcome == "Failed" and not running

    # Serving: the pinned version, else the promoted one.
    pinned = spec.serving.model_version if spec.serving else None
    promoted = {r.version for r in status.history if r.outcome == "Promoted"}
    serve = pinned if pinned else (status.model.version if status.model else None)
    status.endpoint = endpoint if serve else None

    serving_ready = serve is not None and observed.serving.ready and observed.serving.version == serve
    generation = observed.generation
    status.conditions = set_condition(
        status.conditions, TRAINED, *_trained_condition(status, running, failed_for_spec), generation, now
    )
    serving_condition = (
        (ConditionStatus.TRUE, "Serving", f"{serve} is serving at {endpoint}")
        if serving_ready
        else (
            ConditionStatus.FALSE,
            "RollingOut" if serve else "NoModel",
            f"rolling out {serve}" if serve else "no model version to serve yet",
        )
    )
    previous = find(observed.status.conditions, SERVING)
    if serving_ready and (previous is None or previous.message != serving_condition[2]):
        events.append(Event("Normal", "RolledOut", serving_condition[2]))
    status.conditions = set_condition(status.conditions, SERVING, *serving_condition, generation, now)

    if (
        pinned
        and pinned not in promoted
        and pinned not in {r.version for r in status.history if r.outcome != "Failed"}
    ):
        outcome = Outcome(
            Progress.STALLED,
            "ModelVersionNotFound",
            f"spec.serving.modelVersion {pinned} is not a trained version of this workflow",
            phase="Failed",
        )
        return Plan(apply_outcome(status, outcome, generation, now), train=train, serve=None, events=events)
    if failed_for_spec:
        outcome = Outcome(Progress.STALLED, "TrainingFailed", tried[0].message, phase="Failed")
    elif running or train:
        version = running[0].version if running else train.version  # type: ignore[union-attr]
        outcome = Outcome(Progress.PROGRESSING, "Training", f"training {version}", phase="Training")
    elif not serving_ready:
        outcome = Outcome(Progress.PROGRESSING, "RollingOut", f"rolling out {serve}", phase="Deploying")
    else:
        outcome = Outcome(Progress.DONE, "Serving", f"{serve} is serving at {endpoint}", phase="Serving")
    return Plan(apply_outcome(status, outcome, generation, now), train=train, serve=serve, events=events)


def _trained_condition(
    status: MLWorkflowStatus, running: list[TrainingRun], failed: bool
) -> tuple[ConditionStatus, str, str]:
    if failed:
        return ConditionStatus.FALSE, "TrainingFailed", status.history[0].message
    if running:
        return ConditionStatus.FALSE, "Training", f"training {running[0].version}"
    if status.model and status.model.version:
        return ConditionStatus.TRUE, "Trained", f"{status.model.version} trained"
    return ConditionStatus.FALSE, "NotTrained", "no model trained yet"


def _record_finished_runs(
    status: MLWorkflowStatus, runs: list[TrainingRun], events: list[Event]
) -> MLWorkflowStatus:
    """Fold finished runs not yet in the history into it; promote each success (newest wins)."""
    known = {r.version for r in status.history}
    for run in sorted(
        (r for r in runs if r.state != "Running" and r.version not in known),
        key=lambda r: version_number(r.version),
    ):
        if run.state == "Succeeded" and run.result.get("status") == "ok":
            metrics = {k: float(v) for k, v in (run.result.get("metrics") or {}).items()}
            record = ModelRecord(
                version=run.version,
                trigger=run.trigger,
                spec_hash=run.spec_hash,
                outcome="Promoted",
                metrics=metrics,
                backend=run.result.get("backend"),
                trained_at=run.finished_at,
            )
            status.model = ModelStatus(
                version=run.version,
                metrics=metrics,
                trained_at=run.finished_at,
                trigger=run.trigger,
                backend=run.result.get("backend"),
            )
            if run.trigger != Trigger.INITIAL:
                status.retrains += 1
            events.append(
                Event("Normal", "Promoted", f"{run.version} trained and promoted: {_brief(metrics)}")
            )
        else:
            message = run.result.get("message") or run.message or "the training Job failed"
            record = ModelRecord(
                version=run.version,
                trigger=run.trigger,
                spec_hash=run.spec_hash,
                outcome="Failed",
                trained_at=run.finished_at,
                message=message[:4096],
            )
            events.append(Event("Warning", "TrainingFailed", f"{run.version}: {message}"))
        status.history = [record, *status.history][:HISTORY_LIMIT]
    return status


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in list(metrics.items())[:3])
