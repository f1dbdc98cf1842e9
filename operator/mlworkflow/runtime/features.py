"""A request's features, checked against the model card's schema and turned into typed columns.

Both request shapes end here: JSON records (one object per row) and the Open Inference Protocol's named
columns. The checks look at whole columns at once (the set of value types, one finiteness test), so a
clean request costs a few passes in C rather than a Python test per cell; only a failing column is
scanned again to name the first offending row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
from bentoml.exceptions import InvalidArgument

from mlworkflow.runtime.data import FeatureSchema

MAX_ROWS = 10_000  # per request, on every route


def largest(dtype: type[np.floating[Any]]) -> float:
    """The largest magnitude a number of `dtype` is written with: its maximum, or the shortest decimal that
    reads back as it when that is larger (float32's 3.4028235e38, which float64 reads as a little more than
    the exact 3.4028234663852886e38). Both round to the maximum, so a client that writes a float32's largest
    value as numpy prints it is served, and the bound the API documents is itself accepted."""
    exact = np.finfo(dtype).max
    return max(float(exact), float(str(exact)))


# The largest magnitude a number may have: float32's. The ONNX graphs compute in float32, and scikit-learn's
# tree estimators too, so a larger value is one no backend represents; one bound for every backend keeps a
# version's answers the same whichever backend serves it.
LARGEST = largest(np.float32)
ABSENT = object()  # a feature a record leaves out (unlike null, which is a missing value)
NUMBER_TYPES = frozenset({int, float})  # type(True) is bool, so booleans are refused
CATEGORY_TYPES = frozenset({str, int, float, bool})  # spelled as the model knows them: data.category
NULL = type(None)


class RequestError(InvalidArgument):
    """A request that does not fit the model's feature schema (HTTP 400)."""


@dataclass(frozen=True)
class FeatureBatch:
    """Checked feature columns: float64 numbers (NaN where null) and category strings ("" where null)."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    rows: int

    def records(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Rows as the model saw them, JSON-ready (null for a missing number), for the sample recorder."""
        columns: dict[str, list[Any]] = {
            name: [None if math.isnan(v) else v for v in values.tolist()]
            for name, values in self.numeric.items()
        }
        columns.update({name: values.tolist() for name, values in self.categorical.items()})
        return [{name: values[i] for name, values in columns.items()} for i in indices]


class FeatureChecker:
    """Checks requests against one model's schema; `impute` says whether a null number is allowed."""

    def __init__(self, schema: FeatureSchema, impute: bool) -> None:
        self.schema, self.impute = schema, impute
        features = schema.features
        self._row_values: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            itemgetter(*features) if len(features) > 1 else lambda record: (record[features[0]],)
        )

    def from_records(
        self,
        records: Any,
        where: Callable[[int], str] = "records[{}]".format,
        max_rows: int | None = MAX_ROWS,
    ) -> FeatureBatch:
        """A batch from `{"records": [...]}`; errors name record i as `where(i)`. `max_rows` None: the
        limit was applied to each request before their records were batched together."""
        if not isinstance(records, list) or not records:
            raise RequestError("`records` must be a non-empty list of objects, one per row")
        self._check_size(len(records), max_rows)
        if any(type(r) is not dict for r in records):
            index = next(i for i, r in enumerate(records) if type(r) is not dict)
            raise RequestError(f"{where(index)} must be an object of feature values")
        features = self.schema.features
        try:  # transposed in C when every record has every feature
            values = zip(*map(self._row_values, records), strict=True)
            columns = dict(zip(features, map(list, values), strict=True))
        except KeyError:
            columns = {c: [r.get(c, ABSENT) for r in records] for c in features}
        return self.from_columns(columns, len(records), where, max_rows)

    def from_columns(
        self,
        columns: dict[str, list[Any]],
        rows: int,
        where: Callable[[int], str],
        max_rows: int | None = MAX_ROWS,
    ) -> FeatureBatch:
        """A batch from one list of values per feature, each `rows` long; `where(i)` names row i."""
        self._check_size(rows, max_rows)
        numeric = {c: self._numeric(c, columns[c], where) for c in self.schema.numeric}
        categorical = {c: self._categorical(c, columns[c], where) for c in self.schema.categorical}
        return FeatureBatch(numeric, categorical, rows)

    def from_arrays(
        self,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, tuple[list[Any], np.ndarray]],
        rows: int,
    ) -> FeatureBatch | None:
        """The batch `from_columns` would give for typed columns, checked on whole arrays; None when a value
        fails a check, for `from_columns` to name it. `numeric`: float64 arrays, NaN where missing (int
        columns converted as `from_columns` converts Python ints); `categorical`: a dictionary encoding,
        the distinct values as Python objects and, per row, the position of its value among them."""
        checked: dict[str, np.ndarray] = {}
        for column in self.schema.numeric:
            array = numeric[column]
            inside = np.abs(array) <= LARGEST  # False at NaN (missing), infinity, beyond float32
            if not inside.all() and not (self.impute and (inside | np.isnan(array)).all()):
                return None
            checked[column] = array
        spelled: dict[str, np.ndarray] = {}
        for column in self.schema.categorical:
            values, codes = categorical[column]
            if not set(map(type, values)) <= CATEGORY_TYPES | {NULL}:
                return None
            spelled[column] = np.array(self.schema.canonical(column, values), dtype=object)[codes]
        return FeatureBatch(checked, spelled, rows)

    @staticmethod
    def _check_size(rows: int, max_rows: int | None) -> None:
        if max_rows is not None and rows > max_rows:
            raise RequestError(f"at most {max_rows} rows per request, got {rows}")

    def _numeric(self, column: str, values: list[Any], where: Callable[[int], str]) -> np.ndarray:
        types = set(map(type, values))
        if not types <= NUMBER_TYPES | {NULL}:
            index = _first(values, lambda v: type(v) not in NUMBER_TYPES and v is not None)
            self._absent(column, values[index], where(index))
            raise RequestError(f"{where(index)}: {column!r} must be a finite number, got {values[index]!r}")
        if NULL in types and not self.impute:
            index = values.index(None)
            raise RequestError(f"{where(index)}: {column!r} is null and this model has no imputer")
        try:
            array = np.array(values, dtype=np.float64)  # null -> NaN
        except OverflowError:
            index = _first(values, _beyond_float)
            raise RequestError(
                f"{where(index)}: {column!r} must be a finite number, got {values[index]!r}"
            ) from None
        outside = ~(np.abs(array) <= LARGEST)  # NaN (null, or NaN sent as a number), infinite, too large
        if not outside.any():
            return array
        for index in np.flatnonzero(outside).tolist():
            value = values[index]
            if value is None:
                continue
            if math.isfinite(array[index]):
                raise RequestError(
                    f"{where(index)}: {column!r} is {value!r}, beyond the range served: numbers from "
                    f"{-LARGEST:.8g} to {LARGEST:.8g} (float32's)"
                )
            raise RequestError(f"{where(index)}: {column!r} must be a finite number, got {value!r}")
        return array

    def _categorical(self, column: str, values: list[Any], where: Callable[[int], str]) -> np.ndarray:
        types = set(map(type, values))
        if not types <= CATEGORY_TYPES | {NULL}:
            index = _first(values, lambda v: type(v) not in CATEGORY_TYPES and v is not None)
            self._absent(column, values[index], where(index))
            raise RequestError(f"{where(index)}: {column!r} must be a string, got {values[index]!r}")
        return np.array(self.schema.canonical(column, values), dtype=object)

    @staticmethod
    def _absent(column: str, value: Any, row: str) -> None:
        if value is ABSENT:
            raise RequestError(f"{row}: feature {column!r} is missing")


def _first(values: list[Any], bad: Callable[[Any], bool]) -> int:
    return next(i for i, v in enumerate(values) if bad(v))


def _beyond_float(value: Any) -> bool:
    try:
        float(value)
    except (OverflowError, TypeError):
        return True
    return False
