"""One reconcile of an MLWorkflow, as a plain function: what its status should become, and what to report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mlworkflow.api.conditions import Outcome, Progress, apply_outcome
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus
from mlworkflow.controller.config import OperatorConfig
from mlworkflow.desired.validation import check_spec


@dataclass(frozen=True)
class Result:
    status: MLWorkflowStatus
    outcome: Outcome


def reconcile(body: dict[str, Any], config: OperatorConfig, now: datetime) -> Result:
    """The status of the workflow in `body` after this reconcile."""
    generation = int(body["metadata"].get("generation", 1))
    status = MLWorkflowStatus.model_validate(body.get("status") or {})
    outcome = evaluate(body.get("spec") or {}, config)
    return Result(apply_outcome(status, outcome, generation, now), outcome)


def evaluate(raw_spec: dict[str, Any], config: OperatorConfig) -> Outcome:
    try:
        spec = MLWorkflowSpec.model_validate(raw_spec)
    except ValidationError as error:
        # Only reachable for objects stored under an older schema: the CRD refuses the rest.
        first = error.errors()[0]
        field = "spec." + ".".join(str(p) for p in first["loc"])
        return Outcome(Progress.STALLED, "InvalidSpec", f"{field}: {first['msg']}", phase="Invalid")
    refusal = check_spec(spec, config.allowed_estimator_prefixes)
    if refusal:
        return Outcome(Progress.STALLED, refusal.reason, refusal.message, phase="Invalid")
    return Outcome(
        Progress.PROGRESSING,
        "SpecAccepted",
        f"the {spec.pattern} workflow is valid; its children are not created yet",
        phase="Pending",
    )
