"""What differs between the patterns: the "deploy" step of the lifecycle and the children it needs.

Each pattern module has `deploy(spec, observed, status, events, now, endpoint) -> Deployment` (the planner's
part: it may set the pattern's conditions and status fields and append events) and
`children_for(workflow, plan, context) -> Children` (the manifests to apply and the objects to delete for that
plan). Everything else — training, champion/challenger, drift, retraining — is shared
(`mlworkflow.desired.lifecycle`, `mlworkflow.desired.children`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Pattern
from mlworkflow.desired.children import Children, RuntimeContext, Workflow
from mlworkflow.desired.lifecycle import Deployment, Event, Observed, Plan
from mlworkflow.desired.patterns import automl, forecast, online, webservice


class PatternModule(Protocol):
    def deploy(
        self,
        spec: MLWorkflowSpec,
        observed: Observed,
        status: MLWorkflowStatus,
        events: list[Event],
        now: datetime,
        endpoint: str | None,
    ) -> Deployment: ...

    def children_for(self, workflow: Workflow, plan: Plan, context: RuntimeContext) -> Children: ...


PATTERNS: dict[Pattern, PatternModule] = {
    Pattern.WEB_SERVICE: webservice,
    Pattern.FORECAST: forecast,
    Pattern.AUTOML: automl,
    Pattern.ONLINE_LEARNING: online,
}
