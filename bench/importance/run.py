"""Permutation importance of an online snapshot: by feature block on the preprocessed rows, against
scikit-learn's `permutation_importance` of the whole pipeline, in one run.

    PYTHONPATH=operator python bench/importance/run.py [--features 40] [--rows 300] [--rounds 3]

The learner's shape (bench/online): `--features` numeric features and one categorical of three values, a
log-loss SGDClassifier in our preprocessing pipeline (`pipeline.build`), `--rows` held-out rows (the
canary), promotion metric f1_macro, 5 shuffles per feature. Prints each way's best time of `--rounds`, the
ratio, and the largest difference of a feature's mean drop between the two (the shuffles differ: noise).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from mlworkflow.api.v1alpha1 import ModelSpec
from mlworkflow.runtime import importance, pipeline
from mlworkflow.runtime.data import FeatureSchema


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = 1000 + args.rows
    numeric = [f"f{i:02d}" for i in range(args.features)]
    x = pd.DataFrame({name: rng.normal(size=rows) for name in numeric}).assign(
        region=rng.choice(["a", "b", "c"], rows)
    )
    score = x["f00"] + 2 * x["f01"] + (x["region"] == "a") + rng.normal(0, 0.5, rows)
    y = pd.Series(np.where(score > 0.5, "yes", "no"))
    schema = FeatureSchema("label", numeric, ["region"])
    spec = ModelSpec(
        estimator="sklearn.linear_model.SGDClassifier", params={"loss": "log_loss", "random_state": 0}
    )
    model = pipeline.build(spec, schema, ("sklearn.",))
    model.fit(x.iloc[:1000], y.iloc[:1000])
    held_x, held_y = x.iloc[1000:].reset_index(drop=True), y.iloc[1000:].reset_index(drop=True)
    blocks = pipeline.feature_blocks(model.named_steps["features"], schema)
    assert blocks is not None
    preprocessed = model.named_steps["features"].transform(held_x)  # once, as the learner's canary is

    def best(run: object) -> tuple[float, dict[str, float]]:
        times, found = [], None
        for _ in range(args.rounds):
            started = time.perf_counter()
            found = run()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        assert found is not None
        return min(times), {f["feature"]: f["mean"] for f in found["features"]}

    whole, whole_means = best(lambda: importance.permutation(model, held_x, held_y, "f1_macro"))
    estimator = model.named_steps["estimator"]
    by_block, block_means = best(
        lambda: importance.permutation_of_blocks(estimator, preprocessed, held_y, blocks, "f1_macro")
    )
    print(f"{args.features + 1} features, {args.rows} rows, load average {os.getloadavg()[0]:.1f}")
    print("| way | seconds | vs pipeline |\n|---|---|---|")
    print(f"| scikit-learn, whole pipeline (baseline) | {whole:.3f} | 1.0x |")
    print(f"| by feature block, scored in numpy (ours) | {by_block:.3f} | {whole / by_block:.1f}x faster |")
    difference = max(abs(whole_means[k] - block_means[k]) for k in whole_means)
    print(f"largest difference of a mean drop: {difference:.4f}")


if __name__ == "__main__":
    main()
