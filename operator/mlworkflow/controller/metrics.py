"""The operator's Prometheus metrics, served on /metrics (prometheus-client).

Names follow Prometheus conventions: `_total` counters, `_seconds` units, timestamps rather than ages
(alert on `time() - mlworkflow_model_trained_timestamp_seconds`), an `_info` gauge for the served version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from mlworkflow.api.v1alpha1 import MLWorkflowStatus, SearchStatus

# prometheus-client adds the _total suffix to counters: this is mlworkflow_reconciles_total.
RECONCILES = Counter("mlworkflow_reconciles", "Reconciliations of MLWorkflows, by result", ["result"])
RECONCILE_DURATION = Histogram(
    "mlworkflow_reconcile_duration_seconds",
    "Time spent in one reconciliation",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DRIFT_SHARE = Gauge(
    "mlworkflow_drift_share",
    "Share of drifted feature columns at the last drift check",
    ["namespace", "workflow"],
)
DRIFTED = Gauge(
    "mlworkflow_drifted", "1 when the last drift check found drift, else 0", ["namespace", "workflow"]
)
PERFORMANCE = Gauge(
    "mlworkflow_performance",
    "The promotion metric of the served version on labelled predictions, at the last performance check",
    ["namespace", "workflow"],
)
PERFORMANCE_ESTIMATED = Gauge(
    "mlworkflow_performance_estimated",
    "The promotion metric of the served version estimated before the labels (CBPE), at the last check",
    ["namespace", "workflow"],
)
PERFORMANCE_BASELINE = Gauge(
    "mlworkflow_performance_baseline",
    "The promotion metric of the served version on its holdout: what the performance is compared with",
    ["namespace", "workflow"],
)
DEGRADED = Gauge(
    "mlworkflow_degraded",
    "1 when the last performance check found the served model degraded, else 0",
    ["namespace", "workflow"],
)
PERFORMANCE_GAUGES = (PERFORMANCE, PERFORMANCE_ESTIMATED, PERFORMANCE_BASELINE, DEGRADED)
MODEL_DECISIONS = Counter(
    "mlworkflow_model_decisions",
    "Trained versions by trigger and outcome (Promoted, Rejected, Failed)",
    ["namespace", "workflow", "trigger", "outcome"],
)
RETRAINS = Counter(
    "mlworkflow_retrains", "Retrainings started, by trigger", ["namespace", "workflow", "trigger"]
)
TRAINED_AT = Gauge(
    "mlworkflow_model_trained_timestamp_seconds",
    "When the served model finished training (Unix time)",
    ["namespace", "workflow"],
)

BATCH_ROWS = Counter(
    "mlworkflow_batch_rows",
    "Rows of finished batch runs (Forecast), by outcome (predicted, rejected)",
    ["namespace", "workflow", "outcome"],
)
BATCH_RUNS = Counter(
    "mlworkflow_batch_runs", "Finished batch runs, by state", ["namespace", "workflow", "state"]
)
BATCH_DURATION = Histogram(
    "mlworkflow_batch_run_duration_seconds",
    "How long finished batch runs took (the slowest index)",
    ["namespace", "workflow"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
BATCH_SUCCEEDED_AT = Gauge(
    "mlworkflow_batch_last_success_timestamp_seconds",
    "When a batch run last succeeded (Unix time): alert on time() minus it",
    ["namespace", "workflow"],
)

SEARCH_TRIALS = Counter(
    "mlworkflow_search_trials",
    "Trials of finished model searches (AutoML), by state (complete, failed, pruned)",
    ["namespace", "workflow", "state"],
)
# The latest search, live while it runs (its workers' progress reports), then final.
SEARCH_CURRENT_TRIALS = Gauge(
    "mlworkflow_search_current_trials",
    "Trials of the latest model search, by state (complete, failed, pruned, running): so far while it runs",
    ["namespace", "workflow", "state"],
)
SEARCH_BEST = Gauge(
    "mlworkflow_search_best_score",
    "Best cross-validation score of the latest search, so far while it runs (its metric; errors positive)",
    ["namespace", "workflow"],
)
SEARCH_SECONDS = Gauge(
    "mlworkflow_search_seconds",
    "How long the latest search has run (as of its workers' last report), or ran once finished",
    ["namespace", "workflow"],
)
SEARCH_STATES = ("complete", "failed", "pruned", "running")
SEARCH_DURATION = Histogram(
    "mlworkflow_search_duration_seconds",
    "How long finished model searches took",
    ["namespace", "workflow"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)

# OnlineLearning: what the learner last reported (status.online), per workflow. Gauges, not counters: they
# copy the learner's own counts, which start again with each start version (its /metrics has the rates).
ONLINE_SAMPLES = Gauge(
    "mlworkflow_online_samples_seen",
    "Examples the learner learned since its start version",
    ["namespace", "workflow"],
)
ONLINE_QUARANTINED = Gauge(
    "mlworkflow_online_batches_quarantined",
    "Mini-batches the learner's guardrails refused since its start version",
    ["namespace", "workflow"],
)
ONLINE_LAG = Gauge(
    "mlworkflow_online_lag",
    "Examples in the stream not read yet (Kafka consumer lag)",
    ["namespace", "workflow"],
)
ONLINE_CANARY = Gauge(
    "mlworkflow_online_canary_score",
    "The served snapshot's score on the canary holdout (the promotion metric)",
    ["namespace", "workflow"],
)
ONLINE_SNAPSHOT_AT = Gauge(
    "mlworkflow_online_snapshot_timestamp_seconds",
    "When the served snapshot was written (Unix time): alert on time() minus it",
    ["namespace", "workflow"],
)
ONLINE_GAUGES = (ONLINE_SAMPLES, ONLINE_QUARANTINED, ONLINE_LAG, ONLINE_CANARY, ONLINE_SNAPSHOT_AT)


class WorkflowCollector(Collector):
    """Gauges from the latest status of every workflow: counts by pattern and phase, the served version."""

    def __init__(self) -> None:
        self.workflows: dict[tuple[str, str], tuple[str, str, str | None, str | None]] = {}

    def update(self, namespace: str, name: str, pattern: str, status: MLWorkflowStatus) -> None:
        model = status.model
        self.workflows[(namespace, name)] = (
            pattern,
            status.phase or "Pending",
            model.version if model else None,
            model.backend if model else None,
        )

    def forget(self, namespace: str, name: str) -> None:
        self.workflows.pop((namespace, name), None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = GaugeMetricFamily(
            "mlworkflow_workflows", "MLWorkflows by pattern and phase", labels=["pattern", "phase"]
        )
        totals: dict[tuple[str, str], int] = {}
        info = GaugeMetricFamily(
            "mlworkflow_serving_model_info",
            "The model version each workflow serves",
            labels=["namespace", "workflow", "version", "backend"],
        )
        for (namespace, name), (pattern, phase, version, backend) in self.workflows.items():
            totals[(pattern, phase)] = totals.get((pattern, phase), 0) + 1
            if version:
                info.add_metric([namespace, name, version, backend or ""], 1)
        for (pattern, phase), count in totals.items():
            counts.add_metric([pattern, phase], count)
        yield counts
        yield info


WORKFLOWS = WorkflowCollector()
REGISTRY.register(WORKFLOWS)


def record_status(
    namespace: str, name: str, pattern: str, before: MLWorkflowStatus, after: MLWorkflowStatus
) -> None:
    """Everything a reconcile changed, as metrics."""
    WORKFLOWS.update(namespace, name, pattern, after)
    known = {r.version for r in before.history}
    for record in after.history:
        if record.version not in known:
            MODEL_DECISIONS.labels(namespace, name, record.trigger, record.outcome).inc()
    if after.drift and after.drift.share is not None:
        DRIFT_SHARE.labels(namespace, name).set(after.drift.share)
        DRIFTED.labels(namespace, name).set(1 if after.drift.drifted else 0)
    if after.performance is not None:
        performance = after.performance
        degraded = None if performance.degraded is None else int(performance.degraded)
        for gauge, value in zip(
            PERFORMANCE_GAUGES,
            (performance.measured, performance.estimated, performance.baseline, degraded),
            strict=True,
        ):
            if value is not None:
                gauge.labels(namespace, name).set(value)
    if after.model and after.model.trained_at:
        TRAINED_AT.labels(namespace, name).set(after.model.trained_at.timestamp())
    if after.batch is not None:
        _record_batch_runs(namespace, name, before, after)
    if after.online is not None:
        _record_online(namespace, name, after)
    search, was = after.search, before.search
    if search is not None:
        _record_search_now(namespace, name, search)
    if (
        search
        and search.state != "Running"
        and (was is None or (was.version, was.state) != (search.version, search.state))
    ):
        for state, count in (
            ("complete", search.trials_complete),
            ("failed", search.trials_failed),
            ("pruned", search.trials_pruned),
        ):
            SEARCH_TRIALS.labels(namespace, name, state).inc(count or 0)
        if search.seconds is not None:
            SEARCH_DURATION.labels(namespace, name).observe(search.seconds)


def _record_search_now(namespace: str, name: str, search: SearchStatus) -> None:
    """The latest search as status.search shows it: counts and best so far while it runs, then final."""
    running = search.trials_running if search.state == "Running" else 0
    counts = (search.trials_complete, search.trials_failed, search.trials_pruned, running)
    for state, count in zip(SEARCH_STATES, counts, strict=True):
        SEARCH_CURRENT_TRIALS.labels(namespace, name, state).set(count or 0)
    best = search.best_score
    if best is None and search.leaderboard:
        best = search.leaderboard[0].score
    if best is not None:
        SEARCH_BEST.labels(namespace, name).set(best)
    if search.seconds is not None:
        SEARCH_SECONDS.labels(namespace, name).set(search.seconds)


def _record_batch_runs(namespace: str, name: str, before: MLWorkflowStatus, after: MLWorkflowStatus) -> None:
    """Runs this reconcile saw finish: counted once, when their record stops being Running."""
    finished_before = {r.id for r in (before.batch.runs if before.batch else []) if r.state != "Running"}
    for run in after.batch.runs if after.batch else []:
        if run.state == "Running" or run.id in finished_before:
            continue
        BATCH_RUNS.labels(namespace, name, run.state).inc()
        BATCH_ROWS.labels(namespace, name, "predicted").inc(run.predicted or 0)
        BATCH_ROWS.labels(namespace, name, "rejected").inc(run.rejected or 0)
        if run.seconds is not None:
            BATCH_DURATION.labels(namespace, name).observe(run.seconds)
    if after.batch and after.batch.last_succeeded_at:
        BATCH_SUCCEEDED_AT.labels(namespace, name).set(after.batch.last_succeeded_at.timestamp())


def _record_online(namespace: str, name: str, status: MLWorkflowStatus) -> None:
    online = status.online
    assert online is not None
    ONLINE_SAMPLES.labels(namespace, name).set(online.samples_seen)
    ONLINE_QUARANTINED.labels(namespace, name).set(online.batches_quarantined)
    for gauge, value in (
        (ONLINE_LAG, online.lag),
        (ONLINE_CANARY, online.canary_score),
        (ONLINE_SNAPSHOT_AT, online.snapshot_time.timestamp() if online.snapshot_time else None),
    ):
        if value is not None:
            gauge.labels(namespace, name).set(value)


def record_retrain(namespace: str, name: str, trigger: str) -> None:
    RETRAINS.labels(namespace, name, trigger).inc()


def forget(namespace: str, name: str) -> None:
    WORKFLOWS.forget(namespace, name)
    for gauge in (
        DRIFT_SHARE,
        DRIFTED,
        TRAINED_AT,
        BATCH_SUCCEEDED_AT,
        SEARCH_BEST,
        SEARCH_SECONDS,
        *ONLINE_GAUGES,
        *PERFORMANCE_GAUGES,
    ):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for state in SEARCH_STATES:
        with contextlib.suppress(KeyError):
            SEARCH_CURRENT_TRIALS.remove(namespace, name, state)


_serving: set[int] = set()


def serve(port: int) -> None:
    """Serve /metrics on `port`, once: a standby replica serves it before it leads (a scrape target that is
    up, with nothing to report), and kopf's startup asks again once it leads."""
    if port not in _serving:
        start_http_server(port)
        _serving.add(port)
