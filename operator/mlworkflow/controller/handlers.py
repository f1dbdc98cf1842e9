"""kopf handlers: thin. The logic is in `reconcile` (and the pure planner); here the cluster is read and the
status written. Reconciles are level-triggered and serial per workflow (one timer each): when the workflow
appears (created, or at the operator's start), when its spec or a child's progress changed (`wakeups`), and
after `resync_seconds` without any of those.

The children a reconcile reads (Jobs, Deployments, the runtimes' Leases) come from kopf indexes over watches
restricted to the operator's workflow label, not from requests per reconcile: kopf fills the indexes from a
full listing before any handler runs, so a restarted operator starts from what is in the cluster."""

from __future__ import annotations

import asyncio
import functools
import os
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes.client import ApiException

from mlworkflow.api import v1alpha1
from mlworkflow.api.v1alpha1 import MLWorkflowStatus
from mlworkflow.controller import metrics
from mlworkflow.controller.config import OperatorConfig
from mlworkflow.controller.reconcile import reconcile
from mlworkflow.controller.wakeups import Wakeups
from mlworkflow.desired import children
from mlworkflow.kube import WATCHED_KINDS, Kube, Watched, api_client, milestone, record

RESOURCE = (v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL)
CONFIG = OperatorConfig.from_env()
MAX_RETRY_SECONDS = 60
INSTANCE = os.environ.get("HOSTNAME", "mlworkflow-operator")  # the Pod's name: which replica told
# After a reconcile, the least time before the next one of the same workflow: a burst of child changes
# (a Job's Pod and the Job finishing, a Deployment's rollout steps) makes one reconcile, not several.
WAKE_DEBOUNCE_SECONDS = 1.0
# kopf's own requests to the API server (its patches, Events, listings) in flight at once, watches aside.
# kopf's session has no limit, so a ramp of many workflows opened one TLS connection per concurrent patch,
# each with asyncio's 256 KiB read buffer and OpenSSL's state (~0.3 MiB), kept in the pool after the burst:
# at 1,000 new workflows that was most of the operator's memory. Watches are not counted: each holds its
# connection for as long as it streams, and there is one per watched resource and namespace, as many as
# the operator is told to watch; counting them could leave no connection for a patch.
MAX_REQUESTS_IN_FLIGHT = 32
JOBS = ("batch", "v1", "jobs")
LEASES = ("coordination.k8s.io", "v1", "leases")
DEPLOYMENTS = ("apps", "v1", "deployments")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations, never into the status users and kstatus read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=v1alpha1.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=v1alpha1.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{v1alpha1.GROUP}/finalizer"
    # The API server sends only the operator's children: unlabelled Jobs, Deployments, ... never reach it.
    for resource in (JOBS, LEASES, *CHILDREN.values()):
        settings.watching.label_selectors[resource] = children.WORKFLOW_LABEL
    memo.kube = Kube(api_client())
    memo.wakeups = Wakeups()
    memo.execution = settings.execution  # its executor runs the sync handlers, and the woken reconciles
    port = int(os.environ.get("MLW_METRICS_PORT", "0"))
    if port:
        metrics.serve(port)


@kopf.on.login(id="login")
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's login from the kubeconfig or the ServiceAccount (`kopf.login_via_client`), in a session that
    sends at most `MAX_REQUESTS_IN_FLIGHT` requests at once besides its watches. kopf closes the session
    when it logs in again."""
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, ssl=info.as_ssl_context()
        ),  # as kopf's own: watches unbounded
        middlewares=(bounded_requests(MAX_REQUESTS_IN_FLIGHT),),
        headers=info.as_http_headers(),  # the basic auth or the token, as kopf's own session
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,  # a token that expires: kopf logs in again before
    )


def bounded_requests(limit: int) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware letting at most `limit` requests other than watches (`watch=true`) hold a
    connection at once: each waits for its turn, then keeps it until its body is read (which releases the
    connection to the pool), so the pool never holds more than `limit` connections besides the watches'."""
    turns = asyncio.Semaphore(limit)

    async def bounded(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.query.get("watch") == "true":
            return await handler(request)
        async with turns:
            response = await handler(request)
            await response.read()  # kept in the response: kopf's `response.json()` reads it from there
            return response

    return bounded


@kopf.on.event(*RESOURCE, id="forget")
def forget_deleted_workflow(event: kopf.RawEvent, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    # A raw event, not an on.delete handler: nothing (no finalizer) ever holds a deletion for the operator;
    # the children go by their ownerReferences.
    if event["type"] == "DELETED":
        metrics.forget(str(meta["namespace"]), str(meta["name"]))
        memo.wakeups.forget((str(meta["namespace"]), str(meta["name"])))


# The indexes a reconcile reads its children from (`kube.Watched`); kopf passes each as the keyword
# argument named by its id. Async: they run in kopf's event loop, no thread per watch event.
@kopf.index(*JOBS, labels={children.WORKFLOW_LABEL: kopf.PRESENT}, id="jobs_by_workflow")
async def index_jobs(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    return {(namespace, labels[children.WORKFLOW_LABEL]): record(body)}


@kopf.index(*DEPLOYMENTS, labels={children.WORKFLOW_LABEL: kopf.PRESENT}, id="deployments_by_name")
async def index_deployments(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    return {(namespace, name): record(body)}


@kopf.index(*LEASES, labels={children.WORKFLOW_LABEL: kopf.PRESENT}, id="leases_by_name")
async def index_leases(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    return {(namespace, name): record(body)}


def _watched(kwargs: dict[str, Any]) -> Watched:
    return Watched(kwargs["jobs_by_workflow"], kwargs["deployments_by_name"], kwargs["leases_by_name"])


def _reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, logger: kopf.Logger, watched: Watched
) -> None:
    memo.kube.watched = watched  # the same kopf indexes at every call
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


def _observe_child(kind: str, resource: tuple[str, ...]) -> None:
    async def observe(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        obj: dict[str, Any] = dict(event["object"])
        meta = obj["metadata"]
        namespace, deleted = meta.get("namespace", ""), event["type"] == "DELETED"
        shown = kind in ("Job", "Deployment", "Lease") and memo.wakeups.shown(
            kind, namespace, meta["name"], milestone(kind, obj), deleted
        )
        if event["type"] is None:  # kopf's initial listing, before the watch starts: nothing changed
            return
        reapply = kind in WATCHED_KINDS and memo.kube.observed(kind, obj, deleted)
        if shown or reapply:
            memo.wakeups.wake((namespace, (meta.get("labels") or {})[children.WORKFLOW_LABEL]))

    kopf.on.event(*resource, labels={children.WORKFLOW_LABEL: kopf.PRESENT}, id=f"observe-{kind}")(observe)


# The children whose changes matter between two reconciles: an edited or deleted one is applied again.
CHILDREN: dict[str, tuple[str, str] | tuple[str, str, str]] = {
    "Deployment": DEPLOYMENTS,
    "Service": ("v1", "services"),
    "CronJob": ("batch", "v1", "cronjobs"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
}
assert set(CHILDREN) == set(WATCHED_KINDS)
for _kind, _resource in {**CHILDREN, "Job": JOBS, "Lease": LEASES}.items():
    _observe_child(_kind, _resource)


@kopf.on.update(*RESOURCE, id="reconcile")
async def wake_on_change(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """A change of the spec, labels or annotations (a retrain or predict request) reconciles at once. Async,
    as every handler that wakes: an asyncio.Event is set from the event loop's thread only."""
    memo.wakeups.wake((str(meta["namespace"]), str(meta["name"])))


@kopf.timer(*RESOURCE, id="resync", interval=WAKE_DEBOUNCE_SECONDS)
async def reconcile_when_woken(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """The one reconciler of a workflow, so that two reconciles of it never race and an older status
    never overwrites a newer one: it starts with the workflow (or the operator), then waits until the
    workflow or a child changed (`wakeups`) or `resync_seconds` passed, and reconciles on the live body
    (kopf keeps a timer's body current). A failed reconcile is retried at its own delay."""
    key = (str(body["metadata"]["namespace"]), str(body["metadata"]["name"]))
    retry, stopped = kwargs["retry"], kwargs["stopped"]
    if not retry:
        await memo.wakeups.wait(key, CONFIG.resync_seconds, stopped.wait())
    if stopped:
        return
    reconcile_now = functools.partial(_reconcile, body, patch, memo, retry, logger, _watched(kwargs))
    await asyncio.get_running_loop().run_in_executor(memo.execution.executor, reconcile_now)


def _release_deletion() -> None:
    """kopf puts a finalizer on every object a timer runs for, so as to stop the timer before the object goes
    (nolar/kopf#1074: a timer's requires_finalizer is fixed to True). The resync needs no such care — a
    deleted workflow's timer simply stops — and the finalizer would leave workflows, and their namespaces,
    stuck in Terminating while the operator is down or uninstalled. Nothing else here needs one."""
    for handler in kopf.get_default_registry()._spawning.get_all_handlers():
        object.__setattr__(handler, "requires_finalizer", False)  # frozen dataclass: kopf's internal


_release_deletion()
