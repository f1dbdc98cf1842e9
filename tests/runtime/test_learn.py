"""The online learner (`python -m mlworkflow.runtime.learn`) on a file source: it improves on a clean stream,
quarantines every kind of poisoned mini-batch without its canary score dropping, snapshots and archives
what it learned, resumes after a restart without learning a row twice, and refuses an estimator without
partial_fit."""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
)

from learning import (
    FEATURES,
    WARM_ROWS,
    archived,
    log_of,
    online_frame,
    online_spec,
    progress,
    published,
    snapshots,
    start_learner,
    stop,
    warm_up,
)
from mlworkflow.api import exitcodes
from mlworkflow.api.v1alpha1 import Guardrails, MLWorkflowSpec
from mlworkflow.runtime import learn
from mlworkflow.runtime.data import FeatureSchema
from mlworkflow.runtime.guardrails import Guard, scores
from mlworkflow.runtime.model import LoadedModel
from support import wait_for

BATCH = 256
CLEAN_BATCHES = 20
MAX_METRIC_DROP = 0.05


def poison(batch: pd.DataFrame, kind: str) -> pd.DataFrame:
    """A mini-batch made bad in one way; each is a guardrail's case."""
    bad = batch.copy()
    rows = bad.index[: len(bad) // 2]
    if kind == "flipped":  # labels permuted: class shares unchanged, only the canary can tell
        bad["label"] = (bad["label"] + 1) % 3
    elif kind == "nan":
        bad.loc[rows, "f03"] = np.nan
    elif kind == "missing":
        bad = bad.drop(columns=["f07"])
    elif kind == "range":
        bad.loc[rows, "f11"] = 1e4
    elif kind == "class":
        bad.loc[rows, "label"] = 7
    return bad


EXPECTED = {
    "flipped": "CanaryDrop",
    "nan": "InvalidRows",
    "missing": "MissingColumn",
    "range": "OutOfRange",
    "class": "UnknownClass",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_learns_from_files_and_quarantines_poisoned_batches(tmp_path: Path) -> None:
    frame = online_frame(WARM_ROWS + (CLEAN_BATCHES + len(EXPECTED) + 1) * BATCH)
    spec = online_spec(
        {"path": "incoming/*.csv", "pollIntervalSeconds": 1},
        batchSize=BATCH,
        maxWaitSeconds=0.2,
        guardrails={"maxInvalidFraction": 0.1, "maxMetricDrop": MAX_METRIC_DROP},
        snapshots={"everySamples": 1024, "keep": 3},
    )
    store = warm_up(tmp_path, "stream", frame.iloc[:WARM_ROWS], spec)
    # spec.online.classes must be classes the warm-up trained v1 on: its estimator's classes are fixed.
    unknown = spec.model_copy(deep=True)
    assert unknown.online is not None
    unknown.online.classes = [0, 1, 2, 7]
    assert start_learner(store, unknown).wait(60) == exitcodes.INVALID_INPUT, log_of(store)
    termination = store.root / f"termination-{store.workflow}"
    refused = json.loads(termination.read_text())
    assert refused["reason"] == "ClassesUnknown" and "[7] not among the classes" in refused["message"], (
        refused
    )
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stream = frame.iloc[WARM_ROWS:]
    batches = [stream.iloc[i * BATCH : (i + 1) * BATCH] for i in range(CLEAN_BATCHES + len(EXPECTED) + 1)]
    for i in range(CLEAN_BATCHES):
        batches[i].to_csv(incoming / f"part-{i:03d}.csv", index=False)
    # Each poisoned batch after a clean one, spread over the stream (names sort between the clean parts).
    for n, kind in enumerate(EXPECTED):
        poison(batches[CLEAN_BATCHES + n], kind).to_csv(
            incoming / f"part-{3 * n + 2:03d}-{kind}.csv", index=False
        )
    clean = CLEAN_BATCHES * BATCH

    port = free_port()
    learner = start_learner(store, spec, port=port)
    try:
        wait_for(
            lambda: (
                published(store).get("online", {}).get("samplesSeen") == clean
                and progress(store).get("batchesQuarantined") == len(EXPECTED)
            ),
            60,
            "every clean row learned and every poisoned batch quarantined",
        )
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        code = stop(learner)
    assert code == 0, log_of(store)

    report = progress(store)
    assert {q["reason"] for q in report["quarantines"]} == set(EXPECTED.values()), report["quarantines"]
    assert report["rollbacks"] == 1  # the flipped labels: the only batch the canary refused
    for record in report["quarantines"]:
        reason = json.loads((store.quarantine / f"{record['batch']}.json").read_text())
        assert reason["reason"] == record["reason"] and reason["rows"] == BATCH
        assert len(pd.read_parquet(store.quarantine / f"{record['batch']}.parquet")) == BATCH
    assert f"mlworkflow_online_samples_total {float(clean)}" in metrics
    assert 'mlworkflow_online_batches_total{outcome="quarantined",reason="CanaryDrop"} 1.0' in metrics
    assert f'mlworkflow_online_snapshot_info{{version="{report["snapshot"]}"}} 1.0' in metrics

    # The model improved, and no snapshot ever scored below the start by more than clean noise.
    start_score = json.loads((store.model_dir("v1") / "card.json").read_text())["metrics"]["f1_macro"]
    kept = snapshots(store)
    assert len(kept) <= 3 and kept[-1]["version"] == report["snapshot"]
    newest = published(store)
    assert newest["online"]["canary"]["score"] > start_score + 0.02, (start_score, newest["online"]["canary"])
    assert newest["metrics"]["f1_macro"] == pytest.approx(newest["online"]["canary"]["score"])
    assert min(card["online"]["canary"]["score"] for card in kept) >= start_score - MAX_METRIC_DROP
    assert newest["online"]["position"]["filesDone"] >= CLEAN_BATCHES + len(EXPECTED) - 1
    assert newest["backend"] == "sklearn" and newest["trigger"] == "Online"
    assert (store.model_dir(newest["version"]) / "trained-rows.npy").exists()
    # Exactly the applied rows are archived: the clean ones, none of the quarantined.
    rows = archived(store)
    assert len(rows) == clean and list(rows.columns) == [*FEATURES, "label"]

    # A restart resumes from the published snapshot's position: only the new file is learned. The archive
    # is bounded: an hour older than archive.retentionHours (24 by default) is removed.
    batches[-1].to_csv(incoming / "part-999.csv", index=False)
    expired = store.stream_archive / (datetime.now(UTC) - timedelta(hours=26)).strftime("%Y-%m-%d-%H")
    expired.mkdir()
    rows.to_parquet(expired / "part-v1.0.parquet")
    learner = start_learner(store, spec)
    try:
        wait_for(
            lambda: published(store).get("online", {}).get("samplesSeen") == clean + BATCH,
            60,
            "the new file learned after a restart",
        )
    finally:
        assert stop(learner) == 0, log_of(store)
    assert not expired.exists()
    assert len(archived(store)) == clean + BATCH
    assert progress(store)["batchesQuarantined"] == len(EXPECTED)


def test_learns_a_declared_class_the_warm_up_lacks(tmp_path: Path) -> None:
    """spec.online.classes [0, 1, 2] and a warm-up without class 2: v1 knows all three (its card says so,
    its probabilities have a column for each), the learner learns class 2 from the stream alone and its
    snapshot predicts it as serving answers; a label declared nowhere (7) is still an unknown class."""
    frame = online_frame(2 * WARM_ROWS + 10 * BATCH, seed=1)
    warm = frame.iloc[: 2 * WARM_ROWS]
    warm = warm[warm["label"] != 2].iloc[:WARM_ROWS]
    stream, fresh = frame.iloc[2 * WARM_ROWS : -2 * BATCH], frame.iloc[-2 * BATCH :]
    spec = online_spec(
        {"path": "incoming/*.csv", "pollIntervalSeconds": 1},
        batchSize=BATCH,
        maxWaitSeconds=0.2,
        classes=[0, 1, 2],
        snapshots={"everySamples": len(stream)},
    )
    store = warm_up(tmp_path, "declared", warm, spec)
    start = json.loads((store.model_dir("v1") / "card.json").read_text())
    assert start["classes"] == [0, 1, 2] and start["pipeline"]["fit"]["method"] == "partial_fit"
    assert start["pipeline"]["fit"]["epochs"] > 1  # as many as SGDClassifier.fit runs on these rows
    assert "roc_auc" in start["metrics"], "a holdout without class 2 still has a ROC AUC (of 0 and 1)"
    x_fresh = fresh[FEATURES].to_dict("records")
    served = LoadedModel(store.model_dir("v1"))
    before = served.predict(served.checker.from_records(x_fresh), probabilities=True)
    assert before.probabilities is not None and before.probabilities.shape == (len(fresh), 3)
    assert not (before.predictions == 2).any(), "v1 never saw class 2"

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    stream.to_csv(incoming / "part-000.csv", index=False)
    poison(fresh.iloc[:BATCH], "class").to_csv(incoming / "part-001-class.csv", index=False)
    learner = start_learner(store, spec)
    try:
        wait_for(
            lambda: (
                published(store).get("online", {}).get("samplesSeen") == len(stream)
                and progress(store).get("batchesQuarantined") == 1
            ),
            60,
            "the stream learned and the batch of class 7 quarantined",
        )
    finally:
        assert stop(learner) == 0, log_of(store)
    assert [q["reason"] for q in progress(store)["quarantines"]] == ["UnknownClass"]
    snapshot = published(store)
    assert snapshot["classes"] == [0, 1, 2]
    served = LoadedModel(store.model_dir(snapshot["version"]))
    after = served.predict(served.checker.from_records(x_fresh), probabilities=True)
    assert after.probabilities is not None and after.probabilities.shape == (len(fresh), 3)
    truth = fresh["label"].to_numpy()
    recall = float((after.predictions[truth == 2] == 2).mean())
    assert recall > 0.6, f"class 2 learned from the stream alone: recall {recall:.2f}"


def test_snapshots_carry_importance_and_fairness_on_the_canary(tmp_path: Path) -> None:
    """The first snapshot's card has the permutation importance and the per-group figures of `region` on
    the 300 canary rows; the snapshots within INSIGHT_SECONDS of it carry those (named as its), so the
    learner pays for them once a minute at most."""
    frame = online_frame(WARM_ROWS + 2 * BATCH)
    frame["region"] = np.where(frame["f00"] > 0, "north", "south")  # an input here, grouped too
    spec = online_spec(
        {"path": "incoming/*.csv", "pollIntervalSeconds": 1},
        batchSize=BATCH,
        maxWaitSeconds=0.2,
        snapshots={"everySamples": BATCH},
    ).model_dump(by_alias=True)
    spec["monitoring"]["fairness"] = {"sensitiveFeatures": ["region"]}
    declared = MLWorkflowSpec.model_validate(spec)
    store = warm_up(tmp_path, "insights", frame.iloc[:WARM_ROWS], declared)
    (tmp_path / "incoming").mkdir()
    frame.iloc[WARM_ROWS:].to_csv(tmp_path / "incoming" / "part-000.csv", index=False)
    learner = start_learner(store, declared)
    try:
        wait_for(
            lambda: published(store).get("online", {}).get("samplesSeen") == 2 * BATCH,
            60,
            "the stream learned",
        )
    finally:
        assert stop(learner) == 0, log_of(store)

    first, *later = snapshots(store)
    ranked = first["importance"]
    assert ranked["version"] == first["version"] == "v1.0" and ranked["rows"] == WARM_ROWS // 2
    assert {f["feature"] for f in ranked["features"]} == {*FEATURES, "region"}
    groups = {g["group"]: g["count"] for g in first["fairness"]["features"]["region"]["groups"]}
    assert set(groups) == {"north", "south"} and sum(groups.values()) == WARM_ROWS // 2
    assert later and all(card["importance"] == ranked for card in later), "carried, not computed again"
    assert "learn: importance and fairness of v1.0 on 300 canary rows in" in log_of(store)


def test_refuses_an_estimator_without_partial_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = online_spec({"path": "incoming/*.csv"}).model_copy(deep=True)
    assert spec.model is not None
    spec.model.estimator, spec.model.params = "sklearn.ensemble.RandomForestClassifier", {}
    monkeypatch.setenv("MLW_SPEC", spec.model_dump_json(by_alias=True))
    monkeypatch.setenv("MLW_START_VERSION", "v1")
    termination = tmp_path / "termination"
    code = learn.main([f"--store={tmp_path}", "--workflow=w", f"--termination-log={termination}"])
    assert code == exitcodes.INVALID_INPUT
    result = json.loads(termination.read_text())
    assert result["reason"] == "EstimatorNotIncremental"
    assert "RandomForestClassifier has no partial_fit" in result["message"]


def test_class_shift_is_measured_against_the_recent_shares() -> None:
    schema = FeatureSchema("label", ["x"], [])
    reference = pd.DataFrame({"x": [0.0, 1.0]})
    guard = Guard(
        schema, "classification", ["a", "b"], reference, Guardrails(maxClassShift=0.4), {"a": 0.5, "b": 0.5}
    )
    balanced = [{"x": 0.5, "label": label} for label in ["a", "b"] * 20]
    assert guard.check(balanced).reason is None
    one_class = [{"x": 0.5, "label": "a"}] * 40
    refused = guard.check(one_class)
    assert refused.reason == "ClassShift" and "0.50" in refused.message
    for _ in range(12):  # the recent shares follow accepted batches: a real change of mix is learned
        guard.accept(np.array(["a"] * 30 + ["b"] * 10))
    assert guard.check(one_class).reason is None


def test_canary_metrics_in_numpy_are_scikit_learns() -> None:
    """The canary's metrics, computed from the predictions in numpy, equal scikit-learn's, the macro means
    over the classes the canary holds (a label never predicted, one predicted but absent: left out,
    constant regression targets)."""
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b", "c"], 300)
    predicted = np.where(rng.random(300) < 0.7, truth, rng.choice(["a", "b", "d"], 300))
    held = ["a", "b", "c"]
    assert scores(truth, predicted, regression=False) == pytest.approx(
        {
            "accuracy": accuracy_score(truth, predicted),
            "precision_macro": precision_score(
                truth, predicted, labels=held, average="macro", zero_division=0
            ),
            "recall_macro": recall_score(truth, predicted, labels=held, average="macro", zero_division=0),
            "f1_macro": f1_score(truth, predicted, labels=held, average="macro", zero_division=0),
        },
        abs=1e-12,
    )
    for y in (rng.normal(size=100), np.ones(100)):
        for guess in (y + rng.normal(size=100), y.copy()):
            assert scores(y, guess, regression=True) == pytest.approx(
                {
                    "mse": mean_squared_error(y, guess),
                    "mae": mean_absolute_error(y, guess),
                    "r2": r2_score(y, guess),
                },
                abs=1e-12,
            )
