"""Where the online learner reads labelled examples: files in the artifact store, or a Kafka topic.

A source is small on purpose (another broker would be one more class):

    polled = source.poll(max_rows, timeout)    # at most max_rows rows, waiting at most timeout seconds
    ...                                         # the rows are applied to the model, or quarantined
    source.commit(polled.position)              # only then
    source.seek(position)                       # at start: just after the last applied batch (a snapshot's)

A row is what the message or file holds: a dict of column -> value, or None for a message that is not a JSON
object (the guardrails count it invalid). A position is JSON (it is stored in each snapshot's card):
- files: {"file": name, "row": rows of it done, "filesDone": files finished}; files are read once, in
  name order, and a file sorting before the current one is never read (name new files so that they sort
  last, e.g. by time, and write them whole: write elsewhere, then rename);
- Kafka: {"topic": name, "offsets": {partition: next offset to read}}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from pydantic_core import from_json

from mlworkflow.api.v1alpha1 import OnlineSource

if TYPE_CHECKING:
    from confluent_kafka import Consumer

Position = dict[str, Any]
CONSUME_SLICE = 0.05  # seconds: the longest wait of one consume call (a poll loops until its timeout)
Row = dict[str, Any] | None


@dataclass(frozen=True)
class Polled:
    """Rows read by one poll, and where the source stands after them."""

    rows: list[Row]
    position: Position


class Source(Protocol):
    def poll(self, max_rows: int, timeout: float) -> Polled:
        """At most `max_rows` rows; fewer (or none) when no more came within `timeout` seconds."""

    def commit(self, position: Position) -> None:
        """Everything before `position` is applied or quarantined."""

    def seek(self, position: Position) -> None:
        """Read from `position` on (a position `poll` returned, possibly in an earlier process)."""

    def position(self) -> Position:
        """Where the next poll starts."""

    def lag(self) -> int | None:
        """Rows in the source not read yet (None when unknown)."""

    def close(self) -> None: ...


def open_source(
    source: OnlineSource, store_root: Path, group_id: str, config_dir: Path | None = None
) -> Source:
    """The source `spec.online.source` names. Kafka: consumer group `group_id` (unless the spec names one),
    librdkafka properties from the files in `config_dir` (a mounted Secret: file name = property)."""
    if source.kafka is not None:
        properties = _properties(config_dir) if config_dir else {}
        return KafkaSource(
            source.kafka.bootstrap_servers, source.kafka.topic, source.kafka.group_id or group_id, properties
        )
    assert source.path is not None
    return FileSource(store_root, source.path, source.poll_interval_seconds)


def _properties(folder: Path) -> dict[str, str]:
    """librdkafka properties from a folder of files (a Secret's keys, mounted): name -> content; the
    hidden entries Kubernetes adds (`..data`, `..2026_...`) are skipped."""
    return {
        path.name: path.read_text().strip()
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


class FileSource:
    """New CSV or Parquet files matching a glob under the artifact store, read once in name order. A poll
    returns rows of one file only (a file is never mixed with the next in a mini-batch)."""

    def __init__(
        self, root: Path, pattern: str, poll_interval: float, clock: Callable[[], float] = time.monotonic
    ):
        self._root, self._pattern, self._interval, self._clock = root, pattern, poll_interval, clock
        self._file: str | None = None  # the file being read (relative to root), or the last one finished
        self._row = 0  # rows of it read
        self._done = 0  # files finished
        self._rows: list[Row] | None = None  # the rows of self._file, read once
        self._known: list[str] = []
        self._listed = -float("inf")
        self._sizes: dict[str, int] = {}

    def position(self) -> Position:
        return {"file": self._file, "row": self._row, "filesDone": self._done}

    def seek(self, position: Position) -> None:
        self._file, self._row = position.get("file"), int(position.get("row", 0))
        self._done = int(position.get("filesDone", 0))
        self._rows = None

    def commit(self, position: Position) -> None:
        """Nothing to tell: the position lives in the learner's snapshots."""

    def poll(self, max_rows: int, timeout: float) -> Polled:
        deadline = self._clock() + timeout
        while True:
            rows = self._next_rows(max_rows)
            if rows or self._clock() >= deadline:
                return Polled(rows, self.position())
            time.sleep(max(0.0, min(0.05, deadline - self._clock())))

    def _next_rows(self, max_rows: int) -> list[Row]:
        while True:
            if self._file is not None and self._rows is None and self._file in self._listing():
                self._rows = self._read(self._file)
            if self._rows is not None and self._row < len(self._rows):
                rows = self._rows[self._row : self._row + max_rows]
                self._row += len(rows)
                return rows
            following = [name for name in self._listing() if self._file is None or name > self._file]
            if not following:
                return []
            if self._file is not None and self._rows is not None:
                self._done += 1
            self._file, self._row, self._rows = following[0], 0, None

    def _listing(self, refresh: bool = False) -> list[str]:
        if refresh or self._clock() - self._listed >= self._interval:
            self._known = sorted(
                str(p.relative_to(self._root)) for p in self._root.glob(self._pattern) if p.is_file()
            )
            self._listed = self._clock()
        return self._known

    def _read(self, name: str) -> list[Row]:
        path = self._root / name
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        frame.columns = [str(c) for c in frame.columns]
        rows: list[Row] = frame.to_dict("records")  # Python scalars; a missing number is NaN
        return rows

    def lag(self) -> int | None:
        """Rows not read yet: the rest of the current file and every file after it."""
        left = (len(self._rows) - self._row) if self._rows is not None else 0
        for name in self._listing(refresh=True):
            if self._file is None or name > self._file:
                if name not in self._sizes:
                    self._sizes[name] = _row_count(self._root / name)
                left += self._sizes[name]
        return left

    def close(self) -> None:
        self._rows = None


def _row_count(path: Path) -> int:
    if path.suffix == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as lines:
        return max(0, sum(1 for _ in lines) - 1)  # the header (a quoted newline would count: an estimate)


class KafkaSource:
    """A Kafka topic of JSON objects, one example a message, through confluent-kafka (librdkafka).

    The learner is the only reader of its consumer group (a Lease or a lock says so), so it assigns itself
    every partition rather than joining the group: no rebalance, and a restarted learner does not wait for
    its predecessor's session to time out. Offsets are committed to the group by `commit` only, and a start
    reads from the position given to `seek` (a snapshot's), else from the group's committed offsets, else
    from the beginning."""

    def __init__(self, bootstrap: str, topic: str, group_id: str, properties: dict[str, str]) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self._consumer: Consumer = Consumer(
            {
                **properties,
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        self._offsets: dict[int, int] = {}
        self._assigned = False

    def seek(self, position: Position) -> None:
        """Assign every partition, each at its offset in `position` when it has one (a partition added
        since: the group's committed offset, else the beginning)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        # Offsets of another topic (the spec named a new one) say nothing about this one.
        offsets = position.get("offsets") if position.get("topic") == self.topic else None
        stored = {int(p): int(o) for p, o in (offsets or {}).items()}
        partitions = self._partitions()
        committed = {
            tp.partition: tp.offset
            for tp in self._consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=30
            )
            if tp.offset >= 0
        }
        self._offsets = {}
        for partition in partitions:
            offset = stored.get(partition, committed.get(partition))
            if offset is None:
                low, _ = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=30
                )
                offset = low
            self._offsets[partition] = offset
        self._consumer.assign(
            [TopicPartition(self.topic, p, self._offsets.get(p, OFFSET_BEGINNING)) for p in partitions]
        )
        self._assigned = True

    def _partitions(self) -> list[int]:
        topics = self._consumer.list_topics(self.topic, timeout=30).topics
        described = topics.get(self.topic)
        if described is None or described.error is not None or not described.partitions:
            raise KafkaUnavailable(
                f"spec.online.source.kafka.topic: topic {self.topic!r} is not available"
                + (f" ({described.error})" if described is not None and described.error else "")
            )
        return sorted(described.partitions)

    def position(self) -> Position:
        return {"topic": self.topic, "offsets": {str(p): o for p, o in sorted(self._offsets.items())}}

    def poll(self, max_rows: int, timeout: float) -> Polled:
        if not self._assigned:
            self.seek({})
        rows: list[Row] = []
        deadline = time.monotonic() + timeout
        while len(rows) < max_rows:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Short waits: confluent-kafka's consume takes longer the longer its timeout even when the
            # messages are there (~2,000 messages/s at 10 s, ~18,000 at 1 s, ~95,000 at 0.05 s measured).
            messages = self._consumer.consume(max_rows - len(rows), timeout=min(left, CONSUME_SLICE))
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaUnavailable(f"Kafka: {error}")
                    continue  # transient: librdkafka retries by itself
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # a message, not an event
                rows.append(_decode(message.value()))
                self._offsets[partition] = offset + 1
        return Polled(rows, self.position())

    def commit(self, position: Position) -> None:
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(self.topic, int(p), o) for p, o in position["offsets"].items()]
        if offsets:
            # Asynchronous (a synchronous commit is a broker round trip per batch): the group's offsets
            # are for monitoring and a fresh start; a restart resumes from the snapshot's offsets.
            self._consumer.commit(offsets=offsets, asynchronous=True)

    def lag(self) -> int | None:
        """High watermark minus position, summed over the partitions."""
        from confluent_kafka import TopicPartition

        total = 0
        for partition, offset in self._offsets.items():
            where = TopicPartition(self.topic, partition)
            # The high watermark of the last fetch response: asking the broker blocks the learner.
            _, high = self._consumer.get_watermark_offsets(where, cached=True)
            if high < 0:  # nothing fetched yet from this partition
                _, high = self._consumer.get_watermark_offsets(where, timeout=5)
            total += max(0, high - offset)
        return total

    def close(self) -> None:
        self._consumer.close()


class KafkaUnavailable(RuntimeError):
    """The topic cannot be read (missing, or a fatal client error)."""


def _decode(value: bytes | None) -> Row:
    """A message's example: a JSON object; anything else (not JSON, not an object) is None, an invalid row.

    pydantic-core's parser (Rust; pydantic's own dependency) reads a message of 40 numbers ~4x faster than
    `json.loads` (~2 ms against ~9 ms a mini-batch of 256), to the same values (NaN and Infinity too); it
    refuses a byte order mark and a lone surrogate, which `json.loads` lets through."""
    if not value:
        return None
    try:
        decoded = from_json(value)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
