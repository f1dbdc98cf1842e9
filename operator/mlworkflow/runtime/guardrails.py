"""The online learner's guardrails: what keeps a bad mini-batch away from the model.

In order, before a mini-batch touches the model (`Guard.check`, then `Canary` in the learner):
1. MissingColumn: a feature or the target absent from every row quarantines the batch.
2. Invalid rows are dropped: a row that is not an object, lacks a column, has a null or a value of the
   wrong type (the serving Pods' own `FeatureChecker` decides types), a number further outside the
   reference's [min, max] than `rangeMargin` times its width (OutOfRange), a label that is not one of the
   model's classes (UnknownClass) or not a finite number (regression). More than `maxInvalidFraction` of
   the rows invalid quarantines the batch, with the reason most of them share (InvalidRows, OutOfRange,
   UnknownClass).
3. ClassShift (classification): the batch's class shares are further from the recent ones (an
   exponentially weighted mean of the accepted batches' shares) than `maxClassShift` in total variation
   distance.
4. CanaryDrop: a copy of the model updated with the batch scores on the canary holdout (rows of the
   warm-up data the start version was not trained on) more than `maxMetricDrop` below the smoothed baseline
   (an exponentially weighted mean of the accepted scores; comparing with the last score alone would
   refuse many clean batches on noise). For an error metric (mse, mae) the drop is the relative increase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from mlworkflow.api.v1alpha1 import REGRESSION_METRICS, Guardrails
from mlworkflow.runtime import pipeline
from mlworkflow.runtime.data import FeatureSchema, category
from mlworkflow.runtime.features import FeatureChecker, RequestError

# Weight of the newest accepted batch in the smoothed class shares and canary baseline.
SMOOTHING = 0.2
# Fewer labelled rows than this say too little about class shares to refuse a batch on them.
MIN_ROWS_FOR_SHIFT = 30
INVALID, OUT_OF_RANGE, UNKNOWN_CLASS = "InvalidRows", "OutOfRange", "UnknownClass"


@dataclass(frozen=True)
class Checked:
    """A mini-batch after the row checks: the valid rows' features typed as the model's pipeline takes them
    (numbers float64, categories spelled; one array per feature) and their labels, or the reason it is
    quarantined."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    y: np.ndarray
    rows: int  # rows polled
    dropped: dict[str, int]  # invalid rows dropped, by reason
    reason: str | None = None
    message: str = ""

    @cached_property
    def x(self) -> pd.DataFrame:
        """The valid rows' features as a frame (the model's feature columns, in the schema's order)."""
        columns = {**self.numeric, **self.categorical}
        return pd.DataFrame(columns, columns=list(columns))


class Guard:
    """Row checks and the class-shift check of one model (its schema, classes and reference ranges)."""

    def __init__(
        self,
        schema: FeatureSchema,
        task: str,
        classes: Sequence[Any] | None,
        reference: pd.DataFrame,
        rules: Guardrails,
        shares: dict[str, float] | None = None,
    ) -> None:
        self.schema, self.task, self.rules = schema, task, rules
        # Nulls are invalid rows here (the spec's rule), whatever the serving checker allows.
        self.checker = FeatureChecker(schema, impute=True)
        self.classes = list(classes or [])
        # A label as the model knows it, by its category spelling: 1, 1.0 and "1" are class 1.
        self._class_of = {category(c): c for c in self.classes}
        self.bounds: dict[str, tuple[float, float]] = {}
        for column in schema.numeric:
            values = (
                pd.to_numeric(reference[column], errors="coerce").dropna() if column in reference else None
            )
            if values is None or values.empty:
                continue
            low, high = float(values.min()), float(values.max())
            margin = rules.range_margin * ((high - low) or max(abs(low), 1.0))
            self.bounds[column] = (low - margin, high + margin)
        self.shares = dict(shares or {})

    def check(self, rows: Sequence[dict[str, Any] | None]) -> Checked:
        total = len(rows)
        records = [r for r in rows if type(r) is dict]
        not_objects = total - len(records)
        columns = [*self.schema.features, self.schema.target]
        present: set[str] = set()
        for record in records:
            present.update(record)
            if len(present) >= len(columns) and all(c in present for c in columns):
                break
        missing = [c for c in columns if c not in present]
        if missing:
            return self._refused(
                total,
                "MissingColumn",
                f"column {missing[0]!r} is in none of the {total} rows"
                + (f" ({len(missing)} columns missing)" if len(missing) > 1 else ""),
            )
        valid, dropped, numeric, categorical = self._valid_rows(records)
        dropped[INVALID] += not_objects
        y: np.ndarray
        if self.task == "classification":
            labels = [self._class_of.get(category(r[self.schema.target])) for r in valid]
            known = np.array([label is not None for label in labels], dtype=bool)
            dropped[UNKNOWN_CLASS] += int((~known).sum())
            y = np.array([label for label in labels if label is not None])
        else:
            values = pd.to_numeric(
                pd.Series([r[self.schema.target] for r in valid], dtype=object), errors="coerce"
            )
            numbers = values.to_numpy(dtype=np.float64)
            known = np.isfinite(numbers)
            dropped[INVALID] += int((~known).sum())
            y = numbers[known]
        if not known.all():
            numeric = {c: v[known] for c, v in numeric.items()}
            categorical = {c: v[known] for c, v in categorical.items()}
        invalid = sum(dropped.values())
        if total and invalid / total > self.rules.max_invalid_fraction:
            reason = max(dropped, key=lambda r: dropped[r])
            detail = ", ".join(f"{n} {r}" for r, n in dropped.items() if n)
            return self._refused(
                total,
                reason,
                f"{invalid} of {total} rows invalid ({detail}); at most "
                f"{self.rules.max_invalid_fraction:g} may be (spec.online.guardrails.maxInvalidFraction)",
                dropped,
            )
        shift = self._shift(y)
        if shift is not None:
            return self._refused(total, "ClassShift", shift, dropped)
        return Checked(numeric, categorical, y, total, dropped)

    def _valid_rows(
        self, records: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The records whose features pass the serving checker, hold no null and are within range, and
        their features typed as the model's pipeline takes them (numbers float64, categories spelled):
        numeric and categorical columns, in the schema's order."""
        dropped = {INVALID: 0, OUT_OF_RANGE: 0, UNKNOWN_CLASS: 0}
        try:
            batch = self.checker.from_records(records, max_rows=None) if records else None
            checked = records
        except RequestError:  # some rows fail: find them one by one (a bad batch only)
            checked = []
            for record in records:
                try:
                    self.checker.from_records([record], max_rows=None)
                except RequestError:
                    dropped[INVALID] += 1
                else:
                    checked.append(record)
            batch = self.checker.from_records(checked, max_rows=None) if checked else None
        if batch is None:
            empty = np.empty(0, dtype=object)
            return (
                [],
                dropped,
                {c: empty for c in self.schema.numeric},
                {c: empty for c in self.schema.categorical},
            )
        good = np.ones(batch.rows, dtype=bool)
        for values in batch.numeric.values():
            good &= ~np.isnan(values)
        for values in batch.categorical.values():
            good &= values != ""
        good &= np.array([_labelled(row, self.schema.target) for row in checked], dtype=bool)
        dropped[INVALID] += int((~good).sum())
        inside = np.ones(batch.rows, dtype=bool)
        for column, (low, high) in self.bounds.items():
            values = batch.numeric[column]
            inside &= np.isnan(values) | ((values >= low) & (values <= high))
        dropped[OUT_OF_RANGE] += int((good & ~inside).sum())
        keep = good & inside
        numeric = {c: batch.numeric[c][keep] for c in self.schema.numeric}
        categorical = {c: batch.categorical[c][keep] for c in self.schema.categorical}
        valid = [r for r, k in zip(checked, keep.tolist(), strict=True) if k]
        return valid, dropped, numeric, categorical

    def _shift(self, y: np.ndarray) -> str | None:
        if self.task != "classification" or not self.shares or len(y) < MIN_ROWS_FOR_SHIFT:
            return None
        shares = class_shares(y)
        distance = total_variation(shares, self.shares)
        if distance <= self.rules.max_class_shift:
            return None
        return (
            f"class shares {_shares_text(shares)} are {distance:.2f} (total variation distance) from the "
            f"recent {_shares_text(self.shares)}; at most {self.rules.max_class_shift:g} is allowed "
            "(spec.online.guardrails.maxClassShift)"
        )

    def accept(self, y: np.ndarray) -> None:
        """An applied batch moves the recent class shares towards its own."""
        if self.task != "classification" or not len(y):
            return
        shares = class_shares(y)
        if not self.shares:
            self.shares = shares
            return
        keys = set(shares) | set(self.shares)
        self.shares = {
            k: (1 - SMOOTHING) * self.shares.get(k, 0.0) + SMOOTHING * shares.get(k, 0.0)
            for k in sorted(keys)
        }

    @staticmethod
    def _refused(rows: int, reason: str, message: str, dropped: dict[str, int] | None = None) -> Checked:
        return Checked({}, {}, np.empty(0), rows, dropped or {}, reason, message)


def _labelled(row: dict[str, Any], target: str) -> bool:
    """Whether a row has a label: present, not null, not NaN."""
    label = row.get(target)
    return label is not None and not (isinstance(label, float) and np.isnan(label))


def class_shares(y: np.ndarray | pd.Series) -> dict[str, float]:
    """Each class's share of the labels, keyed by the class's category spelling (JSON keys)."""
    values, counts = np.unique(np.asarray(y), return_counts=True)
    return {category(v): float(c) / float(counts.sum()) for v, c in zip(values.tolist(), counts, strict=True)}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _shares_text(shares: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.2f}" for k, v in sorted(shares.items())) + "}"


class Canary:
    """The canary holdout's score of a model, and the smoothed baseline it is compared with.

    `x` is already transformed by the frozen preprocessing: only the estimator is scored. Scored after
    every mini-batch, so from the predictions in numpy (`scores`): scikit-learn's scorers validate their
    input and build a confusion matrix per metric, ~4 ms a batch against ~0.1 ms."""

    def __init__(self, x: np.ndarray, y: np.ndarray, metric: str, max_drop: float) -> None:
        self.x, self.y, self.metric, self.max_drop = x, y, metric, max_drop
        self.lower_is_better = metric in pipeline.LOWER_IS_BETTER
        self.regression = metric in REGRESSION_METRICS
        self.baseline: float | None = None

    @property
    def rows(self) -> int:
        return len(self.y)

    def score(self, estimator: Any) -> float:
        """The metric (errors as they are, not negated)."""
        if self.metric == "roc_auc":
            auc = pipeline.roc_auc(self.y, pipeline.class_scores(estimator, self.x), list(estimator.classes_))
            if auc is None:
                raise ValueError("the canary holds fewer than two classes: it has no ROC AUC")
            return auc
        return scores(self.y, estimator.predict(self.x), self.regression)[self.metric]

    def metrics(self, estimator: Any) -> dict[str, float]:
        """Every holdout metric of `pipeline.scores` (a version card's `metrics`), on the canary (the macro
        means over its classes: `scores`)."""
        result = scores(self.y, estimator.predict(self.x), self.regression)
        if not self.regression and hasattr(estimator, "predict_proba"):
            auc = pipeline.roc_auc(self.y, estimator.predict_proba(self.x), list(estimator.classes_))
            if auc is not None:  # a canary of fewer than two classes has none; the other metrics stand
                result["roc_auc"] = auc
        return result

    def drop(self, score: float) -> float:
        """How far `score` falls below the baseline (relatively, for an error metric); ≤ 0 when not."""
        if self.baseline is None:
            return 0.0
        if self.lower_is_better:
            return (score - self.baseline) / max(abs(self.baseline), 1e-12)
        return self.baseline - score

    def refuses(self, score: float) -> bool:
        return self.drop(score) > self.max_drop

    def accept(self, score: float) -> None:
        self.baseline = (
            score if self.baseline is None else (1 - SMOOTHING) * self.baseline + SMOOTHING * score
        )


def scores(y: np.ndarray, predicted: np.ndarray, regression: bool) -> dict[str, float]:
    """The metrics of `pipeline.scores` but ROC AUC, with scikit-learn's values: MSE, MAE and R² (1 for a
    perfect fit of constant labels, else 0 for them); or accuracy and the macro means of precision, recall
    and F1 over the classes `y` holds (`labels=` them), a 0/0 counting 0 (`zero_division=0`). Over those
    only, unlike `pipeline.scores`: the canary is the warm-up's holdout, and a class it lacks (one that
    spec.online.classes declares and the stream teaches) would enter the means with an F1 of 0 at the
    first row predicted as it, a drop of 1/k that no mistake on the classes it holds explains."""
    if regression:
        truth, guess = np.asarray(y, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        errors = truth - guess
        residual = float(np.sum(errors**2))
        total = float(np.sum((truth - truth.mean()) ** 2))
        r2 = 1.0 - residual / total if total else (1.0 if residual == 0 else 0.0)
        return {"mse": residual / len(truth), "mae": float(np.mean(np.abs(errors))), "r2": r2}
    labels, codes = np.unique(np.concatenate([np.asarray(y), np.asarray(predicted)]), return_inverse=True)
    k, n = len(labels), len(y)
    matrix = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k)  # rows: truth
    return pipeline.confusion_metrics(matrix, held_only=True)
