"""Ground truth for served predictions: what `POST /feedback` on the serving Pods takes, and how the monitor
reads it back.

Every served prediction has an id (answered by /predict, /predict_batch and the Open Inference Protocol, or
the client's own). A client that learns the truth later sends it in batches:

    POST /feedback  {"labels": [{"id": "4f1c…-0", "label": "yes"}, {"id": "order-981", "label": "no"}]}

A label is one of the served model's classes (classification: the JSON value the predictions have) or a
finite number (regression). The serving Pod appends each one as a JSON line `{"ts", "id", "label"}` to
`<store>/<workflow>/feedback/<pod>.jsonl`, bounded as the prediction sample is; the monitoring job joins
them to the recorded predictions by id (`mlworkflow.runtime.performance`). A label for an id that matches no
recorded prediction (one the sample did not keep, one aged out of it, or one never served) is not an error:
the monitor counts and reports it.

Batch predictions (Forecast) get theirs from files: a batch run records each sampled row's
`spec.batch.idColumn` value as its prediction id (`prediction_id`), and `spec.batch.labels` (CSV or Parquet
files with that column and the target) are read back by `read_label_files`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlworkflow.runtime.features import RequestError

MAX_ID_LENGTH = 128


def _kind(value: Any) -> str | None:
    """The JSON kind of a label or class: booleans apart from numbers (True == 1 in Python, not in JSON)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def class_of(label: Any, classes: Sequence[Any]) -> Any | None:
    """The class among `classes` that `label` is (the same JSON kind and value; 1.0 is the class 1), or
    None."""
    kind = _kind(label)
    return next((c for c in classes if kind is not None and _kind(c) == kind and c == label), None)


def check_prediction_ids(ids: Any, rows: int, field: str = "ids") -> list[str]:
    """A client's own prediction ids, one non-empty string of at most MAX_ID_LENGTH per row; RequestError
    naming the field and item otherwise."""
    if not isinstance(ids, list) or len(ids) != rows:
        count = len(ids) if isinstance(ids, list) else "no"
        raise RequestError(f"`{field}` must hold one id per row: {rows} rows, {count} ids")
    for index, value in enumerate(ids):
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
            raise RequestError(
                f"{field}[{index}] must be a string of 1 to {MAX_ID_LENGTH} characters, got {value!r:.80}"
            )
    return ids


def check_labels(
    labels: list[dict[str, Any]], task: str, classes: Sequence[Any] | None
) -> list[tuple[str, Any]]:
    """Each row's prediction id and label (a class of `classes`, or a float for regression). Raises
    RequestError naming the first bad row and field, e.g. `labels[3].label`."""
    checked = []
    for index, row in enumerate(labels):
        where = f"labels[{index}]"
        if not isinstance(row, dict):
            raise RequestError(f"{where} must be an object {{id, label}}")
        prediction_id = row.get("id")
        if not isinstance(prediction_id, str) or not 1 <= len(prediction_id) <= MAX_ID_LENGTH:
            shown = "missing" if "id" not in row else repr(prediction_id)[:80]
            raise RequestError(
                f"{where}.id must be a prediction id, a string of 1 to {MAX_ID_LENGTH} characters, "
                f"got {shown}"
            )
        if "label" not in row:
            raise RequestError(f"{where}.label is missing")
        label = row["label"]
        if task == "regression":
            try:
                finite = _kind(label) == "number" and math.isfinite(float(label))
            except OverflowError:  # an integer beyond float64
                finite = False
            if not finite:
                raise RequestError(
                    f"{where}.label must be a finite number (a regression target), got {label!r:.80}"
                )
            checked.append((prediction_id, float(label)))
            continue
        known = class_of(label, classes or [])
        if known is None:
            offered = ", ".join(json.dumps(c) for c in classes or [])
            raise RequestError(
                f"{where}.label must be a class of the served model ({offered}), got {label!r:.80}"
            )
        checked.append((prediction_id, known))
    return checked


def feedback_line(ts: float, prediction_id: str, label: Any) -> str:
    """One label as the serving Pods record it: `ts` first (as in the sample), the id, the label."""
    return json.dumps({"ts": ts, "id": prediction_id, "label": label}) + "\n"


@dataclass(frozen=True)
class Labels:
    """Labels recorded after a time: the newest label of each prediction id, and the newest time."""

    by_id: dict[str, Any]
    newest: float


def read_labels(folder: Path, since: float = 0.0) -> Labels:
    """The labels recorded in `folder` after `since`; of several for one id, the latest recorded wins."""
    stamped: dict[str, tuple[float, Any]] = {}
    newest = since
    for path in sorted(folder.glob("*.jsonl")):
        with path.open() as lines:
            for line in lines:
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
                    row = json.loads(line)
                    ts, prediction_id = float(row["ts"]), str(row["id"])
                    if ts <= since:
                        continue
                    if prediction_id not in stamped or stamped[prediction_id][0] <= ts:
                        stamped[prediction_id] = (ts, row["label"])
                    newest = max(newest, ts)
    return Labels({k: label for k, (_, label) in stamped.items()}, newest)


def prediction_id(value: Any) -> str | None:
    """A batch row's id column value as its prediction id (None when it has none): the same text whether a
    file typed it as a string, an integer, or a float of an integer (a CSV column with a gap: 17.0 is 17)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if 1 <= len(text) <= MAX_ID_LENGTH else None


def read_label_files(root: Path, pattern: str, id_column: str, target: str, since: float = 0.0) -> Labels:
    """The labels in the CSV or Parquet files matching `pattern` under `root` that were written after
    `since` (their modification time, seconds since the epoch, is each row's time; of several for one id,
    the newest file's wins), and the newest such time. A row without an id or a label is skipped.
    Raises ValueError naming the file when one lacks either column or is not CSV or Parquet."""
    stamped: list[tuple[float, Path]] = []
    for path in root.glob(pattern):
        with contextlib.suppress(OSError):
            if path.is_file() and (written := path.stat().st_mtime) > since:
                stamped.append((written, path))
    by_id: dict[str, Any] = {}
    for _, path in sorted(stamped):
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=[id_column, target])
        elif path.suffix == ".csv" or path.name.endswith(".csv.gz"):
            frame = pd.read_csv(path, usecols=lambda c: c in (id_column, target))
        else:
            raise ValueError(f"spec.batch.labels: {path.name} is neither CSV nor Parquet")
        absent = [c for c in (id_column, target) if c not in frame.columns]
        if absent:
            raise ValueError(f"spec.batch.labels: {path.name} has no column {absent[0]!r}")
        frame = frame.dropna()
        # tolist(): Python values, so that class_of sees an int as a JSON number (numpy's int64 is no int).
        for value, label in zip(frame[id_column].tolist(), frame[target].tolist(), strict=True):
            key = prediction_id(value)
            if key is not None:
                by_id[key] = label
    return Labels(by_id, max([since, *(written for written, _ in stamped)]))
