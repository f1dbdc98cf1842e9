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
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

DEFAULT_ALLOWED_PREFIXES = ("sklearn.",)
INSPECT_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Refusal:
    """Why a workflow cannot run as written: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


@dataclass(frozen=True)
class Facts:
    """What importing an estimator path tells: `kind` "estimator" (a class that constructs with defaults
    alone and has fit and get_params), "missing" (no such module or attribute), "not-estimator" or
    "needs-arguments"; for an estimator, its parameter names, whether scikit-learn calls it a classifier or
    a regressor, and whether it learns incrementally (`partial_fit`)."""

    kind: Literal["estimator", "missing", "not-estimator", "needs-arguments"]
    params: tuple[str, ...] = ()
    classifier: bool = False
    regressor: bool = False
    incremental: bool = False


def inspect_estimator(path: str) -> Facts:
    """Import `path` (module.Class) in this process and read its `Facts`. Only for paths already under an
    allowed prefix: importing runs the module's code."""
    module_name, _, class_name = path.rpartition(".")
    try:
        estimator = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return Facts("missing")
    if (
        not inspect.isclass(estimator)
        or not hasattr(estimator, "fit")
        or not hasattr(estimator, "get_params")
    ):
        return Facts("not-estimator")
    try:
        instance: Any = estimator()  # scikit-learn estimators construct with defaults alone
    except TypeError:
        return Facts("needs-arguments")
    from sklearn.base import is_classifier, is_regressor  # here only: see `facts`

    return Facts(
        "estimator",
        tuple(sorted(instance.get_params(deep=False))),
        bool(is_classifier(instance)),
        bool(is_regressor(instance)),
        hasattr(estimator, "partial_fit"),
    )


_facts: dict[str, Facts] = {}
_facts_lock = threading.Lock()


def facts(path: str) -> Facts:
    """`inspect_estimator(path)`, asked once per path for the life of the process (the answer depends only
    on the installed packages). A process that has not loaded scikit-learn (the operator: ~220 MiB of
    numpy, scipy and pandas it needs for nothing else) asks a short-lived subprocess of the same Python and
    path instead, so its memory stays that of kopf and the client. Raises RuntimeError when that subprocess
    fails (a retryable error, not a refusal)."""
    with _facts_lock:
        if path not in _facts:
            _facts[path] = inspect_estimator(path) if "sklearn" in sys.modules else _inspect_apart(path)
        return _facts[path]


def _inspect_apart(path: str) -> Facts:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-m", "mlworkflow.api.estimators", path],
        capture_output=True,
        text=True,
        env=env,
        timeout=INSPECT_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"inspecting {path} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout)
    return Facts(
        answer["kind"],
        tuple(answer["params"]),
        answer["classifier"],
        answer["regressor"],
        answer["incremental"],
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
    found = facts(path)
    if found.kind == "missing":
        return Refusal("EstimatorNotFound", f"{field}: {path} cannot be imported: check the spelling")
    if found.kind == "not-estimator":
        return Refusal("EstimatorNotFound", f"{field}: {path} is not a scikit-learn estimator class")
    if found.kind == "needs-arguments":
        return Refusal(
            "EstimatorNotFound", f"{field}: {path} needs constructor arguments: not a plain estimator"
        )
    unknown = sorted(set(params) - set(found.params))
    if unknown:
        return Refusal(
            "InvalidModelParams",
            f"{field}: {path} has no parameter {', '.join(unknown)}; it has {', '.join(found.params)}",
        )
    expected = "classifier" if task == "classification" else "regressor"
    if not (found.classifier if task == "classification" else found.regressor):
        return Refusal(
            "EstimatorTaskMismatch",
            f"{field}: {path} is not a {expected}, but spec.model.task is {task}",
        )
    return None


def check_incremental(field: str, path: str) -> Refusal | None:
    """For an estimator `check_estimator` accepted: None when it has partial_fit."""
    if facts(path).incremental:
        return None
    return Refusal(
        "EstimatorNotIncremental",
        f"{field}: {path} has no partial_fit, so it cannot learn online; "
        "use e.g. sklearn.linear_model.SGDClassifier or sklearn.naive_bayes.GaussianNB",
    )


if __name__ == "__main__":  # `facts` in a process apart: python -m mlworkflow.api.estimators module.Class
    print(json.dumps(asdict(inspect_estimator(sys.argv[1]))))
