"""The planner: from an MLWorkflow and what is observed of it, the next state. Pure, no I/O.

The shared lifecycle (`mlworkflow.desired.lifecycle`: record finished trainings, decide champion and
challenger, fold drift checks in, choose whether to train) runs for every pattern; the pattern's own module
(`mlworkflow.desired.patterns`) adds its "deploy" step: serving for WebService, batch runs for Forecast.
The controller observes, calls `plan`, then carries the plan out: start the training it asks for, apply the
pattern's children for the version it names, write the status it returns, post its events. The local runner
carries out the same plans with local processes.
"""

from __future__ import annotations

from datetime import datetime

from mlworkflow.api.conditions import Outcome, Progress, apply_outcome, set_condition
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.desired.lifecycle import (
    TRAINED,
    Event,
    Observed,
    Plan,
    plan_training,
    record_finished_runs,
    stall_events,
    trained_condition,
    with_searches,
)
from mlworkflow.desired.patterns import PATTERNS, automl
from mlworkflow.desired.tracking import MLflowSettings, plan_sync


def untracked_runs(observed: Observed) -> list[str]:
    """The Jobs of the observed drift check and batch runs that said MLflow did not take their runs."""
    names = [run.id for run in observed.batch_runs if run.result.get("untracked")]
    check = observed.drift
    if check is not None and (check.result.get("tracking") or {}).get("tracked") is False:
        names.append(check.name)
    return names


def plan(
    spec: MLWorkflowSpec,
    observed: Observed,
    now: datetime,
    endpoint: str | None = None,
    tracking: MLflowSettings | None = None,
) -> Plan:
    """The next state of a workflow; `tracking`: its MLflow settings (`tracking.settings`), if it is
    tracked."""
    pattern = PATTERNS[spec.pattern]
    observed = with_searches(observed)
    status = observed.status.model_copy(deep=True)
    events: list[Event] = []
    status = record_finished_runs(spec, status, observed.runs, events)
    training = plan_training(spec, observed, status, now, events)
    deployment = pattern.deploy(spec, observed, status, events, now, endpoint)
    generation = observed.generation
    status.conditions = set_condition(
        status.conditions, TRAINED, *trained_condition(status, training), generation, now
    )
    if deployment.outcome.progress == Progress.STALLED:
        outcome = deployment.outcome
    elif training.failed:
        outcome = Outcome(Progress.STALLED, "TrainingFailed", training.failed.message, phase="Failed")
    elif training.running and training.running[0].searching and not deployment.refit:
        what = automl.searching_message(status, training.running[0].version)
        outcome = Outcome(Progress.PROGRESSING, "Searching", what, "Searching")
    elif training.running or training.train or deployment.refit:
        version = (
            training.running[0].version if training.running else (training.train or deployment.refit).version  # type: ignore[union-attr]
        )
        outcome = Outcome(Progress.PROGRESSING, "Training", f"training {version}", phase="Training")
    else:
        outcome = deployment.outcome
    status = apply_outcome(status, outcome, generation, now)
    sync = plan_sync(tracking, status, observed.syncs, now, events, untracked_runs(observed))
    told = {e.reason for e in events}
    events += [e for e in stall_events(observed.status, status) if e.reason not in told]
    return Plan(
        status, training.train, deployment.version, deployment.batch_run, events, deployment.refit, sync
    )
