"""The planner's performance path: a monitoring check's `performance` becomes the Degraded condition, Events
and a retraining with trigger Performance, under the same cooldown and daily cap as drift."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from test_plan import NOW, challenger, drift_check, serving, spec, step

from mlworkflow.api.conditions import find
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Trigger
from mlworkflow.desired.lifecycle import DriftCheck, Observed, ServingState, TrainingRun


def check(
    measured: float | None,
    rows: int = 500,
    at: datetime = NOW,
    estimated: float | None = None,
    state: str = "ok",
) -> DriftCheck:
    """A monitoring Job whose drift check found nothing (not enough rows) and whose performance check
    measured `measured` f1_macro on `rows` labelled predictions of v1 (holdout: 0.9)."""
    performance: dict[str, Any] = {
        "status": state,
        "version": "v1",
        "metric": "f1_macro",
        "baseline": 0.9,
        "labelledRows": rows,
        "unknownLabels": 3,
        "result": "iris/drift/x/performance.json",
    }
    if measured is not None:
        performance["measured"] = measured
    if estimated is not None:
        performance["estimated"] = estimated
    result = {**drift_check(0, False, status="insufficient").result, "performance": performance}
    return DriftCheck("iris-drift-1", at, result)


def observe(monitoring: DriftCheck, status: Any = None, runs: list[TrainingRun] | None = None) -> Observed:
    served, first = serving()
    return Observed(1, "h1", status or served, runs or first, ServingState("v1", True), monitoring)


def test_a_decay_past_the_tolerance_is_degraded_and_retrains_against_the_champion() -> None:
    result = step(observe(check(0.6)))
    performance = result.status.performance
    assert performance is not None and performance.degraded is True
    assert (performance.measured, performance.baseline, performance.labelled_rows) == (0.6, 0.9, 500)
    assert performance.unknown_labels == 3
    degraded = find(result.status.conditions, "Degraded")
    assert degraded is not None and degraded.status == "True" and degraded.reason == "PerformanceDegraded"
    assert "f1_macro 0.6000 on 500 labelled predictions of v1, against 0.9000" in degraded.message
    assert result.train is not None
    assert (result.train.trigger, result.train.champion) == (Trigger.PERFORMANCE, "v1")
    assert result.train.drift_report == "iris/drift/x/performance.json", "lineage: the check that asked"
    assert {"PerformanceDegraded", "TrainingStarted"} <= {e.reason for e in result.events}
    again = step(observe(check(0.6), result.status))
    assert again.train is None, "the same check is not acted on twice"


def test_within_the_tolerance_holds_and_alert_only_records() -> None:
    holds = step(observe(check(0.86)))
    assert holds.train is None and holds.status.performance.degraded is False  # type: ignore[union-attr]
    assert find(holds.status.conditions, "Degraded").reason == "PerformanceHolds"  # type: ignore[union-attr]
    alert = spec()
    alert.monitoring.performance.on_decay = "Alert"
    alerted = step(observe(check(0.5)), alert)
    assert alerted.train is None and find(alerted.status.conditions, "Degraded").status == "True"  # type: ignore[union-attr]


def test_error_metrics_decay_upwards() -> None:
    regression = spec()
    regression.promotion.metric = "f1_macro"
    monitoring = check(0.6)
    monitoring.result["performance"] |= {"metric": "mse", "baseline": 10.0, "measured": 10.04}
    tolerant = spec()
    tolerant.monitoring.performance.tolerance = 0.05
    assert step(observe(monitoring), tolerant).status.performance.degraded is False  # type: ignore[union-attr]
    monitoring.result["performance"]["measured"] = 10.5
    assert step(observe(monitoring), tolerant).status.performance.degraded is True  # type: ignore[union-attr]


def test_too_few_labels_sets_no_condition_until_labels_come() -> None:
    none = step(observe(check(None, rows=0, state="insufficient")))
    assert none.train is None and find(none.status.conditions, "Degraded") is None
    some = step(observe(check(None, rows=20, state="insufficient")))
    condition = find(some.status.conditions, "Degraded")
    assert condition is not None and condition.status == "Unknown" and condition.reason == "NotEnoughLabels"


def test_an_estimate_alone_retrains_only_when_the_spec_asks() -> None:
    estimate = check(None, rows=0, estimated=0.5, state="insufficient")
    ignored = step(observe(estimate))
    assert ignored.train is None and find(ignored.status.conditions, "Degraded") is None
    assert ignored.status.performance.estimated == 0.5  # type: ignore[union-attr]
    alerting = spec()
    alerting.monitoring.performance.on_estimated_decay = "Alert"
    alerted = step(observe(estimate), alerting)
    assert alerted.train is None and "EstimatedDecay" in {e.reason for e in alerted.events}
    retraining = spec()
    retraining.monitoring.performance.on_estimated_decay = "Retrain"
    retrained = step(observe(estimate), retraining)
    assert retrained.train is not None and retrained.train.trigger == Trigger.PERFORMANCE
    # Labels, when there are enough, decide over the estimate.
    measured = check(0.88, estimated=0.5)
    assert step(observe(measured), retraining).train is None


def after_a_monitoring_retraining(trigger: Trigger, minutes_ago: int) -> Observed:
    """v2 trained `minutes_ago` on the monitoring's request (`trigger`) and serves; now v2 decays."""
    status, runs = serving()
    run = challenger("v2", 0.95, 0.8, finished=NOW - timedelta(minutes=minutes_ago))
    run = TrainingRun(run.version, trigger, run.spec_hash, run.state, run.result, finished_at=run.finished_at)
    done = step(Observed(1, "h1", status, [*runs, run]))
    monitoring = check(0.5, at=NOW + timedelta(seconds=1))
    monitoring.result["performance"]["version"] = "v2"
    return Observed(1, "h1", done.status, runs, ServingState("v2", True), monitoring)


def test_the_cooldown_and_cap_are_shared_with_drift() -> None:
    for trigger in (Trigger.DRIFT, Trigger.PERFORMANCE):
        held = step(after_a_monitoring_retraining(trigger, minutes_ago=20))
        assert held.train is None, trigger
        skipped = [e.message for e in held.events if e.reason == "RetrainSkipped"]
        assert skipped and "performance decay" in skipped[0] and "cooldown" in skipped[0], skipped
    capped_spec: MLWorkflowSpec = spec()
    capped_spec.monitoring.cooldown = "1s"
    capped_spec.monitoring.max_retrains_per_day = 1
    capped = step(after_a_monitoring_retraining(Trigger.PERFORMANCE, minutes_ago=20), capped_spec)
    assert capped.train is None and any("daily cap is 1" in e.message for e in capped.events)
    free = spec()
    free.monitoring.cooldown = "1s"
    retrained = step(after_a_monitoring_retraining(Trigger.PERFORMANCE, minutes_ago=20), free)
    assert retrained.train is not None and (retrained.train.trigger, retrained.train.champion) == (
        Trigger.PERFORMANCE,
        "v2",
    )


def test_a_failed_performance_check_says_so() -> None:
    failed = check(None, state="error")
    failed.result["performance"]["message"] = "no model card for iris v9"
    result = step(observe(failed))
    condition = find(result.status.conditions, "Degraded")
    assert condition is not None and condition.reason == "PerformanceCheckFailed" and result.train is None
