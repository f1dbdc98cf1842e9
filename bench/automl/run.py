"""AutoML benchmark: our search against scikit-learn's RandomizedSearchCV (the floor) and FLAML, in one run.

    python bench/automl/run.py [--flaml-path DIR] [--only NAME]

Three datasets: breast_cancer (bundled, 569 x 30, binary), a generated 20,000 x 20 classification set
(`make_classification`, 3 classes, 10 informative columns), diabetes (bundled regression, 442 x 10). Each is
split as the training runtime splits it (`mlworkflow.runtime.search.training_rows`: the same seed, the 20%
holdout); every contender searches the training rows only, and its best model is scored on the holdout.

- ours: `python -m mlworkflow.runtime.search`, 2 worker processes (as the local runner starts them), TPE,
  the task's preset space (written out as candidates, with its starting points given by --warm-start: the
  API does not take an empty candidate list yet), the trial budget below; timed from launch to the last
  exit (imports and data loading included);
- the floor: `RandomizedSearchCV(n_jobs=2, refit=False)` over the same space (a list of per-family
  distributions: a family, then its parameters, uniformly, as our random sampler draws), the same trial
  budget, the same folds and scorer;
- FLAML (`flaml.AutoML`, installed apart for the benchmark: `--flaml-path`), with our wall time as its time
  budget, n_jobs 2, the same metric, its default search but for estimators that need libraries we do not
  ship (xgboost, catboost): lgbm, rf, extra_tree (and lrl1 for classification).

Both searches' winners are refit on all training rows (not timed, as the training runtime does that after
the search); FLAML's model is used as FLAML returns it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.model_selection import RandomizedSearchCV

from mlworkflow.api.search import PRESETS, Choice, FloatRange, IntRange, candidates_for
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, ModelSpec
from mlworkflow.runtime import holdout, pipeline
from mlworkflow.runtime.search import DEFAULT_FOLDS, training_rows
from mlworkflow.runtime.store import WorkflowStore

REPO = Path(__file__).resolve().parents[2]
FLAML_METRIC = {"f1_macro": "macro_f1", "r2": "r2"}


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    target: str
    task: str
    trials: int
    folds: int


DATASETS = [
    Dataset("breast_cancer", "sklearn://breast_cancer", "target", "classification", trials=40, folds=5),
    Dataset("generated 20k x 20", "data/generated.csv", "label", "classification", trials=16, folds=3),
    Dataset("diabetes", "sklearn://diabetes", "target", "regression", trials=40, folds=5),
]


def generated(root: Path) -> None:
    x, y = make_classification(
        20_000, 20, n_informative=10, n_redundant=4, n_classes=3, flip_y=0.03, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(20)]).assign(label=y)
    (root / "data").mkdir(exist_ok=True)
    frame.to_csv(root / "data" / "generated.csv", index=False)


def spec_of(dataset: Dataset, trials: int) -> MLWorkflowSpec:
    """The preset of the task, written out as candidates (k-NN only for small data, as the preset does)."""
    small = dataset.name != "generated 20k x 20"
    candidates = [
        {"estimator": p.estimator, "params": p.params}
        for p in PRESETS[dataset.task]
        if small or not p.small_data
    ]
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "AutoML",
            "data": {"source": dataset.source, "target": dataset.target},
            "model": {"task": dataset.task},
            "training": {"crossValidation": dataset.folds},
            "automl": {"candidates": candidates, "trials": trials, "parallelism": 2, "seed": 0},
            "storage": {"path": "/unused"},
        }
    )


def starts(spec: MLWorkflowSpec, rows: int) -> dict[str, Any]:
    """The preset's starting points as a leaderboard, for --warm-start."""
    preset = candidates_for(spec.model_copy(update={"automl": None}), rows=rows)
    listed = {c.estimator for c in candidates_for(spec)}
    return {
        "rows": [
            {
                "estimator": c.estimator,
                "params": {**_fixed(c.params), **c.start},
                "state": "COMPLETE",
            }
            for c in preset
            if c.estimator in listed
        ]
    }


def _fixed(params: Any) -> dict[str, Any]:
    return {n: d.values[0] for n, d in params.items() if isinstance(d, Choice) and len(d.values) == 1}


def split(
    spec: MLWorkflowSpec, store: WorkflowStore
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """Training and holdout rows, exactly as the training runtime chooses them (`holdout.prepare`)."""
    rows = holdout.prepare(spec, store, None, spec.training.cross_validation or DEFAULT_FOLDS)
    return rows.x_train, rows.y_train, rows.x_holdout, rows.y_holdout


def ours(spec: MLWorkflowSpec, root: Path, warm: Path) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "MLW_SPEC": spec.model_dump_json(by_alias=True)}
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "mlworkflow.runtime.search"),
                *(f"--store={root}", "--workflow=bench", "--search-id=s", "--workers=2", f"--worker={i}"),
                *("--sampler=tpe", f"--warm-start={warm}", f"--termination-log={root / f'term-{i}'}"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in (0, 1)
    ]
    for worker in workers:
        assert worker.wait() == 0, f"worker failed: {root}"
    seconds = time.monotonic() - started
    return seconds, json.loads((root / "bench" / "automl" / "s" / "winner.json").read_text())


class LogInt:
    """An integer log-uniform in [low, high] (scipy has none): what Optuna's suggest_int(log=True) draws."""

    def __init__(self, low: int, high: int) -> None:
        self.dist = stats.loguniform(low - 0.4999, high + 0.4999)

    def rvs(self, random_state: Any = None) -> int:
        return round(float(self.dist.rvs(random_state=random_state)))


def distributions(spec: MLWorkflowSpec) -> list[dict[str, Any]]:
    """The same space for RandomizedSearchCV: one dict per family, `estimator` a one-item list."""
    assert spec.model is not None
    spaces = []
    for candidate in candidates_for(spec):
        module, _, name = candidate.estimator.rpartition(".")
        estimator_class = getattr(__import__(module, fromlist=[name]), name)
        space: dict[str, Any] = {"estimator": [estimator_class()]}
        for param, domain in candidate.params.items():
            key = f"estimator__{param}"
            if isinstance(domain, Choice):
                space[key] = list(domain.values)
            elif isinstance(domain, IntRange):
                space[key] = (
                    LogInt(domain.low, domain.high)
                    if domain.log
                    else stats.randint(domain.low, domain.high + 1)
                )
            elif isinstance(domain, FloatRange):
                space[key] = (
                    stats.loguniform(domain.low, domain.high)
                    if domain.log
                    else stats.uniform(domain.low, domain.high - domain.low)
                )
        spaces.append(space)
    return spaces


def floor(
    spec: MLWorkflowSpec, store: WorkflowStore, trials: int, metric: str
) -> tuple[float, dict[str, Any]]:
    rows = training_rows(spec, store)
    assert spec.model is not None
    base = pipeline.build(
        ModelSpec(
            estimator="sklearn.dummy.DummyClassifier"
            if spec.model.task == "classification"
            else "sklearn.dummy.DummyRegressor",
            task=spec.model.task,
        ),
        rows.schema,
        ("sklearn.",),
    )
    search = RandomizedSearchCV(
        base,
        distributions(spec),
        n_iter=trials,
        scoring=pipeline.scorer(metric, rows.y.nunique()),
        n_jobs=2,
        cv=rows.folds,
        refit=False,
        random_state=0,
        error_score=math.nan,
    )
    started = time.monotonic()
    search.fit(rows.x, rows.y)
    seconds = time.monotonic() - started
    best = search.cv_results_["params"][search.best_index_]
    sign = -1.0 if metric in pipeline.LOWER_IS_BETTER else 1.0
    return seconds, {
        "pipeline": clone(base).set_params(**best),
        "cvMean": sign * search.best_score_,
        "params": best,
    }


def flaml(
    x: pd.DataFrame,
    y: pd.Series,
    x_hold: pd.DataFrame,
    task: str,
    metric: str,
    budget: float,
    path: str,
    folder: Path,
) -> tuple[float, float, Any]:
    """FLAML in its own process (its own sys.path): its wall time, best CV loss, predictions."""
    x.assign(__y=y.to_numpy()).to_parquet(folder / "train.parquet")
    x_hold.to_parquet(folder / "hold.parquet")
    estimators = ["lgbm", "rf", "extra_tree"] + (["lrl1"] if task == "classification" else [])
    program = f"""
import json, time, sys
import pandas as pd
from flaml import AutoML
train = pd.read_parquet({str(folder / "train.parquet")!r})
hold = pd.read_parquet({str(folder / "hold.parquet")!r})
automl = AutoML()
started = time.monotonic()
automl.fit(train.drop(columns="__y"), train["__y"], task={task!r}, metric={FLAML_METRIC[metric]!r},
           time_budget={budget!r}, n_jobs=2, estimator_list={estimators!r}, seed=0, verbose=0)
seconds = time.monotonic() - started
pd.DataFrame({{"p": automl.predict(hold)}}).to_parquet({str(folder / "pred.parquet")!r})
json.dump({{"seconds": seconds, "loss": automl.best_loss, "estimator": automl.best_estimator,
           "config": automl.best_config}}, open({str(folder / "flaml.json")!r}, "w"), default=str)
"""
    subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")},
        check=True,
        capture_output=True,
    )
    result = json.loads((folder / "flaml.json").read_text())
    return (
        result["seconds"],
        1 - result["loss"],
        (pd.read_parquet(folder / "pred.parquet")["p"].to_numpy(), result),
    )


def holdout_score(metric: str, y: pd.Series, predicted: Any) -> float:
    from sklearn.metrics import f1_score, r2_score

    if metric == "f1_macro":
        return float(f1_score(y, predicted, average="macro"))
    return float(r2_score(y, predicted))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--flaml-path", help="a folder with flaml, lightgbm and xgboost installed (pip --target)"
    )
    parser.add_argument("--only", help="one dataset by name")
    args = parser.parse_args()
    lines = []
    for dataset in DATASETS:
        if args.only and dataset.name != args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            generated(root)
            store = WorkflowStore(root, "bench")
            spec = spec_of(dataset, dataset.trials)
            metric = "f1_macro" if dataset.task == "classification" else "r2"
            x, y, x_hold, y_hold = split(spec, store)
            warm = root / "starts.json"
            warm.write_text(json.dumps(starts(spec, len(x))))
            our_seconds, winner = ours(spec, root, warm)
            assert spec.model is not None
            model = spec.model.model_copy(
                update={"estimator": winner["estimator"], "params": winner["params"]}
            )
            rows = training_rows(spec, store)
            fitted = pipeline.build(model, rows.schema, ("sklearn.",)).fit(x, y)
            our_holdout = holdout_score(metric, y_hold, fitted.predict(x_hold))
            floor_seconds, best = floor(spec, store, dataset.trials, metric)
            floor_holdout = holdout_score(metric, y_hold, best["pipeline"].fit(x, y).predict(x_hold))
            row = {
                "dataset": dataset.name,
                "trials": dataset.trials,
                "ours": (our_seconds, winner["cvMean"], our_holdout, winner["estimator"].rsplit(".", 1)[1]),
                "floor": (
                    floor_seconds,
                    best["cvMean"],
                    floor_holdout,
                    type(best["params"]["estimator"]).__name__,
                ),
            }
            if args.flaml_path:
                flaml_seconds, flaml_cv, (predicted, result) = flaml(
                    x, y, x_hold, dataset.task, metric, our_seconds, args.flaml_path, root
                )
                row["flaml"] = (
                    flaml_seconds,
                    flaml_cv,
                    holdout_score(metric, y_hold, predicted),
                    result["estimator"],
                )
            lines.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| dataset | trials | contender | wall s | best CV | holdout | best family | wall vs floor "
        "| holdout vs floor | holdout vs FLAML |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in lines:
        floor_s, _, floor_h, _ = row["floor"]
        flaml_h = row["flaml"][2] if "flaml" in row else None
        for name in ("ours", "floor", "flaml"):
            if name not in row:
                continue
            seconds, cv, score, family = row[name]
            vs_flaml = f"{score - flaml_h:+.4f}" if flaml_h is not None else "-"
            print(
                f"| {row['dataset']} | {row['trials'] if name != 'flaml' else '-'} | {name} | {seconds:.1f} "
                f"| {cv:.4f} | {score:.4f} | {family} | {seconds / floor_s:.2f}x | {score - floor_h:+.4f} "
                f"| {vs_flaml} |"
            )


if __name__ == "__main__":
    main()
