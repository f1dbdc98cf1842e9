"""Request checks on whole columns: each problem named by row and feature, clean values typed."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import MAX_ROWS, FeatureChecker, RequestError

SCHEMA = FeatureSchema("label", ["x"], ["city"])
ROW: dict[str, Any] = {"x": 1.5, "city": "paris"}


def test_clean_records_become_typed_columns() -> None:
    records = [ROW, {"x": 2, "city": None}, {"x": None, "city": 7}]
    batch = FeatureChecker(SCHEMA, impute=True).from_records(records)
    assert batch.rows == 3 and batch.numeric["x"].dtype == np.float64
    assert batch.numeric["x"][:2].tolist() == [1.5, 2.0] and math.isnan(batch.numeric["x"][2])
    assert batch.categorical["city"].tolist() == ["paris", "", "7"]
    # What the sample recorder writes is valid JSON: a missing number is null, not NaN.
    assert json.loads(json.dumps(batch.records([2]), allow_nan=False)) == [{"x": None, "city": "7"}]


@pytest.mark.parametrize(
    ("records", "impute", "message"),
    [
        ([ROW, {"city": "rome"}], True, "records[1]: feature 'x' is missing"),
        ([ROW, ROW, {"x": "2", "city": "rome"}], True, "records[2]: 'x' must be a finite number, got '2'"),
        ([{"x": float("nan"), "city": "rome"}], True, "records[0]: 'x' must be a finite number, got nan"),
        ([ROW, {"x": float("inf"), "city": "rome"}], True, "records[1]: 'x' must be a finite number"),
        ([{"x": 10**400, "city": "rome"}], True, "records[0]: 'x' must be a finite number"),
        ([ROW, {"x": False, "city": "rome"}], True, "records[1]: 'x' must be a finite number, got False"),
        ([ROW, {"x": None, "city": "rome"}], False, "records[1]: 'x' is null and this model has no imputer"),
        ([{"x": 1.0}], True, "records[0]: feature 'city' is missing"),
        ([{"x": 1.0, "city": ["a"]}], True, "records[0]: 'city' must be a string, got ['a']"),
        ([ROW, 3], True, "records[1] must be an object"),
        ([], True, "non-empty list"),
        ([ROW] * (MAX_ROWS + 1), True, f"at most {MAX_ROWS} rows"),
    ],
)
def test_each_problem_is_named(records: list[Any], impute: bool, message: str) -> None:
    with pytest.raises(RequestError) as refused:
        FeatureChecker(SCHEMA, impute).from_records(records)
    assert message in str(refused.value)
