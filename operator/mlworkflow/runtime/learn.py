"""Learn online: `python -m mlworkflow.runtime.learn` (the learner Deployment's program).

    python -m mlworkflow.runtime.learn --store DIR --workflow NAME [--port 8000]
    (the spec as JSON in $MLW_SPEC, the version to start from in $MLW_START_VERSION; a Lease when $MLW_LEASE
    names one, with $POD_NAME and $POD_NAMESPACE, else a lock file in the store)

Starts from a trained version (the warm-up): its fitted preprocessing is frozen (categories fixed, scaler
fitted on the warm-up) and its estimator goes on learning with `partial_fit`, one mini-batch at a time from
`spec.online.source` (`mlworkflow.runtime.sources`). Each mini-batch passes the guardrails
(`mlworkflow.runtime.guardrails`) before it touches the model: a copy is updated and scored on the canary
holdout, and the batch is applied only if the copy holds up; a refused batch is quarantined in the store
with its reason. The source's offsets are committed after a batch is applied or quarantined.

Every `spec.online.snapshots.everySamples` samples or `everySeconds` seconds (when anything was learned)
the model becomes a new version `<start>.<n>` in the workflow's model store, saved as training saves a
version (model card, reference sample, trained rows) plus an `online` section: samples seen, the source
position, canary scores, quarantines. Then `<workflow>/online/latest` names it (replaced atomically: what
serving follows), and only `keep` snapshots stay. A thread of its own (`SnapshotWriter`) saves and
publishes them, in order, from what was taken at the snapshot point, while learning goes on. A restarted
learner resumes from the snapshot in `latest` and reads the source from the position stored in it: no
example lost, none learned twice. A fresh start saves `<start>.0` at once (the start model and the position
it starts from). The applied examples are also appended, with each snapshot, to
`<workflow>/stream/<YYYY-MM-DD-HH>/part-<snapshot>.parquet`. A tracked workflow's published snapshots are
steps of one MLflow run per start version (`tracking.SnapshotLog`, sent by a thread of its own).

Exit codes: 0 after SIGTERM (the batch in hand is finished or dropped, never committed unapplied, and what
was learned is snapshotted); 2 (exitcodes.INVALID_INPUT) when the spec cannot learn online (no
partial_fit, the start version missing, classes it does not know), with a termination message saying why;
1 when another learner took the Lease (this one stops writing at once).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from mlworkflow.api import exitcodes
from mlworkflow.api.estimators import check_incremental
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, OnlineSpec, promotion_metric
from mlworkflow.runtime import (
    data,
    fairness,
    guardrails,
    holdout,
    importance,
    lease,
    pipeline,
    sources,
    tracking,
)
from mlworkflow.runtime.store import WorkflowStore
from mlworkflow.runtime.termination import TERMINATION_LOG, report

EXIT_LOST = 1
TRIGGER = "Online"
CANARY_ROWS = 2000  # at most: scored after every mini-batch
MIN_CANARY_ROWS = 10  # fewer score nothing useful: the canary check is off
QUARANTINES_REPORTED = 10
MESSAGE_CHARS = 300
REPORT_SECONDS = 1.0
LAG_SECONDS = 2.0
PRUNE_SECONDS = 60.0
# A snapshot's permutation importance and fairness on the canary, at most this often: they cost ~features
# x 5 predictions of the canary on the snapshot writer's thread, whose CPU the learning thread shares.
INSIGHT_SECONDS = 60.0
# After a snapshot, the writer rests this many times the CPU time its save took (at most WRITER_REST_MAX
# seconds: a save with the minutely importance) before the next: saving (pickling, BentoML's bookkeeping,
# the archive) holds the GIL, and a writer busy all the time would halve the learning thread on a fast
# stream. It thus takes about a quarter at most; snapshots due meanwhile merge.
WRITER_REST = 3.0
WRITER_REST_MAX = 1.0


class StartError(Exception):
    """The learner cannot start as specified: a CamelCase reason and a message naming the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Progress:
    """What the learner reports and stores in each snapshot's card (`online` section)."""

    samples_seen: int = 0
    batches_applied: int = 0
    batches_quarantined: int = 0
    rollbacks: int = 0
    quarantines: list[dict[str, Any]] = field(default_factory=list)  # newest first

    def to_json(self) -> dict[str, Any]:
        return {
            "samplesSeen": self.samples_seen,
            "batchesApplied": self.batches_applied,
            "batchesQuarantined": self.batches_quarantined,
            "rollbacks": self.rollbacks,
            "quarantines": self.quarantines,
        }

    @classmethod
    def from_json(cls, online: dict[str, Any]) -> Progress:
        return cls(
            int(online.get("samplesSeen", 0)),
            int(online.get("batchesApplied", 0)),
            int(online.get("batchesQuarantined", 0)),
            int(online.get("rollbacks", 0)),
            list(online.get("quarantines") or []),
        )


@dataclass
class Snapshot:
    """A snapshot as taken at its snapshot point on the learning thread, for the snapshot writer to save."""

    estimator: Any
    position: sources.Position  # after the last row the estimator learned
    progress: dict[str, Any]  # Progress.to_json()
    score: float | None
    baseline: float | None
    shares: dict[str, float]
    rows: list[guardrails.Checked]  # the batches applied since the previous one: archived
    time: datetime


class SnapshotWriter:
    """Saves snapshots in a thread of its own, in the order they were taken, while the learner goes on.

    At most one waits: a snapshot taken while another waits replaces it and archives its rows too (the
    newer model learned them), so a slow store makes snapshots rarer, never the learner slower; after each
    save the thread rests WRITER_REST times the CPU time it took. An error of the thread (a lost Lease, a
    full disk) is raised on the learning thread by the next `submit`, `check` or `wait`."""

    def __init__(self, save: Callable[[Snapshot], None]) -> None:
        self._save = save
        self._changed = threading.Condition()
        self._waiting: Snapshot | None = None
        self._busy = self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot) -> None:
        with self._changed:
            self._raise()
            if self._waiting is not None:
                snapshot.rows = [*self._waiting.rows, *snapshot.rows]
            self._waiting = snapshot
            self._changed.notify_all()

    def check(self) -> None:
        with self._changed:
            self._raise()

    def wait(self) -> None:
        """Until every snapshot submitted is saved and published."""
        with self._changed:
            while (self._waiting is not None or self._busy) and self._error is None:
                self._changed.wait()
            self._raise()

    def close(self) -> None:
        """Drop a waiting snapshot and end the thread (after the one being saved)."""
        with self._changed:
            self._closed, self._waiting = True, None
            self._changed.notify_all()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        rest_until = 0.0
        while True:
            with self._changed:
                while not self._closed and (self._waiting is None or time.monotonic() < rest_until):
                    self._changed.wait(None if self._waiting is None else rest_until - time.monotonic())
                if self._closed:
                    return
                snapshot, self._waiting, self._busy = self._waiting, None, True
            assert snapshot is not None
            started = time.thread_time()
            try:
                self._save(snapshot)
            except BaseException as error:  # raised on the learning thread
                with self._changed:
                    self._error = error
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
            if self._error is not None:
                return
            rest = min(WRITER_REST * (time.thread_time() - started), WRITER_REST_MAX)
            rest_until = time.monotonic() + rest


def check_spec(spec: MLWorkflowSpec) -> OnlineSpec:
    """spec.online, or StartError when the workflow cannot learn online (before anything is loaded)."""
    if spec.online is None or spec.model is None or spec.model.estimator is None:
        raise StartError(
            "OnlineSpecMissing", "spec.online and spec.model.estimator are needed to learn online"
        )
    refusal = check_incremental("spec.model.estimator", spec.model.estimator)
    if refusal:
        raise StartError(refusal.reason, refusal.message)
    return spec.online


class Metrics:
    """The learner's Prometheus metrics (a registry of its own, served on --port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.samples = Counter("mlworkflow_online_samples", "Examples learned.", registry=self.registry)
        self.batches = Counter(
            "mlworkflow_online_batches",
            "Mini-batches by outcome (applied, quarantined) and quarantine reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.canary = Gauge(
            "mlworkflow_online_canary_score", "The current model's canary score.", registry=self.registry
        )
        self.lag = Gauge(
            "mlworkflow_online_lag", "Examples in the source not read yet.", registry=self.registry
        )
        self.snapshot = Gauge(
            "mlworkflow_online_snapshot_info", "The newest snapshot (1).", ["version"], registry=self.registry
        )

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)


class Learner:
    """One learner: the model, its guardrails, its source and its snapshots."""

    def __init__(
        self, spec: MLWorkflowSpec, store: WorkflowStore, start: str, writer: lease.Writer, metrics: Metrics
    ) -> None:
        self.online = check_spec(spec)
        assert spec.model is not None
        self.spec, self.store, self.start, self.writer, self.metrics = spec, store, start, writer, metrics
        os.environ["BENTOML_HOME"] = str(store.bentoml_home)
        # A snapshot every few seconds: BentoML's usage tracking would post each one (30 ms, and traffic).
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        start_dir = store.model_dir(start)
        if not (start_dir / "card.json").exists():
            raise StartError(
                "StartVersionMissing", f"MLW_START_VERSION: version {start!r} is not in the model store"
            )
        self.start_card: dict[str, Any] = json.loads((start_dir / "card.json").read_text())
        self.task: str = self.start_card["task"]
        self.schema = data.FeatureSchema.from_json(self.start_card["schema"])
        self.model_classes: list[Any] | None = self.start_card.get("classes")
        allowed = self._classes()
        reference_path = start_dir / "reference.parquet"
        self.reference = pd.read_parquet(reference_path) if reference_path.exists() else pd.DataFrame()
        self.trained_rows = holdout.load_rows(start_dir)

        resumed = self._resume_point()
        self.snapshot_version = resumed[0] if resumed else None
        card = resumed[1] if resumed else {}
        online = card.get("online") or {}
        self.progress = Progress.from_json(online)
        self.number = int(self.snapshot_version.rsplit(".", 1)[1]) if self.snapshot_version else 0
        folder = store.model_dir(self.snapshot_version) if self.snapshot_version else start_dir
        model = joblib.load(folder / "pipeline.joblib")
        self.features, self.estimator = model.named_steps["features"], model.named_steps["estimator"]
        # The frozen preprocessing in numpy on the guard's columns (scikit-learn's `transform` otherwise).
        self.frozen = pipeline.FrozenFeatures.of(self.features)
        if not hasattr(self.estimator, "partial_fit"):
            raise StartError(
                "EstimatorNotIncremental",
                f"version {start}'s estimator has no partial_fit: it cannot learn online",
            )
        self.guard = guardrails.Guard(
            self.schema, self.task, allowed, self.reference, self.online.guardrails, online.get("classShares")
        )
        # The canary's rows before the preprocessing, their truth and groups (`_insights`), set by _canary.
        self.canary_rows: tuple[pd.DataFrame, pd.Series, pd.DataFrame | None] | None = None
        self._insights_of: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None
        self._insights_at = 0.0
        self.canary = self._canary()
        if self.canary is not None:
            self.score: float | None = self.canary.score(self.estimator)
            baseline = (online.get("canary") or {}).get("baseline")
            self.canary.baseline = float(baseline) if baseline is not None else self.score
        else:
            self.score = None
        self.snapshot_score = self.score
        if self.task == "classification" and not self.guard.shares and self.canary is not None:
            self.guard.shares = guardrails.class_shares(self.canary.y)

        group = f"mlworkflow.{os.environ.get('POD_NAMESPACE') or 'local'}.{store.workflow}"
        config_dir = os.environ.get("MLW_KAFKA_CONFIG_DIR")
        self.source = sources.open_source(
            self.online.source, store.root, group, Path(config_dir) if config_dir else None
        )
        position = online.get("position") if resumed else self._inherited_position()
        self.source.seek(position or {})
        self.position = self.source.position()
        self.pending: list[guardrails.Checked] = []  # applied, archived with the next snapshot
        self.learned = 0  # samples since the last snapshot
        self.snapshot_time = datetime.now(UTC)
        self._last_snapshot = time.monotonic()
        self._last_report = self._last_lag = self._last_prune = -float("inf")
        self._report_due = False  # a snapshot was published since the last report
        self.lag: int | None = None
        self.stopping = False
        self._drop_stale()
        mlflow = tracking.Settings.from_env()
        # MLflow: each published snapshot a step of one run (`tracking.SnapshotLog`, a thread of its own).
        self.tracked = (
            tracking.SnapshotLog(
                mlflow,
                store,
                start,
                {
                    "estimator": self.start_card["pipeline"]["estimator"],
                    "batchSize": str(self.online.batch_size),
                    "startVersion": start,
                },
            )
            if mlflow is not None
            else None
        )
        if self.snapshot_version is None:
            self._save(self._take())  # <start>.0: serving follows `latest` from the start
        else:
            self.metrics.snapshot.labels(self.snapshot_version).set(1)
        self.snapshots = SnapshotWriter(self._save)
        self.metrics.samples.inc(0)
        if self.score is not None:
            self.metrics.canary.set(self.score)

    # -- start -----------------------------------------------------------------------------------------

    def _classes(self) -> list[Any] | None:
        """The labels a batch may hold: spec.online.classes, which the start version must know, or its
        classes."""
        if self.task != "classification":
            return None
        known = list(self.model_classes or [])
        wanted = self.online.classes
        if not wanted:
            return known
        spelled = {data.category(c): c for c in known}
        unknown = [c for c in wanted if data.category(c) not in spelled]
        if unknown:
            raise StartError(
                "ClassesUnknown",
                f"spec.online.classes: {unknown} not among the classes version {self.start} was trained on "
                f"({known}); a version trained with them (the training after the change) starts the learner",
            )
        return [spelled[data.category(c)] for c in wanted]

    def _snapshots(self) -> list[tuple[int, str]]:
        """This start version's snapshots in the model store, oldest first."""
        folder = self.store.model_dir(self.start).parent
        found = []
        for path in folder.glob(f"{self.start}.*"):
            suffix = path.name[len(self.start) + 1 :]
            if path.is_dir() and suffix.isdigit():
                found.append((int(suffix), path.name))
        return sorted(found)

    def _published(self) -> str | None:
        path = self.store.online_latest
        return path.read_text().strip() or None if path.exists() else None

    def _resume_point(self) -> tuple[str, dict[str, Any]] | None:
        """The snapshot in `latest` when it is one of this start version's (with its card), else None."""
        latest = self._published()
        if (
            not latest
            or not latest.startswith(f"{self.start}.")
            or not latest[len(self.start) + 1 :].isdigit()
        ):
            return None
        card_path = self.store.model_dir(latest) / "card.json"
        if not card_path.exists():
            return None
        return latest, json.loads(card_path.read_text())

    def _inherited_position(self) -> sources.Position | None:
        """A fresh start reads on from where the published snapshot (of an earlier start version) stood, when
        it read the same source."""
        latest = self._published()
        card_path = self.store.model_dir(latest) / "card.json" if latest else None
        if card_path is None or not card_path.exists():
            return None
        position = (json.loads(card_path.read_text()).get("online") or {}).get("position")
        if not position:
            return None
        kafka = self.online.source.kafka
        same = position.get("topic") == kafka.topic if kafka else "file" in position
        return position if same else None

    def _drop_stale(self) -> None:
        """Remove this start version's snapshots (and their archive parts) after the one resumed from: saved
        by a learner that stopped before publishing them, they were never served, and their rows will be
        learned again."""
        resumed = self.number if self.snapshot_version else -1
        for number, version in self._snapshots():
            if number > resumed:
                self._delete(version)
                for part in self.store.stream_archive.glob(f"*/part-{version}.parquet"):
                    part.unlink()

    def _canary(self) -> guardrails.Canary | None:
        """The canary holdout: the rows of spec.data.source the start version was not trained on (its
        holdout), at most CANARY_ROWS, transformed once by the frozen preprocessing."""
        if self.trained_rows is None:
            print("learn: the start version does not record its training rows: no canary check", flush=True)
            return None
        try:
            snapshot = data.load(self.spec.data.source, self.store.root)
            frame = data.check(snapshot.frame, self.schema, self.task, 0)
        except data.DataError as error:
            raise StartError("DataInvalid", f"spec.data.source (the canary holdout): {error}") from None
        hashes = holdout.row_hashes(frame[[*self.schema.features, self.schema.target]])
        unseen = frame[~np.isin(hashes, self.trained_rows)]
        y = unseen[self.schema.target]
        if self.task == "classification":
            spelled = {data.category(c): c for c in self.guard.classes}
            labels = [spelled.get(data.category(v)) for v in y.tolist()]
            known = np.array([label is not None for label in labels], dtype=bool)
            unseen, y = unseen[known], pd.Series([label for label in labels if label is not None])
        if len(unseen) > CANARY_ROWS:
            chosen = np.sort(
                np.random.default_rng(holdout.SEED).choice(len(unseen), CANARY_ROWS, replace=False)
            )
            unseen, y = unseen.iloc[chosen], y.iloc[chosen]
        if len(unseen) < MIN_CANARY_ROWS:
            print(f"learn: {len(unseen)} canary rows: too few, no canary check", flush=True)
            return None
        frame = unseen[self.schema.features].reset_index(drop=True)
        truth = np.asarray(y.tolist()) if self.task == "classification" else y.to_numpy()
        metric = promotion_metric(self.spec)
        transformed = self.features.transform(frame)
        self.canary_rows = frame, pd.Series(truth), self._canary_groups(snapshot.frame.loc[unseen.index])
        return guardrails.Canary(transformed, truth, metric, self.online.guardrails.max_metric_drop)

    def _canary_groups(self, rows: pd.DataFrame) -> pd.DataFrame | None:
        """The canary rows' groups of spec.monitoring.fairness.sensitiveFeatures (from the data: model
        inputs or not); None when none are declared or they cannot be grouped (said in the log)."""
        declared = self.spec.monitoring.fairness.sensitive_features
        if not declared:
            return None
        try:
            return fairness.groups(rows, declared).reset_index(drop=True)
        except data.DataError as error:
            print(f"learn: no fairness figures for the snapshots: {error}", flush=True)
            return None

    def _insights(self, model: Pipeline, version: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The snapshot's permutation importance and fairness figures on the canary holdout (as a trained
        version's card has them on its holdout), each naming the `version` it was computed for: computed
        at most every INSIGHT_SECONDS, a snapshot in between carries the last ones. (None, None) without a
        canary. On the snapshot writer's thread."""
        if self.canary_rows is None:
            return None, None
        if self._insights_of is not None and time.monotonic() - self._insights_at < INSIGHT_SECONDS:
            return self._insights_of
        started = time.monotonic()
        frame, truth, groups = self.canary_rows
        metric, blocks = promotion_metric(self.spec), pipeline.feature_blocks(self.features, self.schema)
        if blocks is not None and self.canary is not None:  # the canary is preprocessed already
            estimator = model.named_steps["estimator"]
            ranked = importance.permutation_of_blocks(estimator, self.canary.x, truth, blocks, metric)
        else:
            ranked = importance.permutation(model, frame, truth, metric)
        fair = None
        if groups is not None:
            gap = self.spec.monitoring.fairness.gap
            fair = fairness.assess(self.task, truth, model.predict(frame), groups, self.model_classes, gap)
        self._insights_at = time.monotonic()
        self._insights_of = (
            {**ranked, "version": version} if ranked else None,
            {**fair, "version": version, "rows": len(frame)} if fair else None,
        )
        print(
            f"learn: importance and fairness of {version} on {len(frame)} canary rows in "
            f"{self._insights_at - started:.3f} s",
            flush=True,
        )
        return self._insights_of

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Learn until `stopping` (SIGTERM); raises lease.Lost when another learner took over."""
        self._prune_archive()
        self._report(force=True)
        while not self.stopping:
            self.writer.check()
            before = self.source.position()
            polled = self.source.poll(self.online.batch_size, self.online.max_wait_seconds)
            if self.stopping:
                break  # the batch in hand is dropped: neither applied nor committed
            if polled.rows:
                self.handle(polled.rows, before, polled.position)
                self.writer.check()
                self.source.commit(polled.position)
            self.position = polled.position
            if self._snapshot_due():
                self.save_snapshot()
            self.snapshots.check()
            self._report()
        if self.learned:
            self.writer.check()
            self.save_snapshot()
        self.snapshots.wait()
        self._report(force=True)

    def handle(self, rows: list[sources.Row], before: sources.Position, after: sources.Position) -> None:
        """Apply one mini-batch, or quarantine it with the reason."""
        checked = self.guard.check(rows)
        batch = hashlib.sha256(json.dumps([before, after], sort_keys=True).encode()).hexdigest()[:16]
        if checked.reason is not None:
            self.quarantine(batch, rows, checked.reason, checked.message)
            return
        if not len(checked.y):
            return  # every row dropped, within maxInvalidFraction (0 rows of 0): nothing to learn
        candidate = copy.deepcopy(self.estimator)
        x = (
            self.frozen.transform(checked.numeric, checked.categorical)
            if self.frozen is not None
            else self.features.transform(checked.x)
        )
        kwargs = {"classes": np.asarray(self.model_classes)} if self.task == "classification" else {}
        candidate.partial_fit(x, checked.y, **kwargs)
        if self.canary is not None:
            score = self.canary.score(candidate)
            if self.canary.refuses(score):
                assert self.canary.baseline is not None
                self.progress.rollbacks += 1
                self.quarantine(
                    batch,
                    rows,
                    "CanaryDrop",
                    f"the updated model's canary {self.canary.metric} would be {score:.4f}, "
                    f"{self.canary.drop(score):.4f} below the baseline {self.canary.baseline:.4f}; at most "
                    f"{self.canary.max_drop:g} is allowed (spec.online.guardrails.maxMetricDrop)",
                )
                return
            self.canary.accept(score)
            self.score = score
            self.metrics.canary.set(score)
        self.estimator = candidate
        self.guard.accept(checked.y)
        rows_applied = len(checked.y)
        self.progress.samples_seen += rows_applied
        self.progress.batches_applied += 1
        self.learned += rows_applied
        self.metrics.samples.inc(rows_applied)
        self.metrics.batches.labels("applied", "").inc()
        if self.online.archive.retention_hours:
            self.pending.append(checked)  # a frame later, off this thread

    def quarantine(self, batch: str, rows: list[sources.Row], reason: str, message: str) -> None:
        """The batch's rows and reason in `<workflow>/online/quarantine/<batch>.parquet` and `.json`."""
        folder = self.store.quarantine
        folder.mkdir(parents=True, exist_ok=True)
        _write_rows(rows, folder / f"{batch}.parquet")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        record = {"batch": batch, "reason": reason, "message": message[:MESSAGE_CHARS], "time": now}
        lease.write_atomically(
            folder / f"{batch}.json",
            json.dumps(
                {**record, "message": message, "rows": len(rows), "startVersion": self.start}, indent=1
            ),
        )
        self.progress.batches_quarantined += 1
        self.progress.quarantines = [record, *self.progress.quarantines][:QUARANTINES_REPORTED]
        self.metrics.batches.labels("quarantined", reason).inc()
        print(f"learn: quarantined batch {batch} ({len(rows)} rows): {reason}: {message}", flush=True)

    def _snapshot_due(self) -> bool:
        every = self.online.snapshots
        return self.learned > 0 and (
            self.learned >= every.every_samples
            or time.monotonic() - self._last_snapshot >= every.every_seconds
        )

    # -- snapshots ---------------------------------------------------------------------------------------

    def save_snapshot(self) -> None:
        """Take a snapshot of the current model, saved and published by the snapshot writer's thread."""
        self.snapshots.submit(self._take())

    def _take(self) -> Snapshot:
        """What a snapshot saves, as it is now (the snapshot point): the estimator (never changed once in
        `self.estimator`: `handle` updates a copy), the source position after the rows it learned, and the
        counters; resets what counts towards the next one."""
        snapshot = Snapshot(
            estimator=self.estimator,
            position=copy.deepcopy(self.position),
            progress=copy.deepcopy(self.progress.to_json()),
            score=self.score,
            baseline=self.canary.baseline if self.canary else None,
            shares=dict(self.guard.shares),
            rows=self.pending,
            time=datetime.now(UTC),
        )
        self.pending, self.learned, self._last_snapshot = [], 0, time.monotonic()
        return snapshot

    def _save(self, snapshot: Snapshot) -> None:
        """A snapshot as version `<start>.<n+1>` (`<start>.0` first), then published in `latest` (on the
        snapshot writer's thread; only this thread writes versions, `latest` and the archive after the
        start).

        What it writes and why: pipeline.joblib (what serving and a champion's scoring load), card.json and
        card.md (the card with its `online` section: the resume point), the start version's
        reference.parquet and trained-rows.npy copied (drift reference; the rows the model saw at start;
        the streamed rows are in the archive), the archive part. No ONNX export (serving runs the
        scikit-learn pipeline of a snapshot), no cross-validation."""
        from mlworkflow.runtime.train import model_card_markdown, save_version

        version = f"{self.start}.{self.number + 1 if self.snapshot_version else 0}"
        model = Pipeline([("features", self.features), ("estimator", snapshot.estimator)])
        # The holdout metrics of a version, on the canary transformed once (the preprocessing is frozen).
        metrics = self.canary.metrics(snapshot.estimator) if self.canary else {}
        ranked, fair = self._insights(model, version)
        online = {
            **snapshot.progress,
            "startVersion": self.start,
            "position": snapshot.position,
            "canary": {
                "metric": self.canary.metric if self.canary else None,
                "rows": self.canary.rows if self.canary else 0,
                "score": snapshot.score,
                "baseline": snapshot.baseline,
            },
            "classShares": snapshot.shares,
        }
        card = {
            **self.start_card,
            "version": version,
            "trigger": TRIGGER,
            "trainedAt": snapshot.time.isoformat(timespec="seconds"),
            "trainingSeconds": 0.0,
            "pipeline": self.start_card["pipeline"],  # the same steps and parameters (a repr costs 60 ms)
            "crossValidation": {},
            "metrics": metrics,
            # On the canary, not the start version's (which the start card has); maybe of an earlier snapshot.
            "importance": ranked,
            "fairness": fair,
            "champion": None,
            "lineage": {
                **(self.start_card.get("lineage") or {}),
                "trigger": TRIGGER,
                "startVersion": self.start,
            },
            "onnx": {
                "exported": False,
                "verified": False,
                "check": "online snapshots are served by scikit-learn (no ONNX export per snapshot)",
            },
            "backend": "sklearn",
            "online": online,
        }
        self._archive(version, snapshot.rows, snapshot.time)
        start_dir = self.store.model_dir(self.start)
        reference = start_dir / "reference.parquet"
        trained_rows = start_dir / holdout.ROWS_FILE
        save_version(
            self.store,
            version,
            TRIGGER,
            model,
            None,
            card,
            reference if reference.exists() else self.reference,
            trained_rows if self.trained_rows is not None else None,
            markdown=model_card_markdown(card) + _online_markdown(online),
        )
        self.writer.check()  # never published without the lease (the learning thread stops at once)
        lease.write_atomically(self.store.online_latest, version + "\n")
        previous = self.snapshot_version
        self.snapshot_version, self.number = version, int(version.rsplit(".", 1)[1])
        self.snapshot_time, self.snapshot_score = snapshot.time, snapshot.score
        if previous:
            self.metrics.snapshot.remove(previous)
        self.metrics.snapshot.labels(version).set(1)
        if self.tracked is not None:
            self.tracked.log(tracking.SnapshotPoint(self.number, version, snapshot.time, _logged(card)))
        self._prune_snapshots()
        self._report_due = True

    def _prune_snapshots(self) -> None:
        keep = self.online.snapshots.keep
        for _, version in self._snapshots()[:-keep]:
            if version != self.snapshot_version:
                self._delete(version)

    def _delete(self, version: str) -> None:
        """Remove a snapshot that is not the newest version: its folder is all BentoML has of it
        (`bentoml.models.delete` does the same after reading every version's YAML, ~1 ms each)."""
        shutil.rmtree(self.store.model_dir(version), ignore_errors=True)

    def _archive(self, version: str, rows: list[guardrails.Checked], now: datetime) -> None:
        """The rows applied since the last snapshot, in the stream archive (before the snapshot is saved: a
        learner stopped in between leaves a part that the next start removes, `_drop_stale`)."""
        if not rows:
            return
        folder = self.store.stream_archive / now.strftime("%Y-%m-%d-%H")
        folder.mkdir(parents=True, exist_ok=True)
        target = self.schema.target
        numeric = {c: np.concatenate([b.numeric[c] for b in rows]) for c in self.schema.numeric}
        categorical = {c: np.concatenate([b.categorical[c] for b in rows]) for c in self.schema.categorical}
        frame = pd.DataFrame({**numeric, **categorical, target: np.concatenate([b.y for b in rows])})
        temporary = folder / f".part-{version}.parquet.tmp"
        frame.to_parquet(temporary, index=False)
        os.replace(temporary, folder / f"part-{version}.parquet")
        if time.monotonic() - self._last_prune >= PRUNE_SECONDS:
            self._prune_archive()

    def _prune_archive(self) -> None:
        """Remove the hours of the stream archive older than spec.online.archive.retentionHours."""
        self._last_prune = time.monotonic()
        hours = self.online.archive.retention_hours
        if not self.store.stream_archive.exists():
            return
        oldest = datetime.now(UTC) - timedelta(hours=hours)
        for folder in self.store.stream_archive.iterdir():
            try:
                hour = datetime.strptime(folder.name, "%Y-%m-%d-%H").replace(tzinfo=UTC)
            except ValueError:
                continue
            if hour + timedelta(hours=1) <= oldest:
                shutil.rmtree(folder, ignore_errors=True)

    # -- progress ----------------------------------------------------------------------------------------

    def progress_json(self) -> dict[str, Any]:
        """The progress report: camelCase keys mirroring OnlineStatus (bounded: ten quarantines)."""
        return {
            "learner": self.writer.identity,
            "startVersion": self.start,
            "snapshot": self.snapshot_version,
            "snapshotTime": self.snapshot_time.isoformat(timespec="seconds"),
            "samplesSeen": self.progress.samples_seen,
            "batchesApplied": self.progress.batches_applied,
            "batchesQuarantined": self.progress.batches_quarantined,
            "rollbacks": self.progress.rollbacks,
            "lag": self.lag,
            "canaryScore": self.snapshot_score,
            "canaryBaseline": self.canary.baseline if self.canary else None,
            "quarantines": self.progress.quarantines,
            "reported": datetime.now(UTC).isoformat(timespec="seconds"),
            **({"tracking": self.tracked.status()} if self.tracked is not None else {}),
        }

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_lag >= LAG_SECONDS or force:
            self._last_lag = now
            try:
                self.lag = self.source.lag()
            except Exception as error:  # a lag is a report, never a reason to stop learning
                print(f"learn: lag unknown: {error}", flush=True)
                self.lag = None
            if self.lag is not None:
                self.metrics.lag.set(self.lag)
        if force or self._report_due or now - self._last_report >= REPORT_SECONDS:
            self._last_report, self._report_due = now, False
            self.writer.report(self.progress_json())


def _logged(card: dict[str, Any]) -> dict[str, float]:
    """A snapshot's metrics for MLflow: its canary metrics (`holdout.<metric>`, as a trained version's
    holdout metrics: the canary rows are its start version's holdout), the canary score and baseline, and
    the counters (`online.<counter>`)."""
    online = card["online"]
    canary = online["canary"]
    return {
        **{f"holdout.{k}": float(v) for k, v in card["metrics"].items()},
        **{f"canary.{k}": float(canary[k]) for k in ("score", "baseline") if canary[k] is not None},
        **{
            f"online.{k}": float(online[k])
            for k in ("samplesSeen", "batchesApplied", "batchesQuarantined", "rollbacks")
        },
    }


def _write_rows(rows: list[sources.Row], path: Path) -> None:
    """A quarantined batch as Parquet: its columns as they came, or (values of mixed types, rows that are
    not objects) one column `record` of JSON text per row."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        if any(type(r) is not dict for r in rows):
            raise ValueError("rows that are not objects")
        pd.DataFrame(rows).to_parquet(temporary, index=False)
    except (ValueError, TypeError, NotImplementedError):  # pyarrow's ArrowInvalid, ArrowTypeError, ...
        records = [json.dumps(r, default=str) if r is not None else None for r in rows]
        pd.DataFrame({"record": records}).to_parquet(temporary, index=False)
    os.replace(temporary, path)


def _online_markdown(online: dict[str, Any]) -> str:
    canary = online["canary"]
    quarantined = "\n".join(f"- `{q['batch']}` {q['reason']}: {q['message']}" for q in online["quarantines"])
    return f"""
## Online learning
Started from {online["startVersion"]}; {online["samplesSeen"]} samples learned in {online["batchesApplied"]}
mini-batches; {online["batchesQuarantined"]} quarantined ({online["rollbacks"]} by the canary). Canary
{canary["metric"]} {canary["score"]} (baseline {canary["baseline"]}, {canary["rows"]} rows).
Source position: `{json.dumps(online["position"])}`.

{quarantined}
"""


def writer_from_env(store: WorkflowStore) -> lease.Writer:
    """A Lease when $MLW_LEASE names one (in $POD_NAMESPACE), else the store's lock file."""
    name = os.environ.get("MLW_LEASE")
    if name:
        return lease.Lease(name, os.environ.get("POD_NAMESPACE") or "default")
    return lease.LockFile(store.online_lock, store.online_progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, required=True, help="root of the artifact store")
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--termination-log", default=os.environ.get("MLW_TERMINATION_LOG", TERMINATION_LOG))
    args = parser.parse_args(argv)
    start = os.environ.get("MLW_START_VERSION", "")
    store = WorkflowStore(args.store, args.workflow)
    try:
        spec = MLWorkflowSpec.model_validate_json(os.environ["MLW_SPEC"])
        check_spec(spec)
        if not start:
            raise StartError("StartVersionMissing", "MLW_START_VERSION: no version to start from")
    except StartError as error:
        report({"status": "error", "reason": error.reason, "message": str(error)}, args.termination_log)
        return exitcodes.INVALID_INPUT

    learner: Learner | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        if learner is not None:
            learner.stopping = True
        else:
            raise SystemExit(0)  # not started yet: nothing learned, nothing to finish

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    writer = writer_from_env(store)
    writer.acquire()
    metrics = Metrics()
    try:
        try:
            learner = Learner(spec, store, start, writer, metrics)
        except StartError as error:
            report({"status": "error", "reason": error.reason, "message": str(error)}, args.termination_log)
            return exitcodes.INVALID_INPUT
        if args.port:
            metrics.serve(args.port)
        print(
            f"learn: {store.workflow} from {learner.snapshot_version} "
            f"({learner.progress.samples_seen} samples seen), source at {json.dumps(learner.position)}, "
            f"canary {learner.score}",
            flush=True,
        )
        learner.run()
    except lease.Lost as lost:
        report({"status": "error", "reason": "LeaseLost", "message": str(lost)}, args.termination_log)
        return EXIT_LOST
    finally:
        if learner is not None:
            learner.snapshots.close()  # before the lock or Lease goes: no snapshot published after
            learner.source.close()
            if learner.tracked is not None:
                learner.tracked.close()
        writer.release()
    assert learner is not None
    report(
        {"status": "ok", **{k: v for k, v in learner.progress_json().items() if k != "quarantines"}},
        args.termination_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
