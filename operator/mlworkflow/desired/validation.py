"""What the CRD schema cannot check: the estimators a workflow names.

A manifest must not be a way to import arbitrary code, so an estimator is imported only when its module
is under a prefix the operator's admin allows (scikit-learn's own by default). Then it must be an
estimator class that suits the task, accept the given parameter names, and, for OnlineLearning, learn
incrementally (`partial_fit`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.base import is_classifier, is_regressor

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Pattern
from mlworkflow.desired import cron

DEFAULT_ALLOWED_PREFIXES = ("sklearn.",)


@dataclass(frozen=True)
class Refusal:
    """Why a workflow cannot run as written: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


def check_spec(
    spec: MLWorkflowSpec, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES
) -> Refusal | None:
    """The first problem of `spec` that the schema let through, or None."""
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
            refusal = _check_incremental(field, estimator)
        if refusal:
            return refusal
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


def check_estimator(
    field: str, path: str, params: dict[str, Any], task: str, allowed_prefixes: Sequence[str]
) -> Refusal | None:
    if not any(path.startswith(prefix) for prefix in allowed_prefixes):
        return Refusal(
            "EstimatorNotAllowed",
            f"{field}: {path} is not under an allowed module prefix ({', '.join(allowed_prefixes)}); "
            "the operator's admin sets the allow-list",
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        estimator = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return Refusal("EstimatorNotFound", f"{field}: {path} cannot be imported: check the spelling")
    if (
        not inspect.isclass(estimator)
        or not hasattr(estimator, "fit")
        or not hasattr(estimator, "get_params")
    ):
        return Refusal("EstimatorNotFound", f"{field}: {path} is not a scikit-learn estimator class")
    try:
        instance: Any = estimator()  # scikit-learn estimators construct with defaults alone
    except TypeError:
        return Refusal(
            "EstimatorNotFound", f"{field}: {path} needs constructor arguments: not a plain estimator"
        )
    known = set(instance.get_params(deep=False))
    unknown = sorted(set(params) - known)
    if unknown:
        return Refusal(
            "InvalidModelParams",
            f"{field}: {path} has no parameter {', '.join(unknown)}; it has {', '.join(sorted(known))}",
        )
    expected = "classifier" if task == "classification" else "regressor"
    if not (is_classifier(instance) if task == "classification" else is_regressor(instance)):
        return Refusal(
            "EstimatorTaskMismatch",
            f"{field}: {path} is not a {expected}, but spec.model.task is {task}",
        )
    return None


def _check_incremental(field: str, path: str) -> Refusal | None:
    module_name, _, class_name = path.rpartition(".")
    if hasattr(getattr(importlib.import_module(module_name), class_name), "partial_fit"):
        return None
    return Refusal(
        "EstimatorNotIncremental",
        f"{field}: {path} has no partial_fit, so it cannot learn online; "
        "use e.g. sklearn.linear_model.SGDClassifier or sklearn.naive_bayes.GaussianNB",
    )
