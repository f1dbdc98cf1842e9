"""Batch prediction benchmark: our runtime against the floor a user would write, measured in one run.

    python bench/batch/run.py [--rows 1000000] [--repeat 2]

The serving benchmark's model (ColumnTransformer: impute + scale 8 numerics, one-hot 3 categoricals;
RandomForest of 100 trees; 5% missing values) trained by our training runtime on 20,000 rows, and `--rows`
new rows of the same shape in one Parquet file (row groups of 131,072 rows, so that two indexes can share
it). Each contender runs as a fresh process, as a Pod would, timed from start to exit (imports included)
with its peak resident memory (VmHWM) and CPU seconds read from the process itself:

- the floor: `pd.read_parquet` -> `pipeline.predict` -> `to_parquet` (the id and the prediction);
- `python -m mlworkflow.runtime.predict`, which also checks every row, writes the class probabilities and
  the model version, publishes the run with its manifest, and samples 10,000 rows for the drift monitor:
  1 index on all the cores (onnxruntime takes them all), 1 index pinned to one core (a Pod of one CPU),
  and 2 indexes at once, each pinned to its own core (two such Pods).

`--repeat` rounds, each running every contender in turn: a ratio is taken within a round, so that both
sides saw the same load; the table gives medians and the spread over the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
    cpu = os.times().user + os.times().system
    open(os.environ["PEAK_FILE"], "w").write(f"{kib} {cpu}")
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


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall, from the first start until the last exit
    peaks: list[float]  # MiB, each process's
    cpu: float  # CPU seconds (user + system) of all the processes
    outputs: list[str]


def measured(
    argvs: list[list[str]], folder: Path, env: dict[str, str] | None = None, pin: bool = False
) -> Measured:
    """Runs the programs at once, the n-th on CPU n when `pin` (as Pods of one CPU each would run)."""
    started = time.perf_counter()
    processes = []
    for n, argv in enumerate(argvs):
        peak = folder / f"peak-{os.getpid()}-{n}-{time.monotonic_ns()}"
        cpus = {sorted(os.sched_getaffinity(0))[n]} if pin else None
        processes.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", MEASURED, *argv],
                    env={**os.environ, **(env or {}), "PEAK_FILE": str(peak)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    preexec_fn=(lambda cpus=cpus: os.sched_setaffinity(0, cpus)) if cpus else None,
                ),
                peak,
            )
        )
    outputs = [process.communicate()[0] for process, _ in processes]
    seconds = time.perf_counter() - started
    for (process, _), output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    kib, cpu = zip(*(peak.read_text().split() for _, peak in processes), strict=True)
    return Measured(seconds, [int(k) / 1024 for k in kib], sum(map(float, cpu)), outputs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds, each measuring every contender")
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

    floor = [FLOOR, str(model_dir / "pipeline.joblib"), str(folder / "in" / "rows.parquet")]
    ours = ["-m", "mlworkflow.runtime.predict", f"--store={folder}", "--workflow=bench", "--version=v1"]
    env = {"MLW_SPEC": spec.model_dump_json(by_alias=True)}
    cores = len(os.sched_getaffinity(0))
    # name -> (indexes, pinned to a core each): the runtime gives onnxruntime the CPUs it may use.
    contenders = {
        "floor: read_parquet -> predict -> to_parquet": (0, False),
        f"mlworkflow.runtime.predict, 1 index, {cores} cores": (1, False),
        "mlworkflow.runtime.predict, 1 index, 1 core": (1, True),
        "mlworkflow.runtime.predict, 2 indexes, 1 core each": (2, True),
    }
    results: dict[str, list[Measured]] = {name: [] for name in contenders}
    backend = ""
    for round_ in range(args.repeat):  # interleaved, so that each round's ratios share the machine's load
        for name, (indexes, pin) in contenders.items():
            if not indexes:
                run = measured([[*floor, str(folder / "floor.parquet")]], folder)
            else:
                argvs = [
                    [
                        *ours,
                        f"--run-id=run-{round_}-{len(results[name])}-{indexes}{pin}",
                        f"--indexes={indexes}",
                        f"--index={i}",
                        f"--termination-log={folder / f'termination-{round_}-{indexes}{pin}-{i}'}",
                    ]
                    for i in range(indexes)
                ]
                run = measured(argvs, folder, env, pin)
                summaries = [json.loads(output.strip().splitlines()[-1]) for output in run.outputs]
                assert sum(s["predicted"] + s["rejected"] for s in summaries) == args.rows
                backend = summaries[0]["backend"]
            results[name].append(run)
            print(f"round {round_ + 1}: {name}: {run.seconds:.1f} s, {max(run.peaks):.0f} MiB", flush=True)

    print()
    print(
        "| implementation | backend | seconds (median, min-max) | rows/s | vs floor (each round) "
        "| CPU s | peak MiB (per process) | vs floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    floors = results[next(iter(contenders))]
    floor_peak = statistics.median(max(r.peaks) for r in floors)
    for name, runs in results.items():
        seconds = [r.seconds for r in runs]
        ratios = sorted(f.seconds / r.seconds for f, r in zip(floors, runs, strict=True))
        peak = statistics.median(max(r.peaks) for r in runs)
        print(
            f"| {name} | {'sklearn' if runs is floors else backend} | {statistics.median(seconds):.1f} "
            f"({min(seconds):.1f}-{max(seconds):.1f}) | {args.rows / statistics.median(seconds):,.0f} | "
            f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | "
            f"{statistics.median(r.cpu for r in runs):.1f} | {peak:.0f} | {peak / floor_peak:.2f}x |"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
