"""Status conditions as kstatus reads them (`kubectl wait`, Flux, Argo CD).

Every reconcile ends in one of three outcomes, and the three kstatus conditions follow from it:

| outcome     | Reconciling | Ready | Stalled |
|-------------|-------------|-------|---------|
| Progressing | True        | False | False   |
| Stalled     | False       | False | True    |  (a human must act: the reason says what)
| Done        | False       | True  | False   |

`observedGeneration` is written with the conditions, and each condition carries its own (metav1.Condition).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from mlworkflow.api.v1alpha1 import Condition, ConditionStatus, MLWorkflowStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"


class Progress(StrEnum):
    PROGRESSING = "Progressing"
    STALLED = "Stalled"
    DONE = "Done"


@dataclass(frozen=True)
class Outcome:
    """Where a reconcile left the workflow, with a CamelCase reason and a message for a human."""

    progress: Progress
    reason: str
    message: str = ""
    phase: str | None = None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    others = [c for c in conditions if c.type != type_]
    return [*others, updated] if previous is None else [updated if c.type == type_ else c for c in conditions]


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.status == ConditionStatus.TRUE


def apply_outcome(
    status: MLWorkflowStatus, outcome: Outcome, generation: int, now: datetime
) -> MLWorkflowStatus:
    """The status after a reconcile of `generation` that ended in `outcome` (the input is not changed)."""
    true, false = ConditionStatus.TRUE, ConditionStatus.FALSE
    flags = {
        Progress.PROGRESSING: (true, false, false),
        Progress.STALLED: (false, false, true),
        Progress.DONE: (false, true, false),
    }[outcome.progress]
    conditions = list(status.conditions)
    for type_, value in zip((RECONCILING, READY, STALLED), flags, strict=True):
        conditions = set_condition(conditions, type_, value, outcome.reason, outcome.message, generation, now)
    return status.model_copy(
        update={
            "observed_generation": generation,
            "conditions": conditions,
            "phase": outcome.phase or status.phase,
        }
    )
