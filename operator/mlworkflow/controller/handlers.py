"""kopf handlers: thin. The logic is in `reconcile`; here the cluster is read and the status written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from mlworkflow.api import v1alpha1
from mlworkflow.api.conditions import Progress
from mlworkflow.controller.config import OperatorConfig
from mlworkflow.controller.reconcile import reconcile

RESOURCE = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
CONFIG = OperatorConfig.from_env()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations, never into the status users and kstatus read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=v1alpha1.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=v1alpha1.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{v1alpha1.GROUP}/finalizer"


@kopf.on.resume(*RESOURCE, id="reconcile")
@kopf.on.create(*RESOURCE, id="reconcile")
@kopf.on.update(*RESOURCE, id="reconcile")
def reconcile_workflow(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    result = reconcile(dict(body), CONFIG, datetime.now(UTC))
    patch.status.update(result.status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    if result.outcome.progress == Progress.STALLED:
        kopf.warn(body, reason=result.outcome.reason, message=result.outcome.message)
    # Nothing is returned: kopf would store a return value under status.
