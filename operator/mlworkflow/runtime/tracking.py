"""MLflow tracking of the runtimes' runs (`spec.tracking.mlflow`), and the sync of the operator's decisions.

    python -m mlworkflow.runtime.tracking --store DIR --workflow NAME --digest D
    (the decisions in $MLW_TRACKING_DECISIONS: {served, versions: [{version, outcome, reason, message}]};
    the settings in $MLFLOW_TRACKING_URI, $MLW_MLFLOW_EXPERIMENT, $MLW_MLFLOW_MODEL, $MLW_NAMESPACE, set by
    the operator in every runtime Pod of a tracked workflow: `mlworkflow.desired.tracking`)

Each training logs one MLflow run in the workflow's experiment: params (estimator, its parameters,
preprocessing, spec hash), metrics (holdout, cross-validation, the champion's holdout score on the same
rows), tags (workflow, namespace, version, trigger, drift report), the model card as artifacts, and the
fitted pipeline in MLflow's scikit-learn flavour with its signature and an input example, registered as a
version of the workflow's registered model. Every trained version is registered, once (a retried training
finds its run and version by its tags, `_logged_version`), so that a rejected one can be looked at next to
the champion; the BentoML model store stays what is served. An online learner's snapshots are the steps of
one run per start version (`SnapshotLog`, on a thread of its own).

Whether a version is promoted is decided by the operator after the training has ended
(`mlworkflow.desired.lifecycle.decide`), so the sync — this module's program, a Job the operator starts when
MLflow does not show its latest decisions — tags each registered version with its outcome and reason
(`mlworkflow.outcome`, `mlworkflow.reason`, `mlworkflow.message`) and points the alias `champion` at the
served one. It also logs every decided version whose training could not (the retry), from the store, the
AutoML search of each decided (or failed) version that its workers could not log whole, from its
leaderboard, and the drift checks and batch runs MLflow did not take when they happened.

Tracking never fails a run: a server that cannot be reached (or refuses) makes a record
`{"tracked": false, "reason": ...}`, which the training puts in its model card and termination message, and
the sync reports `{"status": "unavailable"}` (exit 0) for the operator to try again. A version's record of
where it went is `<store>/<workflow>/tracking/<version>.json`; no record: not tracked yet. A drift check or
batch run that was not logged waits in `<store>/<workflow>/tracking/untracked/` (`_keep_untracked`) for the
next one that is, or the next sync, to log it (`log_untracked`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
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
UNTRACKED_KEEP = 100  # untracked drift checks and batch runs kept for later
CLAIM_SECONDS = 600  # a claim on an untracked run older than this is taken over


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
    return _read_json(record_path(store, version))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _write_record(store: WorkflowStore, version: str, record: dict[str, Any]) -> None:
    _write_json(record_path(store, version), record)


def _write_json(path: Path, record: dict[str, Any]) -> None:
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
    search_run = (card.get("search") or {}).get("mlflowRunId")
    found = _logged_version(client, settings, store, card, experiment.experiment_id)
    if found is not None:
        _link_search(client, search_run, found["runId"], str(card["version"]))
        return found
    model = pipeline if pipeline is not None else joblib.load(model_dir / "pipeline.joblib")
    example = pd.read_parquet(model_dir / "reference.parquet").head(INPUT_EXAMPLE_ROWS)
    lineage = card.get("lineage") or {}
    tags = {
        **_version_keys(settings, store, card),
        f"{TAG}kind": "training",
        f"{TAG}trigger": card["trigger"],
        f"{TAG}driftReport": lineage.get("driftReport") or "",
        f"{TAG}champion": lineage.get("champion") or "",
        f"{TAG}backend": card.get("backend") or "",
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
    _tag_version(client, settings, store, card, registered)
    _link_search(client, search_run, run.info.run_id, str(card["version"]))
    return _version_record(settings, run.info.run_id, experiment.experiment_id, registered)


def _version_keys(settings: Settings, store: WorkflowStore, card: dict[str, Any]) -> dict[str, str]:
    """The tags that name one training of one version (a retried Pod's too): workflow, namespace, version
    and the data it read (with the spec hash, a param, `_logged_version`)."""
    return {
        f"{TAG}workflow": store.workflow,
        f"{TAG}namespace": settings.namespace,
        f"{TAG}version": str(card["version"]),
        f"{TAG}dataSha256": card["data"]["sha256"],
    }


def _version_record(settings: Settings, run_id: str, experiment_id: str, registered: str) -> dict[str, Any]:
    return {
        "runId": run_id,
        "experiment": settings.experiment,
        "experimentId": experiment_id,
        "registeredModel": settings.registered_model,
        "modelVersion": registered,
        "trackingUri": settings.tracking_uri,
    }


def _tag_version(
    client: MlflowClient, settings: Settings, store: WorkflowStore, card: dict[str, Any], registered: str
) -> None:
    client.set_model_version_tag(settings.registered_model, registered, f"{TAG}version", card["version"])
    client.set_model_version_tag(settings.registered_model, registered, f"{TAG}workflow", store.workflow)


def _logged_version(
    client: MlflowClient, settings: Settings, store: WorkflowStore, card: dict[str, Any], experiment_id: str
) -> dict[str, Any] | None:
    """The record of this training when MLflow already has it, or None: a retried training Pod (or a sync
    after a training that logged but could not write its record) finds the run of the same workflow,
    namespace, version, data and spec hash and its registered version, instead of registering a second.
    A run of it left unfinished with nothing registered (its Pod ended while logging) is deleted (MLflow
    keeps deleted runs restorable); a finished run registered under another model name is left alone."""
    # The values are DNS labels, version names and hex digests: no quote to escape.
    conditions = [f"tags.`{key}` = '{value}'" for key, value in _version_keys(settings, store, card).items()]
    conditions.append(f"params.specHash = '{card.get('specHash') or ''}'")
    runs = client.search_runs(
        [experiment_id], " and ".join(conditions), order_by=["attributes.start_time ASC"]
    )
    for run in runs:
        run_id = run.info.run_id
        # By run id only: a registered model's name may hold any character, a run id is hex.
        versions = [
            v
            for v in client.search_model_versions(f"run_id = '{run_id}'")
            if v.name == settings.registered_model
        ]
        if versions:
            registered = str(min(int(v.version) for v in versions))
            if run.info.status != "FINISHED":
                client.set_terminated(run_id, "FINISHED")
            _tag_version(client, settings, store, card, registered)
            return _version_record(settings, run_id, experiment_id, registered)
        if run.info.status != "FINISHED":
            client.delete_run(run_id)
    return None


def _link_search(client: MlflowClient, search_run: str | None, run_id: str, version: str) -> None:
    """An AutoML search's run and the run of the winner's refit name each other (tags
    `mlworkflow.refitRunId`, `mlworkflow.refitVersion` on the search's, `mlworkflow.searchRunId` on the
    refit's). The refit stays a top-level run, listed with the other trained versions; the trials are the
    search run's children."""
    if not search_run:
        return
    client.set_tag(run_id, f"{TAG}searchRunId", search_run)
    client.set_tag(search_run, f"{TAG}refitRunId", run_id)
    client.set_tag(search_run, f"{TAG}refitVersion", version)


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
            return {
                "tracked": True,
                "runId": _log_run(settings, name, tags, metrics_, params_, parent_run_id),
            }
    except NotTracked as error:
        return {"tracked": False, "reason": str(error)}


def _log_run(
    settings: Settings,
    name: str,
    tags: dict[str, str],
    metrics_: dict[str, float],
    params_: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    start_time: int | None = None,
) -> str:
    """`log_run`, raising what MLflow raises; returns the run's id. `start_time` (ms since the epoch,
    default now): when the run happened, for one logged later (`log_untracked`)."""
    client = _client(settings)  # first: it sets MLflow's environment before MLflow is imported
    import mlflow
    from mlflow.entities import Metric, Param

    experiment = mlflow.set_experiment(settings.experiment)
    all_tags = {f"{TAG}namespace": settings.namespace, **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    started = start_time if start_time is not None else int(time.time() * 1000)
    run_id = str(client.create_run(experiment.experiment_id, started, all_tags, name).info.run_id)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, started, 0) for key, value in metrics_.items()],
        params=[Param(key, value) for key, value in (params_ or {}).items()],
    )
    # One logged later ended when it started (a check's duration is its metric `seconds`), not now.
    client.set_terminated(run_id, "FINISHED", start_time)
    return run_id


RunArgs = tuple[str, dict[str, str], dict[str, float], dict[str, str]]  # name, tags, metrics, params


def log_search(
    settings: Settings, store: WorkflowStore, search_id: str, params_: dict[str, str]
) -> dict[str, Any]:
    """An AutoML search's run (`search-<id>`, its options as `params_`): the parent of its trials' runs
    (`log_trial`). Returns `{"tracked": true, "runId"}` or `{"tracked": false, "reason"}`."""
    return log_run(settings, *_search_run(store, search_id, params_))


def _search_run(store: WorkflowStore, search_id: str, params_: dict[str, str]) -> RunArgs:
    tags = {f"{TAG}workflow": store.workflow, f"{TAG}kind": "search", f"{TAG}searchId": search_id}
    return f"search-{search_id}", tags, {}, params_


def log_trial(
    settings: Settings, store: WorkflowStore, search_id: str, parent_run_id: str, row: dict[str, Any]
) -> dict[str, Any]:
    """One finished trial of a search (its leaderboard row, `search.leaderboard_rows`: trial, estimator,
    params, cvMean, cvStd, seconds, state, error, worker) as a child run of the search's run, named
    `<search id>-<trial>`: the estimator and its parameters (`param.<name>`, JSON) as params, the CV mean
    and std (a pruned trial's mean is over the folds it ran) and seconds as metrics."""
    return log_run(settings, *_trial_run(store, search_id, row), parent_run_id)


def _trial_run(store: WorkflowStore, search_id: str, row: dict[str, Any]) -> RunArgs:
    measured = {"cv.mean": row.get("cvMean"), "cv.std": row.get("cvStd"), "seconds": row.get("seconds")}
    return (
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
    )


def search_record_path(store: WorkflowStore, search_id: str) -> Path:
    """Where a search's runs went, once all of them are logged: `{runId, trials, registeredModel}`."""
    return store.base / "automl" / search_id / "tracking.json"


def _sync_search(
    client: MlflowClient,
    settings: Settings,
    store: WorkflowStore,
    search_id: str,
    refit_run_id: str | None,
    failure: tuple[str, str] | None = None,
) -> int:
    """Make MLflow show the finished AutoML search `search_id` (its `leaderboard.json`) whole: its run (the
    one its workers made, found by id or by tags, else made now) and a child run for each trial the workers
    could not log, then link it with the refit's run; or, for a search that failed (`failure`: the reason
    and message of its version's history entry), end its run FAILED with the tags `mlworkflow.outcome`
    (Failed), `mlworkflow.reason` and `mlworkflow.message`. Returns how many runs it logged now (0 once a
    record says it is whole). Raises what MLflow raises."""
    import mlflow

    board_path = store.base / "automl" / search_id / "leaderboard.json"
    if not board_path.exists():
        return 0  # this version was not searched for
    board = json.loads(board_path.read_text())
    done = _read_json(search_record_path(store, search_id)) or {}
    rows = board.get("rows") or []
    failed = failure[0] if failure else None
    whole = done.get("trials") == len(rows) and done.get("registeredModel") == settings.registered_model
    if whole and done.get("failure") == failed:
        return 0
    experiment = mlflow.set_experiment(settings.experiment)
    run_id = _search_run_id(client, settings, store, search_id, board, experiment.experiment_id)
    logged = 0
    if run_id is None:
        run_id = _log_run(settings, *_search_run(store, search_id, board.get("params") or {}))
        logged += 1
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{run_id}' and tags.`{TAG}kind` = 'search-trial'",
        max_results=max(1000, 2 * len(rows)),
    )
    have = {c.data.tags.get(f"{TAG}trial") for c in children}
    for row in rows:
        if str(row["trial"]) not in have:
            _log_run(settings, *_trial_run(store, search_id, row), run_id)
            logged += 1
    if refit_run_id is not None:
        _link_search(client, run_id, refit_run_id, search_id)
    if failure is not None:
        reason, message = failure
        for key, value in (("outcome", "Failed"), ("reason", reason), ("message", message[:MAX_REASON])):
            client.set_tag(run_id, f"{TAG}{key}", value)
        client.set_terminated(run_id, "FAILED")
    _write_json(
        search_record_path(store, search_id),
        {
            "runId": run_id,
            "trials": len(rows),
            "registeredModel": settings.registered_model,
            "failure": failed,
        },
    )
    return logged


def _search_run_id(
    client: MlflowClient,
    settings: Settings,
    store: WorkflowStore,
    search_id: str,
    board: dict[str, Any],
    experiment_id: str,
) -> str | None:
    """The search's run: the one its workers named in the leaderboard when it is still there, else one with
    its tags (made by an earlier sync), else None."""
    from mlflow.exceptions import MlflowException

    known = board.get("mlflowRunId")
    if known:
        try:
            if client.get_run(known).info.lifecycle_stage == "active":
                return str(known)
        except MlflowException:
            pass  # gone (another server, a deleted run): made again
    found = client.search_runs(
        [experiment_id],
        f"tags.`{TAG}kind` = 'search' and tags.`{TAG}searchId` = '{search_id}' "
        f"and tags.`{TAG}workflow` = '{store.workflow}' and tags.`{TAG}namespace` = '{settings.namespace}'",
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None


def log_drift_check(
    settings: Settings, store: WorkflowStore, version: str, summary: dict[str, Any]
) -> dict[str, Any]:
    """A finished drift check of the served `version` (its summary, `drift.check`) as a run: the drifted
    share and counts as metrics, the Evidently report's path in the store as a tag. Not logged now: kept
    for later (`_log_or_keep`)."""
    result = str(summary.get("result") or "")
    return _log_or_keep(
        settings,
        store,
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
    `<run id>-<index>`: rows in, predicted and rejected as metrics. Not logged now: kept for later
    (`_log_or_keep`)."""
    return _log_or_keep(
        settings,
        store,
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


def untracked_dir(store: WorkflowStore) -> Path:
    """The runs (drift checks, batch runs) MLflow did not take when they happened, one file each
    (`<ns since the epoch>-<random>.json`: {name, tags, metrics, params, startTime}) until logged."""
    return store.base / "tracking" / "untracked"


def _log_or_keep(
    settings: Settings,
    store: WorkflowStore,
    name: str,
    tags: dict[str, str],
    metrics_: dict[str, float],
    params_: dict[str, str],
) -> dict[str, Any]:
    """Log a run now, and then what was kept before (the server answers again: `log_untracked`); or keep
    it in the store for the next run or sync to log. Returns `{"tracked": true, "runId"}` or
    `{"tracked": false, "reason"}`; never raises for MLflow."""
    try:
        with _failures_as_not_tracked():
            run_id = _log_run(settings, name, tags, metrics_, params_)
    except NotTracked as error:
        _keep_untracked(store, name, tags, metrics_, params_)
        return {"tracked": False, "reason": str(error)}
    try:
        with _failures_as_not_tracked():
            log_untracked(settings, store)
    except NotTracked:
        pass  # they wait for the next run or sync
    return {"tracked": True, "runId": run_id}


def _keep_untracked(
    store: WorkflowStore, name: str, tags: dict[str, str], metrics_: dict[str, float], params_: dict[str, str]
) -> None:
    """Keep a run MLflow did not take, with when it happened; only the newest `UNTRACKED_KEEP` are kept (a
    server down for days must not fill the store)."""
    now = time.time_ns()
    record = {
        "name": name,
        "tags": tags,
        "metrics": metrics_,
        "params": params_,
        "startTime": now // 1_000_000,
    }
    folder = untracked_dir(store)
    _write_json(folder / f"{now:020d}-{uuid.uuid4().hex[:8]}.json", record)
    kept = sorted(folder.glob("*.json"))
    for old in kept[:-UNTRACKED_KEEP]:
        old.unlink(missing_ok=True)
    if len(kept) > UNTRACKED_KEEP:
        print(f"tracking: dropped {len(kept) - UNTRACKED_KEEP} older untracked run(s)", file=sys.stderr)


def log_untracked(settings: Settings, store: WorkflowStore) -> list[str]:
    """Log the runs kept by `_keep_untracked`, oldest first, each once, with their params, metrics, tags and
    start time; returns their names. Several processes may do it at once (a sync, a drift check, a batch
    run's indexes): each run is claimed by renaming its file, which one of them wins, and removed once
    logged. A claim older than `CLAIM_SECONDS` (its process ended) is taken over; a run MLflow has already
    (its process ended between logging and removing) is not logged again; one MLflow refuses as a bad
    request is dropped. Raises what else MLflow raises; the run it was logging stays kept."""
    from mlflow.exceptions import MlflowException

    folder = untracked_dir(store)
    if not folder.is_dir():
        return []
    owner = f"{socket.gethostname()}-{os.getpid()}"
    logged: list[str] = []
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".claim" and time.time() - path.stat().st_mtime <= CLAIM_SECONDS:
                continue
            if path.suffix not in (".json", ".claim"):
                continue
            stem = path.name.split(".")[0]
            claimed = folder / f"{stem}.{owner}.claim"
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another process took it
        os.utime(claimed)
        run = json.loads(claimed.read_text())
        try:
            if not _logged_run(settings, store, run["name"], run["tags"]):
                _log_run(
                    settings, run["name"], run["tags"], run["metrics"], run["params"], None, run["startTime"]
                )
        except MlflowException as error:
            if error.get_http_status_code() != 400:  # type: ignore[no-untyped-call]
                os.rename(claimed, folder / f"{stem}.json")
                raise
            # Refused as it is (a bad request stays bad): dropped, or it would stop every sync after it.
            print(f"tracking: {run['name']} refused, dropped: {error}", file=sys.stderr)
        except BaseException:
            os.rename(claimed, folder / f"{stem}.json")
            raise
        else:
            logged.append(str(run["name"]))
        claimed.unlink()
    return logged


def _logged_run(settings: Settings, store: WorkflowStore, name: str, tags: dict[str, str]) -> bool:
    """Whether the experiment has a run of this workflow and namespace with this name and kind."""
    client = _client(settings)
    import mlflow

    experiment = mlflow.set_experiment(settings.experiment)
    # Names are `drift-<time>` and `<Job name>-<index>`, kinds fixed words: no quote to escape.
    found = client.search_runs(
        [experiment.experiment_id],
        f"attributes.run_name = '{name}' and tags.`{TAG}kind` = '{tags.get(f'{TAG}kind')}' "
        f"and tags.`{TAG}workflow` = '{store.workflow}' and tags.`{TAG}namespace` = '{settings.namespace}'",
        max_results=1,
    )
    return bool(found)


@dataclass(frozen=True)
class SnapshotPoint:
    """One published online snapshot, as its run logs it: `step` is the snapshot's number (`<start>.<n>`)."""

    step: int
    version: str
    time: datetime
    metrics: dict[str, float]


class SnapshotLog:
    """An online learner's snapshots in MLflow: one run per start version, `online-<start>` (a child run of
    the start version's training run when that was logged), each published snapshot a step of its metrics,
    so that MLflow charts how the served model learned; the tag `mlworkflow.snapshot` names the newest.
    A restarted learner logs on into the same run (found by its tags).

    It never slows nor fails the learner: `log` only appends (under a lock) for a thread of its own to
    send. While MLflow cannot be reached the snapshots wait (the newest `MAX_WAITING`) and are sent
    `retry_seconds` later; `status` says so for the learner's report."""

    MAX_WAITING = 1000
    BATCH_METRICS = 1000  # MLflow's limit per log_batch request

    def __init__(
        self,
        settings: Settings,
        store: WorkflowStore,
        start: str,
        params_: dict[str, str],
        retry_seconds: float = 60.0,
    ) -> None:
        self.settings, self.store, self.start, self.params = settings, store, start, params_
        self.retry_seconds = retry_seconds
        self.run_id: str | None = None
        self._waiting: list[SnapshotPoint] = []
        self._dropped = 0
        self._reason: str | None = None
        self._retry_at = 0.0
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mlflow-snapshots", daemon=True)
        self._thread.start()

    def log(self, point: SnapshotPoint) -> None:
        with self._changed:
            self._waiting.append(point)
            if len(self._waiting) > self.MAX_WAITING:
                self._dropped += len(self._waiting) - self.MAX_WAITING
                del self._waiting[: -self.MAX_WAITING]
            self._changed.notify_all()

    def status(self) -> str:
        """For the learner's report: the run the snapshots go to, or why they are not logged."""
        with self._changed:
            if self._reason is not None:
                dropped = f" ({self._dropped} older ones dropped)" if self._dropped else ""
                # The counts first: the reason may be long.
                said = (
                    f"not tracked ({len(self._waiting)} snapshot(s) waiting{dropped}, tried again every "
                    f"{self.retry_seconds:g}s): {self._reason}"
                )
                return said[:MAX_REASON]
            return f"run {self.run_id}" if self.run_id else "not logged yet"

    def close(self, timeout: float = 10.0) -> None:
        """Send what waits (for at most `timeout` seconds: a server that is down drops it) and end the
        run as FINISHED."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closing and (not self._waiting or time.monotonic() < self._retry_at):
                    left = self._retry_at - time.monotonic() if self._waiting else None
                    self._changed.wait(left)
                if self._closing and (not self._waiting or self._reason is not None):
                    break
                points = list(self._waiting)
            try:
                with _failures_as_not_tracked():
                    self._send(points)
            except NotTracked as error:
                with self._changed:
                    self._reason, self._retry_at = str(error), time.monotonic() + self.retry_seconds
                print(f"learn: snapshots not tracked: {error}", file=sys.stderr, flush=True)
            else:
                with self._changed:
                    self._reason = None
        if self.run_id is not None and self._reason is None:
            with contextlib.suppress(Exception):  # best effort: the run shows RUNNING otherwise
                _client(self.settings).set_terminated(self.run_id, "FINISHED")

    def _send(self, points: list[SnapshotPoint]) -> None:
        from mlflow.entities import Metric, RunTag

        client = _client(self.settings)
        if self.run_id is None:
            self.run_id = self._open(client)
        per_point = max(1, max(len(p.metrics) for p in points))
        chunk = max(1, self.BATCH_METRICS // per_point)
        for first in range(0, len(points), chunk):
            sent = points[first : first + chunk]
            client.log_batch(
                self.run_id,
                metrics=[
                    Metric(key, value, int(p.time.timestamp() * 1000), p.step)
                    for p in sent
                    for key, value in p.metrics.items()
                ],
                tags=[RunTag(f"{TAG}snapshot", sent[-1].version)],
            )
            with self._changed:  # sent: not sent again after a later chunk fails
                self._waiting = [p for p in self._waiting if all(p is not q for q in sent)]

    def _open(self, client: MlflowClient) -> str:
        """The run of this start version's snapshots: found by its tags (a restarted learner's), else
        made."""
        import mlflow

        experiment = mlflow.set_experiment(self.settings.experiment)
        tags = {
            f"{TAG}workflow": self.store.workflow,
            f"{TAG}namespace": self.settings.namespace,
            f"{TAG}kind": "online",
            f"{TAG}startVersion": self.start,
        }
        found = client.search_runs(
            [experiment.experiment_id], " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        )
        if found:
            run_id = str(found[0].info.run_id)
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, "RUNNING")
            return run_id
        started = read_record(self.store, self.start) or {}
        if started.get("registeredModel") == self.settings.registered_model and started.get("runId"):
            tags["mlflow.parentRunId"] = str(started["runId"])
        run = client.create_run(experiment.experiment_id, tags=tags, run_name=f"online-{self.start}")
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in self.params.items()])
        return str(run.info.run_id)


def sync(settings: Settings, store: WorkflowStore, decisions: dict[str, Any]) -> dict[str, Any]:
    """Make MLflow show the operator's `decisions`: log each decided version not logged yet (from the store),
    tag each registered version with its outcome and reason, log what its AutoML search's workers could not
    (`_sync_search`; a failed search's too, with why it failed), point `champion` at the served one, and
    log the drift checks and batch runs MLflow did not take when they happened (`log_untracked`). Raises
    NotTracked when MLflow cannot be reached or refuses."""
    logged, missing, searches = [], [], []
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
            if _sync_search(client, settings, store, version, str(record["runId"])):
                searches.append(version)
        for entry in decisions.get("failed") or []:
            failure = (str(entry.get("reason") or ""), str(entry.get("message") or ""))
            if _sync_search(client, settings, store, entry["version"], None, failure):
                searches.append(entry["version"])
        if served in registered:
            client.set_registered_model_alias(settings.registered_model, CHAMPION_ALIAS, registered[served])
        untracked = log_untracked(settings, store)
    said = [f"{len(registered)} version(s) tagged with their outcome"]
    if served in registered:
        said.append(f"{CHAMPION_ALIAS} is {served} (version {registered[served]})")
    if logged:
        said.append(f"logged now: {', '.join(logged)}")
    if searches:
        said.append(f"searches logged now: {', '.join(searches)}")
    if untracked:
        said.append(f"{len(untracked)} untracked run(s) logged now: {', '.join(untracked)}"[:MAX_REASON])
    if missing:
        said.append(f"not in the store: {', '.join(missing)}")
    return {
        "status": "ok",
        "registeredModel": settings.registered_model,
        "champion": served if served in registered else None,
        "logged": logged,
        "searches": searches,
        "untracked": untracked,
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
