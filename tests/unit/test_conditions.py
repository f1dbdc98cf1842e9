"""kstatus conditions: the three outcomes, observedGeneration everywhere, transition times that mean it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlworkflow.api.conditions import (
    READY,
    RECONCILING,
    STALLED,
    Outcome,
    Progress,
    apply_outcome,
    find,
    is_true,
)
from mlworkflow.api.v1alpha1 import MLWorkflowStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("progress", "reconciling", "ready", "stalled"),
    [
        (Progress.PROGRESSING, True, False, False),
        (Progress.STALLED, False, False, True),
        (Progress.DONE, False, True, False),
    ],
)
def test_each_outcome_sets_the_three_kstatus_conditions(
    progress: Progress, reconciling: bool, ready: bool, stalled: bool
) -> None:
    status = apply_outcome(MLWorkflowStatus(), Outcome(progress, "Why", "what"), generation=3, now=T0)
    assert status.observed_generation == 3
    assert (is_true(status.conditions, RECONCILING), is_true(status.conditions, READY)) == (
        reconciling,
        ready,
    )
    assert is_true(status.conditions, STALLED) == stalled
    assert {c.observed_generation for c in status.conditions} == {3}
    assert {c.reason for c in status.conditions} == {"Why"}


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = apply_outcome(MLWorkflowStatus(), Outcome(Progress.PROGRESSING, "Training"), 1, T0)
    later = T0 + timedelta(minutes=5)
    same = apply_outcome(first, Outcome(Progress.PROGRESSING, "Serving"), 2, later)
    ready = find(same.conditions, READY)
    assert ready is not None and ready.last_transition_time == T0 and ready.reason == "Serving"
    assert ready.observed_generation == 2
    done = apply_outcome(same, Outcome(Progress.DONE, "Serving"), 2, later)
    ready = find(done.conditions, READY)
    assert ready is not None and ready.last_transition_time == later


def test_other_conditions_and_fields_are_kept() -> None:
    status = MLWorkflowStatus(retrains=4, phase="Serving")
    after = apply_outcome(status, Outcome(Progress.DONE, "Serving"), 1, T0)
    assert after.retrains == 4 and after.phase == "Serving"
    assert status.conditions == [], "the input status is not changed"
    assert [c.type for c in after.conditions] == [RECONCILING, READY, STALLED]
