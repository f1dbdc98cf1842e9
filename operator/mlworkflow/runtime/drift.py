"""Check served inputs for data drift, and the served model's performance (the monitoring CronJob's program).

    python -m mlworkflow.runtime.drift --store DIR --workflow NAME --version v3 \
        --threshold 0.3 --min-samples 200 [--metric f1_macro --min-labelled-rows 200 \
        [--labels 'labels/*.csv' --id-column order_id] [--sensitive-features sex,age_band]]

With `--metric`, the summary also holds `performance`: the version's metric on labelled predictions and
its estimate before the labels (`mlworkflow.runtime.performance`; with `--labels`, the labels of batch
predictions come from files too), whatever the drift check found; and the workflow's story so far is
drawn to `<store>/<workflow>/reports/story.html` (`mlworkflow.runtime.story`).

The current window is what the serving Pods recorded since the last check; the reference is the training
sample stored with the served version. Evidently's DataDriftPreset compares them column by column with the
column types of the model card. The result (share of drifted columns, each drifted column with its method
and score) is written to the artifact store and, in one line of JSON of at most 4 KiB (the first drifted
columns, and how many there are), to the termination message. A column without a single value in the window
(or in the reference) is not compared: it is reported "missing in live data" (or "missing in reference") and
counts as drifted. Fewer rows than `--min-samples` is "not enough data", never "no drift"; the window then
keeps growing.

Bounded whatever the window: rows are streamed from the sample files and at most `--max-rows` of each side
(a seeded uniform sample) reach Evidently; the HTML report is rendered only with `--html`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlworkflow.api import exitcodes
from mlworkflow.runtime import performance, story, tracking
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

SEED = 0
DEFAULT_MAX_ROWS = 10_000
SUMMARY_COLUMNS = 20  # drifted columns named in the summary (and so in the Drifted condition)


class DriftError(ValueError):
    """The check cannot run (no reference, columns that do not match); the message says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


MISSING_LIVE = "missing in live data"
MISSING_REFERENCE = "missing in reference"
MISSING_BOTH = "missing in live data and reference"
NOT_COMPARED = "not compared"


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict: Evidently's method and score (a p-value or a distance) against its threshold.

    A column with no value at all on one side is not given to Evidently (it refuses empty columns): its
    method is MISSING_LIVE or MISSING_REFERENCE, score and threshold 1.0 (the share of rows without a value,
    and the share that makes it missing), and it counts as drifted. Missing on both sides is no change
    (MISSING_BOTH, not drifted). A column Evidently fails on is "not compared: <its error>", score and
    threshold 0.0, not drifted: nothing was measured, and the other columns are compared without it."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    share: float
    drifted: bool
    columns: list[ColumnDrift]
    rows: int
    reference_rows: int


def compare(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    threshold: float,
    max_rows: int = DEFAULT_MAX_ROWS,
    html: Path | None = None,
) -> DriftResult:
    """Evidently's DataDriftPreset on (a bounded sample of) both frames, with the model's column types;
    the columns in the schema's order. A column with no value on a side is reported as such (ColumnDrift),
    and the others are compared as usual."""
    missing = [c for c in schema.features if c not in current.columns]
    if missing:
        raise DriftError("ColumnsMismatch", f"the served inputs lack the model's feature {missing[0]!r}")
    missing = [c for c in schema.features if c not in reference.columns]
    if missing:
        raise DriftError("ColumnsMismatch", f"the reference lacks the model's feature {missing[0]!r}")
    current = _typed(_bounded(current, max_rows), schema)
    reference = _typed(_bounded(reference, max_rows), schema)
    missing_columns = _missing(current, reference, schema)
    skipped = {c.column for c in missing_columns}
    compared = FeatureSchema(
        schema.target,
        [c for c in schema.numeric if c not in skipped],
        [c for c in schema.categorical if c not in skipped],
    )
    found = {c.column: c for c in [*missing_columns, *_evidently(current, reference, compared, html)]}
    columns = [found[c] for c in schema.features]
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftResult(share, share >= threshold, columns, len(current), len(reference))


def _evidently(
    current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema, html: Path | None
) -> list[ColumnDrift]:
    """Evidently's verdict on each of `schema`'s columns (none when it has none); the HTML report if asked.

    Evidently computes a report as a whole, so one column it cannot take (a reference whose values span more
    than float64 can bin, ±1.7e308) would fail every column, at every check: then each column is compared
    alone, and the one that fails is NOT_COMPARED with the error (no HTML report that time)."""
    with contextlib.suppress(Exception):  # whatever Evidently raises: the columns are tried one at a time
        return _report(current, reference, schema, html)
    columns = []
    for column in schema.features:
        alone = FeatureSchema(
            schema.target,
            [column] if column in schema.numeric else [],
            [column] if column in schema.categorical else [],
        )
        try:
            columns += _report(current, reference, alone, None)
        except Exception as error:  # reported with the column; the check goes on
            reason = f"{NOT_COMPARED}: {type(error).__name__}: {error}"[:200]
            columns.append(ColumnDrift(column, reason, 0.0, 0.0, drifted=False))
    return columns


def _report(
    current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema, html: Path | None
) -> list[ColumnDrift]:
    """One Evidently report on `schema`'s columns: each column's verdict."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if not schema.features:
        return []
    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    with contextlib.nullcontext() if html is not None else _without_widgets():
        snapshot = Report([DataDriftPreset(columns=schema.features)]).run(
            Dataset.from_pandas(current[schema.features], data_definition=definition),
            Dataset.from_pandas(reference[schema.features], data_definition=definition),
        )
    columns = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        score, limit = float(metric["value"]), float(config["threshold"])
        # p-values drift when small, distances when large (Evidently picks the method by column and size).
        drifted = score < limit if "p_value" in config["method"] else score >= limit
        columns.append(ColumnDrift(config["column"], config["method"], score, limit, drifted))
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    return columns


@contextlib.contextmanager
def _without_widgets() -> Iterator[None]:
    """Evidently builds the report's plotly widgets while it computes, HTML or not; they are most of its
    time (1.75 s of 2 s for 20 columns of 20,000 rows here). When no HTML is asked for, the two render
    methods are skipped for this run: the metric values are the same (tests/runtime/test_drift.py checks
    it). If a later Evidently moves them, the report is computed with its widgets, as before."""
    from evidently.metrics import column_statistics
    from evidently.presets import drift as drift_preset

    targets = [(column_statistics.ValueDriftCalculation, "_render"), (drift_preset.DataDriftPreset, "render")]
    saved = [(owner, name, owner.__dict__[name]) for owner, name in targets if name in owner.__dict__]
    for owner, name, _ in saved:
        setattr(owner, name, lambda self, *args, **kwargs: [])
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _missing(current: pd.DataFrame, reference: pd.DataFrame, schema: FeatureSchema) -> list[ColumnDrift]:
    """The columns without a single value on one side or both (typed frames: NaN, or "" for a category)."""
    found = []
    for column in schema.features:
        empty = "" if column in schema.categorical else None
        live, trained = _empty(current[column], empty), _empty(reference[column], empty)
        if live or trained:
            method = MISSING_BOTH if live and trained else MISSING_LIVE if live else MISSING_REFERENCE
            found.append(ColumnDrift(column, method, 1.0, 1.0, drifted=live != trained))
    return found


def _empty(values: pd.Series, empty: str | None) -> bool:
    return bool(values.isna().all() if empty is None else (values == empty).all())


def _bounded(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    return frame.sample(max_rows, random_state=SEED) if len(frame) > max_rows else frame


def _typed(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    typed = frame[schema.features].copy()
    for column in schema.numeric:
        # An infinity is no value either (Evidently drops it as it drops NaN).
        numbers = pd.to_numeric(typed[column], errors="coerce").astype("float64")
        typed[column] = numbers.where(np.isfinite(numbers))
    for column in schema.categorical:
        typed[column] = schema.canonical(column, typed[column])
    return typed.reset_index(drop=True)


def read_window(samples: Path, since: float, max_rows: int) -> tuple[pd.DataFrame, int, float]:
    """Features recorded after `since`: a uniform reservoir sample of at most `max_rows`, the number of rows
    seen, and the newest timestamp. Memory stays bounded by `max_rows` whatever the files hold."""
    rng = random.Random(SEED)
    reservoir: list[str] = []  # raw lines: only the k that stay are parsed, at the end
    seen, newest = 0, since
    for path in sorted(samples.glob("*.jsonl")):
        with path.open() as lines:
            for line in lines:
                stamp = _timestamp(line)
                if stamp is None or stamp <= since:
                    continue
                if seen < max_rows:
                    reservoir.append(line)
                else:
                    slot = rng.randrange(seen + 1)
                    if slot < max_rows:
                        reservoir[slot] = line
                seen += 1
                newest = max(newest, stamp)
    rows = []
    for line in reservoir:
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            rows.append(json.loads(line)["features"])
    return pd.DataFrame.from_records(rows), seen, newest


def _timestamp(line: str) -> float | None:
    """The `ts` of a recorded row without parsing the rest (the recorder writes it first)."""
    if line.startswith('{"ts": '):
        end = line.find(",", 7)
        with contextlib.suppress(ValueError):
            return float(line[7:end])
    try:
        return float(json.loads(line)["ts"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def check(
    store: WorkflowStore,
    version: str,
    threshold: float,
    min_samples: int,
    max_rows: int = DEFAULT_MAX_ROWS,
    html: bool = False,
) -> dict[str, Any]:
    """One drift check of the served version's inputs; returns the summary (also saved in the store)."""
    model_dir = store.model_dir(version)
    card_path, reference_path = model_dir / "card.json", model_dir / "reference.parquet"
    if not card_path.exists() or not reference_path.exists():
        raise DriftError(
            "ReferenceMissing", f"no reference data for {store.workflow} {version} in {model_dir}"
        )
    schema = FeatureSchema.from_json(json.loads(card_path.read_text())["schema"])
    state_path = store.monitoring / "state.json"
    since = float(json.loads(state_path.read_text())["until"]) if state_path.exists() else 0.0
    window, seen, newest = read_window(store.samples, since, max_rows)
    now = datetime.now(UTC)
    summary: dict[str, Any] = {
        "version": version,
        "checkedAt": now.isoformat(timespec="seconds"),
        "rows": seen,
        "minSamples": min_samples,
        "threshold": threshold,
    }
    if seen < min_samples:
        return {
            **summary,
            "status": "insufficient",
            "message": f"{seen} rows served since the last check; {min_samples} are needed",
        }
    started = time.monotonic()
    folder = store.monitoring / now.strftime("%Y%m%dT%H%M%SZ")
    result = compare(
        window,
        pd.read_parquet(reference_path),
        schema,
        threshold,
        max_rows,
        folder / "report.html" if html else None,
    )
    summary.update(
        status="ok",
        share=round(result.share, 4),
        drifted=result.drifted,
        comparedRows=result.rows,
        referenceRows=result.reference_rows,
        seconds=round(time.monotonic() - started, 3),
        driftedColumns=sum(c.drifted for c in result.columns),
        # The first drifted columns here, the missing ones first (Evidently did not see them); every column
        # in result.json. The termination message shortens this list further if it has to.
        columns=[
            {"column": c.column, "method": c.method, "score": round(c.score, 6)}
            for c in sorted(result.columns, key=lambda c: c.method not in (MISSING_LIVE, MISSING_REFERENCE))
            if c.drifted
        ][:SUMMARY_COLUMNS],
        result=str((folder / "result.json").relative_to(store.root)),
    )
    not_compared = [c.column for c in result.columns if c.method.startswith(NOT_COMPARED)]
    if not_compared:  # Evidently failed on them; result.json says why
        summary["notCompared"] = not_compared
    if (folder / "report.html").exists():  # none when no column had values on both sides
        summary["report"] = str((folder / "report.html").relative_to(store.root))
    folder.mkdir(parents=True, exist_ok=True)
    full = {**summary, "columns": [c.__dict__ for c in result.columns]}
    (folder / "result.json").write_text(json.dumps(full, indent=2))
    state_path.write_text(json.dumps({"until": newest}))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--version", required=True, help="the served version, whose reference sample is used")
    parser.add_argument(
        "--threshold", type=float, required=True, help="share of drifted columns that is drift"
    )
    parser.add_argument("--min-samples", type=int, required=True)
    parser.add_argument(
        "--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows of each side given to Evidently"
    )
    parser.add_argument("--html", action="store_true", help="also render Evidently's HTML report")
    parser.add_argument("--metric", help="also measure (and estimate) this metric on labelled predictions")
    parser.add_argument("--min-labelled-rows", type=int, default=200)
    parser.add_argument("--labels", help="label files of batch predictions (a glob under the store)")
    parser.add_argument("--id-column", help="the label files' column of prediction ids (with --labels)")
    parser.add_argument(
        "--sensitive-features", default="", help="comma-separated columns: per-group figures on the labels"
    )
    parser.add_argument(
        "--fairness-gap", default="EqualizedOdds", choices=["EqualizedOdds", "DemographicParity"]
    )
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    store = WorkflowStore(args.store, args.workflow)
    code = 0
    try:
        summary = check(store, args.version, args.threshold, args.min_samples, args.max_rows, args.html)
    except DriftError as error:
        summary, code = (
            {"status": "error", "reason": error.reason, "message": str(error)},
            exitcodes.INVALID_INPUT,
        )
    mlflow = tracking.Settings.from_env()
    if mlflow is not None and summary.get("status") == "ok":
        logged = tracking.log_drift_check(mlflow, store, args.version, summary)
        summary["tracking"] = {k: v for k, v in logged.items() if k in ("tracked", "reason")}
    if args.metric:
        try:
            files = performance.LabelFiles(args.labels, args.id_column) if args.labels else None
            summary["performance"] = performance.check(
                store,
                args.version,
                args.metric,
                args.min_labelled_rows,
                args.min_samples,
                args.max_rows,
                files,
                [c for c in args.sensitive_features.split(",") if c],
                args.fairness_gap,
            )
        except ValueError as error:  # PerformanceError, or labels the metrics cannot take
            # The drift check's result stands; the planner reports the performance check as failed.
            summary["performance"] = {"status": "error", "message": f"{type(error).__name__}: {error}"}
        try:
            summary["story"] = str(
                story.write_report(store, args.metric, args.version).relative_to(store.root)
            )
        except OSError as error:  # a page for people: the checks' results stand without it
            summary["story"] = f"not written: {error}"
    # Only the summary goes into the termination message (4 KiB at most); the full result is in the store.
    report(summary, args.termination_log)
    return code


if __name__ == "__main__":
    sys.exit(main())
