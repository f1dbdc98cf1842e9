"""The estimators a workflow may name: the one check the planner (before anything runs) and the training
runtime (before anything is imported in a Pod) share.

A manifest must not be a way to import arbitrary code, so an estimator is imported only when its module
is under a prefix the operator's admin allows (scikit-learn's own by default). Then it must be an
estimator class that suits the task, accept the given parameter names, and, for OnlineLearning, learn
incrementally (`partial_fit`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.base import is_classifier, is_regressor

DEFAULT_ALLOWED_PREFIXES = ("sklearn.",)


@dataclass(frozen=True)
class Refusal:
    """Why a workflow cannot run as written: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


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


def check_incremental(field: str, path: str) -> Refusal | None:
    module_name, _, class_name = path.rpartition(".")
    if hasattr(getattr(importlib.import_module(module_name), class_name), "partial_fit"):
        return None
    return Refusal(
        "EstimatorNotIncremental",
        f"{field}: {path} has no partial_fit, so it cannot learn online; "
        "use e.g. sklearn.linear_model.SGDClassifier or sklearn.naive_bayes.GaussianNB",
    )
