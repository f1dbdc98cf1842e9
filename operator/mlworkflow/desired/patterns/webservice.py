"""The WebService pattern: a BentoML Deployment and Service answering predictions for the promoted (or pinned)
version, scaled by replicas or a HorizontalPodAutoscaler."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlworkflow.api import v1alpha1
from mlworkflow.api.conditions import Outcome, Progress, find, set_condition
from mlworkflow.api.v1alpha1 import ConditionStatus, MLWorkflowSpec, MLWorkflowStatus
from mlworkflow.desired import children
from mlworkflow.desired.children import Children, Manifest, RuntimeContext, Workflow
from mlworkflow.desired.lifecycle import Deployment, Event, Observed, Plan

SERVING_CONDITION = "Serving"


def deploy(
    spec: MLWorkflowSpec,
    observed: Observed,
    status: MLWorkflowStatus,
    events: list[Event],
    now: datetime,
    endpoint: str | None,
) -> Deployment:
    """Serve the pinned version, else the promoted one. A pinned version that does not exist changes nothing:
    what serves keeps serving, and the conditions say so."""
    pinned = spec.serving.model_version if spec.serving else None
    trained = {r.version for r in status.history if r.outcome != "Failed"}
    missing = pinned if pinned and pinned not in trained else None
    serve = None if missing else pinned or (status.model.version if status.model else None)
    serving_ready = serve is not None and observed.serving.ready and observed.serving.version == serve
    running_version = observed.serving.version if observed.serving.ready else None
    status.endpoint = endpoint if serve or running_version else None
    not_found = f"spec.serving.modelVersion {missing} is not a trained version of this workflow"
    if missing:
        condition = (
            ConditionStatus.FALSE,
            "ModelVersionNotFound",
            f"{running_version} keeps serving: {not_found}" if running_version else not_found,
        )
    elif serving_ready:
        condition = (ConditionStatus.TRUE, "Serving", f"{serve} is serving at {endpoint}")
    else:
        condition = (
            ConditionStatus.FALSE,
            "RollingOut" if serve else "NoModel",
            f"rolling out {serve}" if serve else "no model version to serve yet",
        )
    previous = find(observed.status.conditions, SERVING_CONDITION)
    if serving_ready and (previous is None or previous.message != condition[2]):
        events.append(Event("Normal", "RolledOut", condition[2]))
    status.conditions = set_condition(
        status.conditions, SERVING_CONDITION, *condition, observed.generation, now
    )
    if missing:
        return Deployment(None, Outcome(Progress.STALLED, "ModelVersionNotFound", not_found, phase="Failed"))
    if not serving_ready:
        return Deployment(
            serve, Outcome(Progress.PROGRESSING, "RollingOut", f"rolling out {serve}", phase="Deploying")
        )
    return Deployment(
        serve, Outcome(Progress.DONE, "Serving", f"{serve} is serving at {endpoint}", phase="Serving")
    )


def children_for(workflow: Workflow, plan: Plan, context: RuntimeContext) -> Children:
    """The serving children of `plan.deploy`; nothing before a version exists."""
    if plan.deploy is None:
        return Children()
    return serving_children(workflow, plan.deploy, context)


def serving_children(
    workflow: Workflow, version: str, context: RuntimeContext, env: dict[str, str] | None = None
) -> Children:
    """The Service, the Deployment serving `version` (with `env` added to its container's), and its
    HorizontalPodAutoscaler (deleted when autoscaling is off). WebService, AutoML and OnlineLearning serve
    alike."""
    autoscaler = serving_autoscaler(workflow)
    return Children(
        apply=[
            serving_service(workflow),
            serving_deployment(workflow, version, context, env),
            *([autoscaler] if autoscaler else []),
        ],
        delete=[] if autoscaler else [("HorizontalPodAutoscaler", children.serving_name(workflow))],
    )


def serving_deployment(
    workflow: Workflow, version: str, context: RuntimeContext, env: dict[str, str] | None = None
) -> Manifest:
    """The BentoML Deployment serving `version`; a new version rolls out readiness-gated, none unavailable.
    `env`: more environment for its container (OnlineLearning's follow mode)."""
    spec = workflow.spec
    serving = spec.serving or v1alpha1.ServingSpec()
    pod_labels = {**children.labels(workflow, children.SERVING), children.VERSION_LABEL: version}
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": children.selector(workflow, children.SERVING)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "serviceAccountName": spec.runtime.service_account_name or "default",
                "automountServiceAccountToken": False,
                "securityContext": children.pod_security(),
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "serve",
                        "image": spec.runtime.image or context.image,
                        "imagePullPolicy": context.image_pull_policy,
                        "command": ["bentoml", "serve", "mlworkflow.runtime.serve:ModelService"],
                        "args": ["--host=0.0.0.0", "--port=$(HTTP_PORT)"],
                        "env": [
                            {"name": "HTTP_PORT", "value": str(children.HTTP_PORT)},
                            {"name": "MODEL_TAG", "value": f"{workflow.name}:{version}"},
                            {
                                "name": "BENTOML_HOME",
                                "value": f"{children.STORE_MOUNT}/{workflow.name}/bentoml",
                            },
                            {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
                            {"name": "MLW_ACCESS_LOG", "value": str(context.serving_access_log).lower()},
                            *({"name": k, "value": v} for k, v in (env or {}).items()),
                        ],
                        "ports": [{"name": "http", "containerPort": children.HTTP_PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http"},
                            "periodSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/livez", "port": "http"},
                            "initialDelaySeconds": 30,
                            "periodSeconds": 10,
                            "failureThreshold": 6,
                        },
                        "resources": children.container_resources(serving.resources),
                        "securityContext": children.container_security(),
                        "volumeMounts": [{"name": "store", "mountPath": children.STORE_MOUNT}],
                    }
                ],
                "volumes": [children.store_volume(workflow)],
            },
        },
    }
    if serving.autoscaling is None:
        deployment_spec["replicas"] = 1 if serving.replicas is None else serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": children.metadata(workflow, children.serving_name(workflow), children.SERVING),
        "spec": deployment_spec,
    }


def serving_service(workflow: Workflow) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": children.metadata(workflow, children.serving_name(workflow), children.SERVING),
        "spec": {
            "selector": children.selector(workflow, children.SERVING),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def serving_autoscaler(workflow: Workflow) -> Manifest | None:
    autoscaling = (workflow.spec.serving or v1alpha1.ServingSpec()).autoscaling
    if autoscaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": children.metadata(workflow, children.serving_name(workflow), children.SERVING),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": children.serving_name(workflow),
            },
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }
