"""The Argo CD health check of docs/operations.md, run by a real Lua 5.1 interpreter (Argo CD embeds Lua
5.1) on the statuses the operator writes in each phase.

The interpreter is PUC Lua 5.1.5 as `lupa.lua51` builds it into its wheel (a pinned dev dependency): the
test installs nothing and skips nothing. Debian's `lua5.1` would need root and apt in CI for one test.
The statuses come from the operator's own code (`apply_outcome`, the function every reconcile ends in,
with the outcomes the planner returns for each phase), serialized as the API server stores them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from lupa import lua51

from mlworkflow.api.conditions import Outcome, Progress, apply_outcome
from mlworkflow.api.v1alpha1 import MLWorkflowStatus
from support import REPO

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# (outcome of the reconcile, the health Argo CD must show), one per phase the operator writes.
PHASES = {
    "Training": (Outcome(Progress.PROGRESSING, "Training", "training v1", "Training"), "Progressing"),
    "Deploying": (Outcome(Progress.PROGRESSING, "RollingOut", "rolling out v1", "Deploying"), "Progressing"),
    "Serving": (Outcome(Progress.DONE, "Serving", "v1 is serving at http://x", "Serving"), "Healthy"),
    "Failed": (Outcome(Progress.STALLED, "TrainingFailed", "no column 'y'", "Failed"), "Degraded"),
    "Invalid": (
        Outcome(Progress.STALLED, "EstimatorNotAllowed", "spec.model.estimator: ...", "Invalid"),
        "Degraded",
    ),
}


def health_check() -> str:
    """The Lua block of docs/operations.md: what users paste into argocd-cm."""
    (block,) = re.findall(r"```lua\n(.*?)```", (REPO / "docs" / "operations.md").read_text(), flags=re.S)
    return block


def argocd_health(workflow: dict[str, Any]) -> dict[str, Any]:
    """Run the check as Argo CD does: the object in the global `obj`, the script's return value read back."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.eval("_VERSION") == "Lua 5.1" and lua.eval("jit") is None  # PUC Lua 5.1, not LuaJIT
    lua.globals().obj = lua.table_from(workflow, recursive=True)
    result = lua.execute(health_check())
    return dict(result.items())


def workflow(generation: int, status: MLWorkflowStatus | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "mlworkflow.io/v1alpha1",
        "kind": "MLWorkflow",
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation},
        "spec": {"pattern": "WebService"},
    }
    if status is not None:
        body["status"] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return body


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_each_phase_maps_to_its_argocd_health(phase: str) -> None:
    outcome, expected = PHASES[phase]
    status = apply_outcome(MLWorkflowStatus(), outcome, 3, NOW)
    assert status.phase == phase
    health = argocd_health(workflow(3, status))
    assert health["status"] == expected
    assert health["message"].startswith(outcome.reason)


def test_a_new_workflow_without_status_is_progressing() -> None:
    assert argocd_health(workflow(1, None))["status"] == "Progressing"


def test_a_status_about_an_older_generation_is_progressing_even_if_it_was_ready() -> None:
    serving = apply_outcome(MLWorkflowStatus(), PHASES["Serving"][0], 3, NOW)
    health = argocd_health(workflow(4, serving))
    assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 4"}


def test_a_fixed_workflow_recovers_from_degraded_to_healthy() -> None:
    failed = apply_outcome(MLWorkflowStatus(), PHASES["Failed"][0], 3, NOW)
    fixed = apply_outcome(failed, PHASES["Serving"][0], 4, NOW)
    assert argocd_health(workflow(4, fixed))["status"] == "Healthy"
