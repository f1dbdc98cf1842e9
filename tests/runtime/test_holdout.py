"""Champion and challenger are judged on rows neither was trained on: accumulating data, out-of-time
splits, and too few unseen rows. Real training (the trainer's own program), real scikit-learn."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from mlworkflow.api.v1alpha1 import MLWorkflowSpec, MLWorkflowStatus, Trigger
from mlworkflow.desired.lifecycle import Observed, ServingState, TrainingRun, decide
from mlworkflow.desired.plan import plan
from mlworkflow.runtime import holdout
from mlworkflow.runtime.store import WorkflowStore
from runtime.conftest import train_apart

FEATURES = ["x1", "x2"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def world(rows: int, new: bool, seed: int, noise: float = 0.1) -> pd.DataFrame:
    """Before: label = x1 + x2 > 0 around x1 = 0. After: new customers at x1 = 3, where only x2 decides.
    A tenth of the labels are flipped, so a model that memorises its rows looks perfect on them."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(3.0 if new else 0.0, 1.0, rows)
    x2 = rng.normal(0.0, 1.0, rows)
    label = ((x2 > 0) if new else (x1 + x2 > 0)) ^ (rng.random(rows) < noise)
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label.astype(int)})


def spec(**data: Any) -> MLWorkflowSpec:
    return MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/part-*.csv", "target": "label", **data},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 30, "random_state": 0},
            },
            "training": {"crossValidation": 0},
            "storage": {"path": "/unused"},
        }
    )


def train(
    store: Path, workflow: MLWorkflowSpec, version: str, trigger: Trigger, champion: str | None = None
) -> dict[str, Any]:
    """The trainer's program, as the Pod runs it, on workflow `w`; its termination message."""
    return train_apart(workflow, WorkflowStore(store, "w"), version, trigger, champion)


def model_dir(store: Path, version: str) -> Path:
    return store / "w" / "bentoml" / "models" / "w" / version


def test_appended_rows_a_leaky_holdout_would_misjudge_promote_the_better_model(tmp_path: Path) -> None:
    """The issue's case, generated: prints the decision and both models' scores (`pytest -s`)."""
    (tmp_path / "data").mkdir()
    old, new = world(1000, new=False, seed=1), world(250, new=True, seed=2)
    old.to_csv(tmp_path / "data" / "part-1.csv", index=False)
    workflow = spec()
    first = train(tmp_path, workflow, "v1", Trigger.INITIAL)
    trained_rows = np.load(model_dir(tmp_path, "v1") / holdout.ROWS_FILE)
    assert len(trained_rows) == 800 and np.all(np.diff(trained_rows.astype(np.float64)) > 0)

    # The pipeline appends labelled rows of the new world to the same source; drift asks for a retraining.
    new.to_csv(tmp_path / "data" / "part-2.csv", index=False)
    result = train(tmp_path, workflow, "v2", Trigger.DRIFT, champion="v1")
    run = TrainingRun("v2", Trigger.DRIFT, "h", "Succeeded", result)
    decision = decide(workflow, run, result["metrics"])
    assert result["holdout"] == {"rows": 250, "excludedRows": 800, "split": "Random"}
    assert (decision.outcome, decision.reason) == ("Promoted", "Better"), decision.message
    assert "250 held-out rows" in decision.message and "800 rows excluded as seen by v1" in decision.message
    # The planner, as the operator and the local runner run it: v2 replaces the served v1.
    runs = [TrainingRun("v1", Trigger.INITIAL, "h", "Succeeded", first), run]
    serving = plan(workflow, Observed(1, "h", MLWorkflowStatus(), runs[:1]), NOW).status
    served = plan(workflow, Observed(1, "h", serving, runs, ServingState("v1", True)), NOW)
    assert served.deploy == "v2" and served.status.model is not None and served.status.model.version == "v2"
    scored = {"challenger": result["metrics"], "champion": result["champion"]["metrics"]}
    unseen = {name: metrics["f1_macro"] for name, metrics in scored.items()}

    # The input really is the fault's: on a random split of all rows (the holdout as it was), the champion
    # scores on rows it memorised and the same challenger would have been rejected. The rows as the trainer
    # reads them: a float read back from CSV may differ in its last bit from the one written.
    parts = [pd.read_csv(tmp_path / "data" / f"part-{n}.csv") for n in (1, 2)]
    everything = pd.concat(parts, ignore_index=True)
    x, y = everything[FEATURES], everything["label"]
    x_train, x_leaky, y_train, y_leaky = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    memorised = np.isin(holdout.row_hashes(everything.loc[x_leaky.index]), trained_rows).mean()
    champion = joblib.load(model_dir(tmp_path, "v1") / "pipeline.joblib")
    leaky_challenger = joblib.load(model_dir(tmp_path, "v2") / "pipeline.joblib").fit(x_train, y_train)
    leaky = {
        "champion": f1_score(y_leaky, champion.predict(x_leaky), average="macro"),
        "challenger": f1_score(y_leaky, leaky_challenger.predict(x_leaky), average="macro"),
    }
    leaky_result = {**result, "metrics": {"f1_macro": leaky["challenger"]}}
    leaky_result["champion"] = {"version": "v1", "metrics": {"f1_macro": leaky["champion"]}}
    flipped = decide(
        workflow, TrainingRun("v2", Trigger.DRIFT, "h", "Succeeded", leaky_result), leaky_result["metrics"]
    )
    assert (flipped.outcome, flipped.reason) == ("Rejected", "NotBetter"), f"no flip: {leaky}"
    # And the decision is right: on rows of today's world that neither model saw, the challenger is better.
    fresh = pd.concat([world(500, new=False, seed=8), world(500, new=True, seed=9)])
    challenger = joblib.load(model_dir(tmp_path, "v2") / "pipeline.joblib")
    today = {
        name: f1_score(fresh["label"], model.predict(fresh[FEATURES]), average="macro")
        for name, model in (("challenger", challenger), ("champion", champion))
    }
    assert today["challenger"] > today["champion"], today
    card = json.loads((model_dir(tmp_path, "v2") / "card.json").read_text())
    assert card["holdout"] == {"rows": 250, "excludedRows": 800, "split": "Random", "champion": "v1"}
    assert "800 rows excluded as seen by v1" in (model_dir(tmp_path, "v2") / "card.md").read_text()
    print(
        f"\n{served.status.model.version} serves ({decision.reason}): f1_macro on the 250 held-out rows "
        f"neither model saw (800 excluded as seen by v1): v2 {unseen['challenger']:.4f}, "
        f"v1 {unseen['champion']:.4f}; "
        f"on 1,000 fresh rows: v2 {today['challenger']:.4f}, v1 {today['champion']:.4f}. On a leaky random "
        f"holdout of all rows ({len(y_leaky)} rows, {memorised:.0%} trained on by v1) the challenger, "
        f"retrained on the rest, scores {leaky['challenger']:.4f} against v1's {leaky['champion']:.4f}: "
        f"{flipped.outcome} ({flipped.reason})."
    )


def test_retraining_on_the_same_rows_is_judged_on_the_champions_holdout_only(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    world(300, new=False, seed=3).to_csv(tmp_path / "data" / "part-1.csv", index=False)
    workflow = spec()
    train(tmp_path, workflow, "v1", Trigger.INITIAL)
    result = train(tmp_path, workflow, "v2", Trigger.SCHEDULE, champion="v1")
    assert result["holdout"] == {"rows": 60, "excludedRows": 240, "split": "Random"}
    decision = decide(
        workflow, TrainingRun("v2", Trigger.SCHEDULE, "h", "Succeeded", result), result["metrics"]
    )
    assert (decision.outcome, decision.reason) == ("Rejected", "InsufficientHoldout")
    assert "only 60 held-out rows" in decision.message and "at least 100" in decision.message


def test_out_of_time_the_holdout_is_the_newest_unseen_rows() -> None:
    hashes = np.arange(10, dtype=np.uint64) * 7919
    times = pd.Series(pd.to_datetime([f"2026-01-{d:02d}" for d in (5, 1, 9, 2, 8, 3, 10, 4, 7, 6)], utc=True))
    first = holdout.choose(hashes, 0.3, seed=0, times=times)
    assert first.split == "OutOfTime" and list(first.holdout) == [2, 4, 6], "days 9, 8 and 10"
    # Rows the champion trained on never judge it, even when they are the newest.
    seen = hashes[[2, 6]]
    later = holdout.choose(hashes, 0.3, seed=0, seen=seen, times=times)
    assert list(later.holdout) == [4, 8, 9] and later.excluded == 2, "days 8, 7 and 6"
    assert sorted([*later.train, *later.holdout]) == list(range(10))


def test_a_first_split_is_scikit_learns() -> None:
    labels = pd.Series(np.random.default_rng(0).integers(0, 3, 200))
    hashes = np.arange(200, dtype=np.uint64)
    chosen = holdout.choose(hashes, 0.2, seed=0, stratify=labels)
    _, expected = train_test_split(np.arange(200), test_size=0.2, random_state=0, stratify=labels)
    assert list(chosen.holdout) == sorted(expected) and chosen.excluded is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["2026-01-01", None], "has 1 missing values"),
        (["2026-01-01", "soon"], "neither numbers nor date-times"),
    ],
)
def test_a_bad_time_column_names_it(values: list[str | None], message: str) -> None:
    from mlworkflow.runtime.data import DataError, event_times

    with pytest.raises(DataError, match=message):
        event_times(pd.DataFrame({"ts": values}), "ts")
    with pytest.raises(DataError, match=r"'when' \(spec.data.timeColumn\) is missing"):
        event_times(pd.DataFrame({"ts": values}), "when")


def test_with_a_time_column_the_trainer_holds_out_the_newest_rows(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    frame = world(200, new=False, seed=4)
    frame["ts"] = pd.date_range("2026-01-01", periods=200, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ")
    frame = frame.sample(frac=1, random_state=0)  # the file is in no particular order
    frame.to_csv(tmp_path / "data" / "part-1.csv", index=False)
    workflow = spec(timeColumn="ts")
    workflow.training.cross_validation = 3
    result = train(tmp_path, workflow, "v1", Trigger.INITIAL)
    assert result["holdout"] == {"rows": 40, "excludedRows": None, "split": "OutOfTime"}
    card = json.loads((model_dir(tmp_path, "v1") / "card.json").read_text())
    assert card["schema"]["numeric"] == FEATURES, "the time column is never a feature"
    assert set(card["crossValidation"]) >= {"f1_macro_mean", "accuracy_mean"}
    written = pd.read_csv(tmp_path / "data" / "part-1.csv")
    oldest = written.sort_values("ts").iloc[:160][[*FEATURES, "label"]]
    trained = np.load(model_dir(tmp_path, "v1") / holdout.ROWS_FILE)
    assert np.array_equal(trained, np.unique(holdout.row_hashes(oldest))), "trained on the 160 oldest rows"

    # A backfill: rows of hours 50-149 arrive late. The 60 newest rows would include v1's training rows of
    # hours 150-159; v2 is judged on the 60 newest that v1 never saw: its holdout (hours 160-199) and the
    # backfill's hours 130-149.
    late = world(100, new=False, seed=5)
    late["ts"] = pd.date_range("2026-01-03T02:00", periods=100, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ")
    late.to_csv(tmp_path / "data" / "part-2.csv", index=False)
    result = train(tmp_path, workflow, "v2", Trigger.DRIFT, champion="v1")
    assert result["holdout"] == {"rows": 60, "excludedRows": 160, "split": "OutOfTime"}
    everything = pd.concat([written, pd.read_csv(tmp_path / "data" / "part-2.csv")], ignore_index=True)
    hashes = holdout.row_hashes(everything[[*FEATURES, "label"]])
    unseen = everything[~np.isin(hashes, trained)]
    newest = holdout.row_hashes(unseen.sort_values("ts").iloc[-60:][[*FEATURES, "label"]])
    held_out = np.setdiff1d(hashes, np.load(model_dir(tmp_path, "v2") / holdout.ROWS_FILE))
    assert np.array_equal(held_out, np.unique(newest)), "the 60 newest of the 140 rows v1 never saw"
    assert not np.isin(held_out, trained).any()
