"""The AutoML search space: each space the CRD lets through but the search cannot use is refused, naming the
field; presets per task."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mlworkflow.api.search import (
    KNN_MAX_ROWS,
    Choice,
    FloatRange,
    IntRange,
    SearchSpaceError,
    candidates_for,
    parse_domain,
    search_space,
)
from mlworkflow.api.v1alpha1 import MLWorkflowSpec

FOREST = "sklearn.ensemble.RandomForestClassifier"
FIELD = "spec.automl.candidates[0].params.max_depth"


def automl_spec(*candidates: dict[str, Any], task: str = "classification") -> MLWorkflowSpec:
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "AutoML",
            "data": {"source": "sklearn://iris", "target": "target"},
            "model": {"task": task},
            "automl": {"candidates": list(candidates) or [{"estimator": FOREST}]},
            "storage": {"path": "/unused"},
        }
    )
    if not candidates:  # the API still requires a candidate; the preset is for an empty list
        assert spec.automl is not None
        spec.automl = spec.automl.model_copy(update={"candidates": []})
    return spec


@pytest.mark.parametrize(
    ("raw", "domain"),
    [
        ([3, 5, None], Choice((3, 5, None))),
        ([[10], [20, 10]], Choice(([10], [20, 10]))),
        ("entropy", Choice(("entropy",))),
        ({"low": 2, "high": 8}, IntRange(2, 8)),
        ({"low": 1, "high": 512, "log": True}, IntRange(1, 512, True)),
        ({"low": 0.01, "high": 10.0, "log": True}, FloatRange(0.01, 10.0, True)),
        ({"low": 3, "high": 3}, IntRange(3, 3)),
        # What the API server gives back for `{low: 0.01, high: 10.0}`: 10.0 is stored as 10.
        ({"low": 0.01, "high": 10}, FloatRange(0.01, 10.0)),
        ({"low": 1, "high": 5, "type": "float"}, FloatRange(1.0, 5.0)),
        ({"low": 1.0, "high": 5.0, "type": "int"}, IntRange(1, 5)),
    ],
)
def test_a_domain_is_a_list_a_fixed_value_or_a_typed_range(raw: Any, domain: Any) -> None:
    assert parse_domain(FIELD, raw) == domain


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"low": 10, "high": 3}, f"{FIELD}: low 10 is above high 3"),
        ({"low": 0.0, "high": 1.0, "log": True}, f"{FIELD}: a log range needs low > 0, and low is 0.0"),
        ({"low": -1, "high": 5, "log": True}, f"{FIELD}: a log range needs low > 0, and low is -1"),
        ([], f"{FIELD}: an empty list has nothing to try"),
        ([1, 2, 1], f"{FIELD}: the value 1 is listed twice"),
        (
            {"low": 1, "high": 10.5, "type": "int"},
            f"{FIELD}: an int range needs whole bounds, not 1 and 10.5",
        ),
        ({"low": 1, "high": 3, "type": "double"}, f"{FIELD}: type must be int or float, not 'double'"),
        ({"low": "a", "high": 3}, f'{FIELD}: low must be a finite number, not "a"'),
        ({"low": True, "high": 3}, f"{FIELD}: low must be a finite number, not true"),
        ({"low": 1, "high": 3, "log": "yes"}, f"{FIELD}: log must be true or false"),
        ({"low": 1, "high": 3, "step": 2}, f"{FIELD}: a range is {{low, high, log, type}}; unknown key step"),
        ({"high": 3}, f"{FIELD}: a range is {{low, high, log, type}}; low and high are both required"),
    ],
)
def test_a_space_optuna_cannot_use_is_refused_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(SearchSpaceError, match="^" + re.escape(message)) as error:
        parse_domain(FIELD, raw)
    assert error.value.reason == "InvalidSearchSpace"


def test_the_second_candidate_is_named_in_the_message() -> None:
    spec = automl_spec(
        {"estimator": FOREST, "params": {"max_depth": [3, 5]}},
        {"estimator": FOREST, "params": {"max_depth": {"low": 10, "high": 3}}},
    )
    with pytest.raises(SearchSpaceError, match=r"^spec\.automl\.candidates\[1\]\.params\.max_depth: low 10"):
        candidates_for(spec)


@pytest.mark.parametrize(
    ("candidate", "reason", "message"),
    [
        (
            {"estimator": FOREST, "params": {"max_dept": [3]}},
            "InvalidModelParams",
            r"spec\.automl\.candidates\[0\]\.params: sklearn\.ensemble\.RandomForestClassifier has no "
            r"parameter max_dept",
        ),
        (
            {"estimator": "os.system"},
            "EstimatorNotAllowed",
            r"spec\.automl\.candidates\[0\]\.estimator: os\.system is not under an allowed module prefix",
        ),
        (
            {"estimator": "sklearn.linear_model.Ridge"},
            "EstimatorTaskMismatch",
            r"spec\.automl\.candidates\[0\]\.estimator: sklearn\.linear_model\.Ridge is not a classifier",
        ),
        (
            {"estimator": "sklearn.ensemble.RandomForestClassifer"},
            "EstimatorNotFound",
            r"spec\.automl\.candidates\[0\]\.estimator: .* cannot be imported",
        ),
    ],
)
def test_estimators_and_parameter_names_are_checked_as_for_spec_model(
    candidate: dict[str, Any], reason: str, message: str
) -> None:
    with pytest.raises(SearchSpaceError, match=message) as error:
        candidates_for(automl_spec(candidate))
    assert error.value.reason == reason


def test_a_grid_takes_lists_and_integer_ranges_but_no_float_range() -> None:
    spec = automl_spec(
        {
            "estimator": FOREST,
            "params": {"max_depth": {"low": 2, "high": 4}, "criterion": ["gini", "entropy"]},
        }
    )
    grid = search_space(spec, "grid").grid()
    assert len(grid) == 6 and grid[0] == (0, {"criterion": "gini", "max_depth": 2})
    floats = automl_spec({"estimator": FOREST, "params": {"max_features": {"low": 0.1, "high": 1.0}}})
    search_space(floats, "random")  # fine for sampling
    with pytest.raises(
        SearchSpaceError, match=r"spec\.automl\.search is grid, but .*max_features: a float range"
    ):
        search_space(floats, "grid")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_presets_are_cheap_first_families_of_the_task(task: str) -> None:
    spec = automl_spec(task=task)
    small = candidates_for(spec, rows=500)
    large = candidates_for(spec, rows=KNN_MAX_ROWS + 1)
    families = [c.estimator.rsplit(".", 1)[1] for c in small]
    linear = "LogisticRegression" if task == "classification" else "Ridge"
    suffix = "Classifier" if task == "classification" else "Regressor"
    assert families == [
        linear,
        f"KNeighbors{suffix}",
        f"HistGradientBoosting{suffix}",
        f"ExtraTrees{suffix}",
        f"RandomForest{suffix}",
    ]
    assert [c.estimator for c in large] == [c.estimator for c in small if "KNeighbors" not in c.estimator]
    assert candidates_for(spec) == large, "without the row count (the planner), no k-NN"
    for candidate in small:
        # The starting point is in the space (the search enqueues it), fixed parameters left out.
        searched = {
            name for name, d in candidate.params.items() if not (isinstance(d, Choice) and len(d.values) == 1)
        }
        assert set(candidate.start) == searched
        assert candidate.contains(
            {**candidate.start, **{n: d.values[0] for n, d in candidate.params.items() if n not in searched}}
        )  # type: ignore[union-attr]
    assert search_space(spec, "random").preset


def test_contains_tells_points_of_the_space_apart() -> None:
    (candidate,) = candidates_for(
        automl_spec(
            {"estimator": FOREST, "params": {"max_depth": {"low": 2, "high": 8}, "criterion": ["gini"]}}
        )
    )
    assert candidate.contains({"max_depth": 5, "criterion": "gini"})
    assert not candidate.contains({"max_depth": 9, "criterion": "gini"})
    assert not candidate.contains({"max_depth": 5.5, "criterion": "gini"})
    assert not candidate.contains({"max_depth": 5})
