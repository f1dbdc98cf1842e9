"""How a model treats groups of people: per-group metrics and fairness differences on its holdout, for the
model card and the promotion gate (spec.monitoring.fairness, spec.promotion.maxFairnessGap).

Per sensitive feature (a column of the data, a model input or not), fairlearn's `MetricFrame` gives, per
group of its values, the row count, the task's metrics (the same as the holdout's, `pipeline.metrics`) and,
for classifiers, the selection rate (the share of rows predicted positive). The two differences are
fairlearn's (https://fairlearn.org/main/user_guide/assessment/common_fairness_metrics.html):

- demographic parity difference: the largest minus the smallest selection rate over the groups;
- equalized odds difference: the larger of the largest gap between groups in true positive rate and the
  largest gap in false positive rate.

Both are defined for one positive class: a binary classifier's second class (the one its probability column
1 is for, as for ROC AUC); for more classes, each class in turn against the rest, and the largest. A group
without rows of a class has no rate for it, and leaves the difference undefined (None) when no class has one.
Regression gets the per-group metrics only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equalized_odds_difference,
    selection_rate,
)

from mlworkflow.runtime.data import DataError
from mlworkflow.runtime.pipeline import label_metrics

MAX_GROUPS = 50
MISSING = "(missing)"
GAPS = {"EqualizedOdds": "equalizedOddsDifference", "DemographicParity": "demographicParityDifference"}


def groups(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The sensitive columns of `frame` as group names (strings; a missing value is its own group). Raises
    DataError naming the column when one is missing or has more than MAX_GROUPS groups."""
    named = pd.DataFrame(index=frame.index)
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"column {column!r} (spec.monitoring.fairness.sensitiveFeatures) is missing; the data has: "
                + ", ".join(map(str, frame.columns))
            )
        values = frame[column].astype("string").fillna(MISSING)
        if values.nunique() > MAX_GROUPS:
            raise DataError(
                f"column {column!r} (spec.monitoring.fairness.sensitiveFeatures) has {values.nunique()} "
                f"distinct values; at most {MAX_GROUPS} groups can be compared: band it in the data"
            )
        named[column] = values.astype(object)
    return named


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _differences(
    truth: np.ndarray, predicted: np.ndarray, sensitive: pd.Series, classes: list[Any]
) -> dict[str, float | None]:
    """Demographic parity and equalized odds differences, the largest over the positive classes."""
    positives = classes[1:] if len(classes) == 2 else classes
    found: dict[str, list[float]] = {"demographicParityDifference": [], "equalizedOddsDifference": []}
    for positive in positives:
        y, y_hat = (truth == positive).astype(int), (predicted == positive).astype(int)
        for name, difference in (
            ("demographicParityDifference", demographic_parity_difference),
            ("equalizedOddsDifference", equalized_odds_difference),
        ):
            value = _number(difference(y, y_hat, sensitive_features=sensitive))
            if value is not None:
                found[name].append(value)
    return {name: max(values) if values else None for name, values in found.items()}


def assess(
    task: str,
    truth: pd.Series,
    predicted: np.ndarray,
    sensitive: pd.DataFrame,
    classes: list[Any] | None,
    gap: str = "EqualizedOdds",
) -> dict[str, Any]:
    """Per-group metrics and differences of predictions `predicted` against `truth`, for each column of
    `sensitive` (group names, `groups`; rows aligned with `truth`).

    Returns {"gap": `gap`, "positiveClass", "features": {column: {"groups": [{"group", "count",
    "selectionRate", <task metrics>}], "demographicParityDifference", "equalizedOddsDifference"}},
    "largest": {"feature", "value"} (the largest `gap` difference, or None)}. Metrics of a group where
    they are undefined (R² of one row) are None."""
    # Arrays of the values' own type: scikit-learn calls an object array of integer classes "unknown".
    y = np.array(list(truth)) if task == "classification" else np.asarray(truth, dtype=np.float64)
    y_hat = np.array(list(predicted)) if task == "classification" else np.asarray(predicted, dtype=np.float64)
    binary = task == "classification" and classes is not None and len(classes) == 2
    metrics: dict[str, Any] = {"count": count, **label_metrics(task)}
    if binary:
        assert classes is not None
        positive = classes[1]
        metrics["selectionRate"] = lambda t, p: selection_rate(t == positive, p == positive, pos_label=True)
    features: dict[str, Any] = {}
    largest: dict[str, Any] | None = None
    for column in sensitive.columns:
        values = sensitive[column].to_numpy(dtype=object)
        with np.errstate(all="ignore"):
            frame = MetricFrame(metrics=metrics, y_true=y, y_pred=y_hat, sensitive_features=values)
        rows = [
            {"group": str(group)}
            | {name: (int(v) if name == "count" else _number(v)) for name, v in row.items()}
            for group, row in frame.by_group.iterrows()
        ]
        entry: dict[str, Any] = {"groups": rows}
        if task == "classification" and classes:
            entry |= _differences(y, y_hat, pd.Series(values), list(classes))
            value = entry[GAPS[gap]]
            if value is not None and (largest is None or value > largest["value"]):
                largest = {"feature": column, "value": value}
        features[column] = entry
    return {
        "gap": gap,
        "positiveClass": classes[1] if binary and classes else None,
        "features": features,
        "largest": largest,
    }
