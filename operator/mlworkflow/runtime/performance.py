"""The served model's performance on labelled predictions, and its estimate before the labels come: the
monitoring job's second check, beside the drift check (`mlworkflow.runtime.drift` runs both).

Measured: the labels recorded since the last check (`POST /feedback`, `mlworkflow.runtime.feedback`; for
batch predictions, the label files of `spec.batch.labels` written since, on `spec.batch.idColumn`) are
joined by prediction id to the predictions the serving Pods recorded (the bounded sample, with ids), of the
monitored version (or its OnlineLearning snapshots). On them the task's metrics are computed by the code
that scored the version's holdout at training (`pipeline.metrics`): the recorded predictions, and the
version's own class probabilities for ROC AUC. The version's holdout value of the promotion metric (its
model card) is the baseline the planner compares with (`spec.monitoring.performance.tolerance`). Fewer
labelled predictions than `min_labelled_rows` is "insufficient": the labels window keeps growing.

Estimated (classifiers with probabilities): confidence-based performance estimation (`estimate`) on the
predictions served since the last check, and on the labelled ones (so that the estimate is seen beside the
measured value it anticipated).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from mlworkflow.runtime import pipeline
from mlworkflow.runtime.data import DataError, FeatureSchema
from mlworkflow.runtime.feedback import Labels, class_of, read_label_files, read_labels
from mlworkflow.runtime.store import WorkflowStore

HOLDOUT_FILE = "holdout.parquet"  # a sample of the version's held-out rows (features and target), for CBPE
HOLDOUT_ROWS = 5000
STATE_FILE = "performance-state.json"
ESTIMATED_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
SEED = 0


class PerformanceError(ValueError):
    """The check cannot run (no model card); the message says why."""


def estimate(probabilities: np.ndarray, predicted: np.ndarray, classes: list[Any]) -> dict[str, float]:
    """Confidence-based performance estimation (CBPE): the expected accuracy, precision, recall and F1
    (macro) of predictions `predicted` whose calibrated class probabilities are `probabilities` (a row per
    prediction, columns in `classes` order), without their labels.

    Method (NannyML's "Confidence-based Performance Estimation", described in its documentation: How it
    works / Performance Estimation, https://nannyml.readthedocs.io/en/stable/how_it_works/
    performance_estimation.html): when the probabilities are calibrated, a prediction of class j whose
    probability of class k is p_k is a true k/predicted j with probability p_k. Summing over the rows gives
    the expected confusion matrix, E[C]_kj = sum over rows predicted j of p_k; the metrics are computed
    from it as from a counted confusion matrix (per class precision E[C]_kk / sum_t E[C]_tk, recall
    E[C]_kk / sum_j E[C]_kj, F1 2·TP / (2·TP + FP + FN), macro averages). It assumes the relation between
    inputs and labels is the one the calibration saw (no concept shift): a change of that relation alone
    is seen only by measured performance.
    """
    index = {c: i for i, c in enumerate(classes)}
    columns = np.array([index[p] for p in predicted.tolist()], dtype=np.intp)
    expected = np.zeros((len(classes), len(classes)))
    for j in range(len(classes)):
        expected[:, j] = probabilities[columns == j].sum(axis=0)
    return pipeline.confusion_metrics(expected)


def calibrated(model: Any, holdout: pd.DataFrame, schema: FeatureSchema) -> Any | None:
    """`model` (a fitted pipeline) with its probabilities calibrated on its holdout sample (scikit-learn's
    CalibratedClassifierCV on the frozen model, isotonic: the model itself is not refitted); None when the
    holdout cannot calibrate it (fewer than two classes, or a class with too few rows)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    y = holdout[schema.target]
    if y.nunique() < 2 or y.value_counts().min() < 2:
        return None
    try:
        return CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(
            holdout[schema.features], y
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class Window:
    """Recorded predictions of the monitored version: the labelled ones (features, prediction, label) and a
    bounded sample of those recorded since the last check (for the estimate)."""

    labelled: pd.DataFrame  # features, then columns `_prediction` and `_label`
    recent: pd.DataFrame  # features, then `_prediction`
    labels: int  # labels in the window
    unknown: int  # of those, labels whose id names no recorded prediction
    other_versions: int  # of those, labels of another version's predictions
    newest_prediction: float


PREDICTION, LABEL = "_prediction", "_label"


@dataclass(frozen=True)
class LabelFiles:
    """Labels of batch predictions in files (`spec.batch.labels`), joined on `spec.batch.idColumn`."""

    pattern: str
    id_column: str


def read_window(
    store: WorkflowStore,
    version: str,
    labels: Labels,
    predictions_since: float,
    max_rows: int,
) -> Window:
    """The predictions that `labels` label, and the recent ones (recorded after `predictions_since`, a
    seeded reservoir of at most `max_rows`)."""
    lineage = version.partition(".")[0]
    rng = random.Random(SEED)
    labelled: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    seen_recent = 0
    found: set[str] = set()
    other = 0
    newest = predictions_since
    for path in sorted(store.samples.glob("*.jsonl")):
        with path.open() as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                    ts, model = float(row["ts"]), str(row["model"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                prediction_id = row.get("id")
                ours = model.partition(".")[0] == lineage
                if prediction_id in labels.by_id and prediction_id not in found:
                    found.add(prediction_id)
                    if ours:
                        labelled.append(
                            {
                                **row["features"],
                                PREDICTION: row["prediction"],
                                LABEL: labels.by_id[prediction_id],
                            }
                        )
                    else:
                        other += 1
                if ours and ts > predictions_since:
                    entry = {**row["features"], PREDICTION: row["prediction"]}
                    if seen_recent < max_rows:
                        recent.append(entry)
                    elif (slot := rng.randrange(seen_recent + 1)) < max_rows:
                        recent[slot] = entry
                    seen_recent += 1
                    newest = max(newest, ts)
    return Window(
        pd.DataFrame.from_records(labelled),
        pd.DataFrame.from_records(recent),
        len(labels.by_id),
        len(labels.by_id) - len(found),
        other,
        newest,
    )


def read_all_labels(
    store: WorkflowStore, since: float, target: str, files: LabelFiles | None = None
) -> Labels:
    """The labels recorded after `since` by `POST /feedback` and, with `files`, in the label files written
    since (a file's label wins over a recorded one for the same id). Raises ValueError for a label file
    that cannot be read (`feedback.read_label_files`)."""
    labels = read_labels(store.feedback, since)
    if files is None:
        return labels
    written = read_label_files(store.root, files.pattern, files.id_column, target, since)
    return Labels({**labels.by_id, **written.by_id}, max(labels.newest, written.newest))


def _typed(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Features as the pipeline takes them: float64 numbers (NaN where null), categories as spelled."""
    typed = pd.DataFrame(index=frame.index)
    for column in schema.numeric:
        typed[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in schema.categorical:
        typed[column] = schema.canonical(column, frame[column])
    return typed[schema.features]


def check(
    store: WorkflowStore,
    version: str,
    metric: str,
    min_labelled_rows: int,
    min_samples: int,
    max_rows: int = 10_000,
    label_files: LabelFiles | None = None,
    sensitive_features: Sequence[str] = (),
    gap: str = "EqualizedOdds",
) -> dict[str, Any]:
    """One performance check of `version`, on the labels sent to the serving Pods and, with `label_files`,
    those in files; with `sensitive_features`, the per-group figures on the labelled predictions too
    (`production_fairness`: whole in the saved result, the largest `gap` in the summary). Returns its
    summary (saved in the store when anything was measured or estimated). Raises PerformanceError when the
    version has no model card, ValueError for an unreadable label file."""
    model_dir = store.model_dir(version)
    card_path = model_dir / "card.json"
    if not card_path.exists():
        raise PerformanceError(f"no model card for {store.workflow} {version} in {model_dir}")
    card = json.loads(card_path.read_text())
    schema = FeatureSchema.from_json(card["schema"])
    task, classes = card["task"], card.get("classes")
    state_path = store.monitoring / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    started = time.monotonic()
    labels = read_all_labels(store, float(state.get("labelsUntil", 0.0)), schema.target, label_files)
    window = read_window(store, version, labels, float(state.get("predictionsUntil", 0.0)), max_rows)
    baseline = (card.get("metrics") or {}).get(metric)
    summary: dict[str, Any] = {
        "version": version,
        "metric": metric,
        "baseline": baseline,
        "labels": window.labels,
        "labelledRows": len(window.labelled),
        "unknownLabels": window.unknown,
        "otherVersionLabels": window.other_versions,
        "minLabelledRows": min_labelled_rows,
        "recentRows": len(window.recent),
    }
    model, groups = None, None
    if len(window.labelled) or (len(window.recent) >= min_samples and card.get("probabilities")):
        model = joblib.load(model_dir / "pipeline.joblib")
    estimator = _estimator(model, model_dir, schema, task, card) if model is not None else None
    if estimator is not None and len(window.recent) >= min_samples:
        summary["estimated"] = _estimate_on(estimator, window.recent, schema, classes or []).get(metric)
    if len(window.labelled) < min_labelled_rows:
        summary |= {
            "status": "insufficient",
            "message": f"{len(window.labelled)} labelled predictions of {version} since the last check; "
            f"{min_labelled_rows} are needed",
        }
    else:
        assert model is not None
        x = _typed(window.labelled, schema)
        truth, predicted = _truth(window.labelled, task, classes or [])
        known = truth.notna().to_numpy()
        proba = None
        if task == "classification" and card.get("probabilities"):
            proba = np.asarray(model.predict_proba(x[known]), dtype=np.float64)
        measured = pipeline.metrics(task, truth[known].tolist(), predicted[known], proba, classes)
        summary |= {"status": "ok", "measured": measured.get(metric), "metrics": measured}
        if estimator is not None:
            on_labelled = _estimate_on(estimator, window.labelled[known], schema, classes or [])
            summary["estimatedOnLabelled"] = on_labelled.get(metric)
        if sensitive_features:
            labelled = window.labelled[known]
            groups = production_fairness(
                labelled, truth[known], predicted[known], task, classes, sensitive_features, gap
            )
    saved = summary | ({"fairness": groups} if groups is not None else {})
    if groups is not None:  # the termination message is short: the per-group tables are in the result
        summary["fairness"] = {k: v for k, v in groups.items() if k != "features"}
    if "measured" in summary or "estimated" in summary:
        now = datetime.now(UTC)
        folder = store.monitoring / now.strftime("%Y%m%dT%H%M%SZ")
        folder.mkdir(parents=True, exist_ok=True)
        summary["checkedAt"] = now.isoformat(timespec="seconds")
        summary["seconds"] = round(time.monotonic() - started, 3)
        summary["result"] = str((folder / "performance.json").relative_to(store.root))
        saved = saved | {k: summary[k] for k in ("checkedAt", "seconds", "result")}
        (folder / "performance.json").write_text(json.dumps(saved, indent=2, default=str))
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(
        json.dumps(
            {
                # The labels window grows until it has enough; the estimate's window moves at each estimate.
                "labelsUntil": labels.newest if summary["status"] == "ok" else state.get("labelsUntil", 0.0),
                "predictionsUntil": window.newest_prediction
                if "estimated" in summary
                else state.get("predictionsUntil", 0.0),
            }
        )
    )
    return summary


def production_fairness(
    labelled: pd.DataFrame,
    truth: pd.Series,
    predicted: np.ndarray,
    task: str,
    classes: list[Any] | None,
    sensitive_features: Sequence[str],
    gap: str,
) -> dict[str, Any]:
    """The model card's per-group figures (`fairness.assess`) on labelled predictions, for the sensitive
    features among the recorded inputs: the serving Pods and batch runs record the model's inputs only, so
    a sensitive feature that is not one is named in `notRecorded` (with a `message` saying so). A feature
    with too many groups is reported in `message` too (`fairness.groups`)."""
    from mlworkflow.runtime import fairness  # fairlearn: only when asked

    recorded = [c for c in sensitive_features if c in labelled.columns and c not in (PREDICTION, LABEL)]
    missing = [c for c in sensitive_features if c not in recorded]
    found: dict[str, Any] = {"gap": gap, "notRecorded": missing}
    notes = []
    if missing:
        notes.append(
            f"{', '.join(missing)}: not a model input, so not recorded with the predictions; the model card "
            "has its groups on the holdout"
        )
    if recorded:
        try:
            found |= fairness.assess(
                task, truth, predicted, fairness.groups(labelled, recorded), classes, gap
            )
        except DataError as error:
            notes.append(str(error))
    if notes:
        found["message"] = "; ".join(notes)
    return found


def _truth(frame: pd.DataFrame, task: str, classes: list[Any]) -> tuple[pd.Series, np.ndarray]:
    """The labels as the model's classes (None for a label of no class: left out) or floats, and the
    recorded predictions."""
    if task == "regression":
        return pd.to_numeric(frame[LABEL], errors="coerce"), frame[PREDICTION].to_numpy(dtype=np.float64)
    truth = pd.Series([class_of(label, classes) for label in frame[LABEL]], index=frame.index, dtype=object)
    return truth, frame[PREDICTION].to_numpy(dtype=object)


def _estimator(
    model: Any, model_dir: Path, schema: FeatureSchema, task: str, card: dict[str, Any]
) -> Any | None:
    """The version's model calibrated on its holdout sample (an OnlineLearning snapshot `v1.12`: on its
    start version's, the learner's canary holdout), when it is a classifier with probabilities and the
    sample was saved; else None (no estimate)."""
    path = model_dir / HOLDOUT_FILE
    start = model_dir.parent / model_dir.name.partition(".")[0]
    path = path if path.exists() else start / HOLDOUT_FILE
    if task != "classification" or not card.get("probabilities") or not path.exists():
        return None
    holdout = pd.read_parquet(path)
    return calibrated(
        model, _typed(holdout, schema).assign(**{schema.target: holdout[schema.target]}), schema
    )


def _estimate_on(
    estimator: Any, frame: pd.DataFrame, schema: FeatureSchema, classes: list[Any]
) -> dict[str, float]:
    """CBPE on recorded predictions (`frame`'s `_prediction`), with the calibrated model's probabilities."""
    x = _typed(frame, schema)
    probabilities = np.asarray(estimator.predict_proba(x), dtype=np.float64)
    order = [list(estimator.classes_).index(c) for c in classes]  # the card's class order
    known = np.isin(frame[PREDICTION].to_numpy(dtype=object), np.asarray(classes, dtype=object))
    return estimate(probabilities[:, order][known], frame[PREDICTION].to_numpy(dtype=object)[known], classes)
