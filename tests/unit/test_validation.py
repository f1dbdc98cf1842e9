"""What the schema cannot check: estimators, refused before anything is created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.desired.validation import check_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spec(example: str, **model: Any) -> MLWorkflowSpec:
    document = yaml.safe_load((EXAMPLES / example).read_text())["spec"]
    document.setdefault("model", {}).update(model)
    return MLWorkflowSpec.model_validate(document)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_the_examples_pass(example: str) -> None:
    assert check_spec(spec(example)) is None


@pytest.mark.parametrize(
    ("model", "reason", "names"),
    [
        ({"estimator": "xgboost.XGBClassifier"}, "EstimatorNotAllowed", "xgboost.XGBClassifier"),
        (
            {"estimator": "sklearn.ensemble.RandomForestClassifer"},
            "EstimatorNotFound",
            "RandomForestClassifer",
        ),
        ({"estimator": "sklearn.base.clone"}, "EstimatorNotFound", "not a scikit-learn estimator"),
        ({"params": {"n_estimatorz": 5}}, "InvalidModelParams", "n_estimatorz"),
        (
            {"estimator": "sklearn.linear_model.LinearRegression", "params": {}},
            "EstimatorTaskMismatch",
            "classifier",
        ),
    ],
)
def test_refusals_name_the_field_and_the_problem(model: dict[str, Any], reason: str, names: str) -> None:
    refusal = check_spec(spec("webservice-iris.yaml", **model))
    assert refusal is not None
    assert refusal.reason == reason
    assert names in refusal.message and "spec.model.estimator" in refusal.message


def test_the_allow_list_is_the_admins() -> None:
    workflow = spec("webservice-iris.yaml")
    refusal = check_spec(workflow, allowed_prefixes=("sklearn.linear_model.",))
    assert refusal is not None and refusal.reason == "EstimatorNotAllowed"
    assert check_spec(workflow, allowed_prefixes=("sklearn.ensemble.",)) is None


def test_online_learning_needs_partial_fit() -> None:
    refusal = check_spec(
        spec("onlinelearning-wine.yaml", estimator="sklearn.ensemble.RandomForestClassifier", params={})
    )
    assert refusal is not None and refusal.reason == "EstimatorNotIncremental"


def test_automl_candidates_are_checked_too() -> None:
    document = yaml.safe_load((EXAMPLES / "automl-breast-cancer.yaml").read_text())["spec"]
    document["automl"]["candidates"][1]["params"]["max_iterations"] = [10]
    refusal = check_spec(MLWorkflowSpec.model_validate(document))
    assert refusal is not None and refusal.reason == "InvalidModelParams"
    assert "spec.automl.candidates[1].estimator" in refusal.message and "max_iterations" in refusal.message


def test_a_class_that_needs_arguments_is_not_an_estimator() -> None:
    refusal = check_spec(spec("webservice-iris.yaml", estimator="sklearn.pipeline.Pipeline", params={}))
    assert refusal is not None and refusal.reason == "EstimatorNotFound"
    assert "constructor arguments" in refusal.message


def test_a_schedule_the_schema_let_through_is_still_checked() -> None:
    workflow = spec("webservice-iris.yaml")
    workflow.training.schedule = "61 * * * *"  # five cron-looking fields, minute out of range
    refusal = check_spec(workflow)
    assert refusal is not None and refusal.reason == "InvalidSchedule"
    assert "spec.training.schedule" in refusal.message and "out of range" in refusal.message


def test_a_search_space_the_schema_let_through_but_the_search_cannot_use_is_refused() -> None:
    document = yaml.safe_load((EXAMPLES / "automl-breast-cancer.yaml").read_text())["spec"]
    document["automl"]["candidates"][0]["params"]["max_depth"] = {"low": 12, "high": 2}
    refusal = check_spec(MLWorkflowSpec.model_validate(document))
    assert refusal is not None and refusal.reason == "InvalidSearchSpace"
    assert refusal.message.startswith("spec.automl.candidates[0].params.max_depth")


def test_the_operator_checks_estimators_without_loading_scikit_learn() -> None:
    """The operator's process never imports scikit-learn (with numpy, scipy and pandas ~220 MiB): a process
    without it gets the same refusals from a short-lived subprocess (`estimators.facts`)."""
    code = """
import sys
from pathlib import Path
import yaml
from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.desired.validation import check_spec
import mlworkflow.controller.handlers  # the operator's whole import graph
document = yaml.safe_load(Path(sys.argv[1]).read_text())["spec"]
good = MLWorkflowSpec.model_validate(document)
document["model"].update(estimator="sklearn.linear_model.LinearRegression", params={})
wrong = check_spec(MLWorkflowSpec.model_validate(document))
document["model"].update(estimator="sklearn.ensemble.RandomForestClassifer")
missing = check_spec(MLWorkflowSpec.model_validate(document))
print(check_spec(good), wrong.reason, missing.reason, "sklearn" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLES / "webservice-iris.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=True,
    )
    assert done.stdout.split() == ["None", "EstimatorTaskMismatch", "EstimatorNotFound", "False"]


@pytest.mark.parametrize(
    ("online", "model", "problem"),
    [
        ({"classes": [0, 1, "1"]}, {}, "1 declared twice"),
        ({"classes": [0]}, {}, "at least two classes"),
        (
            {"classes": [0, 1]},
            {"task": "regression", "estimator": "sklearn.linear_model.SGDRegressor", "params": {}},
            "spec.model.task is regression",
        ),
    ],
)
def test_declared_classes_are_checked(online: dict[str, Any], model: dict[str, Any], problem: str) -> None:
    refusal = check_spec(spec("onlinelearning-wine.yaml", **model).model_copy(update={"online": None}))
    assert refusal is None  # nothing declared, nothing checked
    document = yaml.safe_load((EXAMPLES / "onlinelearning-wine.yaml").read_text())["spec"]
    document["online"].update(online)
    document["model"].update(model)
    refusal = check_spec(MLWorkflowSpec.model_validate(document))
    assert refusal is not None and refusal.reason == "InvalidClasses"
    assert refusal.message.startswith("spec.online.classes: ") and problem in refusal.message


def test_declared_classes_may_be_more_than_the_warm_up_holds() -> None:
    document = yaml.safe_load((EXAMPLES / "onlinelearning-wine.yaml").read_text())["spec"]
    document["online"]["classes"] = [0, 1, 2, 3]  # wine has 0, 1, 2: the training checks the data
    assert check_spec(MLWorkflowSpec.model_validate(document)) is None
