"""The planner, without a cluster: every step of the WebService life cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from mlworkflow.api.conditions import Outcome, Progress, apply_outcome, find, is_true
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Pattern, Trigger
from mlworkflow.desired.lifecycle import (
    DriftCheck,
    Observed,
    ServingState,
    TrainingRun,
    cooldown_seconds,
    decide,
    next_version,
    stall_events,
)
from mlworkflow.desired.patterns import PATTERNS
from mlworkflow.desired.plan import plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENDPOINT = "http://iris.ns.svc:80"


def spec(example: str = "webservice-iris.yaml") -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(yaml.safe_load((EXAMPLES / example).read_text())["spec"])


def ok(
    version: str, trigger: Trigger = Trigger.INITIAL, spec_hash: str = "h1", f1: float = 0.9
) -> TrainingRun:
    result = {"status": "ok", "version": version, "metrics": {"f1_macro": f1}, "backend": "onnxruntime"}
    return TrainingRun(version, trigger, spec_hash, "Succeeded", result, finished_at=NOW)


def failed(version: str, spec_hash: str = "h1", message: str = "column 'x' is missing") -> TrainingRun:
    result = {"status": "error", "reason": "DataInvalid", "message": message}
    return TrainingRun(version, Trigger.SPEC_CHANGE, spec_hash, "Failed", result, finished_at=NOW)


def step(observed: Observed, workflow: MLWorkflowSpec | None = None):  # type: ignore[no-untyped-def]
    return plan(workflow or spec(), observed, NOW, ENDPOINT)


def test_a_new_workflow_trains_v1_and_serves_nothing_yet() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus()))
    assert result.train is not None and (result.train.version, result.train.trigger) == (
        "v1",
        Trigger.INITIAL,
    )
    assert result.deploy is None
    assert result.status.phase == "Training"
    assert is_true(result.status.conditions, "Reconciling") and not is_true(result.status.conditions, "Ready")
    assert [e.reason for e in result.events] == ["TrainingStarted"]


def test_while_training_runs_nothing_new_starts() -> None:
    running = TrainingRun("v1", Trigger.INITIAL, "h1", "Running")
    result = step(Observed(1, "h1", MLWorkflowStatus(), [running]))
    assert result.train is None and result.status.phase == "Training"


def test_a_finished_training_is_promoted_and_rolled_out() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    assert result.deploy == "v1" and result.train is None
    assert result.status.model is not None and result.status.model.version == "v1"
    assert result.status.history[0].outcome == "Promoted"
    assert result.status.phase == "Deploying" and result.status.endpoint == ENDPOINT
    assert is_true(result.status.conditions, "Trained")
    assert [e.reason for e in result.events] == ["Promoted"]


def test_ready_once_serving_runs_the_version() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    done = step(Observed(1, "h1", first.status, [ok("v1")], ServingState("v1", True)))
    assert done.status.phase == "Serving"
    assert is_true(done.status.conditions, "Ready") and is_true(done.status.conditions, "Serving")
    assert not is_true(done.status.conditions, "Reconciling")
    assert [e.reason for e in done.events] == ["RolledOut"], (
        "a run already in the history is not recorded twice"
    )
    again = step(Observed(1, "h1", done.status, [ok("v1")], ServingState("v1", True)))
    assert again.events == [], "a steady state posts no events"


def test_serving_of_an_older_version_is_not_ready() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    rolling = step(Observed(1, "h1", first.status, [ok("v1")], ServingState("v0", True)))
    assert rolling.status.phase == "Deploying" and not is_true(rolling.status.conditions, "Ready")


def test_a_spec_change_retrains_with_the_next_version() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    changed = step(Observed(2, "h2", first.status, [ok("v1")], ServingState("v1", True)))
    assert changed.train is not None and (changed.train.version, changed.train.trigger) == (
        "v2",
        Trigger.SPEC_CHANGE,
    )
    assert changed.deploy == "v1", "the old version serves while the new one trains"
    promoted = step(Observed(2, "h2", changed.status, [ok("v1"), ok("v2", Trigger.SPEC_CHANGE, "h2")]))
    assert promoted.deploy == "v2" and promoted.status.retrains == 1
    assert [h.version for h in promoted.status.history] == ["v2", "v1"]


def test_a_failed_training_stalls_and_the_old_version_keeps_serving() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")], ServingState("v1", True)))
    result = step(Observed(2, "h2", first.status, [ok("v1"), failed("v2", "h2")], ServingState("v1", True)))
    assert result.train is None, "the same spec is not retried: a human must act"
    assert result.deploy == "v1"
    stalled = find(result.status.conditions, "Stalled")
    assert stalled is not None and stalled.status == "True" and stalled.reason == "TrainingFailed"
    assert "column 'x' is missing" in stalled.message
    assert not is_true(result.status.conditions, "Ready")
    assert [e.type for e in result.events] == ["Warning"]
    fixed = step(Observed(3, "h3", result.status, [ok("v1"), failed("v2", "h2")], ServingState("v1", True)))
    assert fixed.train is not None and fixed.train.version == "v3"


def test_pinning_a_version_serves_it_and_refuses_an_unknown_one_saying_what_serves() -> None:
    history = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")])).status
    history = step(Observed(2, "h2", history, [ok("v1"), ok("v2", Trigger.SPEC_CHANGE, "h2")])).status
    pinned = spec()
    assert pinned.serving is not None
    pinned.serving.model_version = "v1"
    assert step(Observed(3, "h2", history, []), pinned).deploy == "v1"
    pinned.serving.model_version = "v9"
    refused = step(Observed(4, "h2", history, [], ServingState("v2", True)), pinned)
    assert refused.deploy is None, "nothing is rolled out: v2 keeps serving"
    stalled = find(refused.status.conditions, "Stalled")
    assert stalled is not None and stalled.reason == "ModelVersionNotFound"
    serving_condition = find(refused.status.conditions, "Serving")
    assert serving_condition is not None and serving_condition.status == "False"
    assert serving_condition.message.startswith("v2 keeps serving: spec.serving.modelVersion v9 is not")
    assert refused.status.endpoint == ENDPOINT, "v2 still answers there"
    assert [(e.type, e.reason) for e in refused.events] == [("Warning", "ModelVersionNotFound")]
    again = step(Observed(4, "h2", refused.status, [], ServingState("v2", True)), pinned)
    assert again.events == [], "a Stalled reason is told once, not at every reconcile"


def test_every_stall_is_told_once_per_reason_and_generation() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")], ServingState("v1", True)))
    failing = step(Observed(2, "h2", first.status, [ok("v1"), failed("v2", "h2")], ServingState("v1", True)))
    assert [e.reason for e in failing.events] == ["TrainingFailed"], "one event, not one per source"
    still = step(Observed(2, "h2", failing.status, [ok("v1"), failed("v2", "h2")], ServingState("v1", True)))
    assert still.events == []
    assert stall_events(still.status, still.status) == []
    refused = still.status.model_copy(update={"observed_generation": 3})
    refused = apply_outcome(
        refused, Outcome(Progress.STALLED, "EstimatorNotAllowed", "no", "Invalid"), 3, NOW
    )
    assert [e.reason for e in stall_events(still.status, refused)] == ["EstimatorNotAllowed"]
    assert stall_events(refused, refused) == []


def test_every_pattern_of_the_api_runs() -> None:
    assert set(PATTERNS) == set(Pattern)


def test_versions_count_past_everything_seen() -> None:
    status = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1"), failed("v4", "h9")])).status
    assert next_version(status, [TrainingRun("v7", Trigger.MANUAL, "h", "Running")]) == "v8"


def test_history_is_bounded() -> None:
    status = MLWorkflowStatus()
    for n in range(1, 30):
        status = step(Observed(n, f"h{n}", status, [ok(f"v{n}", spec_hash=f"h{n}")])).status
    assert len(status.history) == 20 and status.history[0].version == "v29"


# --- drift and champion/challenger ----------------------------------------------------------------------


def serving(version: str = "v1") -> tuple[MLWorkflowStatus, list[TrainingRun]]:
    runs = [ok("v1")]
    status = step(Observed(1, "h1", MLWorkflowStatus(), runs, ServingState(version, True))).status
    return status, runs


def drift_check(share: float, drifted: bool, at: datetime = NOW, status: str = "ok") -> DriftCheck:
    result = {
        "status": status,
        "share": share,
        "drifted": drifted,
        "threshold": 0.3,
        "columns": [{"column": "petal length (cm)", "method": "K-S p_value", "score": 0.001}],
        "report": "iris/drift/x/report.html",
        "message": "120 rows served; 200 are needed",
    }
    return DriftCheck("iris-drift-1", at, result)


def test_drift_is_recorded_and_triggers_a_retraining_against_the_champion() -> None:
    status, runs = serving()
    result = step(Observed(1, "h1", status, runs, ServingState("v1", True), drift_check(0.5, True)))
    assert result.status.drift is not None and result.status.drift.drifted is True
    assert result.status.drift.share == 0.5 and result.status.drift.report == "iris/drift/x/report.html"
    drifted = find(result.status.conditions, "Drifted")
    assert drifted is not None and drifted.status == "True" and "petal length (cm)" in drifted.message
    assert result.train is not None
    assert (result.train.version, result.train.trigger, result.train.champion) == ("v2", Trigger.DRIFT, "v1")
    assert result.train.drift_report == "iris/drift/x/report.html", "lineage: the report that asked for it"
    assert {"DriftDetected", "TrainingStarted"} <= {e.reason for e in result.events}
    # The same check is not acted on twice.
    again = step(Observed(1, "h1", result.status, runs, ServingState("v1", True), drift_check(0.5, True)))
    assert again.train is None


def test_the_drifted_condition_counts_the_columns_the_summary_does_not_name() -> None:
    status, runs = serving()
    check = drift_check(1.0, True)
    check.result["driftedColumns"] = 480  # the termination message names only the first
    result = step(Observed(1, "h1", status, runs, ServingState("v1", True), check))
    drifted = find(result.status.conditions, "Drifted")
    assert drifted is not None and "(petal length (cm) and 479 more)" in drifted.message


def test_no_drift_and_not_enough_data_do_not_retrain() -> None:
    status, runs = serving()
    calm = step(Observed(1, "h1", status, runs, ServingState("v1", True), drift_check(0.1, False)))
    assert calm.train is None and find(calm.status.conditions, "Drifted").status == "False"  # type: ignore[union-attr]
    thin = step(
        Observed(
            1,
            "h1",
            status,
            runs,
            ServingState("v1", True),
            drift_check(0, False, status="insufficient"),
        )
    )
    assert thin.train is None
    condition = find(thin.status.conditions, "Drifted")
    assert condition is not None and condition.status == "Unknown" and condition.reason == "NotEnoughData"


def test_alert_only_records() -> None:
    status, runs = serving()
    alert = spec()
    alert.monitoring.on_drift = "Alert"
    result = step(Observed(1, "h1", status, runs, ServingState("v1", True), drift_check(0.9, True)), alert)
    assert result.train is None and result.status.drift.drifted is True  # type: ignore[union-attr]


def challenger(
    version: str, f1: float, champion_f1: float, finished: datetime = NOW, rows: int = 300
) -> TrainingRun:
    result = {
        "status": "ok",
        "metrics": {"f1_macro": f1},
        "backend": "sklearn",
        "champion": {"version": "v1", "metrics": {"f1_macro": champion_f1}},
        "holdout": {"rows": rows, "excludedRows": 1200, "split": "Random"},
    }
    return TrainingRun(version, Trigger.DRIFT, "h1", "Succeeded", result, finished_at=finished)


def test_a_better_challenger_is_promoted_and_a_worse_one_rejected() -> None:
    status, runs = serving()
    better = step(Observed(1, "h1", status, [*runs, challenger("v2", 0.95, 0.80)]))
    assert better.status.model.version == "v2" and better.deploy == "v2"  # type: ignore[union-attr]
    assert better.status.history[0].outcome == "Promoted" and better.status.retrains == 1
    worse = step(Observed(1, "h1", status, [*runs, challenger("v2", 0.70, 0.80)]))
    assert worse.status.model.version == "v1" and worse.deploy == "v1"  # type: ignore[union-attr]
    record = worse.status.history[0]
    assert record.outcome == "Rejected" and "0.7000" in record.message and "0.8000" in record.message
    assert record.reason == "NotBetter" and record.champion == "v1"
    assert record.holdout is not None and (record.holdout.rows, record.holdout.excluded_rows) == (300, 1200)
    promoted = better.status.history[0]
    assert promoted.reason == "Better" and "300 held-out rows" in promoted.message
    assert "1200 rows excluded as seen by v1" in promoted.message, "a promotion says what it was based on"
    assert [e.reason for e in worse.events] == ["Rejected"]
    assert worse.status.retrains == 1, "a rejected retraining is still a retraining"


def test_min_improvement_and_error_metrics() -> None:
    status, runs = serving()
    demanding = spec()
    demanding.promotion.min_improvement = 0.1
    result = step(Observed(1, "h1", status, [*runs, challenger("v2", 0.85, 0.80)]), demanding)
    assert result.status.history[0].outcome == "Rejected"
    regression = spec("forecast-diabetes.yaml")
    regression.promotion.metric = "mse"
    run = TrainingRun(
        "v2",
        Trigger.DRIFT,
        "h1",
        "Succeeded",
        {"status": "ok", "metrics": {"mse": 10.0}, "champion": {"version": "v1", "metrics": {"mse": 12.0}}},
    )
    assert decide(regression, run, {"mse": 10.0}).outcome == "Promoted", "a lower error is better"
    assert decide(regression, run, {"mse": 13.0}).outcome == "Rejected"


def test_cooldown_and_daily_cap_hold_back_drift_retraining() -> None:
    status, runs = serving()
    done = step(
        Observed(1, "h1", status, [*runs, challenger("v2", 0.9, 0.8, finished=NOW - timedelta(minutes=20))])
    )
    drifted = Observed(
        1,
        "h1",
        done.status,
        [*runs],
        ServingState("v2", True),
        drift_check(0.6, True, at=NOW + timedelta(seconds=1)),
    )
    held = step(drifted)
    assert held.train is None
    assert any(e.reason == "RetrainSkipped" and "cooldown" in e.message for e in held.events)
    capped_spec = spec()
    capped_spec.monitoring.cooldown = "1s"
    capped_spec.monitoring.max_retrains_per_day = 1
    capped = step(drifted, capped_spec)
    assert capped.train is None and any("daily cap" in e.message for e in capped.events)


def test_a_spec_change_is_promoted_whatever_the_champion() -> None:
    status, runs = serving()
    run = TrainingRun(
        "v2",
        Trigger.SPEC_CHANGE,
        "h2",
        "Succeeded",
        {
            "status": "ok",
            "metrics": {"f1_macro": 0.5},
            "champion": {"version": "v1", "metrics": {"f1_macro": 0.9}},
        },
    )
    assert step(Observed(2, "h2", status, [*runs, run])).deploy == "v2"


def test_cooldown_parsing() -> None:
    assert cooldown_seconds("1h30m") == 5400 and cooldown_seconds("45s") == 45


def test_too_few_unseen_rows_keep_the_champion_and_say_how_many() -> None:
    status, runs = serving()
    thin = step(Observed(1, "h1", status, [*runs, challenger("v2", 0.99, 0.50, rows=40)]))
    assert thin.status.model.version == "v1" and thin.deploy == "v1"  # type: ignore[union-attr]
    record = thin.status.history[0]
    assert (record.outcome, record.reason) == ("Rejected", "InsufficientHoldout")
    [event] = [e for e in thin.events if e.reason == "InsufficientHoldout"]
    assert (
        event.type == "Warning"
        and "only 40 held-out rows" in event.message
        and "at least 100" in event.message
    )
    enough = spec()
    enough.promotion.min_holdout_rows = 40
    assert (
        step(Observed(1, "h1", status, [*runs, challenger("v2", 0.99, 0.50, rows=40)]), enough).deploy == "v2"
    )


def test_a_challenger_scored_on_no_row_is_never_promoted() -> None:
    """One unseen row gives no metric (the trainer scores two or more): the champion stays, however low
    spec.promotion.minHoldoutRows is."""
    status, runs = serving()
    lenient = spec()
    lenient.promotion.min_holdout_rows = 1
    unscored = challenger("v2", 0.99, 0.50, rows=1)
    unscored.result["metrics"] = {}
    result = step(Observed(1, "h1", status, [*runs, unscored]), lenient)
    assert result.deploy == "v1" and result.status.history[0].reason == "InsufficientHoldout"
    [event] = [e for e in result.events if e.reason == "InsufficientHoldout"]
    assert "no f1_macro on 1 held-out rows" in event.message and "v1 keeps serving" in event.message


def test_a_retrain_request_made_during_a_training_waits_for_it() -> None:
    status, runs = serving()
    drifting = TrainingRun("v2", Trigger.DRIFT, "h1", "Running")
    held = step(Observed(1, "h1", status, [*runs, drifting], ServingState("v1", True), retrain_request="1"))
    assert held.train is None and held.status.last_handled_retrain is None
    done = challenger("v2", 0.70, 0.80)
    after = step(Observed(1, "h1", held.status, [*runs, done], ServingState("v1", True), retrain_request="1"))
    assert after.train is not None and (after.train.version, after.train.trigger) == ("v3", Trigger.MANUAL)
    assert after.status.last_handled_retrain == "1"


def test_a_retrain_request_trains_once_per_value_against_the_champion() -> None:
    status, runs = serving()
    asked = step(Observed(1, "h1", status, runs, ServingState("v1", True), retrain_request="1"))
    assert asked.train is not None
    assert (asked.train.trigger, asked.train.champion, asked.train.retrain_request) == (
        Trigger.MANUAL,
        "v1",
        "1",
    )
    assert asked.status.last_handled_retrain == "1"
    again = step(Observed(1, "h1", asked.status, runs, ServingState("v1", True), retrain_request="1"))
    assert again.train is None, "the same value asks once"
    # An operator that restarted before writing the status finds the request answered by the Job.
    running = TrainingRun("v2", Trigger.MANUAL, "h1", "Running", retrain_request="1")
    restarted = step(
        Observed(1, "h1", status, [*runs, running], ServingState("v1", True), retrain_request="1")
    )
    assert restarted.train is None and restarted.status.last_handled_retrain == "1"
    newer = step(Observed(1, "h1", asked.status, runs, ServingState("v1", True), retrain_request="2"))
    assert newer.train is not None and newer.train.version == "v2" and newer.train.retrain_request == "2"


def test_a_retrain_request_retries_a_failed_training() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [failed("v1", "h1")]))
    assert first.train is None and first.status.phase == "Failed", "a failed training waits for a human"
    retried = step(Observed(1, "h1", first.status, [failed("v1", "h1")], retrain_request="fixed"))
    assert retried.train is not None and retried.train.trigger == Trigger.MANUAL
    assert retried.train.champion is None, "nothing serves: no champion to beat"
    assert retried.status.phase == "Training" and not is_true(retried.status.conditions, "Stalled")
    done = step(
        Observed(
            1, "h1", retried.status, [failed("v1", "h1"), ok("v2", Trigger.MANUAL)], retrain_request="fixed"
        )
    )
    assert done.status.model.version == "v2" and done.status.history[0].reason == "NoChampion"  # type: ignore[union-attr]


def test_the_champion_of_another_spec_is_not_a_yardstick() -> None:
    status, runs = serving()
    changed = step(Observed(2, "h2", status, [*runs, failed("v2", "h2")], ServingState("v1", True)))
    retried = step(
        Observed(
            2,
            "h2",
            changed.status,
            [*runs, failed("v2", "h2")],
            ServingState("v1", True),
            retrain_request="x",
        )
    )
    assert retried.train is not None and retried.train.champion is None, "v1 was trained for another spec"
