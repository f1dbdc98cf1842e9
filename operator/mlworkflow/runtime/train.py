"""Train one model version: `python -m mlworkflow.runtime.train` (the training Pod's program).

    python -m mlworkflow.runtime.train --store DIR --workflow NAME --version v3 --trigger Initial
    (the workflow's spec as JSON in $MLW_SPEC; the estimator allow-list in $MLW_ALLOWED_ESTIMATOR_PREFIXES)

Reads and checks the data, fits the pipeline (cross-validation, holdout metrics), exports ONNX where it is
exact, and saves the version in the workflow's BentoML model store with its model card and a reference
sample of the training features. It ends with one line of JSON in the termination message, which is how
the operator learns the result without this Pod needing any access to the API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import (
    cross_validate,
)

from mlworkflow.api import exitcodes
from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Pattern, Trigger, promotion_metric
from mlworkflow.runtime import (
    data,
    fairness,
    holdout,
    importance,
    onnx_export,
    performance,
    pipeline,
    tracking,
)
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

REFERENCE_ROWS = 5000


@dataclass(frozen=True)
class TrainedModel:
    version: str
    metrics: dict[str, float]
    cv: dict[str, float]
    backend: str
    onnx_check: str
    rows: int
    tag: str
    champion_metrics: dict[str, float] | None = None
    data_sha256: str = ""
    holdout: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] | None = None  # where MLflow has it, or why not (`tracking.log_version`)
    fairness: dict[str, Any] | None = None  # the largest fairness gap on the holdout (`fairness.assess`)


def train(
    spec: MLWorkflowSpec,
    store: WorkflowStore,
    version: str,
    trigger: Trigger,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    champion: str | None = None,
    drift_report: str | None = None,
    archive: bool = False,
    mlflow: tracking.Settings | None = None,
    spec_hash: str = "",
) -> TrainedModel:
    """Train, evaluate and save one version; raises DataError or ModelError with a message for the user.

    With a `champion` (the served version), the holdout is made of rows the champion was not trained on,
    and both are scored on it (see `mlworkflow.runtime.holdout`). With `mlflow` settings, the saved version
    is logged and registered there too (`mlworkflow.runtime.tracking`); its card says where, or why not.
    """
    assert spec.model is not None
    started = time.monotonic()
    task = spec.model.task
    rows = holdout.prepare(spec, store, champion, spec.training.cross_validation, archive)
    snapshot, schema, split = rows.snapshot, rows.schema, rows.judged
    x_train, y_train, x_holdout, y_holdout = rows.x_train, rows.y_train, rows.x_holdout, rows.y_holdout
    model = pipeline.build(spec.model, schema, allowed_prefixes)
    classes = _declared_classes(spec, pd.concat([y_train, y_holdout]))
    try:
        cv = _cross_validate(model, x_train, y_train, task, spec.training.cross_validation, rows.forward)
        fitted = pipeline.fit(model, x_train, y_train, classes)
    except (ValueError, TypeError) as error:
        # The data passed its checks: what fails now is the estimator with these parameters.
        raise pipeline.ModelError(f"spec.model: fitting {spec.model.estimator} failed: {error}") from None
    # Fewer than two rows give no metric (R² is undefined); the decision then says the holdout was too small.
    scorable = len(x_holdout) >= 2
    metrics = pipeline.scores(task, model, x_holdout, y_holdout) if scorable else {}
    champion_metrics = (
        _champion_scores(store, champion, task, x_holdout, y_holdout) if champion and scorable else None
    )
    fair = _fairness(spec, rows, model) if scorable else None
    judged = {
        "rows": len(x_holdout),
        "excludedRows": split.excluded,
        "split": split.split,
        "champion": champion,
    }

    one_hot = spec.model.preprocessing.one_hot
    exported = onnx_export.convert(model, schema, one_hot)
    if exported is None:
        check = onnx_export.Verification(False, "skl2onnx does not support a step of this pipeline")
    else:
        check = onnx_export.verify(
            model,
            onnx_export.OnnxPredictor(exported, schema, one_hot),
            x_holdout if len(x_holdout) else x_train,
            task,
        )
    backend = "onnxruntime" if check.passed else "sklearn"

    card: dict[str, Any] = {
        "workflow": store.workflow,
        "version": version,
        "trigger": str(trigger),
        "specHash": spec_hash or None,
        "trainedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainingSeconds": round(time.monotonic() - started, 3),
        "data": {
            "source": spec.data.source,
            "files": snapshot.files,
            "sha256": snapshot.sha256,
            "rows": snapshot.rows,
            "trainRows": len(x_train),
            "holdoutRows": len(x_holdout),
            "timeColumn": spec.data.time_column,
            # Which rows trained this version: a later retraining keeps them out of its holdout.
            "trainedRows": {
                "file": holdout.ROWS_FILE,
                "method": "pandas.util.hash_pandas_object(index=False) of the checked feature and target "
                "columns; sorted, unique uint64",
            },
        },
        "holdout": judged,
        "schema": schema.to_json(),
        "task": task,
        # A classifier's classes, in the order of its probability columns (when it gives probabilities).
        "classes": np.asarray(model.classes_).tolist() if task == "classification" else None,
        "probabilities": hasattr(model, "predict_proba"),
        "pipeline": {
            "estimator": spec.model.estimator,
            "params": spec.model.params,
            "preprocessing": spec.model.preprocessing.model_dump(by_alias=True),
            "steps": [name for name, _ in model.steps],
            # OnlineLearning with spec.online.classes: the estimator learned them all by partial_fit.
            "fit": fitted,
            "repr": repr(model),
        },
        "crossValidation": cv,
        "metrics": metrics,
        # What the model relies on, and how it treats groups (spec.monitoring.fairness), on the holdout.
        "importance": importance.permutation(model, x_holdout, y_holdout, promotion_metric(spec))
        if scorable
        else None,
        "fairness": fair,
        "champion": {"version": champion, "metrics": champion_metrics} if champion else None,
        "lineage": {
            "trigger": str(trigger),
            "driftReport": drift_report,
            "champion": champion,
            "dataSha256": snapshot.sha256,
            "files": snapshot.files,
        },
        "onnx": {"exported": exported is not None, "verified": check.passed, "check": check.detail},
        "backend": backend,
        "libraries": _library_versions(),
        # AutoML: the search that chose this estimator (its whole leaderboard stays in the store).
        "search": _search(store, version),
    }
    tag = save_version(
        store,
        version,
        str(trigger),
        model,
        exported if check.passed else None,
        card,
        x_train,
        rows.trained,
        mlflow,
        x_holdout.assign(**{schema.target: y_holdout}),
    )
    return TrainedModel(
        version,
        metrics,
        cv,
        backend,
        check.detail,
        snapshot.rows,
        tag,
        champion_metrics,
        snapshot.sha256,
        judged,
        card.get("tracking"),
        {"gap": fair["gap"], **fair["largest"]} if fair and fair["largest"] else None,
    )


def _declared_classes(spec: MLWorkflowSpec, labels: pd.Series) -> list[Any] | None:
    """An OnlineLearning classifier's spec.online.classes as values of the checked labels (all of its rows:
    `data.declared_classes`, which raises DataError when they hold one it does not declare); None when none
    are declared (the classes are the data's)."""
    assert spec.model is not None
    online = spec.online if spec.pattern == Pattern.ONLINE_LEARNING else None
    if online is None or not online.classes or spec.model.task != "classification":
        return None
    return data.declared_classes(online.classes, labels)


def _fairness(spec: MLWorkflowSpec, rows: holdout.Rows, model: Any) -> dict[str, Any] | None:
    """Per-group metrics and differences on the holdout for spec.monitoring.fairness.sensitiveFeatures
    (read from the data, inputs of the model or not); None when none are declared."""
    declared = spec.monitoring.fairness
    if not declared.sensitive_features:
        return None
    assert spec.model is not None
    sensitive = fairness.groups(rows.snapshot.frame.iloc[rows.judged.holdout], declared.sensitive_features)
    classes = np.asarray(model.classes_).tolist() if spec.model.task == "classification" else None
    return fairness.assess(
        spec.model.task, rows.y_holdout, model.predict(rows.x_holdout), sensitive, classes, declared.gap
    )


def _champion_scores(
    store: WorkflowStore, champion: str, task: str, x: pd.DataFrame, y: pd.Series
) -> dict[str, float] | None:
    """The served model's metrics on this holdout; None when it cannot score it (its features changed)."""
    path = store.model_dir(champion) / "pipeline.joblib"
    if not path.exists():
        return None
    try:
        return pipeline.scores(task, joblib.load(path), x, y)
    except (ValueError, KeyError, TypeError):
        return None


def _cross_validate(
    model: Any, x: pd.DataFrame, y: pd.Series, task: str, folds: int, forward: bool = False
) -> dict[str, float]:
    """Mean and spread of the task's CV scores over `folds` folds (`holdout.folds`; `forward`: the rows are in
    time order)."""
    if folds < 2:
        return {}
    results = cross_validate(
        model,
        x,
        y,
        cv=holdout.folds(task, y, folds, forward),
        scoring=pipeline.cv_scoring(task),
        error_score="raise",
    )
    summary = {}
    for name in pipeline.cv_scoring(task):
        values = results[f"test_{name}"]
        sign = -1.0 if name in pipeline.LOWER_IS_BETTER else 1.0  # sklearn scores errors negated
        summary[f"{name}_mean"] = float(sign * values.mean())
        summary[f"{name}_std"] = float(values.std())
    return summary


def _library_versions() -> dict[str, str]:
    import bentoml
    import onnxruntime
    import skl2onnx

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "pandas": pd.__version__,
        "bentoml": bentoml.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def save_version(
    store: WorkflowStore,
    version: str,
    trigger: str,
    model: Any,
    onnx_model: bytes | None,
    card: dict[str, Any],
    x_train: pd.DataFrame | Path,
    trained_rows: holdout.Hashes | Path | None,
    mlflow: tracking.Settings | None = None,
    held_out: pd.DataFrame | None = None,
    markdown: str | None = None,
) -> str:
    """The version in the BentoML model store under the artifact store, with its card (`markdown`: the card
    for humans, by default `model_card_markdown(card)`), its reference sample (of `x_train`), a sample of
    its held-out rows when given (features and target: the monitor calibrates its probabilities on them)
    and the hashes of the rows it was trained on (when known); returns its tag. A Path for `x_train` or
    `trained_rows` is another version's `reference.parquet` or `trained-rows.npy`, copied as it is (an
    online snapshot keeps its start version's: a new sample and a new sort would cost a snapshot ~50 ms
    for the same content). The training runtime and the online learner's snapshots
    (`mlworkflow.runtime.learn`) save versions this way. Logged to MLflow too with `mlflow` settings (the
    card's `tracking` says where, or why not)."""
    os.environ["BENTOML_HOME"] = str(store.bentoml_home)
    import bentoml

    tag = f"{store.model_name()}:{version}"
    # A retried Pod may find its own half-saved version: the retry wins.
    with contextlib.suppress(bentoml.exceptions.NotFound):
        bentoml.models.delete(tag)
    labels = {"workflow": store.workflow, "version": version, "trigger": trigger}
    metadata = {"metrics": card["metrics"], "backend": card["backend"], "dataSha256": card["data"]["sha256"]}
    with bentoml.models.create(tag, labels=labels, metadata=metadata, module="mlworkflow") as saved:
        path = Path(saved.path)
        joblib.dump(model, path / "pipeline.joblib")
        if onnx_model is not None:
            (path / "model.onnx").write_bytes(onnx_model)
        (path / "card.json").write_text(json.dumps(card, indent=2, default=str))
        (path / "card.md").write_text(markdown if markdown is not None else model_card_markdown(card))
        if isinstance(x_train, Path):
            shutil.copyfile(x_train, path / "reference.parquet")
        else:
            reference = x_train.sample(min(REFERENCE_ROWS, len(x_train)), random_state=holdout.SEED)
            reference.to_parquet(path / "reference.parquet", index=False)
        if held_out is not None:
            sample = held_out.sample(min(performance.HOLDOUT_ROWS, len(held_out)), random_state=holdout.SEED)
            sample.to_parquet(path / performance.HOLDOUT_FILE, index=False)
        if isinstance(trained_rows, Path):
            shutil.copyfile(trained_rows, path / holdout.ROWS_FILE)
        elif trained_rows is not None:
            holdout.save_rows(path, trained_rows)
        if mlflow is not None:
            # Before the version is complete in the store: its card then says where MLflow has it.
            card["tracking"] = tracking.log_version(mlflow, store, card, path, model)
            (path / "card.json").write_text(json.dumps(card, indent=2, default=str))
            (path / "card.md").write_text(model_card_markdown(card))
    return tag


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card for humans."""
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in card["metrics"].items())
    cv = (
        "\n".join(f"| {name} | {value:.4f} |" for name, value in card["crossValidation"].items())
        or "| - | - |"
    )
    data_ = card["data"]
    return f"""# Model card: {card["workflow"]} {card["version"]}

Trained {card["trainedAt"]} (trigger: {card["trigger"]}) in {card["trainingSeconds"]} s.

## Data
- Source: `{data_["source"]}` ({len(data_["files"])} file(s)), {data_["rows"]} rows
  ({data_["trainRows"]} for training, {data_["holdoutRows"]} held out), sha256 `{data_["sha256"][:16]}…`
- Target: `{card["schema"]["target"]}` ({card["task"]})
- Numeric features: {", ".join(f"`{c}`" for c in card["schema"]["numeric"]) or "none"}
- Categorical features: {", ".join(f"`{c}`" for c in card["schema"]["categorical"]) or "none"}

## Pipeline
`{card["pipeline"]["estimator"]}` with `{json.dumps(card["pipeline"]["params"])}`;
preprocessing `{json.dumps(card["pipeline"]["preprocessing"])}`.{_fit_line(card)}

## Holdout metrics
{_holdout_line(card)}

| metric | value |
|---|---|
{metrics}

{_importance_section(card)}{_fairness_section(card)}## Cross-validation (training rows)
| metric | value |
|---|---|
{cv}

## Serving
Backend: **{card["backend"]}**. ONNX: exported {card["onnx"]["exported"]}, verified {card["onnx"]["verified"]}
({card["onnx"]["check"]}).

{_search_section(card)}{_tracking_section(card)}## Libraries
{", ".join(f"{k} {v}" for k, v in card["libraries"].items())}
"""


def _fit_line(card: dict[str, Any]) -> str:
    fitted = card["pipeline"].get("fit")
    if not fitted:
        return ""
    classes = ", ".join(f"`{c}`" for c in fitted["classes"])
    return (
        f"\nClasses {classes} (spec.online.classes): learned by `partial_fit` in {fitted['epochs']} "
        "epoch(s), as many as `fit` runs."
    )


def _importance_section(card: dict[str, Any]) -> str:
    found = card.get("importance")
    if not found:
        return ""
    worse = "rise" if found["metric"] in pipeline.LOWER_IS_BETTER else "drop"
    rows = "\n".join(f"| `{f['feature']}` | {f['mean']:.4f} | {f['std']:.4f} |" for f in found["features"])
    return f"""## What the model relies on
Permutation importance: the {worse} in {found["metric"]} when a feature's values are shuffled among
{found["rows"]} held-out rows ({found["repeats"]} shuffles each; correlated features share their importance).

| feature | mean | std |
|---|---|---|
{rows}

"""


def _fairness_section(card: dict[str, Any]) -> str:
    found = card.get("fairness")
    if not found:
        return ""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    parts = []
    for feature, entry in found["features"].items():
        names = [k for k in entry["groups"][0] if k != "group"] if entry["groups"] else []
        table = "\n".join(
            f"| {g['group']} | " + " | ".join(cell(g.get(n)) for n in names) + " |" for g in entry["groups"]
        )
        differences = ""
        if "demographicParityDifference" in entry:
            differences = (
                f"Demographic parity difference {cell(entry['demographicParityDifference'])}, "
                f"equalized odds difference {cell(entry['equalizedOddsDifference'])}.\n\n"
            )
        parts.append(
            f"### `{feature}`\n{differences}| group | {' | '.join(names)} |\n|"
            + "---|" * (len(names) + 1)
            + f"\n{table}\n"
        )
    positive = found.get("positiveClass")
    largest = found.get("largest")
    summary = (
        f"Largest {found['gap']} difference: {largest['value']:.4f} (`{largest['feature']}`)."
        if largest
        else "No difference could be computed."
    )
    selection = f" Selection rate: the share predicted `{positive}`." if positive is not None else ""
    return (
        f"""## Groups (fairness, on the held-out rows)
{summary}{selection}

"""
        + "\n".join(parts)
        + "\n"
    )


def _search(store: WorkflowStore, version: str) -> dict[str, Any] | None:
    """The AutoML search of `version` (`<store>/<workflow>/automl/<version>/leaderboard.json`): its metric,
    trial count and ten best trials, or None when the version was not searched for."""
    board = store.base / "automl" / version / "leaderboard.json"
    if not board.exists():
        return None
    searched = json.loads(board.read_text())
    rows = searched.get("rows") or []
    return {
        "leaderboard": str(board.relative_to(store.root)),
        "metric": searched.get("metric"),
        "trials": len(rows),
        "top": rows[:10],
        "mlflowRunId": searched.get("mlflowRunId"),  # the refit's run links to it
    }


def _search_section(card: dict[str, Any]) -> str:
    search = card.get("search")
    if not search:
        return ""
    rows = "\n".join(
        f"| {row.get('rank')} | `{row.get('estimator')}` | `{json.dumps(row.get('params'))}` | "
        f"{row.get('cvMean')} | {row.get('cvStd')} | {row.get('state')} |"
        for row in search["top"]
    )
    return f"""## Model search
{search["trials"]} trials ranked by {search["metric"]}; the ten best (all of them: `{search["leaderboard"]}`):

| rank | estimator | params | CV mean | CV std | state |
|---|---|---|---|---|---|
{rows}

"""


def _tracking_section(card: dict[str, Any]) -> str:
    tracked = card.get("tracking")
    if not tracked:
        return ""
    if not tracked.get("tracked"):
        return f"""## MLflow
Not tracked: {tracked.get("reason")}. The operator's next sync logs it.

"""
    return f"""## MLflow
Run `{tracked["runId"]}` in experiment `{tracked["experiment"]}`; registered as version
{tracked["modelVersion"]} of `{tracked["registeredModel"]}`.

"""


def _holdout_line(card: dict[str, Any]) -> str:
    judged = card["holdout"]
    split = "the newest rows" if judged["split"] == "OutOfTime" else "a seeded random choice"
    line = f"{judged['rows']} held-out rows ({split})"
    champion = card["champion"]
    if not champion:
        return line + "."
    excluded = judged["excludedRows"]
    seen = (
        f"{excluded} rows excluded as seen by {champion['version']}"
        if excluded is not None
        else f"the rows {champion['version']} was trained on are not recorded: none excluded"
    )
    scores = champion["metrics"] or {}
    compared = ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) or "not scored"
    return f"{line}, none trained on by this version or the champion ({seen}). Champion on them: {compared}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="root of the artifact store")
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--trigger", default=Trigger.INITIAL.value, choices=[t.value for t in Trigger])
    parser.add_argument("--champion", help="the served version, scored on the same holdout for comparison")
    parser.add_argument("--drift-report", help="the drift check that triggered this training (lineage)")
    parser.add_argument(
        "--stream-archive",
        action="store_true",
        help="OnlineLearning: also train on the archived stream (<store>/<workflow>/stream/)",
    )
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    prefixes = tuple(p for p in os.environ.get("MLW_ALLOWED_ESTIMATOR_PREFIXES", "").split(",") if p)
    try:
        spec = MLWorkflowSpec.model_validate_json(os.environ["MLW_SPEC"])
        result = train(
            spec,
            WorkflowStore(args.store, args.workflow),
            args.version,
            Trigger(args.trigger),
            prefixes or DEFAULT_ALLOWED_PREFIXES,
            args.champion,
            args.drift_report,
            args.stream_archive,
            tracking.Settings.from_env(),
            os.environ.get("MLW_SPEC_HASH", ""),
        )
    except (data.DataError, pipeline.ModelError) as error:
        reason = error.reason if isinstance(error, data.DataError) else "ModelInvalid"
        report(
            {"status": "error", "version": args.version, "reason": reason, "message": str(error)},
            args.termination_log,
        )
        return exitcodes.INVALID_INPUT
    report(
        {
            "status": "ok",
            "version": result.version,
            "metrics": result.metrics,
            "backend": result.backend,
            "rows": result.rows,
            "tag": result.tag,
            "dataSha256": result.data_sha256,
            "driftReport": args.drift_report,
            "holdout": {k: v for k, v in result.holdout.items() if k != "champion"},
            "champion": {"version": args.champion, "metrics": result.champion_metrics}
            if args.champion
            else None,
            # Whether MLflow has it (a NotTracked Event otherwise); where exactly is in the card.
            "tracking": {k: v for k, v in (result.tracking or {}).items() if k in ("tracked", "reason")}
            or None,
            # The promotion gate's input (spec.promotion.maxFairnessGap); the groups are in the card.
            "fairness": result.fairness,
        },
        args.termination_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
