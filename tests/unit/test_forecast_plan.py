"""The Forecast pattern without a cluster: when batch runs start, what they look like, what status says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from mlworkflow.api import exitcodes
from mlworkflow.api.conditions import find, is_true
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired import children
from mlworkflow.desired.lifecycle import BatchRun, DriftCheck, Observed, TrainingRun
from mlworkflow.desired.patterns import forecast
from mlworkflow.desired.plan import plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "forecast-diabetes.yaml"
CONTEXT = children.RuntimeContext(image="registry.invalid/mlw:1")


def spec(**batch: Any) -> MLWorkflowSpec:
    document = yaml.safe_load(EXAMPLE.read_text())["spec"]
    document["batch"] = {"input": "incoming/*.parquet", "output": "predictions", **batch}
    return MLWorkflowSpec.model_validate(document)


def trained(version: str = "v1", trigger: Trigger = Trigger.INITIAL) -> TrainingRun:
    result = {"status": "ok", "metrics": {"r2": 0.5}, "backend": "sklearn", "holdout": {"rows": 90}}
    return TrainingRun(version, trigger, "h1", "Succeeded", result, finished_at=NOW)


def run(run_id: str, version: str, state: str = "Succeeded", **more: Any) -> BatchRun:
    result = {
        "rowsIn": 100,
        "predicted": 98,
        "rejected": 2,
        "output": f"predictions/{run_id}",
        "seconds": 3.0,
    }
    return BatchRun(
        run_id, version, "Promotion", state, result if state != "Running" else {}, finished_at=NOW, **more
    )  # type: ignore[arg-type]


def test_each_promoted_version_predicts_once_without_a_schedule() -> None:
    first = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW)
    assert first.deploy == "v1" and first.batch_run is not None
    assert (first.batch_run.suffix, first.batch_run.trigger) == ("v1", "Promotion")
    assert first.status.phase == "Predicting" and "BatchRunStarted" in [e.reason for e in first.events]
    running = plan(
        spec(),
        Observed(1, "h1", first.status, [trained()], batch_runs=[run("d-predict-v1", "v1", "Running")]),
        NOW,
    )
    assert running.batch_run is None and running.status.phase == "Predicting"
    done = plan(
        spec(), Observed(1, "h1", running.status, [trained()], batch_runs=[run("d-predict-v1", "v1")]), NOW
    )
    assert done.batch_run is None and done.status.phase == "Predicted"
    assert is_true(done.status.conditions, "Ready") and is_true(done.status.conditions, "Predicted")
    assert done.status.batch is not None and done.status.batch.runs[0].predicted == 98
    assert [e.reason for e in done.events] == ["BatchRunSucceeded"]
    # The Job goes (TTL); the status remembers the run: v1 is not predicted again.
    later = plan(spec(), Observed(1, "h1", done.status, [trained()]), NOW)
    assert later.batch_run is None and later.events == []
    # A newly promoted version predicts once.
    retrained = plan(spec(), Observed(1, "h1", later.status, [trained(), trained("v2", Trigger.DRIFT)]), NOW)
    assert retrained.batch_run is not None and retrained.batch_run.version == "v2"


def test_a_schedule_makes_a_cronjob_and_no_run_per_version() -> None:
    scheduled = spec(schedule="0 * * * *")
    result = plan(scheduled, Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW)
    assert result.batch_run is None and result.status.phase == "Scheduled"
    wanted = forecast.children_for(children.Workflow("d", "ml", "u", scheduled), result, CONTEXT)
    [cronjob] = wanted.apply
    assert cronjob["kind"] == "CronJob" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert (cronjob["spec"]["successfulJobsHistoryLimit"], cronjob["spec"]["failedJobsHistoryLimit"]) == (
        3,
        3,
    )
    assert cronjob["spec"]["jobTemplate"]["spec"]["completionMode"] == "Indexed"
    template = cronjob["spec"]["jobTemplate"]
    assert template["metadata"]["annotations"][children.TRIGGER_ANNOTATION] == "Schedule"
    assert template["metadata"]["labels"][children.VERSION_LABEL] == "v1"
    unscheduled = forecast.children_for(children.Workflow("d", "ml", "u", spec()), result, CONTEXT)
    assert unscheduled.delete == [("CronJob", "d-predict")], "a schedule removed removes its CronJob"


def test_a_run_is_an_indexed_job_that_fails_an_index_at_once_on_invalid_input() -> None:
    result = plan(spec(parallelism=3), Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW)
    wanted = forecast.children_for(children.Workflow("d", "ml", "u", spec(parallelism=3)), result, CONTEXT)
    [job] = wanted.apply
    assert job["metadata"]["name"] == "d-predict-v1"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "batch"
    body = job["spec"]
    assert (body["completionMode"], body["completions"], body["parallelism"]) == ("Indexed", 3, 3)
    assert body["backoffLimitPerIndex"] == forecast.RETRIES_PER_INDEX
    rules = body["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "predict", "operator": "In", "values": [exitcodes.INVALID_INPUT]},
    }
    container = body["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlworkflow.runtime.predict"]
    assert "--run-id=$(MLW_RUN_ID)" in container["args"] and "--indexes=3" in container["args"]
    run_id = next(e for e in container["env"] if e["name"] == "MLW_RUN_ID")
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"


def test_a_failed_run_stalls_and_a_predict_request_runs_again() -> None:
    status = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW).status
    failed = run("d-predict-v1", "v1", "Failed", message="index 0: 40 of 100 rows rejected")
    stalled = plan(spec(), Observed(1, "h1", status, [trained()], batch_runs=[failed]), NOW)
    condition = find(stalled.status.conditions, "Stalled")
    assert condition is not None and condition.reason == "BatchRunFailed" and "40 of 100" in condition.message
    assert [e.reason for e in stalled.events] == ["BatchRunFailed"], "told once, by the run's event"
    assert stalled.batch_run is None, "a failed run is not retried by itself"
    asked = plan(
        spec(),
        Observed(1, "h1", stalled.status, [trained()], batch_runs=[failed], predict_request="now"),
        NOW,
    )
    assert asked.batch_run is not None and asked.batch_run.trigger == "Manual"
    assert asked.batch_run.suffix.startswith("v1-") and asked.status.batch.last_handled_predict == "now"  # type: ignore[union-attr]
    again = plan(
        spec(), Observed(1, "h1", asked.status, [trained()], batch_runs=[failed], predict_request="now"), NOW
    )
    assert again.batch_run is None, "one run per value"


def test_forecast_has_no_endpoint_and_serves_nothing() -> None:
    result = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW)
    assert result.status.endpoint is None
    assert find(result.status.conditions, "Serving") is None


def drifted(name: str, at: datetime) -> DriftCheck:
    """A monitoring Job that found drift in the batch runs' sampled inputs."""
    result = {"status": "ok", "share": 0.6, "drifted": True, "threshold": 0.5, "columns": [{"column": "bmi"}]}
    return DriftCheck(name, at, result)


def test_drift_in_batch_inputs_retrains_under_cooldown_and_cap_and_the_next_run_uses_the_winner() -> None:
    """The shared lifecycle, for Forecast: drift retrains against the champion, held back by the cooldown
    and the daily cap; a promoted challenger's run follows; training.schedule retrains too."""
    wanted = spec()
    wanted.monitoring.cooldown, wanted.monitoring.max_retrains_per_day = "1h", 2
    predicted = plan(
        wanted,
        Observed(1, "h1", MLWorkflowStatus(), [trained()], batch_runs=[run("d-predict-v1", "v1")]),
        NOW,
    )
    assert predicted.status.phase == "Predicted"
    retrain = plan(
        wanted,
        Observed(
            1, "h1", predicted.status, [trained()], drift=drifted("d-drift-1", NOW + timedelta(minutes=1))
        ),
        NOW + timedelta(minutes=2),
    )
    assert retrain.train is not None
    assert (retrain.train.version, retrain.train.trigger, retrain.train.champion) == (
        "v2",
        Trigger.DRIFT,
        "v1",
    )
    assert retrain.batch_run is None, "v1 keeps its run; nothing is predicted again while v2 trains"

    challenger = TrainingRun(
        "v2",
        Trigger.DRIFT,
        "h1",
        "Succeeded",
        {
            "status": "ok",
            "metrics": {"r2": 0.6},
            "champion": {"version": "v1", "metrics": {"r2": 0.4}},
            "holdout": {"rows": 90},
        },
        finished_at=NOW + timedelta(minutes=10),
    )
    promoted = plan(
        wanted, Observed(1, "h1", retrain.status, [trained(), challenger]), NOW + timedelta(minutes=11)
    )
    assert promoted.status.model is not None and promoted.status.model.version == "v2"
    assert promoted.batch_run is not None and (promoted.batch_run.version, promoted.batch_run.trigger) == (
        "v2",
        "Promotion",
    ), "the next run uses the promoted version"

    again = Observed(
        1,
        "h1",
        promoted.status,
        [trained(), challenger],
        drift=drifted("d-drift-2", NOW + timedelta(minutes=20)),
    )
    cooling = plan(wanted, again, NOW + timedelta(minutes=21))
    assert cooling.train is None and any("cooldown" in e.message for e in cooling.events)
    wanted.monitoring.cooldown, wanted.monitoring.max_retrains_per_day = "1s", 1
    capped = plan(wanted, again, NOW + timedelta(minutes=21))
    assert capped.train is None and any("daily cap" in e.message for e in capped.events)

    wanted.training.schedule = "0 * * * *"  # hourly, from the workflow's creation at NOW
    created = Observed(1, "h1", promoted.status, [trained(), challenger], created_at=NOW)
    assert plan(wanted, created, NOW + timedelta(minutes=30)).train is None
    due = plan(wanted, created, NOW + timedelta(minutes=61))
    assert due.train is not None and (due.train.trigger, due.train.champion) == (Trigger.SCHEDULE, "v2")


def test_batch_run_metrics_count_each_finished_run_once() -> None:
    from prometheus_client import REGISTRY

    from mlworkflow.controller import metrics

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ml", "workflow": "counted", **labels})

    started = plan(spec(), Observed(1, "h1", MLWorkflowStatus(), [trained()]), NOW)
    running = plan(
        spec(),
        Observed(1, "h1", started.status, [trained()], batch_runs=[run("d-predict-v1", "v1", "Running")]),
        NOW,
    )
    metrics.record_status("ml", "counted", "Forecast", started.status, running.status)
    assert value("mlworkflow_batch_runs_total", state="Succeeded") is None, "counted once it finished"
    done = plan(
        spec(), Observed(1, "h1", running.status, [trained()], batch_runs=[run("d-predict-v1", "v1")]), NOW
    )
    for before, after in ((running.status, done.status), (done.status, done.status)):  # the second: no news
        metrics.record_status("ml", "counted", "Forecast", before, after)
    assert value("mlworkflow_batch_runs_total", state="Succeeded") == 1
    assert value("mlworkflow_batch_rows_total", outcome="predicted") == 98
    assert value("mlworkflow_batch_rows_total", outcome="rejected") == 2
    assert value("mlworkflow_batch_run_duration_seconds_sum") == 3.0
    assert value("mlworkflow_batch_run_duration_seconds_count") == 1
    assert value("mlworkflow_batch_last_success_timestamp_seconds") == NOW.timestamp()
    metrics.forget("ml", "counted")
    assert value("mlworkflow_batch_last_success_timestamp_seconds") is None, "a deleted workflow's gauge goes"
