"""What a model relies on: permutation importance of its input features on its holdout, for the model card.

A feature's importance is how much the promotion metric drops when that feature's values are shuffled
among the held-out rows (scikit-learn's `permutation_importance`, Breiman 2001, "Random Forests", section
10; https://scikit-learn.org/stable/modules/permutation_importance.html). Unlike an estimator's own
importances it works for every estimator, on rows the model was not trained on, with the whole pipeline
(a categorical feature counts once, not per one-hot column). Correlated features share their importance:
shuffling one leaves the other to carry the signal, so both can look unimportant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from mlworkflow.api.v1alpha1 import REGRESSION_METRICS
from mlworkflow.runtime import holdout, pipeline
from mlworkflow.runtime.guardrails import scores

ROWS = 1000  # held-out rows scored per shuffle
REPEATS = 5  # shuffles per feature
MANY_FEATURES = 100  # above this many features, one shuffle each


def permutation(model: Any, x: pd.DataFrame, y: pd.Series, metric: str) -> dict[str, Any] | None:
    """Permutation importance of each column of `x` for fitted pipeline `model` on held-out rows `x`, `y`,
    scored by `metric` (a promotion metric; roc_auc is scored as one-vs-rest macro AUC).

    Cost: one prediction of at most ROWS rows per feature and repeat, i.e. features x REPEATS predictions
    (one repeat per feature above MANY_FEATURES features), plus one unshuffled; about 10 x the cost of
    scoring the holdout for a two-feature model, and bounded by 5,000 predictions of 1,000 rows for 1,000
    features. Returns {"metric", "rows", "repeats", "seconds", "features": [{"feature", "mean", "std"},
    ...] most important first}: `mean` is the metric's drop (for mse and mae, its rise), in its units; or
    None with fewer than two held-out rows or when the metric cannot be computed on them (a class missing).
    """
    if len(x) < 2:
        return None
    started = time.monotonic()
    chosen = np.sort(np.random.default_rng(holdout.SEED).permutation(len(x))[:ROWS])
    rows, truth = x.iloc[chosen], y.iloc[chosen]
    repeats = REPEATS if x.shape[1] <= MANY_FEATURES else 1
    scorer = roc_auc if metric == "roc_auc" else pipeline.scorer(metric, truth.nunique())
    try:
        result = permutation_importance(
            model, rows, truth, scoring=scorer, n_repeats=repeats, random_state=holdout.SEED, n_jobs=1
        )
    except ValueError:
        return None
    return _ranked(metric, len(rows), list(map(str, x.columns)), result.importances, started)


def permutation_of_blocks(
    estimator: Any, x: np.ndarray, y: pd.Series, blocks: dict[str, list[int]], metric: str
) -> dict[str, Any] | None:
    """As `permutation`, for a pipeline whose preprocessing works column by column (`pipeline.build`'s:
    impute, scale, one-hot), given its `estimator`, its held-out rows already preprocessed `x` and each
    input feature's output columns `blocks` (`pipeline.feature_blocks`): shuffling a feature's rows before
    the preprocessing is shuffling the rows of its columns together after it, so the preprocessing runs
    once instead of once per shuffle, and the scores come from the predictions in numpy (`_score`): ~20x
    cheaper for 41 features (the online learner's snapshots). Same rows, repeats, metric and result as
    `permutation`."""
    if len(x) < 2:
        return None
    started = time.monotonic()
    chosen = np.sort(np.random.default_rng(holdout.SEED).permutation(len(x))[:ROWS])
    rows, truth = x[chosen], y.iloc[chosen]
    repeats = REPEATS if len(blocks) <= MANY_FEATURES else 1
    score = _score(estimator, truth, metric)
    rng = np.random.default_rng(holdout.SEED)
    drops = np.empty((len(blocks), repeats))
    try:
        baseline = score(rows)
        for i, columns in enumerate(blocks.values()):
            for repeat in range(repeats):
                shuffled = rows.copy()
                shuffled[:, columns] = rows[rng.permutation(len(rows))][:, columns]
                drops[i, repeat] = baseline - score(shuffled)
    except ValueError:
        return None
    return _ranked(metric, len(rows), list(blocks), drops, started)


def _score(estimator: Any, truth: pd.Series, metric: str) -> Callable[[np.ndarray], float]:
    """`metric` of `estimator`'s predictions of rows against `truth`, higher is better (errors negated, as
    scikit-learn's scorers give them): from the predictions in numpy (`guardrails.scores`, scikit-learn's
    values at a tenth of its scorers' cost), ROC AUC by `roc_auc`."""
    if metric == "roc_auc":
        return lambda rows: roc_auc(estimator, rows, truth)
    regression, sign = metric in REGRESSION_METRICS, -1.0 if metric in pipeline.LOWER_IS_BETTER else 1.0
    y = np.asarray(truth.tolist()) if not regression else truth.to_numpy(dtype=np.float64)
    return lambda rows: sign * scores(y, estimator.predict(rows), regression)[metric]


def roc_auc(estimator: Any, x: Any, y: Any) -> float:
    """A scorer (`scorer(estimator, x, y)`) of `pipeline.roc_auc`: scikit-learn's ROC AUC when the rows hold
    every class of the estimator, and one when they lack some (a class spec.online.classes declares that
    the holdout lacks), where scikit-learn's raises. ValueError when they hold fewer than two."""
    auc = pipeline.roc_auc(y, pipeline.class_scores(estimator, x), list(estimator.classes_))
    if auc is None:
        raise ValueError("fewer than two classes: no ROC AUC")
    return auc


def _ranked(metric: str, rows: int, features: list[str], drops: np.ndarray, started: float) -> dict[str, Any]:
    """The result of a permutation importance: `drops` holds a row of the metric's drops per feature."""
    means, stds = drops.mean(axis=1), drops.std(axis=1)
    order = np.argsort(-means, kind="stable")
    return {
        "metric": metric,
        "rows": rows,
        "repeats": drops.shape[1],
        "seconds": round(time.monotonic() - started, 3),
        "features": [{"feature": features[i], "mean": float(means[i]), "std": float(stds[i])} for i in order],
    }
