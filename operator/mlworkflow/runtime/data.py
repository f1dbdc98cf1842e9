"""Training data: loaded from the bundled scikit-learn datasets or files under the artifact store, and
checked before any model sees it. A problem is reported naming the column and what is wrong."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets

from mlworkflow.api.v1alpha1 import DataSpec

BUNDLED: dict[str, Callable[..., Any]] = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "diabetes": datasets.load_diabetes,
    "digits": datasets.load_digits,
}
MIN_ROWS = 20
MAX_CATEGORIES_IN_SCHEMA = 200


class DataError(ValueError):
    """The data cannot train a model; the message names the column (or file) and the problem."""


@dataclass(frozen=True)
class Snapshot:
    """What was read: the rows, and enough to tell later exactly which data it was."""

    frame: pd.DataFrame
    files: list[str]
    sha256: str

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class FeatureSchema:
    target: str
    numeric: list[str]
    categorical: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "categories": self.categories,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(data["target"], data["numeric"], data["categorical"], data.get("categories", {}))


def load(source: str, store_root: Path) -> Snapshot:
    """Read `spec.data.source`: `sklearn://<name>` or CSV/Parquet files (a glob) under the store."""
    if source.startswith("sklearn://"):
        name = source.removeprefix("sklearn://")
        if name not in BUNDLED:
            raise DataError(
                f"spec.data.source: unknown bundled dataset {name!r}; known: {', '.join(BUNDLED)}"
            )
        frame = BUNDLED[name](as_frame=True).frame
        frame.columns = [str(c) for c in frame.columns]
        content = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
        return Snapshot(frame, [source], hashlib.sha256(content).hexdigest())
    files = sorted(p for p in store_root.glob(source) if p.is_file())
    if not files:
        raise DataError(f"spec.data.source: no file matches {source!r} under the artifact store {store_root}")
    files_digest = hashlib.sha256()
    frames = []
    for path in files:
        files_digest.update(path.read_bytes())
        frames.append(_read(path))
    return Snapshot(
        pd.concat(frames, ignore_index=True),
        [str(p.relative_to(store_root)) for p in files],
        files_digest.hexdigest(),
    )


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".gz"):
        return pd.read_csv(path)
    raise DataError(f"spec.data.source: {path.name} is neither CSV nor Parquet")


def category(value: Any) -> str:
    """A categorical value as the model sees it: a string, and "" for missing (a category of its own)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def resolve_schema(frame: pd.DataFrame, spec: DataSpec) -> FeatureSchema:
    """The feature columns: as declared, or every column but the target (and the time column), typed by its
    values."""
    numeric, categorical = list(spec.features.numeric), list(spec.features.categorical)
    if not numeric and not categorical:
        for column in frame.columns:
            if column in (spec.target, spec.time_column):
                continue
            (
                numeric
                if pd.api.types.is_numeric_dtype(frame[column])
                and not pd.api.types.is_bool_dtype(frame[column])
                else categorical
            ).append(str(column))
    categories = {
        column: sorted(frame[column].dropna().astype(str).unique().tolist())[:MAX_CATEGORIES_IN_SCHEMA]
        for column in categorical
        if column in frame.columns
    }
    return FeatureSchema(spec.target, numeric, categorical, categories)


def event_times(frame: pd.DataFrame, column: str) -> pd.Series:
    """`spec.data.timeColumn` as sortable values: numbers as they are, anything else parsed as date-times
    (mixed time zones are converted to UTC). Raises DataError naming the column when it is missing, has a
    gap, or holds a value that is neither."""
    if column not in frame.columns:
        raise DataError(
            f"column {column!r} (spec.data.timeColumn) is missing; the data has: "
            + ", ".join(map(str, frame.columns))
        )
    values = frame[column]
    if values.isna().any():
        raise DataError(
            f"column {column!r} (spec.data.timeColumn) has {int(values.isna().sum())} missing values"
        )
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    try:
        return pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as error:
        raise DataError(
            f"column {column!r} (spec.data.timeColumn) holds values that are neither numbers nor "
            f"date-times: {error}"
        ) from None


def check(frame: pd.DataFrame, schema: FeatureSchema, task: str, folds: int) -> pd.DataFrame:
    """The frame, typed, or a DataError naming the first problem."""
    columns = ", ".join(map(str, frame.columns))
    if schema.target not in frame.columns:
        raise DataError(f"column {schema.target!r} (spec.data.target) is missing; the data has: {columns}")
    missing = [c for c in schema.features if c not in frame.columns]
    if missing:
        raise DataError(f"feature column {missing[0]!r} is missing; the data has: {columns}")
    if not schema.features:
        raise DataError("there is no feature column: the data has only the target")
    typed = frame[[*schema.features, schema.target]].copy()
    for column in schema.numeric:
        converted = pd.to_numeric(typed[column], errors="coerce")
        bad = typed[column][converted.isna() & typed[column].notna()]
        if len(bad):
            raise DataError(
                f"column {column!r} should be numeric but has {len(bad)} non-numeric values, "
                f"e.g. {bad.iloc[0]!r}"
            )
        if np.isinf(converted).any():
            raise DataError(f"column {column!r} has infinite values")
        typed[column] = converted.astype("float64")
    for column in schema.categorical:
        typed[column] = typed[column].map(category)
    for column in schema.numeric:
        if typed[column].isna().all():
            raise DataError(f"column {column!r} has no value at all")
    missing_target = int(typed[schema.target].isna().sum())
    if missing_target:
        raise DataError(f"column {schema.target!r} (the target) has {missing_target} missing values")
    needed = max(MIN_ROWS, 2 * folds)
    if len(typed) < needed:
        raise DataError(f"only {len(typed)} rows: at least {needed} are needed")
    if task == "classification":
        counts = typed[schema.target].value_counts()
        if len(counts) < 2:
            raise DataError(
                f"column {schema.target!r} has a single class ({counts.index[0]!r}): nothing to learn"
            )
    else:
        target = pd.to_numeric(typed[schema.target], errors="coerce")
        if target.isna().any():
            raise DataError(f"column {schema.target!r} must be numeric for regression")
        typed[schema.target] = target
    return typed
