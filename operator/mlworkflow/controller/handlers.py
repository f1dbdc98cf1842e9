"""kopf handlers: thin. The logic is in `reconcile` (and the pure planner); here the cluster is read and the
status written. Reconciles are level-triggered: on every change of the spec, at resume, and periodically."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import ApiException

from mlworkflow.api import v1alpha1
from mlworkflow.api.v1alpha1 import MLWorkflowStatus
from mlworkflow.controller import metrics
from mlworkflow.controller.config import OperatorConfig
from mlworkflow.controller.reconcile import reconcile
from mlworkflow.desired import children
from mlworkflow.kube import WATCHED_KINDS, Kube, api_client

RESOURCE = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
CONFIG = OperatorConfig.from_env()
MAX_RETRY_SECONDS = 60
INSTANCE = os.environ.get("HOSTNAME", "mlworkflow-operator")  # the Pod's name: which replica told


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations, never into the status users and kstatus read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=v1alpha1.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=v1alpha1.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{v1alpha1.GROUP}/finalizer"
    memo.kube = Kube(api_client())
    port = int(os.environ.get("MLW_METRICS_PORT", "0"))
    if port:
        metrics.serve(port)


@kopf.on.event(*RESOURCE, id="forget")
def forget_deleted_workflow(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
    # A raw event, not an on.delete handler: nothing (no finalizer) ever holds a deletion for the operator;
    # the children go by their ownerReferences.
    if event["type"] == "DELETED":
        metrics.forget(str(meta["namespace"]), str(meta["name"]))


def _reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, logger: kopf.Logger) -> None:
    with metrics.RECONCILE_DURATION.time():
        try:
            result = reconcile(dict(body), memo.kube, CONFIG, datetime.now(UTC))
        except Exception as error:
            metrics.RECONCILES.labels("error").inc()
            # A reconcile is idempotent, so it is retried soon, backing off exponentially: kopf's fixed minute
            # would outlast a blip of the API server by far.
            delay = min(MAX_RETRY_SECONDS, 2**retry)
            logger.warning(f"reconcile failed, retrying in {delay}s", exc_info=True)
            raise kopf.TemporaryError(f"{type(error).__name__}: {error}", delay=delay) from error
    metrics.RECONCILES.labels("success").inc()
    before = MLWorkflowStatus.model_validate(body.get("status") or {})
    meta = body["metadata"]
    metrics.record_status(
        meta["namespace"], meta["name"], str(body["spec"].get("pattern")), before, result.status
    )
    if result.retrain_trigger:
        metrics.record_retrain(meta["namespace"], meta["name"], result.retrain_trigger)
    if result.status != before:  # a steady resync of a healthy workflow writes nothing
        patch.status.update(result.status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    now = datetime.now(UTC)
    for event in result.events:
        try:
            memo.kube.post_event(children.event(dict(meta), event, now, INSTANCE))
        except ApiException as error:
            # An Event is a courtesy: the status holds what it says.
            logger.warning(f"could not post the {event.reason} event: {error.status} {error.reason}")
    # Nothing is returned: kopf would store a return value under status.


def _observe_child(kind: str) -> None:
    def observe(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        if event["type"] is not None:  # None: kopf's initial listing, before the watch starts
            memo.kube.observed(kind, dict(event["object"]), deleted=event["type"] == "DELETED")

    kopf.on.event(*CHILDREN[kind], labels={children.WORKFLOW_LABEL: kopf.PRESENT}, id=f"observe-{kind}")(
        observe
    )


# The children whose changes matter between two reconciles: an edited or deleted one is applied again.
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("v1", "services"),
    "CronJob": ("batch", "v1", "cronjobs"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
}
assert set(CHILDREN) == set(WATCHED_KINDS)
for _kind in CHILDREN:
    _observe_child(_kind)


@kopf.on.resume(*RESOURCE, id="reconcile")
@kopf.on.create(*RESOURCE, id="reconcile")
@kopf.on.update(*RESOURCE, id="reconcile")
def reconcile_on_change(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, logger: kopf.Logger, **_: Any
) -> None:
    _reconcile(body, patch, memo, retry, logger)


@kopf.timer(*RESOURCE, id="resync", interval=CONFIG.resync_seconds)
def reconcile_periodically(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    _reconcile(body, patch, memo, kwargs["retry"], logger)


def _release_deletion() -> None:
    """kopf puts a finalizer on every object a timer runs for, so as to stop the timer before the object goes
    (nolar/kopf#1074: a timer's requires_finalizer is fixed to True). The resync needs no such care — a
    deleted workflow's timer simply stops — and the finalizer would leave workflows, and their namespaces,
    stuck in Terminating while the operator is down or uninstalled. Nothing else here needs one."""
    for handler in kopf.get_default_registry()._spawning.get_all_handlers():
        object.__setattr__(handler, "requires_finalizer", False)  # frozen dataclass: kopf's internal


_release_deletion()
