"""Training data: loaded from the bundled scikit-learn datasets or files under the artifact store, and
checked before any model sees it. A problem is reported naming the column and what is wrong."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlworkflow.api.v1alpha1 import DataSpec

# scikit-learn's loaders by name (`sklearn.datasets.load_<name>`), imported only when one is read: the module
# costs ~1 s and ~70 MiB that a batch or serving Pod does not need.
BUNDLED = ("iris", "wine", "breast_cancer", "diabetes", "digits")
MIN_ROWS = 20
MAX_CATEGORIES_IN_SCHEMA = 200
TRUE, FALSE = "True", "False"
BOOLEAN_SPELLINGS = {"true": TRUE, "false": FALSE}
BOOLEAN_CODES = {"1": TRUE, "0": FALSE}  # only in a boolean column
# Other spellings of a truth, taken only for a column of booleans (see FeatureSchema.canonical): elsewhere "n"
# may be North and "yes" an answer of three.
BOOLEAN_WORDS = {
    **dict.fromkeys(("true", "yes", "y", "t", "on"), TRUE),
    **dict.fromkeys(("false", "no", "n", "f", "off"), FALSE),
}
PLAIN_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


class DataError(ValueError):
    """The data cannot train a model; the message names the column (or file) and the problem, `reason` says
    it in CamelCase (DataInvalid unless a more precise one)."""

    def __init__(self, message: str, reason: str = "DataInvalid") -> None:
        super().__init__(message)
        self.reason = reason


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

    def is_boolean(self, column: str) -> bool:
        """Whether a categorical column held only booleans in training (so 1 and 0 are True and False)."""
        known = set(self.categories.get(column, ())) - {""}
        return bool(known) and {category(c) for c in known} <= {TRUE, FALSE}

    def canonical(self, column: str, values: Iterable[Any]) -> list[str]:
        """The values of categorical `column`, each as the model knows it: `category`, and then a spelling
        the model does not know is the known category it is another spelling of, if exactly one is (see
        `aliases`): "03" and " 3" are "3" in a column of codes a CSV held as 3 (pandas reads them so), "yes"
        and "on" are "True" in a column of booleans, True is "yes" in a column of yes and no. Only against
        a complete list of the training's categories; what matches none stays as it is, an unknown
        category."""
        spelled = categories(values, self.is_boolean(column))
        known = tuple(self.categories.get(column, ()))
        unknown = set(spelled) - set(known) - {""}
        if not unknown:
            return spelled
        boolean, alias = aliases(known)
        meanings = {v: loose(v, boolean) for v in unknown}
        renamed = {v: alias[meaning] for v, meaning in meanings.items() if meaning in alias}
        return [renamed.get(v, v) for v in spelled] if renamed else spelled

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
        from sklearn import datasets

        frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
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
    """One file as a frame; a DataError naming the file when it cannot be parsed (empty, ragged rows, not
    UTF-8, not Parquet, not gzip): the same file fails the same way, so no retry should be spent on it."""
    if path.suffix not in (".parquet", ".csv", ".gz"):
        raise DataError(f"spec.data.source: {path.name} is neither CSV nor Parquet")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    # pandas' ParserError and EmptyDataError, UnicodeDecodeError and pyarrow's ArrowInvalid are ValueErrors;
    # an unreadable disk (any other OSError) is not the data's fault and stays a crash, which is retried.
    except (ValueError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        problem = str(error).strip()
        raise DataError(f"spec.data.source: {path.name} is not readable as {kind}: {problem}") from error


def category(value: Any, boolean: bool = False) -> str:
    """A categorical value as the model sees it: one spelling per category, the same in training, serving
    (both protocols) and drift, so that what a CSV, a client and the sample recorder write agree.

    - Missing (None, NaN) is "", a category of its own.
    - Booleans, and the strings true and false in any case, are "True" and "False" (Python's spelling, which
      a column of booleans has always had).
    - A number, or a string that is a plain decimal number, is its integer when it is integral and its
      shortest float otherwise: 3, 3.0, "3" and "3.0" are all "3" (a CSV column of codes with an empty cell
      is read as floats), 2.5 and "2.50" are "2.5". A string with a leading zero ("03", a code) or in another
      notation ("1e3") stays as it is here (FeatureSchema.canonical takes it for the category the model
      knows, if there is exactly one).
    - 1 and 0 are "True" and "False" only in a boolean column (`boolean`: see FeatureSchema.is_boolean);
      anywhere else 1 and True are two categories, since an integer-coded column's 1 is a code, not a truth.
    - Any other string stays as it is: "North" and "north" are two categories.
    """
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, bool | np.bool_):
        return TRUE if value else FALSE
    if isinstance(value, int | np.integer):
        text = str(int(value))
    elif isinstance(value, float | np.floating):
        if np.isnan(value):
            return ""
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
    else:
        text = str(value)
        spelled = BOOLEAN_SPELLINGS.get(text.lower())
        if spelled is not None:
            return spelled
        if PLAIN_NUMBER.fullmatch(text):
            number = float(text)
            integral = text.partition(".")[0] if number.is_integer() else None
            text = str(int(integral)) if integral is not None else repr(number)
    return BOOLEAN_CODES.get(text, text) if boolean else text


def loose(spelled: str, boolean: bool) -> str:
    """What a category's spelling says, whatever the spelling: a number's `category` (also for "03", " 3",
    "3e0"), "True" or "False" for a BOOLEAN_WORDS spelling when `boolean`, else the text without surrounding
    spaces."""
    text = spelled.strip()
    if boolean and text.lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[text.lower()]
    with contextlib.suppress(ValueError):
        number = float(text)
        if math.isfinite(number):
            spelled = category(number)
            return BOOLEAN_CODES.get(spelled, spelled) if boolean else spelled
    return text


@functools.lru_cache(maxsize=256)
def aliases(known: tuple[str, ...]) -> tuple[bool, dict[str, str]]:
    """Whether the known categories are truths (each a BOOLEAN_WORDS spelling: "True" and "False", "yes" and
    "no", ...; codes 1 and 0 are not), and `loose` meaning -> the one known category that has it (a meaning
    two of them share names neither). No meanings when the list may be incomplete (it is cut at
    MAX_CATEGORIES_IN_SCHEMA): a spelling missing from it may be a category the model knows."""
    spelled = [k for k in known if k != ""]
    if not spelled or len(known) >= MAX_CATEGORIES_IN_SCHEMA:
        return False, {}
    boolean = all(k.strip().lower() in BOOLEAN_WORDS for k in spelled)
    found: dict[str, str | None] = {}
    for known_category in spelled:
        meaning = loose(known_category, boolean)
        found[meaning] = known_category if meaning not in found else None
    return boolean, {meaning: k for meaning, k in found.items() if k is not None}


def categories(values: Iterable[Any], boolean: bool = False) -> list[str]:
    """`category` of each value, computed once per distinct value (a column holds few of them). A list of
    strings already spelled as categories is returned as it is: the usual request costs one set()."""
    values = values if isinstance(values, list) else list(values)
    if set(map(type, values)) == {str}:
        spelled = {v: category(v, boolean) for v in set(values)}
        return values if all(k == v for k, v in spelled.items()) else [spelled[v] for v in values]
    known: dict[tuple[type, Any], str] = {}  # keyed by type too: 1 == 1.0 == True, not as categories
    result = []
    for value in values:
        key = (type(value), value)
        if key not in known:
            known[key] = category(value, boolean)
        result.append(known[key])
    return result


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
    known = {
        column: sorted(set(categories(frame[column].dropna())))[:MAX_CATEGORIES_IN_SCHEMA]
        for column in categorical
        if column in frame.columns
    }
    return FeatureSchema(spec.target, numeric, categorical, known)


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


def declared_classes(declared: Sequence[str | int], labels: pd.Series) -> list[Any]:
    """The classes `declared` (`spec.online.classes`) as values of the labels (a checked target column), in
    scikit-learn's order (sorted): a class the labels hold as they hold it (by `category`: 1, "1" and 1.0 are
    one class), one they lack as a value of their kind (an integer for integer labels, a float for floats,
    else its `category` string).

    Raises DataError, reason ClassNotDeclared, when a label is not declared (every class the model may learn
    must be, and the data's are), InvalidClasses when two declared classes are one or a declared class
    cannot be a label of this kind (not a whole number for integer labels, any new class for booleans)."""
    target = str(labels.name)
    held = {category(v): v for v in pd.unique(labels)}
    undeclared = sorted(spelled for spelled in held if spelled not in {category(c) for c in declared})
    if undeclared:
        raise DataError(
            f"column {target!r} (the target) holds the classes {', '.join(undeclared)}, which "
            f"spec.online.classes ({', '.join(map(str, declared))}) does not declare: declare every class",
            "ClassNotDeclared",
        )
    kind = labels.dtype
    values: dict[str, Any] = {}
    for declared_class in declared:
        spelled = category(declared_class)
        if spelled in values:
            raise DataError(
                f"spec.online.classes: {declared_class!r} is the class {spelled} twice", "InvalidClasses"
            )
        if spelled in held:
            values[spelled] = held[spelled]
            continue
        number = float(spelled) if PLAIN_NUMBER.fullmatch(spelled) else None
        if pd.api.types.is_bool_dtype(kind) or (
            pd.api.types.is_numeric_dtype(kind)
            and (number is None or (pd.api.types.is_integer_dtype(kind) and not number.is_integer()))
        ):
            raise DataError(
                f"spec.online.classes: {declared_class!r} cannot be a class of column {target!r}, whose "
                f"labels are {kind}",
                "InvalidClasses",
            )
        if pd.api.types.is_integer_dtype(kind):
            values[spelled] = int(spelled)
        elif pd.api.types.is_float_dtype(kind):
            values[spelled] = number
        else:
            values[spelled] = spelled
    return sorted(values.values())


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
        typed[column] = schema.canonical(column, typed[column])
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
