"""Data checks and pipeline construction: problems are named before any model sees the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlworkflow.api.v1alpha1 import DataSpec, ModelSpec
from mlworkflow.runtime import data, pipeline
from mlworkflow.runtime.data import FeatureSchema


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


@pytest.mark.parametrize(
    ("values", "boolean", "spelled"),
    [
        ([3, 3.0, "3", "3.0", "3.00", np.int64(3), np.float32(3.0)], False, "3"),
        ([-0.0, "-0", "0.0"], False, "0"),
        ([2.5, "2.50", np.float64(2.5)], False, "2.5"),
        ([True, "true", "TRUE", "True", np.True_], False, "True"),
        ([False, "false", "FALSE"], False, "False"),
        ([1, 1.0, "1", True, "true"], True, "True"),  # a boolean column: 1 is True
        ([None, np.nan, float("nan"), pd.NA], False, ""),
    ],
)
def test_each_category_has_one_spelling(values: list[object], boolean: bool, spelled: str) -> None:
    assert {data.category(v, boolean) for v in values} == {spelled}
    assert data.categories(values, boolean) == [spelled] * len(values)


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(1, "1"), (True, "True"), ("03", "03"), ("1e3", "1e3"), ("North", "North"), (" 3", " 3")],
)
def test_what_is_not_the_same_category_stays_apart(value: object, spelled: str) -> None:
    """1 and True outside a boolean column, a code with a leading zero, other notations, case and spaces."""
    assert data.category(value) == spelled


KNOWN = {
    "code": ["1", "2", "3"],  # a CSV's codes, read as numbers
    "flag": ["False", "True"],
    "answer": ["no", "yes"],
    "compass": ["e", "n", "s", "w"],
    "padded": ["01", "02", "3"],  # codes kept as text (Parquet strings)
    "bit": ["0", "1"],
}


@pytest.mark.parametrize(
    ("column", "values", "spelled"),
    [
        ("code", ["03", " 3", "3e0", "+3", 3.0], "3"),
        ("flag", ["yes", "Y", "on", "t", " true ", 1, "1.0"], "True"),
        ("flag", ["no", "off", "f", "N", 0], "False"),
        ("answer", [True, 1, "Yes", "y", "TRUE"], "yes"),
        ("answer", [False, 0, "off"], "no"),
        ("padded", [1, "1", "001"], "01"),
    ],
)
def test_a_spelling_the_model_does_not_know_is_the_category_it_spells(
    column: str, values: list[object], spelled: str
) -> None:
    """Against the training's categories: one category whatever the spelling, on every side."""
    assert FeatureSchema("y", [], list(KNOWN), KNOWN).canonical(column, values) == [spelled] * len(values)


@pytest.mark.parametrize(
    ("column", "value", "spelled"),
    [
        ("code", "1e3", "1e3"),  # 1000: no such code
        ("compass", False, "False"),  # "n" is North here, not no
        ("compass", "N", "N"),
        ("bit", True, "True"),  # 1 is a code, not a truth
        ("flag", "maybe", "maybe"),
    ],
)
def test_a_spelling_of_no_known_category_stays_unknown(column: str, value: object, spelled: str) -> None:
    assert FeatureSchema("y", [], list(KNOWN), KNOWN).canonical(column, [value]) == [spelled]


def test_a_meaning_two_known_categories_share_names_neither() -> None:
    schema = FeatureSchema("y", [], ["c"], {"c": ["01", "1"]})
    assert schema.canonical("c", ["001", 1, "01"]) == ["001", "1", "01"]


def test_an_incomplete_list_of_categories_renames_nothing() -> None:
    many = [f"{i:03d}" for i in range(data.MAX_CATEGORIES_IN_SCHEMA)]
    assert FeatureSchema("y", [], ["c"], {"c": many}).canonical("c", [1]) == ["1"]


def test_a_code_column_read_as_floats_has_the_codes_as_categories(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("code,flag,bit,label\n1,True,0,a\n,,1,b\n3,False,1,a\n")
    df = pd.read_csv(tmp_path / "codes.csv")
    assert df["code"].tolist()[::2] == [1.0, 3.0], "pandas reads the codes as floats"
    resolved = schema(df, categorical=["code", "flag", "bit"])
    assert resolved.categories == {"code": ["1", "3"], "flag": ["False", "True"], "bit": ["0", "1"]}
    assert resolved.is_boolean("flag") and not resolved.is_boolean("bit") and not resolved.is_boolean("code")
    assert resolved.canonical("flag", [1, "0"]) == ["True", "False"]
    assert resolved.canonical("bit", [1, True]) == ["1", "True"]
    checked = data.check(pd.concat([df] * 10), resolved, "classification", folds=2)
    assert checked["code"].tolist()[:3] == ["1", "", "3"] and checked["flag"].tolist()[:3] == [
        "True",
        "",
        "False",
    ]


def test_files_are_read_by_glob_and_hashed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    frame(30, seed=1).to_csv(tmp_path / "data" / "part-1.csv", index=False)
    frame(30, seed=2).to_parquet(tmp_path / "data" / "part-2.parquet", index=False)
    snapshot = data.load("data/part-*", tmp_path)
    assert snapshot.rows == 60 and snapshot.files == ["data/part-1.csv", "data/part-2.parquet"]
    assert len(snapshot.sha256) == 64
    with pytest.raises(data.DataError, match=r"no file matches 'data/none-\*.csv'"):
        data.load("data/none-*.csv", tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "names"),
    [
        ("empty.csv", b"", "No columns to parse"),
        ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "Expected 2 fields in line 3, saw 3"),
        ("latin.csv", b"a,b\n\xe9,1\n", "can't decode byte 0xe9"),
        ("quoted.csv", b'a,b\n"1,2\n', "EOF inside string"),
        ("plain.parquet", b"a,b\n1,2\n", "Parquet magic bytes not found"),
        ("plain.csv.gz", b"a,b\n1,2\n", "Not a gzipped file"),
    ],
)
def test_a_file_that_cannot_be_parsed_is_a_data_error_naming_it(
    tmp_path: Path, name: str, content: bytes, names: str
) -> None:
    """Invalid data, not a crash: the training Job fails at once instead of retrying (podFailurePolicy)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(data.DataError, match=f"spec.data.source: {name} is not readable as") as refused:
        data.load(name, tmp_path)
    assert names in str(refused.value)


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


@pytest.mark.parametrize(
    "preprocessing",
    [{}, {"impute": False}, {"scale": False}, {"oneHot": False}, {"impute": False, "scale": False}],
)
def test_frozen_features_transform_as_the_fitted_step_does(preprocessing: dict[str, bool]) -> None:
    train, rows = frame(200, seed=1), frame(50, seed=2)
    rows.loc[:4, "income"] = np.nan  # imputed
    rows.loc[5:7, "city"] = "rome"  # unseen: no one-hot column set
    resolved = schema(train)
    model = ModelSpec(estimator="sklearn.linear_model.SGDClassifier", preprocessing=preprocessing)
    features = pipeline.build(model, resolved, ["sklearn."]).named_steps["features"]
    features.fit(data.check(train, resolved, "classification", folds=2)[resolved.features])
    frozen = pipeline.FrozenFeatures.of(features)
    if not preprocessing.get("impute", True) and not preprocessing.get("scale", True):
        assert frozen is None  # a passthrough: left to scikit-learn
        return
    assert frozen is not None
    x = rows[resolved.features]
    numeric = {c: x[c].to_numpy(dtype=np.float64) for c in resolved.numeric}
    categorical = {c: x[c].to_numpy(dtype=object) for c in resolved.categorical}
    expected = features.transform(x)
    if not preprocessing.get("impute", True):  # NaN stays NaN
        np.testing.assert_array_equal(frozen.transform(numeric, categorical), expected)
    else:
        assert np.array_equal(frozen.transform(numeric, categorical), expected)


def test_the_allow_list_guards_the_trainer_too() -> None:
    with pytest.raises(pipeline.ModelError, match="not under an allowed module prefix"):
        pipeline.build(ModelSpec(estimator="sklearn.svm.SVC"), schema(frame()), ["sklearn.linear_model."])


def test_invalid_param_values_are_model_errors() -> None:
    model = ModelSpec(estimator="sklearn.ensemble.RandomForestClassifier", params={"n_estimators": "many"})
    built = pipeline.build(model, schema(frame()), ["sklearn."])
    with pytest.raises(ValueError, match="n_estimators"):
        built.fit(frame().drop(columns=["label"]), frame()["label"])


def test_declared_classes_take_the_labels_kind() -> None:
    """spec.online.classes as label values: the data's own value of a class it holds (1, "1" and 1.0 are
    one class), a class it lacks as a value of its kind; a label not declared is refused, naming the
    field."""
    labels = pd.Series([0, 1, 1, 0], name="label")
    assert data.declared_classes(["2", 1, 0], labels) == [0, 1, 2]
    assert all(type(c) is int or isinstance(c, np.integer) for c in data.declared_classes([0, 1, 2], labels))
    assert data.declared_classes([0, 1, 2.5], labels.astype(float)) == [0.0, 1.0, 2.5]
    assert data.declared_classes(["a", "b", "c"], pd.Series(["b", "a"], name="y")) == ["a", "b", "c"]
    with pytest.raises(data.DataError, match=r"holds the classes 2, which spec.online.classes \(0, 1\)") as e:
        data.declared_classes([0, 1], pd.Series([0, 1, 2], name="label"))
    assert e.value.reason == "ClassNotDeclared"
    for declared in (["x", 0, 1], [0, 1, 2.5], [0, 1, "1.0"]):
        with pytest.raises(data.DataError, match=r"spec\.online\.classes") as e:
            data.declared_classes(declared, labels)
        assert e.value.reason == "InvalidClasses"


def test_roc_auc_leaves_out_a_class_without_rows() -> None:
    """scikit-learn's one-vs-rest macro ROC AUC when every class has a row (its binary AUC for two
    classes); a class without a row is left out of the mean, where scikit-learn's is NaN."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], 200)
    scores = rng.dirichlet([1, 1, 1], 200) + np.eye(3)[np.searchsorted(["a", "b", "c"], y)]
    scores /= scores.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, scores, multi_class="ovr", average="macro", labels=["a", "b", "c"])
    assert pipeline.roc_auc(y, scores, ["a", "b", "c"]) == pytest.approx(expected, abs=1e-12)
    assert pipeline.roc_auc(y, scores[:, :2], ["a", "b"]) == pytest.approx(
        roc_auc_score(y == "b", scores[:, 1]), abs=1e-12
    )
    held = y != "c"
    each = [roc_auc_score(y[held] == c, scores[held, i]) for i, c in enumerate("ab")]
    assert pipeline.roc_auc(y[held], scores[held], ["a", "b", "c"]) == pytest.approx(np.mean(each), abs=1e-12)
    assert pipeline.roc_auc(y[y == "a"], scores[y == "a"], ["a", "b", "c"]) is None


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.linear_model.SGDClassifier",
        "sklearn.linear_model.Perceptron",
        "sklearn.neural_network.MLPClassifier",
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.naive_bayes.BernoulliNB",
    ],
)
def test_declared_classes_are_learned_by_partial_fit_for_as_many_epochs_as_fit_runs(estimator: str) -> None:
    """A warm-up without class "c", spec.online.classes a, b, c: the estimator knows all three and predicts
    what `fit` would (the epochs its `fit` ran, one for naive Bayes); it can learn "c" later."""
    rows = frame(120)
    rows["label"] = np.where(rows["age"] > 50, "a", "b")
    params = {"random_state": 0} if "naive_bayes" not in estimator else {}
    if "MLP" in estimator:
        params |= {"max_iter": 300}  # converges (in 200 epochs): a net cut short differs by its seed
    model = ModelSpec(estimator=estimator, params=params)
    x, y = rows.drop(columns=["label"]), rows["label"]
    declared, plain = (
        pipeline.build(model, schema(rows), ["sklearn."]),
        pipeline.build(model, schema(rows), ["sklearn."]),
    )
    assert pipeline.fit(plain, x, y) is None
    fitted = pipeline.fit(declared, x, y, ["a", "b", "c"])
    assert fitted is not None and fitted["classes"] == ["a", "b", "c"]
    assert list(declared.classes_) == ["a", "b", "c"]
    assert fitted["epochs"] == getattr(plain.named_steps["estimator"], "n_iter_", 1)
    agree = float((declared.predict(x) == plain.predict(x)).mean())
    assert agree > 0.9, f"partial_fit over the warm-up predicts as fit does ({agree:.2f})"


def test_importance_by_roc_auc_of_a_class_the_holdout_lacks() -> None:
    """Permutation importance by ROC AUC: scikit-learn's for a model of the holdout's classes, and one
    for a model that also knows a declared class the holdout lacks (scikit-learn's scorer raises)."""
    from sklearn.inspection import permutation_importance

    from mlworkflow.runtime import holdout, importance

    rows = frame(120)
    rows["label"] = np.where(rows["age"] > 50, "a", "b")
    x, y = rows.drop(columns=["label"]), rows["label"]
    model = ModelSpec(
        estimator="sklearn.linear_model.SGDClassifier", params={"loss": "log_loss", "random_state": 0}
    )
    plain, declared = (pipeline.build(model, schema(rows), ["sklearn."]) for _ in range(2))
    pipeline.fit(plain, x, y)
    pipeline.fit(declared, x, y, ["a", "b", "c"])
    ours = importance.permutation(plain, x, y, "roc_auc")
    theirs = permutation_importance(plain, x, y, scoring="roc_auc", n_repeats=5, random_state=holdout.SEED)
    assert ours is not None
    means = dict(zip(map(str, x.columns), theirs.importances_mean, strict=True))
    # scikit-learn's binary scorer ranks by decision values, ours by probabilities: equal but for the ties
    # of probabilities rounded to 1.
    assert {f["feature"]: f["mean"] for f in ours["features"]} == pytest.approx(means, abs=1e-3)
    ranked = importance.permutation(declared, x, y, "roc_auc")
    assert ranked is not None and ranked["features"][0]["feature"] == "age"
