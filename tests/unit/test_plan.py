"""The planner, without a cluster: every step of the WebService life cycle."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from mlworkflow.api.conditions import find, is_true
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired.plan import Observed, ServingState, TrainingRun, next_version, plan

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
    assert result.serve is None
    assert result.status.phase == "Training"
    assert is_true(result.status.conditions, "Reconciling") and not is_true(result.status.conditions, "Ready")
    assert [e.reason for e in result.events] == ["TrainingStarted"]


def test_while_training_runs_nothing_new_starts() -> None:
    running = TrainingRun("v1", Trigger.INITIAL, "h1", "Running")
    result = step(Observed(1, "h1", MLWorkflowStatus(), [running]))
    assert result.train is None and result.status.phase == "Training"


def test_a_finished_training_is_promoted_and_rolled_out() -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    assert result.serve == "v1" and result.train is None
    assert result.status.model is not None and result.status.model.version == "v1"
    assert result.status.history[0].outcome == "Promoted"
    assert result.status.phase == "Deploying" and result.status.endpoint == ENDPOINT
    assert is_true(result.status.conditions, "Trained")
    assert [e.reason for e in result.events] == ["Promoted"]


def test_ready_once_serving_runs_the_version() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    done = step(Observed(1, "h1", first.status, [ok("v1")], ServingState(True, "v1", True)))
    assert done.status.phase == "Serving"
    assert is_true(done.status.conditions, "Ready") and is_true(done.status.conditions, "Serving")
    assert not is_true(done.status.conditions, "Reconciling")
    assert [e.reason for e in done.events] == ["RolledOut"], (
        "a run already in the history is not recorded twice"
    )
    again = step(Observed(1, "h1", done.status, [ok("v1")], ServingState(True, "v1", True)))
    assert again.events == [], "a steady state posts no events"


def test_serving_of_an_older_version_is_not_ready() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    rolling = step(Observed(1, "h1", first.status, [ok("v1")], ServingState(True, "v0", True)))
    assert rolling.status.phase == "Deploying" and not is_true(rolling.status.conditions, "Ready")


def test_a_spec_change_retrains_with_the_next_version() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")]))
    changed = step(Observed(2, "h2", first.status, [ok("v1")], ServingState(True, "v1", True)))
    assert changed.train is not None and (changed.train.version, changed.train.trigger) == (
        "v2",
        Trigger.SPEC_CHANGE,
    )
    assert changed.serve == "v1", "the old version serves while the new one trains"
    promoted = step(Observed(2, "h2", changed.status, [ok("v1"), ok("v2", Trigger.SPEC_CHANGE, "h2")]))
    assert promoted.serve == "v2" and promoted.status.retrains == 1
    assert [h.version for h in promoted.status.history] == ["v2", "v1"]


def test_a_failed_training_stalls_and_the_old_version_keeps_serving() -> None:
    first = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")], ServingState(True, "v1", True)))
    result = step(
        Observed(2, "h2", first.status, [ok("v1"), failed("v2", "h2")], ServingState(True, "v1", True))
    )
    assert result.train is None, "the same spec is not retried: a human must act"
    assert result.serve == "v1"
    stalled = find(result.status.conditions, "Stalled")
    assert stalled is not None and stalled.status == "True" and stalled.reason == "TrainingFailed"
    assert "column 'x' is missing" in stalled.message
    assert not is_true(result.status.conditions, "Ready")
    assert [e.type for e in result.events] == ["Warning"]
    fixed = step(
        Observed(3, "h3", result.status, [ok("v1"), failed("v2", "h2")], ServingState(True, "v1", True))
    )
    assert fixed.train is not None and fixed.train.version == "v3"


def test_pinning_a_version_serves_it_and_refuses_an_unknown_one() -> None:
    history = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1")])).status
    history = step(Observed(2, "h2", history, [ok("v1"), ok("v2", Trigger.SPEC_CHANGE, "h2")])).status
    pinned = spec()
    assert pinned.serving is not None
    pinned.serving.model_version = "v1"
    assert step(Observed(3, "h2", history, []), pinned).serve == "v1"
    pinned.serving.model_version = "v9"
    refused = step(Observed(3, "h2", history, []), pinned)
    assert refused.serve is None
    assert find(refused.status.conditions, "Stalled").reason == "ModelVersionNotFound"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "example", ["forecast-diabetes.yaml", "onlinelearning-wine.yaml", "automl-breast-cancer.yaml"]
)
def test_patterns_not_implemented_yet_say_so(example: str) -> None:
    result = step(Observed(1, "h1", MLWorkflowStatus()), spec(example))
    assert result.train is None and result.serve is None
    assert find(result.status.conditions, "Stalled").reason == "PatternNotSupported"  # type: ignore[union-attr]


def test_versions_count_past_everything_seen() -> None:
    status = step(Observed(1, "h1", MLWorkflowStatus(), [ok("v1"), failed("v4", "h9")])).status
    assert next_version(status, [TrainingRun("v7", Trigger.MANUAL, "h", "Running")]) == "v8"


def test_history_is_bounded() -> None:
    status = MLWorkflowStatus()
    for n in range(1, 30):
        status = step(Observed(n, f"h{n}", status, [ok(f"v{n}", spec_hash=f"h{n}")])).status
    assert len(status.history) == 20 and status.history[0].version == "v29"
