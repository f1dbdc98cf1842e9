"""Data checks and pipeline construction: problems are named before any model sees the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.v1alpha1 import DataSpec, ModelSpec
from mlworkflow.runtime import data, pipeline


def frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows).astype(float),
            "income": rng.normal(50_000, 10_000, rows),
            "city": rng.choice(["paris", "oslo", "lima"], rows),
            "label": rng.choice(["yes", "no"], rows),
        }
    )


def schema(df: pd.DataFrame, **features: list[str]) -> data.FeatureSchema:
    return data.resolve_schema(df, DataSpec(source="x.csv", target="label", features=features or {}))


def test_columns_are_typed_by_their_values_when_not_declared() -> None:
    resolved = schema(frame())
    assert (resolved.numeric, resolved.categorical) == (["age", "income"], ["city"])
    assert resolved.categories["city"] == ["lima", "oslo", "paris"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["label"]), "column 'label' (spec.data.target) is missing"),
        (lambda df: df.drop(columns=["income"]), "feature column 'income' is missing"),
        (lambda df: df.assign(age=["x"] + [1.0] * (len(df) - 1)), "column 'age' should be numeric"),
        (lambda df: df.assign(income=np.nan), "column 'income' has no value at all"),
        (
            lambda df: df.assign(income=[np.inf] + [1.0] * (len(df) - 1)),
            "column 'income' has infinite values",
        ),
        (lambda df: df.assign(label=[None] + ["yes"] * (len(df) - 1)), "has 1 missing values"),
        (lambda df: df.head(5), "only 5 rows"),
        (lambda df: df.assign(label="yes"), "single class"),
    ],
)
def test_bad_data_is_refused_naming_the_column(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    good = frame()
    resolved = schema(good, numeric=["age", "income"], categorical=["city"])
    with pytest.raises(data.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.check(mutate(good), resolved, "classification", folds=5)


def test_missing_categories_become_a_category_of_their_own() -> None:
    df = frame()
    df.loc[0, "city"] = None
    checked = data.check(df, schema(df), "classification", folds=5)
    assert checked.loc[0, "city"] == ""


def test_files_are_read_by_glob_and_hashed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    frame(30, seed=1).to_csv(tmp_path / "data" / "part-1.csv", index=False)
    frame(30, seed=2).to_parquet(tmp_path / "data" / "part-2.parquet", index=False)
    snapshot = data.load("data/part-*", tmp_path)
    assert snapshot.rows == 60 and snapshot.files == ["data/part-1.csv", "data/part-2.parquet"]
    assert len(snapshot.sha256) == 64
    with pytest.raises(data.DataError, match=r"no file matches 'data/none-\*.csv'"):
        data.load("data/none-*.csv", tmp_path)


def test_bundled_datasets_load_without_network() -> None:
    snapshot = data.load("sklearn://wine", Path("/nonexistent"))
    assert snapshot.rows == 178 and "target" in snapshot.frame.columns


def test_the_pipeline_has_the_switched_on_steps() -> None:
    resolved = schema(frame())
    model = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"C": 0.5})
    built = pipeline.build(model, resolved, ["sklearn."])
    transformers = {name: cols for name, _, cols in built.named_steps["features"].transformers}
    assert transformers == {"numeric": ["age", "income"], "categorical": ["city"]}
    assert [n for n, _ in built.named_steps["features"].transformers[0][1].steps] == ["impute", "scale"]
    assert built.named_steps["estimator"].C == 0.5
    bare = ModelSpec(
        estimator="sklearn.linear_model.LogisticRegression",
        preprocessing={"impute": False, "scale": False, "oneHot": False},
    )
    built = pipeline.build(bare, resolved, ["sklearn."])
    assert [name for name, _, _ in built.named_steps["features"].transformers] == ["numeric"]


def test_the_allow_list_guards_the_trainer_too() -> None:
    with pytest.raises(pipeline.ModelError, match="not under an allowed module prefix"):
        pipeline.build(ModelSpec(estimator="sklearn.svm.SVC"), schema(frame()), ["sklearn.linear_model."])


def test_invalid_param_values_are_model_errors() -> None:
    model = ModelSpec(estimator="sklearn.ensemble.RandomForestClassifier", params={"n_estimators": "many"})
    built = pipeline.build(model, schema(frame()), ["sklearn."])
    with pytest.raises(ValueError, match="n_estimators"):
        built.fit(frame().drop(columns=["label"]), frame()["label"])
