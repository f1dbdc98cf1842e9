"""MLflow tracking of the runtimes' runs (`spec.tracking.mlflow`), and the sync of the operator's decisions.

    python -m mlworkflow.runtime.tracking --store DIR --workflow NAME --digest D
    (the decisions in $MLW_TRACKING_DECISIONS: {served, versions: [{version, outcome, reason, message}]};
    the settings in $MLFLOW_TRACKING_URI, $MLW_MLFLOW_EXPERIMENT, $MLW_MLFLOW_MODEL, $MLW_NAMESPACE, set by
    the operator in every runtime Pod of a tracked workflow: `mlworkflow.desired.tracking`)

Each training logs one MLflow run in the workflow's experiment: params (estimator, its parameters,
preprocessing, spec hash), metrics (holdout, cross-validation, the champion's holdout score on the same
rows), tags (workflow, namespace, version, trigger, drift report), the model card as artifacts, and the
fitted pipeline in MLflow's scikit-learn flavour with its signature and an input example, registered as a
version of the workflow's registered model. Every trained version is registered, so that a rejected one can
be looked at next to the champion; the BentoML model store stays what is served.

Whether a version is promoted is decided by the operator after the training has ended
(`mlworkflow.desired.lifecycle.decide`), so the sync — this module's program, a Job the operator starts when
MLflow does not show its latest decisions — tags each registered version with its outcome and reason
(`mlworkflow.outcome`, `mlworkflow.reason`, `mlworkflow.message`) and points the alias `champion` at the
served one. It also logs every decided version whose training could not (the retry), from the store.

Tracking never fails a run: a server that cannot be reached (or refuses) makes a record
`{"tracked": false, "reason": ...}`, which the training puts in its model card and termination message, and
the sync reports `{"status": "unavailable"}` (exit 0) for the operator to try again. A version's record of
where it went is `<store>/<workflow>/tracking/<version>.json`; no record: not tracked yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import pandas as pd

from mlworkflow.api import exitcodes
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG = "mlworkflow."  # prefix of every tag this project sets
CHAMPION_ALIAS = "champion"
INPUT_EXAMPLE_ROWS = 5
MAX_REASON = 500


class NotTracked(Exception):
    """MLflow did not take what was logged: the server cannot be reached, or refused it."""


@dataclass(frozen=True)
class Settings:
    """Where this workflow's runs go (the environment of its runtime Pods)."""

    tracking_uri: str
    experiment: str
    registered_model: str
    namespace: str

    @classmethod
    def from_env(cls) -> Settings | None:
        """The settings the operator set, or None: the workflow is not tracked."""
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        experiment = os.environ.get("MLW_MLFLOW_EXPERIMENT", "")
        if not uri or not experiment:
            return None
        return cls(
            uri,
            experiment,
            os.environ.get("MLW_MLFLOW_MODEL") or experiment.replace("/", "."),
            os.environ.get("MLW_NAMESPACE", ""),
        )


def _client(settings: Settings) -> MlflowClient:
    # A server that is down answers at once (connection refused); a slow one is given 30 s per request.
    # MLflow's default, 7 retries with exponential backoff, would hold a finished training for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow sends usage telemetry to its makers by default: a runtime talks to the team's server only.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    # The registry is the tracking server's: MLflow's own default would be a local SQLite file.
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)


@contextmanager
def _failures_as_not_tracked() -> Iterator[None]:
    """Whatever MLflow raises (MlflowException, a requests error, a refused upload) as NotTracked: a
    tracking failure must never fail the run it tracks. The traceback goes to the log."""
    try:
        yield
    except NotTracked:
        raise
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        raise NotTracked(f"{type(error).__name__}: {error}"[:MAX_REASON]) from None


def record_path(store: WorkflowStore, version: str) -> Path:
    return store.base / "tracking" / f"{version}.json"


def read_record(store: WorkflowStore, version: str) -> dict[str, Any] | None:
    """Where `version` was logged ({runId, experimentId, registeredModel, modelVersion, trackingUri}), or None
    when it was not (yet)."""
    try:
        return dict(json.loads(record_path(store, version).read_text()))
    except (OSError, ValueError):
        return None


def _write_record(store: WorkflowStore, version: str, record: dict[str, Any]) -> None:
    path = record_path(store, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)


def log_version(
    settings: Settings,
    store: WorkflowStore,
    card: dict[str, Any],
    model_dir: Path,
    pipeline: Any | None = None,
) -> dict[str, Any]:
    """Log a trained version (its `card`, and the files in `model_dir`: card.json, card.md, pipeline.joblib,
    reference.parquet) as an MLflow run, and register it. Returns the card's `tracking` record:
    `{"tracked": true, "runId", "modelVersion", "registeredModel", "experiment"}`, or
    `{"tracked": false, "reason"}` when MLflow did not take it (never raises for that)."""
    version = str(card["version"])
    try:
        with _failures_as_not_tracked():
            record = _log_version(settings, store, card, model_dir, pipeline)
    except NotTracked as error:
        return {"tracked": False, "reason": str(error), "trackingUri": settings.tracking_uri}
    _write_record(store, version, record)
    return {"tracked": True, **record}


def _log_version(
    settings: Settings, store: WorkflowStore, card: dict[str, Any], model_dir: Path, pipeline: Any | None
) -> dict[str, Any]:
    client = _client(settings)  # first: it sets MLflow's environment before MLflow is imported
    import mlflow
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    experiment = mlflow.set_experiment(settings.experiment)
    model = pipeline if pipeline is not None else joblib.load(model_dir / "pipeline.joblib")
    example = pd.read_parquet(model_dir / "reference.parquet").head(INPUT_EXAMPLE_ROWS)
    lineage = card.get("lineage") or {}
    tags = {
        f"{TAG}workflow": store.workflow,
        f"{TAG}namespace": settings.namespace,
        f"{TAG}version": card["version"],
        f"{TAG}trigger": card["trigger"],
        f"{TAG}driftReport": lineage.get("driftReport") or "",
        f"{TAG}champion": lineage.get("champion") or "",
        f"{TAG}backend": card.get("backend") or "",
        f"{TAG}dataSha256": card["data"]["sha256"],
    }
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=card["version"], tags=tags) as run:
        mlflow.log_params(params(card))
        mlflow.log_metrics(metrics(card))
        for name in ("card.json", "card.md"):
            mlflow.log_artifact(str(model_dir / name), artifact_path="card")
        logged = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            registered_model_name=settings.registered_model,
            serialization_format="cloudpickle",
            # Named here: MLflow would otherwise infer them by loading the model in a subprocess (seconds).
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"],
        )
    registered = str(logged.registered_model_version)
    client.set_model_version_tag(settings.registered_model, registered, f"{TAG}version", card["version"])
    client.set_model_version_tag(settings.registered_model, registered, f"{TAG}workflow", store.workflow)
    return {
        "runId": run.info.run_id,
        "experiment": settings.experiment,
        "experimentId": experiment.experiment_id,
        "registeredModel": settings.registered_model,
        "modelVersion": registered,
        "trackingUri": settings.tracking_uri,
    }


def params(card: dict[str, Any]) -> dict[str, str]:
    """A card's params for MLflow: the estimator, each of its parameters (`param.<name>`), each
    preprocessing step, the spec hash and the data."""
    pipeline = card["pipeline"]
    logged = {
        "estimator": pipeline["estimator"],
        "specHash": card.get("specHash") or "",
        "task": card["task"],
        "dataSource": card["data"]["source"],
        "dataRows": str(card["data"]["rows"]),
        "holdoutSplit": str((card.get("holdout") or {}).get("split")),
    }
    logged.update({f"param.{k}": json.dumps(v) for k, v in (pipeline.get("params") or {}).items()})
    logged.update({f"preprocessing.{k}": json.dumps(v) for k, v in pipeline["preprocessing"].items()})
    return logged


def metrics(card: dict[str, Any]) -> dict[str, float]:
    """Holdout metrics (`holdout.<metric>`), cross-validation (`cv.<metric>_mean`, `_std`) and the champion's
    score on the same held-out rows (`champion.<metric>`)."""
    champion = (card.get("champion") or {}).get("metrics") or {}
    return {
        **{f"holdout.{k}": float(v) for k, v in card["metrics"].items()},
        **{f"cv.{k}": float(v) for k, v in card["crossValidation"].items()},
        **{f"champion.{k}": float(v) for k, v in champion.items()},
        "holdout.rows": float(card["data"]["holdoutRows"]),
    }


def log_run(
    settings: Settings,
    name: str,
    tags: dict[str, str],
    metrics_: dict[str, float],
    params_: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Log one run that is not a trained version (a drift check, a batch run, a search trial: the caller's
    `tags` say which). Returns `{"tracked": true, "runId"}` or `{"tracked": false, "reason"}`."""
    try:
        with _failures_as_not_tracked():
            _client(settings)  # first: it sets MLflow's environment before MLflow is imported
            import mlflow

            experiment = mlflow.set_experiment(settings.experiment)
            all_tags = {f"{TAG}namespace": settings.namespace, **tags}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            with mlflow.start_run(
                experiment_id=experiment.experiment_id, run_name=name, tags=all_tags
            ) as run:
                if params_:
                    mlflow.log_params(params_)
                if metrics_:
                    mlflow.log_metrics(metrics_)
            return {"tracked": True, "runId": run.info.run_id}
    except NotTracked as error:
        return {"tracked": False, "reason": str(error)}


def log_search(
    settings: Settings, store: WorkflowStore, search_id: str, params_: dict[str, str]
) -> dict[str, Any]:
    """An AutoML search's run (`search-<id>`, its options as `params_`): the parent of its trials' runs
    (`log_trial`). Returns `{"tracked": true, "runId"}` or `{"tracked": false, "reason"}`."""
    return log_run(
        settings,
        f"search-{search_id}",
        {f"{TAG}workflow": store.workflow, f"{TAG}kind": "search", f"{TAG}searchId": search_id},
        {},
        params_,
    )


def log_trial(
    settings: Settings, store: WorkflowStore, search_id: str, parent_run_id: str, row: dict[str, Any]
) -> dict[str, Any]:
    """One finished trial of a search (its leaderboard row, `search.leaderboard_rows`: trial, estimator,
    params, cvMean, cvStd, seconds, state, error, worker) as a child run of the search's run, named
    `<search id>-<trial>`: the estimator and its parameters (`param.<name>`, JSON) as params, the CV mean
    and std (a pruned trial's mean is over the folds it ran) and seconds as metrics."""
    measured = {"cv.mean": row.get("cvMean"), "cv.std": row.get("cvStd"), "seconds": row.get("seconds")}
    return log_run(
        settings,
        f"{search_id}-{row['trial']}",
        {
            f"{TAG}workflow": store.workflow,
            f"{TAG}kind": "search-trial",
            f"{TAG}searchId": search_id,
            f"{TAG}trial": str(row["trial"]),
            f"{TAG}state": str(row["state"]),
            f"{TAG}worker": str(row.get("worker")),
            f"{TAG}error": str(row.get("error") or "")[:MAX_REASON],
        },
        {k: float(v) for k, v in measured.items() if isinstance(v, int | float) and math.isfinite(v)},
        {
            "estimator": str(row.get("estimator")),
            **{f"param.{k}": json.dumps(v) for k, v in (row.get("params") or {}).items()},
        },
        parent_run_id,
    )


def log_drift_check(
    settings: Settings, store: WorkflowStore, version: str, summary: dict[str, Any]
) -> dict[str, Any]:
    """A finished drift check of the served `version` (its summary, `drift.check`) as a run: the drifted
    share and counts as metrics, the Evidently report's path in the store as a tag."""
    result = str(summary.get("result") or "")
    return log_run(
        settings,
        f"drift-{Path(result).parent.name or version}",
        {
            f"{TAG}workflow": store.workflow,
            f"{TAG}kind": "drift-check",
            f"{TAG}version": version,
            f"{TAG}drifted": str(bool(summary.get("drifted"))).lower(),
            f"{TAG}driftReport": str(summary.get("report") or ""),
            f"{TAG}driftResult": result,
        },
        {
            key: float(summary[key])
            for key in ("share", "driftedColumns", "comparedRows", "referenceRows", "seconds")
            if isinstance(summary.get(key), int | float)
        },
        {"threshold": str(summary.get("threshold"))},
    )


def log_batch_run(settings: Settings, store: WorkflowStore, summary: dict[str, Any]) -> dict[str, Any]:
    """One index of a finished batch run (its summary, `predict.execute`) as a run named
    `<run id>-<index>`: rows in, predicted and rejected as metrics."""
    return log_run(
        settings,
        f"{summary.get('runId')}-{summary.get('index')}",
        {
            f"{TAG}workflow": store.workflow,
            f"{TAG}kind": "batch-run",
            f"{TAG}version": str(summary.get("version")),
            f"{TAG}batchRun": str(summary.get("runId")),
            f"{TAG}output": str(summary.get("output") or ""),
        },
        {
            key: float(summary[key])
            for key in ("rowsIn", "predicted", "rejected", "seconds")
            if isinstance(summary.get(key), int | float)
        },
        {"index": str(summary.get("index")), "indexes": str(summary.get("indexes"))},
    )


def sync(settings: Settings, store: WorkflowStore, decisions: dict[str, Any]) -> dict[str, Any]:
    """Make MLflow show the operator's `decisions`: log each decided version not logged yet (from the store),
    tag each registered version with its outcome and reason, and point `champion` at the served one.
    Raises NotTracked when MLflow cannot be reached or refuses."""
    logged, missing = [], []
    served = decisions.get("served")
    with _failures_as_not_tracked():
        client = _client(settings)
        registered: dict[str, str] = {}
        for entry in decisions.get("versions") or []:
            version = entry["version"]
            record = read_record(store, version)
            if record is None or record.get("registeredModel") != settings.registered_model:
                model_dir = store.model_dir(version)
                if not (model_dir / "card.json").exists():
                    missing.append(version)  # gone from the store: nothing to log
                    continue
                card = json.loads((model_dir / "card.json").read_text())
                card.setdefault("specHash", entry.get("specHash"))
                record = _log_version(settings, store, card, model_dir, None)
                _write_record(store, version, record)
                logged.append(version)
            number = str(record["modelVersion"])
            registered[version] = number
            outcome = {
                f"{TAG}outcome": entry.get("outcome") or "",
                f"{TAG}reason": entry.get("reason") or "",
                f"{TAG}message": (entry.get("message") or "")[:MAX_REASON],
            }
            for key, value in outcome.items():
                client.set_model_version_tag(settings.registered_model, number, key, value)
        if served in registered:
            client.set_registered_model_alias(settings.registered_model, CHAMPION_ALIAS, registered[served])
    said = [f"{len(registered)} version(s) tagged with their outcome"]
    if served in registered:
        said.append(f"{CHAMPION_ALIAS} is {served} (version {registered[served]})")
    if logged:
        said.append(f"logged now: {', '.join(logged)}")
    if missing:
        said.append(f"not in the store: {', '.join(missing)}")
    return {
        "status": "ok",
        "registeredModel": settings.registered_model,
        "champion": served if served in registered else None,
        "logged": logged,
        "missing": missing,
        "message": "; ".join(said),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="root of the artifact store")
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--digest", default="", help="the digest of the decisions (echoed in the summary)")
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if settings is None:
        summary = {"status": "error", "reason": "NotConfigured", "message": "no MLflow settings in the env"}
        report({**summary, "digest": args.digest}, args.termination_log)
        return exitcodes.INVALID_INPUT
    decisions = json.loads(os.environ.get("MLW_TRACKING_DECISIONS") or "{}")
    try:
        summary = sync(settings, WorkflowStore(args.store, args.workflow), decisions)
    except NotTracked as error:
        summary = {"status": "unavailable", "reason": "TrackingUnavailable", "message": str(error)}
    report({**summary, "digest": args.digest}, args.termination_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
