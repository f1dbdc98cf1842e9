"""Drift-check benchmark: our check against the scipy floor (and Evidently on the full data), one run.

    python bench/drift/run.py [--sizes 10000 100000 1000000] [--evidently-full-max 100000]

Data: 20 numeric columns, 5 of them shifted by 0.3 standard deviations, reference and current of the same
size. Each measurement runs in a fresh process (time and peak RSS are its own):
- scipy floor: a two-sample KS test per column on all rows (drifted when p < 0.05 / 20, Bonferroni);
- Evidently, full data: `Report([DataDriftPreset()])` on all rows (what a naive monitor does);
- ours: `mlworkflow.runtime.drift.compare`: Evidently on a seeded sample of at most 20,000 rows a side, no
  HTML; and `check()` end to end, reading the served window from JSON lines as the CronJob does.
Verdict agreement: the drifted columns, compared with the scipy floor's. Imports (about 2.5 s for
Evidently) are left out of every timing: a process pays them once, whatever the data. Peak memory is each
measuring process's own: for the in-memory rows it includes both generated frames; the end-to-end check
runs in a process that only reads the store (the JSON lines are written by another one).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = [f"c{i}" for i in range(20)]
SHIFTED = COLUMNS[:5]


def frames(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=COLUMNS)
    current = pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=COLUMNS)
    current[SHIFTED] += 0.3
    return reference, current


def scipy_floor(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    from scipy.stats import ks_2samp

    # Bonferroni: 20 tests at 0.05 would flag about one unshifted column by chance.
    return [c for c in COLUMNS if ks_2samp(reference[c], current[c]).pvalue < 0.05 / len(COLUMNS)]


def evidently_full(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=COLUMNS)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            score, limit = float(metric["value"]), float(config["threshold"])
            if (score < limit) if "p_value" in config["method"] else (score >= limit):
                drifted.append(config["column"])
    return drifted


def ours(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    from mlworkflow.runtime.data import FeatureSchema
    from mlworkflow.runtime.drift import compare

    result = compare(current, reference, FeatureSchema("y", COLUMNS, []), threshold=0.5)
    return [c.column for c in result.columns if c.drifted]


def prepare_store(rows: int, folder: Path) -> None:
    """What the serving Pods and the trainer leave in the store: the window as JSON lines, the reference."""
    reference, current = frames(rows)
    model = folder / "w" / "bentoml" / "models" / "w" / "v1"
    model.mkdir(parents=True)
    (model / "card.json").write_text(
        json.dumps({"schema": {"target": "y", "numeric": COLUMNS, "categorical": []}})
    )
    reference.to_parquet(model / "reference.parquet")
    samples = folder / "w" / "samples"
    samples.mkdir(parents=True)
    with (samples / "pod.jsonl").open("w") as out:
        for start in range(0, rows, 50_000):
            for record in current.iloc[start : start + 50_000].to_dict(orient="records"):
                out.write(json.dumps({"ts": 1.0, "features": record}) + "\n")


def ours_end_to_end(folder: Path) -> list[str]:
    """The CronJob's whole check: the window read from the serving Pods' JSON lines, then compared."""
    from mlworkflow.runtime.drift import check
    from mlworkflow.runtime.store import WorkflowStore

    summary = check(WorkflowStore(folder, "w"), "v1", threshold=0.5, min_samples=1)
    return [c["column"] for c in summary["columns"]]


IMPLEMENTATIONS = {
    "scipy KS, full data (floor)": scipy_floor,
    "Evidently, full data": evidently_full,
    "ours (Evidently, bounded sample)": ours,
}
END_TO_END = "ours, end to end from JSON lines"


def measure_one(name: str, rows: int, folder: str | None) -> None:
    # Imports are paid once per process, whatever the data: they are left out of the timings.
    import evidently.presets  # noqa: F401
    import scipy.stats  # noqa: F401

    import mlworkflow.runtime.drift  # noqa: F401

    if name == END_TO_END:
        assert folder is not None
        started = time.monotonic()
        drifted = ours_end_to_end(Path(folder))
    else:
        reference, current = frames(rows)
        started = time.monotonic()
        drifted = IMPLEMENTATIONS[name](reference, current)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "drifted": sorted(drifted)}))


def run(name: str, rows: int, folder: Path | None = None) -> dict[str, object]:
    extra = ["--folder", str(folder)] if folder else []
    done = subprocess.run(
        [sys.executable, __file__, "--one", name, "--rows", str(rows), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--evidently-full-max",
        type=int,
        default=100_000,
        help="largest size to run Evidently on full data (1M rows takes minutes and GBs)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "prepare":
        prepare_store(args.rows, Path(args.folder))
        return
    if args.one:
        measure_one(args.one, args.rows, args.folder)
        return
    print("| rows | implementation | seconds | vs floor | peak MiB | drifted columns | same as floor |")
    print("|---|---|---|---|---|---|---|")
    for rows in args.sizes:
        floor = run("scipy KS, full data (floor)", rows)
        folder = Path(tempfile.mkdtemp(prefix="mlw-bench-drift-"))
        subprocess.run(
            [sys.executable, __file__, "--one", "prepare", "--rows", str(rows), "--folder", str(folder)],
            check=True,
        )
        for name in [*IMPLEMENTATIONS, END_TO_END]:
            if name == "Evidently, full data" and rows > args.evidently_full_max:
                continue
            result = floor if name.startswith("scipy") else run(name, rows, folder)
            ratio = float(result["seconds"]) / float(floor["seconds"])  # type: ignore[arg-type]
            same = "yes" if result["drifted"] == floor["drifted"] else "no"
            print(
                f"| {rows:,} | {name} | {float(result['seconds']):.2f} | {ratio:.1f}x | "  # type: ignore[arg-type]
                f"{float(result['peak_mib']):.0f} | {len(result['drifted'])} | {same} |",
                flush=True,
            )  # type: ignore[arg-type]
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))
    main()
