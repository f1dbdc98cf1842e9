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
from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance

from mlworkflow.runtime import holdout, pipeline

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
    scorer = pipeline.scorer(metric, truth.nunique())
    try:
        result = permutation_importance(
            model, rows, truth, scoring=scorer, n_repeats=repeats, random_state=holdout.SEED, n_jobs=1
        )
    except ValueError:
        return None
    order = np.argsort(-result.importances_mean, kind="stable")
    ranked = [
        {
            "feature": str(x.columns[i]),
            "mean": float(result.importances_mean[i]),
            "std": float(result.importances_std[i]),
        }
        for i in order
    ]
    return {
        "metric": metric,
        "rows": len(rows),
        "repeats": repeats,
        "seconds": round(time.monotonic() - started, 3),
        "features": ranked,
    }
