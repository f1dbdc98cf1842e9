"""What the CRD schema cannot check: schedules the cron library refuses, the estimators a workflow names
(see `mlworkflow.api.estimators`), the classes an OnlineLearning classifier declares, and an AutoML search
space the search cannot use (`mlworkflow.api.search`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mlworkflow.api import search
from mlworkflow.api.estimators import (
    DEFAULT_ALLOWED_PREFIXES,
    Refusal,
    check_estimator,
    check_incremental,
)
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Pattern
from mlworkflow.desired import cron


def check_spec(
    spec: MLWorkflowSpec,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    default_tracking_uri: str = "",
) -> Refusal | None:
    """The first problem of `spec` that the schema let through, or None. `default_tracking_uri`: the
    operator's MLflow tracking server, for workflows that name none."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    if mlflow is not None and not mlflow.tracking_uri and not default_tracking_uri:
        return Refusal(
            "TrackingNotConfigured",
            "spec.tracking.mlflow.trackingUri: this operator has no default MLflow tracking server (Helm "
            "value tracking.mlflow.trackingUri); name one here",
        )
    schedules = {
        "spec.training.schedule": spec.training.schedule,
        "spec.monitoring.schedule": spec.monitoring.schedule,
        "spec.batch.schedule": spec.batch.schedule if spec.batch else None,
    }
    for field, schedule in schedules.items():
        try:
            if schedule:
                cron.parse(schedule)
        except cron.CronError as error:
            return Refusal("InvalidSchedule", f"{field}: {error}")
    task = spec.model.task if spec.model else "classification"
    for field, estimator, params in _estimators(spec):
        refusal = check_estimator(field, estimator, params, task, allowed_prefixes)
        if refusal is None and spec.pattern == Pattern.ONLINE_LEARNING:
            refusal = check_incremental(field, estimator)
        if refusal:
            return refusal
    if spec.pattern == Pattern.ONLINE_LEARNING and spec.serving and spec.serving.model_version:
        return Refusal(
            "ModelVersionNotAllowed",
            "spec.serving.modelVersion: OnlineLearning serves the learner's newest snapshot; pinning a "
            "version is for WebService and AutoML",
        )
    refusal = _check_classes(spec)
    if refusal:
        return refusal
    if spec.automl is not None:
        try:
            search.search_space(spec, spec.automl.search, allowed_prefixes)
        except search.SearchSpaceError as error:
            return Refusal(error.reason, str(error))
    return None


def _check_classes(spec: MLWorkflowSpec) -> Refusal | None:
    """spec.online.classes: for an OnlineLearning classifier, at least two, none twice (as written; the
    training also tells 1 from "1.0" apart, see `mlworkflow.runtime.data.declared_classes`)."""
    declared = spec.online.classes if spec.online and spec.pattern == Pattern.ONLINE_LEARNING else None
    if not declared:
        return None
    task = spec.model.task if spec.model else "classification"
    if task != "classification":
        return Refusal(
            "InvalidClasses", f"spec.online.classes: spec.model.task is {task}; classes are for a classifier"
        )
    twice = sorted(c for c, n in Counter(map(str, declared)).items() if n > 1)
    if twice:
        return Refusal("InvalidClasses", f"spec.online.classes: {', '.join(twice)} declared twice")
    if len(declared) < 2:
        return Refusal("InvalidClasses", "spec.online.classes: a classifier needs at least two classes")
    return None


def _estimators(spec: MLWorkflowSpec) -> Iterable[tuple[str, str, dict[str, Any]]]:
    if spec.model and spec.model.estimator:
        yield "spec.model.estimator", spec.model.estimator, spec.model.params
    for i, candidate in enumerate(spec.automl.candidates if spec.automl else []):
        # AutoML params are search spaces: only their names can be checked here.
        yield (
            f"spec.automl.candidates[{i}].estimator",
            candidate.estimator,
            {k: None for k in candidate.params},
        )
