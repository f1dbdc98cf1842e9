"""The training runtime on real data: bundled datasets and generated CSV with categories and gaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from learning import online_frame, online_spec
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.train import TrainedModel
from runtime.conftest import churn_frame, churn_spec


def model_dir(store: WorkflowStore, version: str) -> Path:
    return store.bentoml_home / "models" / store.workflow / version


def card(store: WorkflowStore, version: str) -> dict[str, Any]:
    return dict(json.loads((model_dir(store, version) / "card.json").read_text()))


def test_a_version_lands_in_the_bentoml_store_with_its_card(
    churn_store: tuple[WorkflowStore, TrainedModel],
) -> None:
    store, trained = churn_store
    folder = model_dir(store, "v1")
    assert {"pipeline.joblib", "card.json", "card.md", "reference.parquet", "model.yaml"} <= {
        p.name for p in folder.iterdir()
    }
    written = card(store, "v1")
    assert written["data"]["files"] == ["data/churn-2026-01.csv"]
    assert written["data"]["rows"] == 1500 and len(written["data"]["sha256"]) == 64
    assert written["schema"]["numeric"] == ["tenure", "monthly"]
    assert written["schema"]["categorical"] == ["plan", "region"]
    assert set(written["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}
    assert written["metrics"]["roc_auc"] > 0.75, "the label depends on the features: the model must learn it"
    assert set(written["crossValidation"]) == {
        "accuracy_mean",
        "accuracy_std",
        "f1_macro_mean",
        "f1_macro_std",
    }
    assert written["libraries"]["scikit-learn"]
    assert "# Model card: churn v1" in (folder / "card.md").read_text()
    reference = pd.read_parquet(folder / "reference.parquet")
    assert list(reference.columns) == ["tenure", "monthly", "plan", "region"] and len(reference) == 1200
    assert trained.metrics == written["metrics"]


def test_onnx_serves_only_when_it_matches_scikit_learn(
    churn_store: tuple[WorkflowStore, TrainedModel],
) -> None:
    store, trained = churn_store
    written = card(store, "v1")
    assert written["onnx"]["exported"] is True
    # The check decides, and what it decided is what is stored and served.
    has_onnx = (model_dir(store, "v1") / "model.onnx").exists()
    assert has_onnx == written["onnx"]["verified"] == (trained.backend == "onnxruntime")
    if has_onnx:
        from mlworkflow.runtime.data import FeatureSchema
        from mlworkflow.runtime.onnx_export import OnnxPredictor

        schema = FeatureSchema.from_json(written["schema"])
        predictor = OnnxPredictor((model_dir(store, "v1") / "model.onnx").read_bytes(), schema, one_hot=True)
        pipeline = joblib.load(model_dir(store, "v1") / "pipeline.joblib")
        rows = churn_frame(300, seed=9).drop(columns=["churn"])
        rows["plan"] = rows["plan"].fillna("")
        onnx_labels, _ = predictor.run(predictor.feed_frame(rows))
        assert list(onnx_labels) == list(pipeline.predict(rows))


def test_regression_on_a_bundled_dataset(tmp_path: Path) -> None:
    from mlworkflow.api.v1alpha1 import MLWorkflowSpec
    from mlworkflow.runtime.train import train

    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "sklearn://diabetes", "target": "target"},
            "model": {
                "estimator": "sklearn.linear_model.Ridge",
                "task": "regression",
                "params": {"alpha": 1.0},
            },
            "storage": {"path": str(tmp_path)},
        }
    )
    trained = train(spec, WorkflowStore(tmp_path, "diabetes"), "v1", "Initial")  # type: ignore[arg-type]
    assert set(trained.metrics) == {"mse", "mae", "r2"} and trained.metrics["r2"] > 0.3
    assert trained.backend == "onnxruntime", "a linear pipeline converts exactly"
    import bentoml  # the store this process saved to (BentoML fixes it at first use)

    card = json.loads((Path(bentoml.models.get(trained.tag).path) / "card.json").read_text())
    assert card["classes"] is None and card["probabilities"] is False
    from mlworkflow.runtime.features import RequestError
    from mlworkflow.runtime.serve import LoadedModel

    model = LoadedModel(Path(bentoml.models.get(trained.tag).path))
    row = {name: 0.0 for name in model.schema.features}
    with pytest.raises(RequestError, match=r"gives no class probabilities.*ask for predictions only"):
        model.predict(model.checker.from_records([row]), probabilities=True)


def run_trainer(tmp_path: Path, spec_json: str) -> tuple[int, dict[str, Any]]:
    termination = tmp_path / "termination-log"
    env = {**os.environ, "MLW_SPEC": spec_json}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlworkflow.runtime.train",
            f"--store={tmp_path}",
            "--workflow=w",
            "--version=v1",
            f"--termination-log={termination}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(termination.read_text())


def test_the_trainer_reports_through_its_termination_message(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    churn_frame(200).to_csv(tmp_path / "data" / "churn-1.csv", index=False)
    code, summary = run_trainer(tmp_path, churn_spec(n_estimators=10).model_dump_json(by_alias=True))
    assert code == 0 and summary["status"] == "ok" and summary["version"] == "v1"
    assert summary["tag"] == "w:v1" and summary["rows"] == 200 and "f1_macro" in summary["metrics"]


@pytest.mark.parametrize(
    ("break_it", "reason", "message"),
    [
        (lambda f: f.drop(columns=["churn"]), "DataInvalid", "column 'churn' (spec.data.target) is missing"),
        (lambda f: f.assign(tenure="unknown"), "DataInvalid", "column 'tenure' should be numeric"),
    ],
)
def test_bad_data_fails_with_a_message_naming_the_column(
    tmp_path: Path,
    break_it,
    reason: str,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "data").mkdir()
    break_it(churn_frame(200)).to_csv(tmp_path / "data" / "churn-1.csv", index=False)
    spec = churn_spec(n_estimators=10).model_dump(by_alias=True)
    spec["data"]["features"] = {"numeric": ["tenure", "monthly"], "categorical": ["plan", "region"]}
    code, summary = run_trainer(tmp_path, json.dumps(spec))
    assert code == 2 and summary["status"] == "error" and summary["reason"] == reason
    assert message in summary["message"]


def test_a_warm_up_class_spec_online_classes_does_not_declare_is_refused(tmp_path: Path) -> None:
    """OnlineLearning: the classifier learns exactly spec.online.classes, so the warm-up data may not hold
    another one."""
    (tmp_path / "data").mkdir()
    online_frame(200).to_csv(tmp_path / "data" / "warm.csv", index=False)
    spec = online_spec({"path": "incoming/*.csv"}, classes=[0, 1])
    code, summary = run_trainer(tmp_path, spec.model_dump_json(by_alias=True))
    assert code == 2 and summary["status"] == "error" and summary["reason"] == "ClassNotDeclared", summary
    assert "'label' (the target) holds the classes 2, which spec.online.classes (0, 1)" in summary["message"]


def test_bad_params_fail_as_model_errors(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    churn_frame(200).to_csv(tmp_path / "data" / "churn-1.csv", index=False)
    code, summary = run_trainer(tmp_path, churn_spec(max_depth=-3).model_dump_json(by_alias=True))
    assert code == 2 and summary["reason"] == "ModelInvalid" and "max_depth" in summary["message"]


def test_a_classifier_without_probabilities_is_served_through_onnx_with_classes_only(tmp_path: Path) -> None:
    """SGDClassifier's default hinge loss has no predict_proba: its graph's second output is decision scores,
    which skl2onnx wrapped in {class: score} maps unless asked not to; serving then failed with a 500."""
    import bentoml

    from mlworkflow.api.v1alpha1 import MLWorkflowSpec
    from mlworkflow.runtime.features import RequestError
    from mlworkflow.runtime.model import LoadedModel
    from mlworkflow.runtime.train import train

    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "sklearn://iris", "target": "target"},
            "model": {"estimator": "sklearn.linear_model.SGDClassifier", "params": {"random_state": 0}},
            "storage": {"path": str(tmp_path)},
        }
    )
    trained = train(spec, WorkflowStore(tmp_path, "hinge"), "v1", "Initial")  # type: ignore[arg-type]
    assert trained.backend == "onnxruntime"
    model = LoadedModel(Path(bentoml.models.get(trained.tag).path))
    row = {
        "sepal length (cm)": 6.3,
        "sepal width (cm)": 3.3,
        "petal length (cm)": 6.0,
        "petal width (cm)": 2.5,
    }
    batch = model.checker.from_records([row, row])
    predicted = model.predict(batch)
    assert predicted.refused == {} and list(predicted.predictions) == list(
        model.pipeline.predict(pd.DataFrame([row, row]))
    )
    with pytest.raises(RequestError, match="gives no class probabilities"):
        model.predict(batch, probabilities=True)
