"""Cron schedules for periodic retraining, and the planner's use of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlworkflow.api.v1alpha1 import Trigger
from mlworkflow.desired import cron

T = datetime(2026, 3, 4, 10, 37, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/15 * * * *", datetime(2026, 3, 4, 10, 30, tzinfo=UTC)),
        ("0 * * * *", datetime(2026, 3, 4, 10, 0, tzinfo=UTC)),
        ("@hourly", datetime(2026, 3, 4, 10, 0, tzinfo=UTC)),
        ("30 2 * * *", datetime(2026, 3, 4, 2, 30, tzinfo=UTC)),
        ("0 9 * * mon-fri", datetime(2026, 3, 4, 9, 0, tzinfo=UTC)),
        ("0 9 * * sun", datetime(2026, 3, 1, 9, 0, tzinfo=UTC)),
        ("0 9 * * 7", datetime(2026, 3, 1, 9, 0, tzinfo=UTC)),
        ("0 0 1 * *", datetime(2026, 3, 1, 0, 0, tzinfo=UTC)),
        ("5,35 10 * * *", datetime(2026, 3, 4, 10, 35, tzinfo=UTC)),
    ],
)
def test_last_fire(expression: str, expected: datetime) -> None:
    assert cron.last_fire(expression, T - timedelta(days=7), T) == expected


def test_nothing_fires_in_a_quiet_interval() -> None:
    assert cron.last_fire("0 * * * *", T - timedelta(minutes=30), T) is None
    assert cron.last_fire("0 0 1 1 *", T - timedelta(days=365), T) is None, "looks back at most a week"


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "a b c d e", "*/0 * * * *"])
def test_bad_expressions(expression: str) -> None:
    with pytest.raises(cron.CronError):
        cron.last_fire(expression, T - timedelta(hours=1), T)


def test_the_planner_retrains_on_schedule_against_the_champion() -> None:
    from test_plan import Observed, ServingState, ok, plan, spec

    from mlworkflow.api.v1alpha1 import MLWorkflowStatus

    scheduled = spec()
    scheduled.training.schedule = "0 * * * *"
    start = datetime(2026, 1, 1, 9, 50, tzinfo=UTC)
    served = plan(
        scheduled,
        Observed(1, "h1", MLWorkflowStatus(), [ok("v1")], ServingState("v1", True), created_at=start),
        start + timedelta(minutes=5),
    ).status
    quiet = plan(
        scheduled,
        Observed(1, "h1", served, [ok("v1")], ServingState("v1", True), created_at=start),
        start + timedelta(minutes=8),
    )
    assert quiet.train is None
    due = plan(
        scheduled,
        Observed(1, "h1", served, [ok("v1")], ServingState("v1", True), created_at=start),
        start + timedelta(minutes=11),
    )
    assert due.train is not None and (due.train.trigger, due.train.champion) == (Trigger.SCHEDULE, "v1")
