"""MLflow tracking (`spec.tracking.mlflow`): the settings every runtime Pod gets, and when the operator syncs
its decisions to the MLflow Model Registry. Pure, no I/O.

The runtimes log their own runs (training, search trials, batch runs, drift checks) and register every
trained version; what they cannot know is the champion/challenger decision, which is made here in the
planner (`lifecycle.decide`) once the training has ended. So a *sync* — a short Job running
`python -m mlworkflow.runtime.tracking` — carries the decisions to MLflow: each decided version's outcome
and reason as tags of its registered version, the alias `champion` on the served one. It also logs any
decided version that its training could not log (the tracking server was down), the runs of its AutoML
search that the search's workers could not (a failed search's too), and the drift checks and batch runs
that could not be logged when they ran: that is the retry. The local runner starts the same sync.

A sync is wanted whenever the digest of what MLflow should show (`digest`) differs from the last one a
sync completed (`status.tracking.synced`). A sync that could not reach the server is tried again after
`RETRY_SECONDS`, as a new Job (attempt n+1) for the same digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, TrackingStatus
from mlworkflow.desired.lifecycle import Event, SyncRequest, TrackingSync

RETRY_SECONDS = 60
NOT_TRACKED: Final = "NotTracked"


@dataclass(frozen=True)
class MLflowSettings:
    """Where a workflow's runs go: the tracking server, the experiment and the registered model's name."""

    tracking_uri: str
    experiment: str
    registered_model: str
    secret: str | None = None

    def env(self, namespace: str) -> dict[str, str]:
        """The environment of a runtime Pod that logs to MLflow (read by `mlworkflow.runtime.tracking`;
        MLFLOW_TRACKING_URI is MLflow's own variable)."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLW_MLFLOW_EXPERIMENT": self.experiment,
            "MLW_MLFLOW_MODEL": self.registered_model,
            "MLW_NAMESPACE": namespace,
        }


def settings(spec: MLWorkflowSpec, namespace: str, name: str, default_uri: str = "") -> MLflowSettings | None:
    """The workflow's MLflow settings with the defaults filled in; None when it is not tracked, or names no
    server and the operator has none (`validation.check_spec` refuses that workflow)."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    uri = (mlflow.tracking_uri or default_uri) if mlflow else ""
    if mlflow is None or not uri:
        return None
    return MLflowSettings(
        uri,
        mlflow.experiment or f"{namespace}/{name}",
        # A namespace has no dot (it is a DNS label): `<namespace>.<name>` names one workflow only.
        mlflow.registered_model or f"{namespace}.{name}",
        mlflow.secret_ref.name if mlflow.secret_ref else None,
    )


def decisions(status: MLWorkflowStatus, untracked: list[str] | None = None) -> dict[str, Any]:
    """What MLflow should show: the served version and every decided version's outcome and reason; the
    failed versions' reason and message (they saved no model: nothing to register; a failed AutoML search
    is logged with them); and `untracked`, the drift checks and batch runs seen to have not been logged
    (the runtime keeps them in the store; naming them here makes a sync log them)."""
    wanted: dict[str, Any] = {
        "served": status.model.version if status.model else None,
        "versions": [
            {
                "version": r.version,
                "outcome": r.outcome,
                "reason": r.reason,
                "message": r.message,
                "specHash": r.spec_hash,
                "trigger": str(r.trigger),
            }
            for r in status.history
            if r.outcome != "Failed"
        ],
        "failed": [
            {"version": r.version, "reason": r.reason, "message": r.message}
            for r in status.history
            if r.outcome == "Failed"
        ],
    }
    if untracked:
        wanted["untracked"] = sorted(untracked)
    return wanted


def digest(tracking: MLflowSettings, wanted: dict[str, Any]) -> str:
    text = json.dumps([tracking.tracking_uri, tracking.registered_model, wanted], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_sync(
    tracking: MLflowSettings | None,
    status: MLWorkflowStatus,
    syncs: list[TrackingSync],
    now: datetime,
    events: list[Event],
    untracked: list[str] | None = None,
) -> SyncRequest | None:
    """Fold the sync Jobs into `status.tracking` and say whether to start one: when the digest of what MLflow
    should show (`decisions`; `untracked`: the Jobs of the drift checks and batch runs that said they were
    not logged) is not the one last synced and no sync of it runs, or the last one could not reach the
    server `RETRY_SECONDS` ago. A sync that could not reach it is told once per attempt (Event
    NotTracked)."""
    if tracking is None:
        status.tracking = None
        return None
    wanted = decisions(status, untracked)
    if not wanted["versions"] and not wanted["failed"]:
        return None
    current = digest(tracking, wanted)
    record = status.tracking or TrackingStatus(state="Syncing", registered_model=tracking.registered_model)
    record.registered_model = tracking.registered_model
    status.tracking = record
    if record.synced == current:
        record.state = "Synced"
        return None
    attempts = sorted((s for s in syncs if s.digest == current), key=lambda s: s.attempt)
    done = next((s for s in attempts if s.state == "Succeeded" and s.result.get("status") == "ok"), None)
    if done is not None:
        record.state, record.synced, record.synced_at = "Synced", current, done.finished_at
        record.message = str(done.result.get("message") or "")
        return None
    last = attempts[-1] if attempts else None
    if last is None:
        record.state = "Syncing"
        return SyncRequest(current, 1, wanted)
    if last.state == "Running":
        record.state = "Syncing"
        return None
    reason = str(last.result.get("message") or last.message or "the sync Job failed")
    if record.state != NOT_TRACKED or record.message != reason:
        events.append(
            Event(
                "Warning", NOT_TRACKED, f"MLflow does not show the latest decisions: {reason}", key=last.name
            )
        )
    record.state, record.message = NOT_TRACKED, reason
    if last.finished_at is None or (now - last.finished_at).total_seconds() >= RETRY_SECONDS:
        return SyncRequest(current, last.attempt + 1, wanted)
    return None
