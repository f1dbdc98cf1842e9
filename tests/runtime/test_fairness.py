"""The model card's fairness and importance on a biased generated set: the sensitive column is not a model
input, but a proxy of it is (x2 runs lower in group b), so group b is selected less; the card shows the
gap per group, and the promotion gate rejects a challenger past the bound. A column of noise ranks last in
the permutation importance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, ModelSpec, Trigger
from mlworkflow.desired.lifecycle import TrainingRun, decide
from mlworkflow.runtime import importance, performance, pipeline
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import serve_and_label, train_apart


def biased(rows: int, seed: int) -> pd.DataFrame:
    """label = x1 + x2 > 0 (with noise); x2 is one lower in group b: b's positive rate is about half a's."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], rows)
    x1, x2, noise = rng.normal(0, 1, rows), rng.normal(0, 1, rows) - (group == "b"), rng.normal(0, 1, rows)
    label = np.where(x1 + x2 + rng.normal(0, 0.3, rows) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "noise": noise, "group": group, "label": label})


def spec(max_gap: float | None = None, group_is_input: bool = False) -> MLWorkflowSpec:
    # `group` is not a model input unless asked.
    features = {"numeric": ["x1", "x2", "noise"], "categorical": ["group"] if group_is_input else []}
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/part-*.csv", "target": "label", "features": features},
            "model": {"estimator": "sklearn.linear_model.LogisticRegression"},
            "training": {"crossValidation": 0},
            "monitoring": {"fairness": {"sensitiveFeatures": ["group"], "gap": "DemographicParity"}},
            "promotion": {"maxFairnessGap": max_gap, "minImprovement": 0.0},
            "storage": {"path": "/unused"},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkflowStore, dict[str, Any], dict[str, Any]]:
    """v1 on 1,000 biased rows; v2, a retraining on 1,000 more, judged against v1."""
    root = tmp_path_factory.mktemp("fairness")
    (root / "data").mkdir()
    biased(1000, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    store = WorkflowStore(root, "fair")
    v1 = train_apart(spec(), store, "v1")
    biased(1000, seed=2).to_csv(root / "data" / "part-2.csv", index=False)
    v2 = train_apart(spec(), store, "v2", "Manual", "v1")
    return store, v1, v2


def test_the_card_shows_the_gap_per_group_and_what_the_model_relies_on(
    trained: tuple[WorkflowStore, dict[str, Any], dict[str, Any]],
) -> None:
    store, v1, _ = trained
    card = json.loads((store.model_dir("v1") / "card.json").read_text())
    fairness = card["fairness"]
    assert fairness["gap"] == "DemographicParity" and fairness["positiveClass"] == "yes"
    group = fairness["features"]["group"]
    by_name = {g["group"]: g for g in group["groups"]}
    assert set(by_name) == {"a", "b"}
    assert by_name["a"]["count"] + by_name["b"]["count"] == card["holdout"]["rows"] == 200
    # a's rows are predicted `yes` about half the time, b's about a quarter (x2 - 1 + x1 > 0).
    assert by_name["a"]["selectionRate"] - by_name["b"]["selectionRate"] > 0.15
    assert group["demographicParityDifference"] == pytest.approx(
        by_name["a"]["selectionRate"] - by_name["b"]["selectionRate"]
    )
    assert 0 <= group["equalizedOddsDifference"] < 0.3, "the labels are as biased as the predictions"
    assert all(g[m] > 0.8 for g in group["groups"] for m in ("accuracy", "f1_macro"))
    assert fairness["largest"] == {"feature": "group", "value": group["demographicParityDifference"]}
    assert v1["fairness"] == {"gap": "DemographicParity", **fairness["largest"]}

    importance = card["importance"]
    assert importance["metric"] == "f1_macro" and importance["rows"] == 200 and importance["repeats"] == 5
    ranked = [f["feature"] for f in importance["features"]]
    assert ranked[-1] == "noise" and set(ranked) == {"x1", "x2", "noise"}, "a sensitive non-input is absent"
    assert importance["features"][0]["mean"] > 0.2 and abs(importance["features"][-1]["mean"]) < 0.02

    markdown = (store.model_dir("v1") / "card.md").read_text()
    assert "## What the model relies on" in markdown and "| `noise` |" in markdown
    assert "## Groups (fairness, on the held-out rows)" in markdown and "### `group`" in markdown
    assert f"Largest DemographicParity difference: {group['demographicParityDifference']:.4f}" in markdown


def test_a_challenger_past_the_fairness_bound_is_rejected(
    trained: tuple[WorkflowStore, dict[str, Any], dict[str, Any]],
) -> None:
    _, _, v2 = trained
    gap = v2["fairness"]["value"]
    assert gap > 0.15 and v2["champion"]["version"] == "v1"
    run = TrainingRun("v2", Trigger.MANUAL, "h1", "Succeeded", v2)

    rejected = decide(spec(max_gap=0.1), run, v2["metrics"])
    assert (rejected.outcome, rejected.reason) == ("Rejected", "FairnessGap")
    assert f"is {gap:.4f} on 400 held-out rows, above spec.promotion.maxFairnessGap 0.1" in rejected.message
    assert "'group'" in rejected.message and "v1 keeps serving" in rejected.message

    judged = decide(spec(max_gap=0.5), run, v2["metrics"])
    assert judged.reason in ("Better", "NotBetter"), "within the bound, the metric decides"
    assert decide(spec(), run, v2["metrics"]).reason == judged.reason, "no bound, no gate"


def test_the_monitor_shows_the_groups_on_labelled_predictions_of_recorded_inputs(tmp_path: Path) -> None:
    """`group` a model input this time: the serving Pods record it, and the monitoring job's per-group
    figures on 600 labelled predictions show the bias the card showed on the holdout. `site` is no input:
    the result says it was not recorded."""
    (tmp_path / "data").mkdir()
    biased(800, seed=1).to_csv(tmp_path / "data" / "part-1.csv", index=False)
    store = WorkflowStore(tmp_path, "fair-inputs")
    train_apart(spec(group_is_input=True), store, "v1")
    serve_and_label(store, biased(600, seed=3))

    checked = performance.check(
        store, "v1", "f1_macro", 200, 200, sensitive_features=["group", "site"], gap="DemographicParity"
    )
    assert checked["status"] == "ok" and checked["labelledRows"] == 600
    found = checked["fairness"]
    assert found["notRecorded"] == ["site"] and "site: not a model input" in found["message"]
    assert found["largest"]["feature"] == "group" and "features" not in found, "the tables are in the result"
    group = json.loads((store.root / checked["result"]).read_text())["fairness"]["features"]["group"]
    by_name = {g["group"]: g for g in group["groups"]}
    assert by_name["a"]["count"] + by_name["b"]["count"] == 600
    assert by_name["a"]["selectionRate"] - by_name["b"]["selectionRate"] > 0.15
    assert found["largest"]["value"] == group["demographicParityDifference"]


def test_block_permutation_is_scikit_learns_without_the_preprocessing_per_shuffle() -> None:
    """On a pipeline of ours (scaled numbers, a one-hot category): the same ranking and, up to the
    shuffles' noise, the same drops as scikit-learn's permutation importance of the whole pipeline."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame({f"x{i}": rng.normal(size=1300) for i in range(4)}).assign(
        region=rng.choice(["a", "b", "c"], 1300)
    )
    score = x["x0"] + 2 * x["x1"] + (x["region"] == "a") + rng.normal(0, 0.5, 1300)
    y = pd.Series(np.where(score > 0.5, "yes", "no"))
    schema = FeatureSchema("label", ["x0", "x1", "x2", "x3"], ["region"])
    model = pipeline.build(
        ModelSpec(estimator="sklearn.linear_model.LogisticRegression"), schema, ("sklearn.",)
    )
    model.fit(x.iloc[:1000], y.iloc[:1000])
    held_x, held_y = x.iloc[1000:].reset_index(drop=True), y.iloc[1000:].reset_index(drop=True)
    blocks = pipeline.feature_blocks(model.named_steps["features"], schema)
    assert blocks is not None and blocks["region"] == [4, 5, 6]

    whole = importance.permutation(model, held_x, held_y, "f1_macro")
    preprocessed = model.named_steps["features"].transform(held_x)
    by_block = importance.permutation_of_blocks(
        model.named_steps["estimator"], preprocessed, held_y, blocks, "f1_macro"
    )
    assert whole is not None and by_block is not None and by_block["rows"] == whole["rows"] == 300
    ranked = [[f["feature"] for f in found["features"]][:3] for found in (whole, by_block)]
    assert ranked[0] == ranked[1] == ["x1", "x0", "region"]
    means = [{f["feature"]: f["mean"] for f in found["features"]} for found in (whole, by_block)]
    assert all(abs(means[0][name] - means[1][name]) < 0.03 for name in means[0])
