"""Batch prediction benchmark: our runtime against the floor a user would write, measured in one run.

    python bench/batch/run.py [--rows 1000000]

The serving benchmark's model (ColumnTransformer: impute + scale 8 numerics, one-hot 3 categoricals;
RandomForest of 100 trees; 5% missing values) trained by our training runtime on 20,000 rows, and `--rows`
new rows of the same shape in one Parquet file (row groups of 131,072 rows, so that two indexes can share
it). Each contender runs as a fresh process, as a Pod would, timed from start to exit (imports included)
with its peak resident memory (VmHWM) read from the process itself:

- the floor: `pd.read_parquet` -> `pipeline.predict` -> `to_parquet` (the id and the prediction);
- `python -m mlworkflow.runtime.predict` with 1 index, then with 2 indexes (two processes at once), which
  also checks every row, writes the class probabilities and the model version, publishes the run with
  its manifest, and samples 10,000 rows for the drift monitor.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Trigger
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import train

REPO = Path(__file__).resolve().parents[2]

# Runs a program (`-m module` or a script's text) and writes its peak resident memory in KiB where
# $PEAK_FILE says as it exits (a child's ru_maxrss would count the memory of the process that forked it).
MEASURED = """
import atexit, os, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(os.environ["PEAK_FILE"], "w").write(kib)
atexit.register(peak)
what = sys.argv.pop(1)
if what == "-m":
    runpy.run_module(sys.argv.pop(1), run_name="__main__")
else:
    exec(compile(what, "floor", "exec"))
"""

FLOOR = """
import sys
import joblib, pandas as pd
pipeline = joblib.load(sys.argv[1])
frame = pd.read_parquet(sys.argv[2])
frame[["id"]].assign(prediction=pipeline.predict(frame)).to_parquet(sys.argv[3], index=False)
"""


def serving_data():  # type: ignore[no-untyped-def]
    """The serving benchmark's generator (bench/serving/run.py), so that both measure the same model."""
    spec = importlib.util.spec_from_file_location("serving_bench", REPO / "bench" / "serving" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generated


def measured(
    argvs: list[list[str]], folder: Path, env: dict[str, str] | None = None
) -> tuple[float, list[float], list[str]]:
    """Runs the programs at once; wall seconds until the last exits, each one's peak MiB, their output."""
    started = time.perf_counter()
    processes = []
    for n, argv in enumerate(argvs):
        peak = folder / f"peak-{os.getpid()}-{n}-{time.monotonic_ns()}"
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", MEASURED, *argv],
                    env={**os.environ, **(env or {}), "PEAK_FILE": str(peak)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                peak,
            )
        )
    outputs = [process.communicate()[0] for process, _ in processes]
    seconds = time.perf_counter() - started
    for (process, _), output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    return seconds, [int(peak.read_text()) / 1024 for _, peak in processes], outputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    generated = serving_data()

    folder = Path(tempfile.mkdtemp(prefix="mlw-bench-batch-"))
    (folder / "data").mkdir()
    generated(20_000).to_csv(folder / "data" / "train.csv", index=False)
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "Forecast",
            "data": {"source": "data/train.csv", "target": "label"},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 100, "random_state": 0, "n_jobs": 1},
            },
            "training": {"crossValidation": 0},
            "batch": {"input": "in/rows.parquet", "output": "predictions", "passthroughColumns": ["id"]},
            "storage": {"path": str(folder)},
        }
    )
    store = WorkflowStore(folder, "bench")
    trained = train(spec, store, "v1", Trigger.INITIAL)
    model_dir = store.bentoml_home / "models" / "bench" / "v1"

    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = generated(args.rows, seed=1).drop(columns=["label"])
    frame.insert(0, "id", range(len(frame)))
    (folder / "in").mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "in" / "rows.parquet", 131_072)
    in_memory = frame.memory_usage(deep=True).sum() / 2**20
    print(
        f"model: RandomForest(100) on 20000 rows; ONNX check: {trained.onnx_check}; "
        f"backend {trained.backend}. "
        f"Input: {args.rows} rows, {(folder / 'in' / 'rows.parquet').stat().st_size / 2**20:.0f} MiB of "
        f"Parquet, {in_memory:.0f} MiB as a pandas DataFrame. {os.cpu_count()} cores."
    )
    del frame

    results: list[tuple[str, float, list[float], str]] = []
    floor = [FLOOR, str(model_dir / "pipeline.joblib"), str(folder / "in" / "rows.parquet")]
    seconds, peaks, _ = measured([[*floor, str(folder / "floor.parquet")]], folder)
    results.append(("floor: read_parquet -> predict -> to_parquet", seconds, peaks, "sklearn"))
    ours = ["-m", "mlworkflow.runtime.predict", f"--store={folder}", "--workflow=bench", "--version=v1"]
    env = {"MLW_SPEC": spec.model_dump_json(by_alias=True)}
    for indexes in (1, 2):
        argvs = [
            [*ours, f"--run-id=run-{indexes}", f"--indexes={indexes}", f"--index={i}"] for i in range(indexes)
        ]
        argvs = [
            [*argv, f"--termination-log={folder / f'termination-{indexes}-{n}'}"]
            for n, argv in enumerate(argvs)
        ]
        seconds, peaks, outputs = measured(argvs, folder, env)
        summaries = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
        assert sum(s["predicted"] for s in summaries) + sum(s["rejected"] for s in summaries) == args.rows
        name = f"mlworkflow.runtime.predict, {indexes} index{'es' if indexes > 1 else ''}"
        results.append((name, seconds, peaks, summaries[0]["backend"]))

    print()
    print("| implementation | backend | seconds | rows/s | vs floor | peak MiB (per process) | vs floor |")
    print("|---|---|---|---|---|---|---|")
    _, floor_seconds, floor_peaks, _ = results[0]
    for name, seconds, peaks, backend in results:
        rate = args.rows / seconds
        peak = max(peaks)
        print(
            f"| {name} | {backend} | {seconds:.1f} | {rate:,.0f} | {floor_seconds / seconds:.2f}x | "
            f"{peak:.0f} | {peak / floor_peaks[0]:.2f}x |"
        )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
