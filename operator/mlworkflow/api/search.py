"""The AutoML search space: `spec.automl.candidates` parsed into typed domains, or a preset per task.

Shared by the planner, which refuses a space before anything runs (a `SearchSpaceError` becomes a
`Ready=False` with its reason and message), and the search runtime (`mlworkflow.runtime.search`), which
turns the domains into Optuna distributions. Nothing here imports Optuna: the API layer stays free of it.

A parameter's space in a manifest is one of:

    max_depth: [3, 5, null]              a list of values (any JSON: numbers, strings, null, lists)
    n_estimators: {low: 10, high: 500}   integers low..high inclusive (`log: true` samples on a log scale)
    C: {low: 0.01, high: 100.0, log: true}   floats low..high
    max_iter: 1000                       one fixed value (a bare value, as in `spec.model.params`)

Grid search takes lists, fixed values and integer ranges (every integer of the range); a float range has
no grid, so it is refused there.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES, check_estimator
from mlworkflow.api.v1alpha1 import MLWorkflowSpec

Search = Literal["random", "grid", "tpe"]
RANGE_KEYS = frozenset({"low", "high", "log", "type"})
# A grid larger than this is almost surely a mistake (an integer range of 1..10000 expanded): refused.
MAX_GRID_POINTS = 100_000
# k-NN is cheap and competitive on small data and the slowest family to predict on large data (FLAML
# likewise leaves it out of its default estimators): presets include it up to this many training rows.
KNN_MAX_ROWS = 10_000


class SearchSpaceError(ValueError):
    """A search space the CRD lets through but the search cannot use. `reason` is CamelCase (the
    condition's reason); the message names the field, e.g. `spec.automl.candidates[1].params.max_depth`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Choice:
    """One of `values`, in order (JSON values; a one-value choice is a fixed parameter)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], both included; `log`: uniform on a log scale (low >= 1)."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    """A float in [low, high]; `log`: uniform on a log scale (low > 0)."""

    low: float
    high: float
    log: bool = False


Domain = Choice | IntRange | FloatRange


@dataclass(frozen=True)
class CandidateSpace:
    """One model family: the estimator's import path and the domain of each searched parameter.

    `start` (presets only) is a cheap, sensible first configuration: the search tries it before sampling,
    so every family gets a fair baseline however small the budget (FLAML's "low-cost initial point")."""

    estimator: str
    params: Mapping[str, Domain]
    start: Mapping[str, Any] = field(default_factory=dict)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the parameters' values (SearchSpaceError for a float range)."""
        names = sorted(self.params)
        values = [_grid_values(self.estimator, name, self.params[name]) for name in names]
        return [dict(zip(names, combination, strict=True)) for combination in itertools.product(*values)]

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether `params` (a previous trial's) is a point of this space: warm starts enqueue only those."""
        return set(params) == set(self.params) and all(
            _in_domain(self.params[name], value) for name, value in params.items()
        )


def _grid_values(estimator: str, name: str, domain: Domain) -> Sequence[Any]:
    if isinstance(domain, Choice):
        return domain.values
    if isinstance(domain, IntRange):
        return range(domain.low, domain.high + 1)
    raise SearchSpaceError(
        "InvalidSearchSpace",
        f"{estimator} parameter {name}: a float range has no grid; give a list of values, or use "
        "search random or tpe",
    )


def _in_domain(domain: Domain, value: Any) -> bool:
    if isinstance(domain, Choice):
        return any(_same(value, choice) for choice in domain.values)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(domain, IntRange) and not float(value).is_integer():
        return False
    return domain.low <= value <= domain.high


def _same(a: Any, b: Any) -> bool:
    """JSON equality, type included: 1, 1.0 and True are three different parameter values."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def parse_domain(field_path: str, raw: Any) -> Domain:
    """One parameter's space from the manifest; SearchSpaceError naming `field_path` when unusable."""
    if isinstance(raw, list):
        if not raw:
            raise SearchSpaceError("InvalidSearchSpace", f"{field_path}: an empty list has nothing to try")
        for i, value in enumerate(raw):
            if any(_same(value, earlier) for earlier in raw[:i]):
                raise SearchSpaceError(
                    "InvalidSearchSpace", f"{field_path}: the value {json.dumps(value)} is listed twice"
                )
        return Choice(tuple(raw))
    if not isinstance(raw, dict):
        return Choice((raw,))
    unknown = sorted(set(raw) - RANGE_KEYS)
    if unknown or "low" not in raw or "high" not in raw:
        raise SearchSpaceError(
            "InvalidSearchSpace",
            f"{field_path}: a range is {{low, high, log, type}}"
            + (f"; unknown key {', '.join(unknown)}" if unknown else "; low and high are both required")
            + " (a list of values is written as a list)",
        )
    low, high, log = raw["low"], raw["high"], raw.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError("InvalidSearchSpace", f"{field_path}: log must be true or false, not {log!r}")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SearchSpaceError(
                "InvalidSearchSpace", f"{field_path}: {name} must be a finite number, not {json.dumps(value)}"
            )
    # The API server keeps JSON numbers, not their spelling (10.0 comes back as 10): a range is of integers
    # when both bounds are whole numbers, of floats when one is not, and `type` says so when that guess is
    # not what is meant.
    kind = raw.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise SearchSpaceError("InvalidSearchSpace", f"{field_path}: type must be int or float, not {kind!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchSpaceError(
            "InvalidSearchSpace", f"{field_path}: an int range needs whole bounds, not {low!r} and {high!r}"
        )
    if low > high:
        raise SearchSpaceError("InvalidSearchSpace", f"{field_path}: low {low!r} is above high {high!r}")
    if log and low <= 0:
        raise SearchSpaceError(
            "InvalidSearchSpace", f"{field_path}: a log range needs low > 0, and low is {low!r}"
        )
    return IntRange(int(low), int(high), log) if kind == "int" else FloatRange(float(low), float(high), log)


def parse_candidate(
    index: int,
    estimator: str,
    params: Mapping[str, Any],
    task: str,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    start: Mapping[str, Any] | None = None,
) -> CandidateSpace:
    """`spec.automl.candidates[index]`, checked: an allowed estimator of the task that has these parameters
    (`check_estimator`, as for `spec.model`), each with a usable space."""
    where = f"spec.automl.candidates[{index}]"
    refusal = check_estimator(f"{where}.estimator", estimator, {}, task, allowed_prefixes) or check_estimator(
        f"{where}.params", estimator, dict(params), task, allowed_prefixes
    )
    if refusal:
        raise SearchSpaceError(refusal.reason, refusal.message)
    domains = {name: parse_domain(f"{where}.params.{name}", raw) for name, raw in params.items()}
    return CandidateSpace(estimator, domains, dict(start or {}))


@dataclass(frozen=True)
class SearchSpace:
    """The candidates of one search, and whether they are the task's preset."""

    candidates: tuple[CandidateSpace, ...]
    preset: bool

    def grid(self) -> list[tuple[int, dict[str, Any]]]:
        """Every (candidate index, params) point of a grid search, candidate by candidate."""
        points = [(i, params) for i, candidate in enumerate(self.candidates) for params in candidate.grid()]
        if len(points) > MAX_GRID_POINTS:
            raise SearchSpaceError(
                "InvalidSearchSpace",
                f"spec.automl.candidates: the grid has {len(points)} points, more than {MAX_GRID_POINTS}; "
                "use search random or tpe",
            )
        return points


def candidates_for(
    spec: MLWorkflowSpec,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    rows: int | None = None,
) -> list[CandidateSpace]:
    """The candidates of `spec.automl`, parsed and checked, or the preset of `spec.model.task` when it lists
    none (k-NN included when `rows`, the training rows, is known and at most KNN_MAX_ROWS).

    Raises SearchSpaceError (reason InvalidSearchSpace, or the estimator check's reason)."""
    task = spec.model.task if spec.model else "classification"
    listed = spec.automl.candidates if spec.automl else []
    if listed:
        return [
            parse_candidate(i, c.estimator, c.params, task, allowed_prefixes) for i, c in enumerate(listed)
        ]
    small = rows is not None and rows <= KNN_MAX_ROWS
    presets = [p for p in PRESETS[task] if small or not p.small_data]
    return [
        parse_candidate(i, p.estimator, p.params, task, allowed_prefixes, p.start)
        for i, p in enumerate(presets)
    ]


def search_space(
    spec: MLWorkflowSpec,
    search: Search,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    rows: int | None = None,
) -> SearchSpace:
    """`candidates_for`, checked for `search` too (a grid must exist and be finite)."""
    space = SearchSpace(
        tuple(candidates_for(spec, allowed_prefixes, rows)),
        preset=not (spec.automl and spec.automl.candidates),
    )
    if search == "grid":
        try:
            space.grid()
        except SearchSpaceError as error:
            raise SearchSpaceError(error.reason, f"spec.automl.search is grid, but {error}") from None
    return space


# --- presets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    estimator: str
    params: dict[str, Any]
    start: dict[str, Any]
    small_data: bool = False


def _trees(estimator: str, classifier: bool) -> Preset:
    """Random forest / extra trees. Ranges after FLAML's RandomForestEstimator.search_space
    (flaml/automl/model.py): n_estimators log-uniform from 4 (FLAML goes to 2048, walking up from 4 trees
    as its search learns; TPE has no notion of cost and, given room, settles on the most trees for a
    third decimal of CV score: 256 bounds a trial's cost), max_features log-uniform in [0.1, 1];
    min_samples_leaf in place of FLAML's max_leaves, since scikit-learn's default is unbounded trees
    (min_samples_leaf 1, its documented smoothing knob). Starts from scikit-learn's defaults but with
    fewer trees, FLAML's low-cost first: 32, the range's log-midpoint (the median of a random draw), not
    100; max_features sqrt for a classifier, ~0.3 of 10 features."""
    params: dict[str, Any] = {
        "n_estimators": {"low": 4, "high": 256, "log": True},
        "max_features": {"low": 0.1, "high": 1.0, "log": True},
        "min_samples_leaf": {"low": 1, "high": 32, "log": True},
        "random_state": 0,
    }
    if classifier:
        params["criterion"] = ["gini", "entropy"]
    start: dict[str, Any] = {
        "n_estimators": 32,
        "max_features": 0.3 if classifier else 1.0,
        "min_samples_leaf": 1,
    }
    if classifier:
        start["criterion"] = "gini"
    return Preset(estimator, params, start)


def _boosting(estimator: str) -> Preset:
    """Histogram gradient boosting, scikit-learn's LightGBM. Ranges after FLAML's LGBMEstimator:
    learning_rate log-uniform (FLAML from 1/1024; 0.01 here, since max_iter is capped at 256, as the
    forests' trees are),
    max_leaf_nodes log-uniform from 4 (num_leaves; capped at 256), min_samples_leaf 2..128
    (min_child_samples), l2_regularization log-uniform in [1/1024, 1024] (reg_lambda). Starts from
    scikit-learn's defaults (0.1, 31 leaves, 20 rows a leaf, 100 iterations; no L2, the range's low end)."""
    return Preset(
        estimator,
        {
            "learning_rate": {"low": 0.01, "high": 1.0, "log": True},
            "max_iter": {"low": 32, "high": 256, "log": True},
            "max_leaf_nodes": {"low": 4, "high": 256, "log": True},
            "min_samples_leaf": {"low": 2, "high": 128, "log": True},
            "l2_regularization": {"low": 1 / 1024, "high": 1024.0, "log": True},
            "random_state": 0,
        },
        {
            "learning_rate": 0.1,
            "max_iter": 100,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 1 / 1024,
        },
    )


def _neighbours(estimator: str) -> Preset:
    """k-NN (small data only). n_neighbors log-uniform from 1 as FLAML's KNeighborsEstimator (whose upper
    bound is sqrt(rows), at most 100 for KNN_MAX_ROWS); starts from scikit-learn's default 5."""
    return Preset(
        estimator,
        {"n_neighbors": {"low": 1, "high": 100, "log": True}, "weights": ["uniform", "distance"]},
        {"n_neighbors": 5, "weights": "uniform"},
        small_data=True,
    )


# Cheapest first: with a budget smaller than the families, the cheap ones get their baseline.
PRESETS: dict[str, list[Preset]] = {
    "classification": [
        # C log-uniform in [1/32, 32768], FLAML's LRL1Classifier/LRL2Classifier range; lbfgs needs room.
        Preset(
            "sklearn.linear_model.LogisticRegression",
            {"C": {"low": 0.03125, "high": 32768.0, "log": True}, "max_iter": 1000},
            {"C": 1.0},
        ),
        _neighbours("sklearn.neighbors.KNeighborsClassifier"),
        _boosting("sklearn.ensemble.HistGradientBoostingClassifier"),
        _trees("sklearn.ensemble.ExtraTreesClassifier", classifier=True),
        _trees("sklearn.ensemble.RandomForestClassifier", classifier=True),
    ],
    "regression": [
        # alpha log-uniform over six decades around scikit-learn's default 1.0 (RidgeCV's default grid is
        # 0.1, 1, 10); FLAML has no ridge.
        Preset(
            "sklearn.linear_model.Ridge", {"alpha": {"low": 1e-3, "high": 1e3, "log": True}}, {"alpha": 1.0}
        ),
        _neighbours("sklearn.neighbors.KNeighborsRegressor"),
        _boosting("sklearn.ensemble.HistGradientBoostingRegressor"),
        _trees("sklearn.ensemble.ExtraTreesRegressor", classifier=False),
        _trees("sklearn.ensemble.RandomForestRegressor", classifier=False),
    ],
}
