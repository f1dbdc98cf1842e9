"""Batch predictions of one model version: `python -m mlworkflow.runtime.predict` (a batch Pod's program).

    python -m mlworkflow.runtime.predict --store DIR --workflow NAME --version v3 --run-id ID \\
        [--indexes 2] [--index 0] [--termination-log PATH]
    (the workflow's spec as JSON in $MLW_SPEC; --index defaults to $JOB_COMPLETION_INDEX, set by an
    Indexed Job; at most $MLW_SAMPLE_MAX_ROWS rows, default 10000, sampled for the drift monitor)

Reads `spec.batch.input` (CSV or Parquet files, a glob under the artifact store) in chunks of at most
`CHUNK_ROWS` rows, so that memory does not grow with the input; checks each chunk with the serving Pods'
feature checker and predicts it with their code (`mlworkflow.runtime.model`: onnxruntime where the version
was verified exact, scikit-learn otherwise). Each of `--indexes` processes takes its own share of the input
(`share`) and writes its own parts; the last one to finish publishes the run, as Spark and Hadoop commit a
job's output:

    <store>/<output>/<run-id>/_temporary/<index>/    an index's parts while it works, and `_index.json`
                                                      (its manifest, written last) once it is done
    <store>/<output>/<run-id>/part-<index>-<k>.parquet  the id and passthrough columns, `prediction`,
                                                      `proba_<class>` (a classifier's), `model_version`
    <store>/<output>/<run-id>/rejects-<index>.parquet   `file`, `row` (from 0 among the file's data rows),
                                                      `reason` (naming the feature), when rows failed
    <store>/<output>/<run-id>/_manifest.json          rows in, predicted, rejected (total and per index),
                                                      version, backend, input files, duration
    <store>/<output>/<run-id>/_SUCCESS                written last: readers wait for it

A retried index replaces only its own temporary folder; a run id that is already published (`_SUCCESS`)
exits 0 at once without writing. One Pod per index at a time is assumed (an Indexed Job with
`podReplacementPolicy: Failed`). Each index also writes a uniform sample of the rows it predicted to
`<store>/<workflow>/samples/batch-<run-id>-<index>.jsonl`, in the serving Pods' format, for the drift check
(and, with `spec.batch.idColumn`, with each row's id as its prediction id: what `spec.batch.labels` join on).
The run ends with one line of JSON in the termination message; exit code 2 (`INVALID_INPUT`) when no file
matches the input or the model version does not exist, and for the index that would publish when more than
`spec.batch.maxRejectFraction` of the run's rows (every index's) were rejected: a retry would fail the same
way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pcsv  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from mlworkflow.api.exitcodes import INVALID_INPUT
from mlworkflow.api.v1alpha1 import BatchSpec, MLWorkflowSpec
from mlworkflow.runtime import tracking
from mlworkflow.runtime.features import FeatureBatch, RequestError
from mlworkflow.runtime.feedback import prediction_id
from mlworkflow.runtime.model import LoadedModel, sample_line
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

CHUNK_ROWS = 65_536  # rows checked and predicted at once: what bounds memory, with a Parquet row group
PART_ROWS = 1_048_576  # rows per output part (each chunk is one row group of it)
CSV_BLOCK_BYTES = 8 << 20  # pyarrow's CSV reader parses this much at a time
SAMPLE_MAX_ROWS = 10_000
TEMPORARY, SUCCESS, MANIFEST, INDEX_MANIFEST, LOCK = (
    "_temporary",
    "_SUCCESS",
    "_manifest.json",
    "_index.json",
    "_publishing",
)
REJECTS_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()), ("reason", pa.string())])


class BatchError(Exception):
    """This index's run cannot succeed, and a retry would fail the same way; `reason` names why, `counts`
    holds what the index did before it failed (the summary's keys)."""

    def __init__(self, reason: str, message: str, counts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason, self.counts = reason, counts or {}


# --- the share of each index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """An input file: its path relative to the store, and a Parquet file's rows per row group (None: CSV)."""

    path: str
    row_groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Share:
    """What one index reads of one file: the whole file; or some of a Parquet file's row groups; or, of a
    CSV file, the chunks c (rows c*CHUNK_ROWS to (c+1)*CHUNK_ROWS) with c % stride[1] == stride[0]."""

    path: str
    row_groups: tuple[int, ...] | None = None
    stride: tuple[int, int] | None = None


def share(files: Sequence[InputFile], indexes: int, index: int) -> list[Share]:
    """The shares of index `index` of `indexes`, from `files` in sorted order: every row of every file is
    in exactly one index's shares, whichever process computes them.

    With at least as many files as indexes, whole files, dealt round-robin. Otherwise Parquet row groups,
    numbered across the files in order and dealt round-robin (an index gets nothing when there are fewer
    row groups than indexes); a CSV file, which has no such division, is read by every index, each keeping
    every indexes-th chunk of rows: parsing is repeated, predicting (the bulk of the work) is not.
    """
    if len(files) >= indexes:
        return [Share(f.path) for position, f in enumerate(files) if position % indexes == index]
    shares, dealt = [], 0
    for f in files:
        if f.row_groups is None:
            shares.append(Share(f.path, stride=(index, indexes)))
            continue
        mine = tuple(g for g in range(len(f.row_groups)) if (dealt + g) % indexes == index)
        dealt += len(f.row_groups)
        if mine:
            shares.append(Share(f.path, row_groups=mine))
    return shares


# --- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Rows of one input file: `table` holds the columns wanted that the file has; `first` is the first
    row's number among the file's data rows (rows are consecutive)."""

    path: str
    first: int
    table: pa.Table

    def where(self, position: int) -> str:
        """How a reason names the row at `position` in the chunk."""
        return f"{self.path} row {self.first + position}"


def list_input(root: Path, pattern: str) -> list[Path]:
    """The input files, sorted by path; BatchError(InputNotFound) when none matches."""
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise BatchError("InputNotFound", f"spec.batch.input: no file matches {pattern!r} under {root}")
    unknown = [p.name for p in files if _kind(p) is None]
    if unknown:
        raise BatchError("InputInvalid", f"spec.batch.input: {unknown[0]} is neither CSV nor Parquet")
    return files


def _kind(path: Path) -> str | None:
    if path.suffix == ".parquet":
        return "parquet"
    return "csv" if path.suffix == ".csv" or path.name.endswith(".csv.gz") else None


def describe(root: Path, files: Sequence[Path]) -> list[InputFile]:
    """The files for `share`: a Parquet file's row groups from its footer (nothing else is read)."""
    described = []
    for path in files:
        groups = None
        if _kind(path) == "parquet":
            metadata = pq.ParquetFile(path).metadata
            groups = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
        described.append(InputFile(str(path.relative_to(root)), groups))
    return described


def read(root: Path, part: Share, columns: Sequence[str]) -> Iterator[Chunk]:
    """The rows of `part`, in chunks of at most CHUNK_ROWS, with those of `columns` the file has. Memory is
    bounded by a chunk and by the Parquet reader's buffers of one row group (the writer chose its size).
    A CSV file's columns are read as text, so that one bad cell rejects its row instead of failing the file
    (pyarrow would type a column from its first block), and passthrough columns are copied as written."""
    path = root / part.path
    if _kind(path) == "parquet":
        parquet = pq.ParquetFile(path)
        present = [c for c in columns if c in parquet.schema_arrow.names]
        starts = np.concatenate(
            [[0], np.cumsum([parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])]
        )
        for group in part.row_groups or range(parquet.num_row_groups):
            first = int(starts[group])
            for batch in parquet.iter_batches(CHUNK_ROWS, row_groups=[group], columns=present):
                yield Chunk(part.path, first, pa.Table.from_batches([batch]))
                first += batch.num_rows
        return
    header = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
    present = [c for c in columns if c in header]
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pcsv.ConvertOptions(
            column_types={c: pa.string() for c in present},
            include_columns=present,
            strings_can_be_null=True,  # an empty cell is missing, as pandas reads it for training
        ),
    )
    keep, of = part.stride or (0, 1)
    row = 0
    for batch in reader:
        # Cut along the fixed chunks of the file, keeping this index's.
        start = 0
        while start < batch.num_rows:
            chunk = (row + start) // CHUNK_ROWS
            end = min(batch.num_rows, (chunk + 1) * CHUNK_ROWS - row)
            if chunk % of == keep:
                yield Chunk(part.path, row + start, pa.Table.from_batches([batch.slice(start, end - start)]))
            start = end
        row += batch.num_rows


def ahead(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """`chunks`, each read in a background thread while the caller works on the one before (pyarrow's
    reader releases the GIL, onnxruntime too): one chunk more in memory at most."""
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


# --- checking and predicting -----------------------------------------------------------------------------


def checked_at_once(model: LoadedModel, table: pa.Table) -> FeatureBatch | None:
    """The chunk's batch when every row passes the checks, found on whole Arrow columns
    (`FeatureChecker.from_arrays`: the same checks, the same result as on the values one by one); None
    when some row does not, or a column's type needs the values one by one (`numbers`, `check`)."""
    numeric = {}
    for column in model.schema.numeric:
        array = _floats(table[column])
        if array is None:
            return None
        numeric[column] = array
    categorical = {}
    for column in model.schema.categorical:
        encoded = table[column].combine_chunks()
        try:
            if not pa.types.is_dictionary(encoded.type):
                encoded = pc.dictionary_encode(encoded)
        except pa.ArrowNotImplementedError:
            return None
        values = encoded.dictionary.to_pylist()
        # A null is one more distinct value, None, after the dictionary's.
        codes = encoded.indices.fill_null(len(values)).to_numpy()
        categorical[column] = ([*values, None], codes)
    return model.checker.from_arrays(numeric, categorical, table.num_rows)


def _floats(column: pa.ChunkedArray) -> np.ndarray | None:
    """A numeric feature as float64, NaN where missing, as `numbers` reads it; None for another type."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            return None
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return None
    return np.asarray(column.to_numpy(), dtype=np.float64)  # nulls are NaN


def numbers(column: pa.ChunkedArray) -> list[Any]:
    """A numeric feature's values for the checker: numbers, None where missing (null, or NaN, how pandas
    and numpy spell missing), and as they are where they are no number (the checker names them). Text (a
    CSV's) is parsed as Python's float() does."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            return [_number(v) for v in column.to_pylist()]
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return list(column.to_pylist())
    array = column.to_numpy()  # nulls as NaN (an integer column with nulls becomes float64)
    values: list[Any] = array.tolist()
    if array.dtype.kind == "f":
        for position in np.flatnonzero(np.isnan(array)).tolist():
            values[position] = None
    return values


def _number(value: Any) -> Any:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return None if number != number else number  # NaN is missing


def _rows(batch: FeatureBatch, positions: np.ndarray) -> FeatureBatch:
    return FeatureBatch(
        {c: v[positions] for c, v in batch.numeric.items()},
        {c: v[positions] for c, v in batch.categorical.items()},
        len(positions),
    )


def _joined(parts: Sequence[FeatureBatch]) -> FeatureBatch:
    return FeatureBatch(
        {c: np.concatenate([p.numeric[c] for p in parts]) for c in parts[0].numeric},
        {c: np.concatenate([p.categorical[c] for p in parts]) for c in parts[0].categorical},
        sum(p.rows for p in parts),
    )


@dataclass
class Checked:
    """A chunk's rows that passed the checks (their positions in the chunk), and why each other failed."""

    batch: FeatureBatch | None
    positions: np.ndarray
    rejected: dict[int, str] = field(default_factory=dict)


def check(
    model: LoadedModel, columns: dict[str, list[Any]], rows: int, where: Callable[[int], str], offset: int = 0
) -> Checked:
    """The rows of `columns` that the serving checker takes. The whole chunk is checked at once; when it
    fails, each half is checked again, down to single rows, so that every bad row gets its reason and
    each good one its place (a few bad rows cost a few times a chunk's check)."""
    try:
        batch = model.checker.from_columns(columns, rows, lambda i: where(offset + i), max_rows=None)
        return Checked(batch, np.arange(offset, offset + rows))
    except RequestError as error:
        if rows == 1:
            return Checked(None, np.empty(0, dtype=np.intp), {offset: str(error)})
    half = rows // 2
    halves = [
        check(model, {c: v[start:end] for c, v in columns.items()}, end - start, where, offset + start)
        for start, end in ((0, half), (half, rows))
    ]
    batches = [h.batch for h in halves if h.batch is not None]
    return Checked(
        _joined(batches) if batches else None,
        np.concatenate([h.positions for h in halves]),
        {**halves[0].rejected, **halves[1].rejected},
    )


# --- one index's run --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """A uniform sample of at most `size` rows of all those offered (bottom-k: each row gets a random key
    and the `size` smallest keys stay). The kept rows stay columns; only those left at the end become
    the JSON lines the drift check reads (`lines`): a million rows offer ~40,000 on their way."""

    size: int
    rng: np.random.Generator
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    rows: FeatureBatch | None = None
    times: np.ndarray = field(default_factory=lambda: np.empty(0))  # when each row was offered, epoch s
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # spec.batch.idColumn's

    def offer(self, batch: FeatureBatch, predictions: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Offers `batch`'s rows, predicted `predictions`, named `ids` (prediction ids, or None)."""
        if self.size <= 0 or not batch.rows:
            return
        keys = self.rng.random(batch.rows)
        bound = self.keys.max() if len(self.keys) >= self.size else 1.0
        chosen = np.flatnonzero(keys < bound)
        if len(chosen) > self.size:
            chosen = chosen[np.argpartition(keys[chosen], self.size - 1)[: self.size]]
        if not len(chosen):
            return
        new = _rows(batch, chosen)
        all_keys = np.concatenate([self.keys, keys[chosen]])
        kept = np.argsort(all_keys, kind="stable")[: self.size]
        times = np.full(len(chosen), time.time())
        new_ids = ids[chosen] if ids is not None else np.full(len(chosen), None, dtype=object)
        if self.rows is None:  # the predictions' dtype is the model's: start from it
            every, every_predictions, every_id = new, predictions[chosen], new_ids
        else:
            every = _joined([self.rows, new])
            every_predictions = np.concatenate([self.predictions, predictions[chosen]])
            every_id = np.concatenate([self.ids, new_ids])
            times = np.concatenate([self.times, times])
        self.keys, self.rows = all_keys[kept], _rows(every, kept)
        self.times, self.predictions, self.ids = times[kept], every_predictions[kept], every_id[kept]

    def lines(self, version: str) -> list[str]:
        if self.rows is None:
            return []
        features = self.rows.records(range(self.rows.rows))
        return [
            sample_line(ts, version, f, p, i)
            for ts, f, p, i in zip(
                self.times.tolist(), features, self.predictions.tolist(), self.ids.tolist(), strict=True
            )
        ]


@dataclass
class Outcome:
    """One index's counts and files."""

    rows_in: int = 0
    predicted: int = 0
    rejected: int = 0
    parts: list[str] = field(default_factory=list)
    rejects: str | None = None


class Writer:
    """The index's Parquet parts and rejects in its temporary folder, written chunk by chunk."""

    def __init__(self, folder: Path, index: int) -> None:
        self.folder, self.index = folder, index
        self.part: pq.ParquetWriter | None = None
        self.part_rows = 0
        self.rejects: pq.ParquetWriter | None = None
        self.outcome = Outcome()
        # A part's chunks are written in a background thread while the next one is predicted; one write
        # at a time, so that at most one chunk waits in memory.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.writing: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        # A new part past PART_ROWS, or when a file's passthrough columns have other types than the last.
        if self.part is None or self.part_rows >= PART_ROWS or not table.schema.equals(self.part.schema):
            self.close_part()
            name = f"part-{self.index}-{len(self.outcome.parts)}.parquet"
            self.part = pq.ParquetWriter(self.folder / name, table.schema)
            self.outcome.parts.append(name)
        self.wait()
        self.writing = self.pool.submit(self.part.write_table, table)
        self.part_rows += table.num_rows

    def wait(self) -> None:
        """Until the last chunk is written; raises what writing it raised."""
        if self.writing is not None:
            self.writing.result()
            self.writing = None

    def reject(self, path: str, rows: list[int], reasons: list[str]) -> None:
        if self.rejects is None:
            self.outcome.rejects = f"rejects-{self.index}.parquet"
            self.rejects = pq.ParquetWriter(self.folder / self.outcome.rejects, REJECTS_SCHEMA)
        table = pa.table(
            [pa.array([path] * len(rows)), pa.array(rows, pa.int64()), pa.array(reasons)],
            schema=REJECTS_SCHEMA,
        )
        self.rejects.write_table(table)
        self.outcome.rejected += len(rows)

    def close_part(self) -> None:
        self.wait()
        if self.part is not None:
            self.part.close()
        self.part, self.part_rows = None, 0

    def close(self) -> Outcome:
        self.close_part()
        self.pool.shutdown()
        if self.rejects is not None:
            self.rejects.close()
        return self.outcome


def predict_share(
    root: Path, shares: Sequence[Share], model: LoadedModel, batch: BatchSpec, writer: Writer, sample: Sample
) -> Outcome:
    """Checks, predicts and writes every chunk of `shares`."""
    features = model.schema.features
    passthrough = batch.copied_columns()
    wanted = list(dict.fromkeys([*features, *passthrough]))
    classes = model.classes if model.probabilities else None
    version = pa.scalar(model.version)
    for chunk in ahead(chunk for part in shares for chunk in read(root, part, wanted)):
        rows = chunk.table.num_rows
        writer.outcome.rows_in += rows
        first = chunk.first
        absent = [c for c in wanted if c not in chunk.table.column_names]
        if absent:
            kind = "feature" if absent[0] in features else "passthrough column"
            reason = f"{chunk.path}: {kind} {absent[0]!r} is missing"
            writer.reject(chunk.path, list(range(first, first + rows)), [reason] * rows)
            continue
        clean = checked_at_once(model, chunk.table)
        if clean is not None:
            checked = Checked(clean, np.arange(rows))
        else:
            columns = {
                c: numbers(chunk.table[c]) if c in model.schema.numeric else chunk.table[c].to_pylist()
                for c in features
            }
            checked = check(model, columns, rows, chunk.where)
        rejected = dict(checked.rejected)
        kept = checked.positions
        if checked.batch is not None:
            predicted = model.predict(checked.batch, probabilities=classes is not None)
            answered = np.ones(len(kept), dtype=bool)
            for position, reason in predicted.refused.items():
                rejected[int(kept[position])] = f"{chunk.path} row {first + int(kept[position])}: {reason}"
                answered[position] = False
            out = chunk.table.select(passthrough).take(pa.array(kept[answered]))
            ids = (
                np.array([prediction_id(v) for v in out[batch.id_column].to_pylist()], dtype=object)
                if batch.id_column
                else None
            )
            sample.offer(_rows(checked.batch, np.flatnonzero(answered)), predicted.predictions, ids)
            out = out.append_column("prediction", pa.array(predicted.predictions))
            if classes is not None and predicted.probabilities is not None:
                for position, name in enumerate(classes):
                    out = out.append_column(f"proba_{name}", pa.array(predicted.probabilities[:, position]))
            out = out.append_column("model_version", pa.repeat(version, out.num_rows))
            writer.write(out)
            writer.outcome.predicted += out.num_rows
        if rejected:
            positions = sorted(rejected)
            writer.reject(chunk.path, [first + p for p in positions], [rejected[p] for p in positions])
    return writer.close()


@dataclass(frozen=True)
class Run:
    """One index of one run: where it reads and writes."""

    store: WorkflowStore
    batch: BatchSpec
    version: str
    run_id: str
    index: int
    indexes: int

    @property
    def output(self) -> Path:
        return self.store.root / self.batch.output / self.run_id

    @property
    def temporary(self) -> Path:
        return self.output / TEMPORARY

    @property
    def mine(self) -> Path:
        return self.temporary / str(self.index)

    @property
    def relative_output(self) -> str:
        return f"{self.batch.output.rstrip('/')}/{self.run_id}"


def fingerprint(root: Path, files: Sequence[Path]) -> tuple[list[dict[str, Any]], str]:
    """The input files (path, bytes, modification time) and a sha256 of that listing. Not of the contents:
    hashing would read every input byte a second time, and Parquet shares are read only in part. Every
    index must see the same listing (`publish` checks it), or the shares would not add up."""
    listing = []
    for path in files:
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC).isoformat(timespec="microseconds")
        listing.append({"path": str(path.relative_to(root)), "bytes": stat.st_size, "modified": modified})
    return listing, hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def load_model(store: WorkflowStore, version: str) -> LoadedModel:
    """The version from the workflow's BentoML model store; BatchError(ModelNotFound) when it is not there."""
    path = store.model_dir(version)
    if not (path / "card.json").is_file():
        raise BatchError("ModelNotFound", f"model {store.model_name()}:{version} is not in {path.parent}")
    return LoadedModel(path, batch=True)


def run_index(run: Run, sample_rows: int) -> dict[str, Any]:
    """Predicts this index's share into its temporary folder and marks it done (`_index.json`, written
    last). Returns this index's manifest; raises BatchError."""
    started = time.time()
    shutil.rmtree(run.mine, ignore_errors=True)  # a retry's: only its own folder
    run.mine.mkdir(parents=True)
    model = load_model(run.store, run.version)
    root = run.store.root
    files = list_input(root, run.batch.input)
    listing, digest = fingerprint(root, files)
    seed = int.from_bytes(hashlib.sha256(f"{run.run_id}/{run.index}".encode()).digest()[:8], "big")
    sample = Sample(sample_rows, np.random.default_rng(seed))
    try:
        shares = share(describe(root, files), run.indexes, run.index)
        outcome = predict_share(root, shares, model, run.batch, Writer(run.mine, run.index), sample)
    except pa.ArrowInvalid as error:
        # An unreadable file (not Parquet, a ragged CSV): the same input fails the same way.
        raise BatchError("InputInvalid", f"spec.batch.input: {error}") from None
    sampled = sample.lines(model.version)
    manifest = {
        "index": run.index,
        "indexes": run.indexes,
        "version": model.version,
        "backend": model.backend,
        "rowsIn": outcome.rows_in,
        "predicted": outcome.predicted,
        "rejected": outcome.rejected,
        "parts": outcome.parts,
        "rejects": outcome.rejects,
        "files": sorted({s.path for s in shares}),
        "input": {"pattern": run.batch.input, "files": listing, "fingerprint": digest},
        "started": started,
        "finished": time.time(),
        "sampled": len(sampled),
    }
    if sampled:
        run.store.samples.mkdir(parents=True, exist_ok=True)
        _write_atomically(run.store.samples / f"batch-{run.run_id}-{run.index}.jsonl", "".join(sampled))
    _write_atomically(run.mine / INDEX_MANIFEST, json.dumps(manifest))
    return manifest


def _first_reject(path: Path) -> str:
    return str(pq.ParquetFile(path).read_row_group(0, columns=["reason"])["reason"][0])


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def publish(run: Run, take_lock: bool) -> bool:
    """Publishes the run when every index is done: moves their parts and rejects into the run folder, then
    writes `_manifest.json` and `_SUCCESS`. Whoever creates the lock folder publishes (`take_lock`); with
    it already there (a publisher died), publishing is resumed: each step can be done twice. Whether the
    run is published on return; BatchError(InputChanged) when the indexes saw different input files,
    BatchError(TooManyRejects) when more than `spec.batch.maxRejectFraction` of the run's rows (all
    indexes') were rejected: then nothing is published."""
    markers = [run.temporary / str(i) / INDEX_MANIFEST for i in range(run.indexes)]
    if not all(m.is_file() for m in markers):
        return False
    if take_lock:
        try:
            (run.temporary / LOCK).mkdir()
        except FileExistsError:
            return False  # another index publishes
    indexes = [json.loads(m.read_text()) for m in markers]
    if len({i["input"]["fingerprint"] for i in indexes}) > 1:
        raise BatchError(
            "InputChanged",
            "the input files changed while the run's indexes read them (their listings differ): "
            "each index's share depends on them; start a new run",
        )
    rows_in, rejected, limit = (
        sum(i["rowsIn"] for i in indexes),
        sum(i["rejected"] for i in indexes),
        run.batch.max_reject_fraction,
    )
    if rejected > limit * rows_in:
        # Judged on the whole run, as the field says: an index may reject more than its share of rows.
        first = next(
            (_first_reject(run.temporary / str(i["index"]) / i["rejects"]) for i in indexes if i["rejects"]),
            "",
        )
        raise BatchError(
            "TooManyRejects",
            f"{rejected} of the run's {rows_in} rows failed the checks (more than "
            f"spec.batch.maxRejectFraction {limit}); the first: {first}",
        )
    for entry in indexes:
        for name in [*entry["parts"], *([entry["rejects"]] if entry["rejects"] else [])]:
            source, target = run.temporary / str(entry["index"]) / name, run.output / name
            if source.exists():
                os.replace(source, target)
            elif not target.exists():
                raise FileNotFoundError(f"{source}: the part of index {entry['index']} is gone")
    started, finished = min(i["started"] for i in indexes), max(i["finished"] for i in indexes)
    manifest = {
        "runId": run.run_id,
        "workflow": run.store.workflow,
        "version": indexes[0]["version"],
        "backend": indexes[0]["backend"],
        "rowsIn": rows_in,
        "predicted": sum(i["predicted"] for i in indexes),
        "rejected": rejected,
        "input": indexes[0]["input"],
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(finished, UTC).isoformat(timespec="seconds"),
        "seconds": round(finished - started, 3),
        "parts": [name for i in indexes for name in i["parts"]],
        "rejects": [i["rejects"] for i in indexes if i["rejects"]],
        "indexes": [
            {k: i[k] for k in ("index", "rowsIn", "predicted", "rejected", "files", "parts", "rejects")}
            | {"seconds": round(i["finished"] - i["started"], 3)}
            for i in indexes
        ],
    }
    _write_atomically(run.output / MANIFEST, json.dumps(manifest, indent=2))
    (run.output / SUCCESS).touch()
    shutil.rmtree(run.temporary, ignore_errors=True)
    return True


def execute(run: Run, sample_rows: int) -> dict[str, Any]:
    """This index's summary for the termination message; raises BatchError."""
    started = time.monotonic()
    summary = {
        "runId": run.run_id,
        "index": run.index,
        "indexes": run.indexes,
        "version": run.version,
        "output": run.relative_output,
    }
    if (run.output / SUCCESS).exists():
        # A duplicate of a published run: nothing is written; the counts are the published ones.
        published = json.loads((run.output / MANIFEST).read_text())
        entry: dict[str, Any] = next((i for i in published["indexes"] if i["index"] == run.index), {})
        counts = {k: entry.get(k, 0) for k in ("rowsIn", "predicted", "rejected")}
        return (
            summary | counts | {"backend": published["backend"], "published": True, "alreadyPublished": True}
        )
    if (run.temporary / LOCK).exists():
        # Every index was done and a publisher started: this index's work is in the run; finish publishing.
        entry, take_lock = json.loads((run.mine / INDEX_MANIFEST).read_text()), False
    else:
        entry, take_lock = run_index(run, sample_rows), True
    try:
        published = publish(run, take_lock)
    except BatchError as error:
        # The run's verdict, reached by this index: its own counts go with it, as every index's do.
        counts = {k: entry[k] for k in ("rowsIn", "predicted", "rejected", "backend")}
        raise BatchError(error.reason, str(error), counts) from None
    return summary | {
        "status": "ok",
        "rowsIn": entry["rowsIn"],
        "predicted": entry["predicted"],
        "rejected": entry["rejected"],
        "published": published,
        "seconds": round(time.monotonic() - started, 3),
        "backend": entry["backend"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="root of the artifact store")
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--version", required=True, help="the model version that predicts, e.g. v3")
    parser.add_argument("--run-id", required=True, help="names the run's output folder")
    parser.add_argument("--indexes", type=int, default=1, help="processes that share the run")
    parser.add_argument(
        "--index",
        type=int,
        default=int(os.environ.get("JOB_COMPLETION_INDEX", "0")),
        help="this process's share, from 0 (default: $JOB_COMPLETION_INDEX, else 0)",
    )
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    if not 0 <= args.index < args.indexes:
        parser.error(f"--index {args.index} is not in 0..{args.indexes - 1} (--indexes {args.indexes})")
    spec = MLWorkflowSpec.model_validate_json(os.environ["MLW_SPEC"])
    if spec.batch is None:
        parser.error("the workflow's spec has no `batch` section")
    run = Run(
        WorkflowStore(args.store, args.workflow),
        spec.batch,
        args.version,
        args.run_id,
        args.index,
        args.indexes,
    )
    try:
        summary = execute(run, int(os.environ.get("MLW_SAMPLE_MAX_ROWS", str(SAMPLE_MAX_ROWS))))
    except BatchError as error:
        report(
            {
                "status": "error",
                "runId": run.run_id,
                "index": run.index,
                "indexes": run.indexes,
                "version": run.version,
                "published": False,
                "output": run.relative_output,
                **error.counts,
                "reason": error.reason,
                "message": str(error),
            },
            args.termination_log,
        )
        return INVALID_INPUT
    mlflow = tracking.Settings.from_env()
    if mlflow is not None:
        logged = tracking.log_batch_run(mlflow, run.store, summary)
        summary["tracking"] = {k: v for k, v in logged.items() if k in ("tracked", "reason")}
    report(summary, args.termination_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
