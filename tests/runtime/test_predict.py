"""The batch prediction runtime (`python -m mlworkflow.runtime.predict`), run as the batch Pods run it: one
process per index, on models trained apart, reading and writing real Parquet and CSV files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlworkflow.api.exitcodes import INVALID_INPUT
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime import drift
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.features import FeatureChecker
from mlworkflow.runtime.onnx_export import _cgroup_limit, usable_cpus
from mlworkflow.runtime.predict import InputFile, Share, check, checked_at_once, numbers, share
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import churn_frame, churn_spec, train_apart

# Runs the program and, as it exits, writes its peak resident memory (VmHWM) where $PEAK_FILE says. Read
# from the program itself: a child's ru_maxrss (wait4, RUSAGE_CHILDREN) also counts the memory of the
# process that started it, which exec() records as the child's high-water mark.
MEASURED = """
import atexit, os, runpy
def peak():
    status = open("/proc/self/status").read()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(os.environ["PEAK_FILE"], "w").write(kib)
atexit.register(peak)
runpy.run_module("mlworkflow.runtime.predict", run_name="__main__")
"""


@dataclass(frozen=True)
class Result:
    code: int
    summary: dict[str, Any]
    peak_mib: float
    log: str


def batch_spec(
    input_: str,
    max_reject_fraction: float = 0.01,
    estimator: str = "sklearn.ensemble.RandomForestClassifier",
    **params: object,
) -> MLWorkflowSpec:
    """A Forecast spec on the churn data; a small forest unless told (its predictions take most of a run)."""
    spec = churn_spec(estimator, **(params or {"n_estimators": 10, "random_state": 0})).model_dump(
        by_alias=True
    )
    batch = {
        "input": input_,
        "output": "predictions",
        "passthroughColumns": ["id"],
        "maxRejectFraction": max_reject_fraction,
    }
    return MLWorkflowSpec.model_validate({**spec, "pattern": "Forecast", "batch": batch})


def start(
    store: WorkflowStore,
    spec: MLWorkflowSpec,
    run_id: str,
    index: int = 0,
    indexes: int = 1,
    version: str = "v1",
) -> tuple[subprocess.Popen[str], Path]:
    """The program for one index, started; its termination log and peak file are named after it."""
    name = f"{run_id}-{index}-{os.urandom(4).hex()}"
    env = {
        **os.environ,
        "MLW_SPEC": spec.model_dump_json(by_alias=True),
        "PEAK_FILE": str(store.root / f"peak-{name}"),
        "MLW_SAMPLE_MAX_ROWS": "500",
        "JOB_COMPLETION_INDEX": str(index),  # as an Indexed Job sets it
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-c", MEASURED),
            f"--store={store.root}",
            f"--workflow={store.workflow}",
            f"--version={version}",
            f"--run-id={run_id}",
            f"--indexes={indexes}",
            f"--termination-log={store.root / f'termination-{name}'}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, store.root / f"termination-{name}"


def finish(started: tuple[subprocess.Popen[str], Path]) -> Result:
    process, termination = started
    log, _ = process.communicate(timeout=300)
    peak = Path(str(termination).replace("termination-", "peak-"))
    summary = json.loads(termination.read_text()) if termination.exists() else {}
    return Result(process.returncode, summary, int(peak.read_text()) / 1024 if peak.exists() else 0.0, log)


def predict_apart(store: WorkflowStore, spec: MLWorkflowSpec, run_id: str, **kwargs: Any) -> Result:
    return finish(start(store, spec, run_id, **kwargs))


def rows(store: WorkflowStore, count: int, seed: int) -> pd.DataFrame:
    """`count` rows to predict (the churn features, no label) with an `id`."""
    frame = churn_frame(count, seed).drop(columns=["churn"])
    frame.insert(0, "id", np.arange(count))
    return frame


def published(store: WorkflowStore, run_id: str) -> pd.DataFrame:
    folder = store.root / "predictions" / run_id
    assert (folder / "_SUCCESS").exists() and not (folder / "_temporary").exists()
    manifest = json.loads((folder / "_manifest.json").read_text())
    frame = pd.concat([pd.read_parquet(folder / part) for part in manifest["parts"]], ignore_index=True)
    assert sorted(p.name for p in folder.glob("part-*")) == sorted(manifest["parts"])
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> WorkflowStore:
    """The churn forest (scikit-learn serves it: its ONNX check fails on this data), trained apart."""
    root = tmp_path_factory.mktemp("batch")
    (root / "data").mkdir()
    churn_frame(1500).to_csv(root / "data" / "churn-2026-01.csv", index=False)
    store = WorkflowStore(root, "churn")
    assert train_apart(batch_spec("in/*.parquet"), store, "v1")["backend"] == "sklearn"
    return store


def test_share_deals_every_row_to_exactly_one_index() -> None:
    def dealt(files: list[InputFile], csv_rows: int, indexes: int) -> list[tuple[str, int]]:
        """(file, row) of every row of every index's shares, CSV files having `csv_rows` rows."""
        seen = []
        for index in range(indexes):
            for part in share(files, indexes, index):
                groups = next(f.row_groups for f in files if f.path == part.path)
                if groups is None:  # CSV: chunks of CHUNK_ROWS
                    from mlworkflow.runtime.predict import CHUNK_ROWS

                    keep, of = part.stride or (0, 1)
                    seen += [(part.path, r) for r in range(csv_rows) if (r // CHUNK_ROWS) % of == keep]
                    continue
                starts = np.concatenate([[0], np.cumsum(groups)])
                for group in part.row_groups or range(len(groups)):
                    seen += [(part.path, r) for r in range(starts[group], starts[group + 1])]
        return seen

    parquet = [InputFile(f"in/{name}.parquet", (3, 3, 2)) for name in "abcde"]
    every = {(f.path, r) for f in parquet for r in range(8)}
    for indexes in (1, 2, 3, 5):  # whole files, round-robin
        assert sorted(dealt(parquet, 0, indexes)) == sorted(every)
        assert all(p.row_groups is None for p in share(parquet, indexes, 0))
    for indexes in (6, 7, 16, 64):  # fewer files than indexes: row groups
        assert sorted(dealt(parquet, 0, indexes)) == sorted(every)
    assert share(parquet[:2], 4, 1) == [Share("in/a.parquet", (1,)), Share("in/b.parquet", (2,))]
    mixed = [InputFile("in/big.csv"), InputFile("in/x.parquet", (5, 5, 5))]
    csv_rows = 300_000
    every = {("in/big.csv", r) for r in range(csv_rows)} | {("in/x.parquet", r) for r in range(15)}
    for indexes in (3, 4):
        assert sorted(dealt(mixed, csv_rows, indexes)) == sorted(every)


def test_whole_column_checks_give_what_the_checks_value_by_value_give() -> None:
    """`checked_at_once` (a clean chunk, on Arrow columns) gives the batch the serving checker gives on the
    values one by one, for the column types the files bring; it gives None where a value fails."""
    schema = FeatureSchema("y", ["f", "i", "t"], ["s", "b", "n"], {"b": ["False", "True"]})
    table = pa.table(
        {
            "f": pa.array([1.5, None, float("nan"), -0.0, 3e38]),
            "i": pa.array([1, None, 3, 2**53 + 1, -7], pa.int64()),
            "t": pa.array(["1.5", None, "nan", "2", "-1e3"]),  # a CSV's text
            "s": pa.array(["a", None, "3.0", "a", "03"]),
            "b": pa.array([True, None, False, True, True]),
            "n": pa.array([1.0, 2.5, None, float("nan"), 1.0]),
        }
    )
    model = SimpleNamespace(schema=schema, checker=FeatureChecker(schema, impute=True))
    fast = checked_at_once(model, table)  # type: ignore[arg-type]
    columns = {c: numbers(table[c]) if c in schema.numeric else table[c].to_pylist() for c in schema.features}
    slow = check(model, columns, table.num_rows, str).batch  # type: ignore[arg-type]
    assert fast is not None and slow is not None
    for column in schema.numeric:
        np.testing.assert_array_equal(fast.numeric[column], slow.numeric[column])
    for column in schema.categorical:
        assert fast.categorical[column].tolist() == slow.categorical[column].tolist()
    no_imputer = SimpleNamespace(schema=schema, checker=FeatureChecker(schema, impute=False))
    assert checked_at_once(no_imputer, table) is None  # type: ignore[arg-type]
    for bad in (pa.array([1.0, 2.0, float("inf"), 0.0, 0.0]), pa.array([1e39, 0.0, 0.0, 0.0, 0.0])):
        assert checked_at_once(model, table.set_column(0, "f", bad)) is None  # type: ignore[arg-type]
    text = pa.array(["1", "x", "2", "3", "4"])
    assert checked_at_once(model, table.set_column(2, "t", text)) is None  # type: ignore[arg-type]


def test_predicts_200k_parquet_rows_in_bounded_memory(store: WorkflowStore, tmp_path: Path) -> None:
    """Predictions equal scikit-learn's on the good rows; the bad ones are rejected with their reason; and
    a run on four times the rows takes no more memory."""
    frame = rows(store, 200_000, seed=1)
    bad = {17: np.inf, 1_000: -np.inf, 150_001: 1e39}  # not finite; beyond float32's range
    for row, value in bad.items():
        frame.loc[row, "monthly"] = value
    (store.root / "in").mkdir(exist_ok=True)
    # Row groups of 100,000 rows in both files: the reader holds one row group's buffers, which grow with
    # the writer's row groups (not with the file's rows).
    frame.to_parquet(store.root / "in" / "rows-200k.parquet", index=False, row_group_size=100_000)
    result = predict_apart(store, batch_spec("in/rows-200k.parquet"), "r200k")
    assert result.code == 0, result.log
    summary = result.summary
    assert summary["status"] == "ok" and summary["published"] and summary["backend"] == "sklearn"
    assert (summary["rowsIn"], summary["predicted"], summary["rejected"]) == (200_000, 199_997, 3)
    assert summary["output"] == "predictions/r200k"

    predicted = published(store, "r200k").sort_values("id")
    assert predicted["id"].tolist() == sorted(set(range(200_000)) - set(bad))
    good = frame.drop(index=list(bad)).assign(plan=lambda f: f["plan"].fillna(""))  # as training saw it
    pipeline = joblib.load(store.bentoml_home / "models" / "churn" / "v1" / "pipeline.joblib")
    assert (predicted["prediction"].to_numpy() == pipeline.predict(good.drop(columns=["id"]))).all()
    expected = pipeline.predict_proba(good.drop(columns=["id"]))
    assert np.allclose(predicted[["proba_no", "proba_yes"]].to_numpy(), expected)
    assert set(predicted["model_version"]) == {"v1"}

    folder = store.root / "predictions" / "r200k"
    rejects = pd.read_parquet(folder / "rejects-0.parquet").sort_values("row")
    assert rejects["row"].tolist() == sorted(bad)
    assert set(rejects["file"]) == {"in/rows-200k.parquet"}
    assert all("'monthly'" in reason for reason in rejects["reason"]), rejects["reason"].tolist()
    assert "in/rows-200k.parquet row 150001" in rejects["reason"].iloc[2]
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["rejected"] == 3 and manifest["rejects"] == ["rejects-0.parquet"]
    assert manifest["input"]["files"][0]["path"] == "in/rows-200k.parquet"

    # The drift monitor's sample: bounded, in the serving format, read by the drift check unchanged.
    sample = (store.samples / "batch-r200k-0.jsonl").read_text().splitlines()
    assert len(sample) == 500 and set(json.loads(sample[0])) == {"ts", "model", "features", "prediction"}
    (tmp_path / "batch-r200k-0.jsonl").write_text("\n".join(sample) + "\n")
    window, seen, _ = drift.read_window(tmp_path, 0.0, 10_000)
    assert seen == 500 and list(window.columns) == ["tenure", "monthly", "plan", "region"]

    # Four times the rows: the peak stays put; holding the rows would grow it by their size at least.
    pd.concat([frame] * 4, ignore_index=True).assign(id=np.arange(800_000)).to_parquet(
        store.root / "in" / "rows-800k.parquet", index=False, row_group_size=100_000
    )
    larger = predict_apart(store, batch_spec("in/rows-800k.parquet"), "r800k", version="v1")
    assert larger.code == 0 and larger.summary["rowsIn"] == 800_000, larger.log
    extra_input_mib = frame.memory_usage(deep=True).sum() * 3 / 2**20
    growth = larger.peak_mib - result.peak_mib
    assert growth < 0.25 * extra_input_mib, (result.peak_mib, larger.peak_mib, extra_input_mib)


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_two_indexes_publish_every_row_exactly_once(store: WorkflowStore, kind: str) -> None:
    """Two processes, one file: Parquet row groups, or chunks of a CSV file (one bad cell rejected)."""
    frame = rows(store, 150_000 if kind == "csv" else 20_000, seed=2)
    path = store.root / "in" / f"two.{kind}"
    path.parent.mkdir(exist_ok=True)
    if kind == "csv":
        frame["monthly"] = frame["monthly"].astype(object)
        frame.loc[70_000, "monthly"] = "abc"  # in the second chunk: index 1's
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False, row_group_size=3_000)
    spec = batch_spec(f"in/two.{kind}")
    results = [finish(p) for p in [start(store, spec, f"two-{kind}", i, 2) for i in range(2)]]
    assert [r.code for r in results] == [0, 0], [r.log for r in results]
    assert sum(r.summary["published"] for r in results) == 1
    predicted = published(store, f"two-{kind}")
    rejected = {70_000} if kind == "csv" else set()
    # A CSV's passthrough columns are copied as written: text.
    assert sorted(predicted["id"].astype(int)) == sorted(set(range(len(frame))) - rejected)
    manifest = json.loads((store.root / "predictions" / f"two-{kind}" / "_manifest.json").read_text())
    assert manifest["rowsIn"] == len(frame) and [i["index"] for i in manifest["indexes"]] == [0, 1]
    assert all(i["rowsIn"] > 0 for i in manifest["indexes"])
    if kind == "csv":
        rejects = pd.read_parquet(store.root / "predictions" / "two-csv" / "rejects-1.parquet")
        assert rejects["row"].tolist() == [70_000]
        assert "'monthly' must be a finite number, got 'abc'" in rejects["reason"][0]


def test_a_retried_index_replaces_only_its_own_work_and_a_duplicate_run_writes_nothing(
    store: WorkflowStore,
) -> None:
    frame = rows(store, 12_000, seed=3)
    (store.root / "in" / "retry").mkdir(parents=True)
    for part in range(3):
        frame.iloc[part * 4_000 : (part + 1) * 4_000].to_parquet(
            store.root / "in" / "retry" / f"{part}.parquet"
        )
    spec = batch_spec("in/retry/*.parquet")
    first = predict_apart(store, spec, "retry", index=0, indexes=2)
    assert first.code == 0 and not first.summary["published"], first.log
    # A failed attempt of index 0 left a part behind; its retry starts again in its own folder.
    leftover = store.root / "predictions" / "retry" / "_temporary" / "0" / "part-0-7.parquet"
    leftover.write_bytes(b"half written")
    retried = predict_apart(store, spec, "retry", index=0, indexes=2)
    assert retried.code == 0 and not retried.summary["published"] and not leftover.exists()
    last = predict_apart(store, spec, "retry", index=1, indexes=2)
    assert last.code == 0 and last.summary["published"], last.log
    assert sorted(published(store, "retry")["id"]) == list(range(12_000))

    folder = store.root / "predictions" / "retry"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    samples = {p: p.stat().st_mtime_ns for p in store.samples.glob("batch-retry-*")}
    again = predict_apart(store, spec, "retry", index=1, indexes=2)
    assert again.code == 0 and again.summary["alreadyPublished"] and again.summary["predicted"] > 0
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert {p: p.stat().st_mtime_ns for p in store.samples.glob("batch-retry-*")} == samples


def test_more_rejects_than_allowed_fail_the_run(store: WorkflowStore) -> None:
    frame = rows(store, 5_000, seed=4)
    frame.loc[frame.index % 50 == 0, "monthly"] = np.inf  # 2%
    (store.root / "in" / "spread").mkdir(parents=True)
    frame.to_parquet(store.root / "in" / "rejects.parquet", index=False)
    result = predict_apart(store, batch_spec("in/rejects.parquet"), "rejects")
    assert result.code == INVALID_INPUT, result.log
    summary = result.summary
    assert summary["status"] == "error" and summary["reason"] == "TooManyRejects"
    assert (summary["rowsIn"], summary["rejected"], summary["published"]) == (5_000, 100, False)
    assert "'monthly' must be a finite number" in summary["message"]
    assert not (store.root / "predictions" / "rejects" / "_SUCCESS").exists()
    allowed = predict_apart(store, batch_spec("in/rejects.parquet", max_reject_fraction=0.05), "rejects")
    assert allowed.code == 0 and allowed.summary["published"], allowed.log

    # The fraction is the run's: with a clean file beside it, index 0 rejects 2% of its rows, the run 1%.
    frame.to_parquet(store.root / "in" / "spread" / "a.parquet", index=False)
    rows(store, 5_000, seed=5).to_parquet(store.root / "in" / "spread" / "b.parquet", index=False)
    for limit, run_id in ((0.015, "spread-ok"), (0.005, "spread-over")):
        spec = batch_spec("in/spread/*.parquet", max_reject_fraction=limit)
        results = [finish(p) for p in [start(store, spec, run_id, i, 2) for i in range(2)]]
        summaries = sorted((r.summary for r in results), key=lambda s: s["index"])
        assert [s["rejected"] for s in summaries] == [100, 0], [r.log for r in results]
        if limit > 0.01:
            assert [r.code for r in results] == [0, 0] and sum(s["published"] for s in summaries) == 1
            manifest = json.loads((store.root / "predictions" / run_id / "_manifest.json").read_text())
            assert manifest["rejected"] == 100
        else:
            assert sorted(r.code for r in results) == [0, INVALID_INPUT], "the publisher refuses the run"
            [refused] = [s for s in summaries if s["status"] == "error"]
            assert refused["reason"] == "TooManyRejects"
            assert "100 of the run's 10000 rows" in refused["message"]
            assert not (store.root / "predictions" / run_id / "_SUCCESS").exists()


def test_a_missing_input_or_model_fails_at_once(store: WorkflowStore) -> None:
    missing = predict_apart(store, batch_spec("in/nothing-*.parquet"), "missing")
    assert missing.code == INVALID_INPUT and missing.summary["reason"] == "InputNotFound", missing.log
    assert "in/nothing-*.parquet" in missing.summary["message"]
    (store.root / "in").mkdir(exist_ok=True)
    rows(store, 100, seed=5).to_parquet(store.root / "in" / "few.parquet", index=False)
    unknown = predict_apart(store, batch_spec("in/few.parquet"), "unknown", version="v9")
    assert unknown.code == INVALID_INPUT and unknown.summary["reason"] == "ModelNotFound", unknown.log


def test_onnxruntime_predicts_where_it_was_verified(tmp_path: Path) -> None:
    """A linear model, served by onnxruntime: its class and probability columns, as scikit-learn's."""
    (tmp_path / "data").mkdir()
    churn_frame(1500).to_csv(tmp_path / "data" / "churn-2026-01.csv", index=False)
    linear = WorkflowStore(tmp_path, "linear")
    spec = batch_spec("in/rows.parquet", estimator="sklearn.linear_model.LogisticRegression", max_iter=1000)
    assert train_apart(spec, linear, "v1")["backend"] == "onnxruntime"
    frame = rows(linear, 10_000, seed=6)
    (tmp_path / "in").mkdir()
    frame.to_parquet(tmp_path / "in" / "rows.parquet", index=False)
    result = predict_apart(linear, spec, "onnx")
    assert result.code == 0 and result.summary["backend"] == "onnxruntime", result.log
    predicted = published(linear, "onnx").sort_values("id")
    pipeline = joblib.load(linear.bentoml_home / "models" / "linear" / "v1" / "pipeline.joblib")
    x = frame.drop(columns=["id"]).assign(plan=lambda f: f["plan"].fillna(""))
    assert np.abs(predicted[["proba_no", "proba_yes"]].to_numpy() - pipeline.predict_proba(x)).max() < 1e-4
    assert (predicted["prediction"].to_numpy() == pipeline.predict(x)).mean() > 0.999
    assert pq.read_schema(tmp_path / "predictions" / "onnx" / "part-0-0.parquet").names == [
        "id",
        "prediction",
        "proba_no",
        "proba_yes",
        "model_version",
    ]


def test_a_batch_pod_uses_the_cpus_its_affinity_and_cpu_limit_allow(tmp_path: Path) -> None:
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: a limit of 1.5 CPUs
    assert _cgroup_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_limit(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_limit(tmp_path) is None
