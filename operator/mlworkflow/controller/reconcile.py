"""One reconcile of an MLWorkflow: observe its children, plan, carry the plan out. Plain functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlworkflow.api import v1alpha1
from mlworkflow.api.conditions import Outcome, Progress, apply_outcome
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Pattern
from mlworkflow.controller.config import OperatorConfig
from mlworkflow.desired import children
from mlworkflow.desired.lifecycle import Event, Observed, ServingState, stall_events
from mlworkflow.desired.patterns import PATTERNS, automl, online
from mlworkflow.desired.plan import plan
from mlworkflow.desired.validation import check_spec
from mlworkflow.kube import Kube


@dataclass(frozen=True)
class Result:
    status: MLWorkflowStatus
    events: list[Event] = field(default_factory=list)
    retrain_trigger: str | None = None  # the trigger of a retraining this reconcile started


# The patterns with a serving Deployment.
SERVED = (Pattern.WEB_SERVICE, Pattern.AUTOML, Pattern.ONLINE_LEARNING)


def reconcile(body: dict[str, Any], kube: Kube, config: OperatorConfig, now: datetime) -> Result:
    """Bring the cluster one step closer to the workflow's desired state; return its new status."""
    generation = int(body["metadata"].get("generation", 1))
    status = MLWorkflowStatus.model_validate(body.get("status") or {})
    refusal = refuse(body.get("spec") or {}, config)
    if refusal is not None:
        # Nothing is created for a workflow that cannot run as written; it is told once.
        refused = apply_outcome(status, refusal, generation, now)
        return Result(refused, stall_events(status, refused))

    workflow = children.Workflow.from_body(body)
    pattern = workflow.spec.pattern
    annotations = body["metadata"].get("annotations") or {}
    tracking = children.mlflow_settings(workflow, config.runtime)
    observed = Observed(
        generation=generation,
        spec_hash=children.model_spec_hash(workflow.spec),
        status=status,
        runs=kube.training_runs(workflow.namespace, workflow.name),
        serving=kube.serving_state(workflow.namespace, children.serving_name(workflow))
        if pattern in SERVED
        else ServingState(),
        drift=kube.latest_drift_check(workflow.namespace, workflow.name),
        created_at=_created_at(body),
        retrain_request=annotations.get(v1alpha1.RETRAIN_ANNOTATION),
        batch_runs=kube.batch_runs(workflow.namespace, workflow.name) if pattern == Pattern.FORECAST else [],
        predict_request=annotations.get(v1alpha1.PREDICT_ANNOTATION),
        searches=kube.searches(workflow.namespace, workflow.name, automl.search_lease_name(workflow))
        if pattern == Pattern.AUTOML
        else [],
        syncs=kube.tracking_syncs(workflow.namespace, workflow.name) if tracking else [],
        learner=kube.learner(workflow.namespace, online.learner_name(workflow))
        if pattern == Pattern.ONLINE_LEARNING
        else None,
    )
    next_state = plan(workflow.spec, observed, now, children.endpoint(workflow), tracking)
    if next_state.train is not None and pattern != Pattern.AUTOML:  # AutoML searches first (its children)
        kube.apply(children.training_job(workflow, next_state.train, config.runtime))
    if pattern in PATTERNS:
        wanted = PATTERNS[pattern].children_for(workflow, next_state, config.runtime)
        for manifest in wanted.apply:
            kube.apply(manifest)
        for kind, name in wanted.delete:
            kube.delete(kind, workflow.namespace, name)
    if next_state.sync is not None:
        kube.apply(children.tracking_job(workflow, next_state.sync, config.runtime))
    if next_state.deploy is not None:
        kube.apply(children.monitoring_cronjob(workflow, next_state.deploy, config.runtime))
    retrain = next_state.train.trigger if next_state.train and next_state.train.trigger != "Initial" else None
    return Result(next_state.status, next_state.events, str(retrain) if retrain else None)


def _created_at(body: dict[str, Any]) -> datetime | None:
    stamp = body["metadata"].get("creationTimestamp")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def refuse(raw_spec: dict[str, Any], config: OperatorConfig) -> Outcome | None:
    """Why a spec that the schema let through cannot run, or None."""
    try:
        spec = MLWorkflowSpec.model_validate(raw_spec)
    except ValidationError as error:
        # Only reachable for objects stored under an older schema: the CRD refuses the rest.
        first = error.errors()[0]
        field_path = "spec." + ".".join(str(p) for p in first["loc"])
        return Outcome(Progress.STALLED, "InvalidSpec", f"{field_path}: {first['msg']}", phase="Invalid")
    refusal = check_spec(spec, config.allowed_estimator_prefixes, config.runtime.mlflow_tracking_uri)
    if refusal:
        return Outcome(Progress.STALLED, refusal.reason, refusal.message, phase="Invalid")
    return None
