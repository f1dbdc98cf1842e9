"""Which rows judge a model: the holdout, kept apart from every row the champion was trained on.

Data usually accumulates (a pipeline appends labelled rows to the same source), so a random split of all
current rows would put rows the served model (the champion) learned from into the holdout, where it looks
better than it is and a better challenger gets rejected. Each version therefore records the rows it was
trained on, as a sorted array of 64-bit row hashes (`pandas.util.hash_pandas_object`, 8 bytes a row)
beside its model card, and a retraining holds out only rows the champion never saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit, train_test_split

from mlworkflow.api.v1alpha1 import MLWorkflowSpec
from mlworkflow.runtime import data
from mlworkflow.runtime.store import WorkflowStore

ROWS_FILE = "trained-rows.npy"
# One seed for every split: the same data gives the same holdout and folds.
SEED = 0
Hashes = npt.NDArray[np.uint64]
Split = Literal["Random", "OutOfTime"]


@dataclass(frozen=True)
class Holdout:
    """Positions (into the checked frame) of the training and the held-out rows, and how they were chosen."""

    train: npt.NDArray[np.intp]
    holdout: npt.NDArray[np.intp]
    excluded: int | None  # rows kept out of the holdout as seen by the champion; None: the champion's unknown
    split: Split


def row_hashes(frame: pd.DataFrame) -> Hashes:
    """One uint64 per row of `frame` (its values only, not its index): the same row hashes the same in every
    read of the data, so a row a model was trained on is recognised when the data is read again."""
    hashes: Hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return hashes


def save_rows(folder: Path, hashes: Hashes) -> None:
    """Record the rows a version was trained on: `<folder>/trained-rows.npy`, sorted and unique."""
    np.save(folder / ROWS_FILE, np.unique(hashes))


def load_rows(folder: Path) -> Hashes | None:
    """The rows a version was trained on, or None when it has no record (trained before records existed)."""
    path = folder / ROWS_FILE
    if not path.exists():
        return None
    return np.asarray(np.load(path), dtype=np.uint64)


def choose(
    hashes: Hashes,
    share: float,
    seed: int,
    seen: Hashes | None = None,
    times: pd.Series | None = None,
    stratify: pd.Series | None = None,
) -> Holdout:
    """Split rows into training and holdout.

    The holdout has `ceil(share * rows)` rows (as scikit-learn's `train_test_split` counts a float
    test_size), taken only from rows whose hash is not in `seen` (the champion's training rows); when fewer
    are unseen, it is all of them. With `times` it is the newest of those (out-of-time), else a seeded
    random choice, stratified by `stratify` when every class has two rows. With nothing seen, the holdout
    is the one `train_test_split(test_size=share, random_state=seed, stratify=...)` chooses, so a first
    version is judged as before records existed. Every row not held out trains the new version.
    """
    rows = len(hashes)
    positions = np.arange(rows)
    unseen = positions if seen is None else positions[~np.isin(hashes, seen)]
    wanted = min(len(unseen), math.ceil(share * rows), rows - 1)
    excluded = None if seen is None else rows - len(unseen)
    if times is not None:
        order = np.lexsort((unseen, times.to_numpy()[unseen]))  # oldest first; ties by position
        holdout = np.sort(unseen[order[len(unseen) - wanted :]]) if wanted > 0 else unseen[:0]
        split: Split = "OutOfTime"
    else:
        split = "Random"
        if wanted <= 0:
            holdout = unseen[:0]
        elif wanted >= len(unseen):
            holdout = unseen
        else:
            labels = stratify.to_numpy()[unseen] if stratify is not None else None
            if labels is not None and (
                pd.Series(labels).value_counts().min() < 2 or wanted < len(set(labels))
            ):
                labels = None  # a class with one row (or fewer held-out rows than classes) cannot stratify
            _, holdout = train_test_split(unseen, test_size=wanted, random_state=seed, stratify=labels)
            holdout = np.sort(holdout)
    train = np.setdiff1d(positions, holdout, assume_unique=True)
    return Holdout(train, holdout, excluded, split)


@dataclass(frozen=True)
class Rows:
    """A workflow's data read, checked and split for one version: the training rows (in time order with a
    time column, `forward`), the held-out rows, and the hashes of the training rows."""

    snapshot: data.Snapshot
    schema: data.FeatureSchema
    x_train: pd.DataFrame
    y_train: pd.Series
    x_holdout: pd.DataFrame
    y_holdout: pd.Series
    trained: Hashes
    judged: Holdout
    forward: bool


def prepare(
    spec: MLWorkflowSpec, store: WorkflowStore, champion: str | None, folds: int, archive: bool = False
) -> Rows:
    """The rows a version trains and is judged on, the same for the training runtime and a model search's
    trials: `spec.data` read and checked (for `folds`-fold cross-validation), the champion's training rows
    kept out of the holdout (`choose`). Raises data.DataError naming the column or file.

    With `archive` (OnlineLearning's batch retraining), the archived stream's rows are added after
    spec.data.source's; the champion (the learner's snapshot) learned from every one of them and from its
    start version's training rows, so all of those are seen by it (`champion_rows`)."""
    task = spec.model.task if spec.model else "classification"
    snapshot = data.load(spec.data.source, store.root)
    archived = 0
    if archive:
        snapshot, archived = with_archive(snapshot, store)
    schema = data.resolve_schema(snapshot.frame, spec.data)
    frame = data.check(snapshot.frame, schema, task, folds)
    times = data.event_times(snapshot.frame, spec.data.time_column) if spec.data.time_column else None
    x, y = frame[schema.features], frame[schema.target]
    hashes = row_hashes(frame[[*schema.features, schema.target]])
    seen = champion_rows(store, champion) if champion else None
    if archived:
        stream = hashes[len(hashes) - archived :]  # the archive's rows come last (check keeps every row)
        seen = np.union1d(seen if seen is not None else np.empty(0, dtype=np.uint64), stream)
    judged = choose(
        hashes,
        spec.training.holdout,
        SEED,
        seen=seen,
        times=times,
        stratify=y if task == "classification" else None,
    )
    train = judged.train
    if times is not None:  # in time order, so that cross-validation folds validate on what follows
        train = train[np.argsort(times.to_numpy()[train], kind="stable")]
    return Rows(
        snapshot,
        schema,
        x.iloc[train],
        y.iloc[train],
        x.iloc[judged.holdout],
        y.iloc[judged.holdout],
        hashes[judged.train],
        judged,
        times is not None,
    )


def with_archive(snapshot: data.Snapshot, store: WorkflowStore) -> tuple[data.Snapshot, int]:
    """`snapshot` with the archived stream's rows after its own (their columns cast to the source's types
    where they can be, so that a row hashes as it did when the source alone was read), and how many were
    added. No archive adds none."""
    files = store.stream_archive_files()
    if not files:
        return snapshot, 0
    stream = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    for column in stream.columns.intersection(snapshot.frame.columns):
        with contextlib.suppress(ValueError, TypeError):
            stream[column] = stream[column].astype(snapshot.frame[column].dtype)
    digest = hashlib.sha256(snapshot.sha256.encode())
    for path in files:
        digest.update(path.read_bytes())
    combined = data.Snapshot(
        pd.concat([snapshot.frame, stream], ignore_index=True),
        [*snapshot.files, *(str(p.relative_to(store.root)) for p in files)],
        digest.hexdigest(),
    )
    return combined, len(stream)


def champion_rows(store: WorkflowStore, champion: str) -> Hashes | None:
    """The rows `champion` was trained on; for an OnlineLearning snapshot (`v1.12`), also those of the
    version it started from (`v1`), which it learned before the stream. None when nothing is recorded."""
    recorded = [load_rows(store.model_dir(champion))]
    start = champion.partition(".")[0]
    if start != champion:
        recorded.append(load_rows(store.model_dir(start)))
    known = [rows for rows in recorded if rows is not None]
    return np.unique(np.concatenate(known)) if known else None


def folds(task: str, y: pd.Series, k: int, forward: bool) -> KFold | StratifiedKFold | TimeSeriesSplit:
    """The cross-validation folds of training rows `y`: forward (TimeSeriesSplit) when they are in time
    order, stratified when every class has a row per fold, else shuffled k-fold; seeded with SEED."""
    if forward:
        return TimeSeriesSplit(k)
    if task == "classification" and y.value_counts().min() >= k:
        return StratifiedKFold(k, shuffle=True, random_state=SEED)
    return KFold(k, shuffle=True, random_state=SEED)
