"""The MLWorkflow API, version v1alpha1: the single source of the CRD (see `mlworkflow.api.crd`).

Field descriptions become the CRD's documentation (`kubectl explain mlworkflow.spec`), the `crd_rules`
entries become CEL rules (`x-kubernetes-validations`) checked by the API server itself.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "mlworkflow.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MLWorkflow"
PLURAL = "mlworkflows"
SINGULAR = "mlworkflow"
SHORT_NAMES = ["mlw"]
CATEGORIES = ["ml"]

# `kubectl annotate mlw NAME mlworkflow.io/retrain="$(date +%s)"`: any new value asks for one retraining
# (trigger Manual), as `kubectl rollout restart` does for a Deployment; it also retries a failed training.
RETRAIN_ANNOTATION = f"{GROUP}/retrain"
# Forecast: any new value asks for one batch run now, with the promoted version.
PREDICT_ANNOTATION = f"{GROUP}/predict"

# Children are named "<workflow>-<role>-<suffix>"; 40 characters keep them under the 63 of a label value.
MAX_NAME_LENGTH = 40

# Five space-separated cron fields (the syntax of CronJob), or one of the @-macros CronJob accepts.
CRON_RULE = (
    r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|([0-9*/,?A-Za-z-]+[ ]+){4}[0-9*/,?A-Za-z-]+)$')"
)
CRON_MESSAGE = "must be a cron schedule of 5 fields, e.g. '*/15 * * * *', or a macro such as '@hourly'"

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")
REGRESSION_METRICS = ("mse", "mae", "r2")
Metric = Literal["accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "mse", "mae", "r2"]


def rule(expression: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """A CEL validation rule as the CRD spells it; `field_path` points the error at a child field."""
    validation = {"rule": expression, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def cel(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated schema."""
    return {"x-kubernetes-validations": list(rules)}


def cron_field(description: str, default: str | None = None) -> Any:
    extra = cel(rule(CRON_RULE, CRON_MESSAGE))
    if default is None:
        return Field(None, description=description, max_length=100, json_schema_extra=extra)
    return Field(default, description=description, max_length=100, json_schema_extra=extra)


def store_path_field(field: str, description: str, optional: bool = False) -> Any:
    """A path relative to the artifact store: a manifest must not reach outside it. `optional`: None by
    default."""
    return Field(
        *((None,) if optional else ()),
        description=description,
        min_length=1,
        max_length=1024,
        json_schema_extra=cel(
            rule(
                "!self.startsWith('/') && !self.contains('..')",
                f"{field} must stay inside the artifact store: no absolute path, no '..'",
            )
        ),
    )


def section(model: type[BaseModel], description: str) -> Any:
    """An optional section defaulted to `{}`, so the API server fills in (and shows) its defaults."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused like the API server does."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Pattern(StrEnum):
    FORECAST = "Forecast"
    WEB_SERVICE = "WebService"
    ONLINE_LEARNING = "OnlineLearning"
    AUTOML = "AutoML"


# --- spec -----------------------------------------------------------------------------------------------


ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class Features(ApiModel):
    numeric: list[ColumnName] = Field(
        default_factory=list,
        description="Numeric feature columns. Empty with `categorical` empty: every column but the target.",
        max_length=1000,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": []},
    )
    categorical: list[ColumnName] = Field(
        default_factory=list,
        description="Categorical feature columns (one-hot encoded for training).",
        max_length=1000,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": []},
    )


class DataSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "!(self.target in self.features.numeric) && !(self.target in self.features.categorical)",
                "spec.data.target must not also be listed as a feature",
                ".target",
            ),
            rule(
                "!has(self.timeColumn) || (self.timeColumn != self.target"
                " && !(self.timeColumn in self.features.numeric)"
                " && !(self.timeColumn in self.features.categorical))",
                "spec.data.timeColumn orders the rows: it must be neither the target nor a feature",
                ".timeColumn",
            ),
        )
    )

    source: str = Field(
        description=(
            "Where the training data is: a bundled scikit-learn dataset (`sklearn://iris`, `wine`, "
            "`breast_cancer`, `diabetes`, `digits`), or a CSV or Parquet file or glob relative to the "
            "artifact store (e.g. `data/train-*.parquet`). Read again at every retraining."
        ),
        min_length=1,
        max_length=1024,
        json_schema_extra=cel(
            rule(
                "!self.startsWith('sklearn://') || "
                "self.matches('^sklearn://(iris|wine|breast_cancer|diabetes|digits)$')",
                "spec.data.source: the bundled datasets are sklearn://iris, wine, breast_cancer, diabetes "
                "and digits",
            ),
            rule(
                "!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://') || self.startsWith('sklearn://')",
                "spec.data.source must be sklearn://<dataset> or a path relative to the artifact store; "
                "nothing is downloaded",
            ),
            rule(
                "!self.startsWith('/') && !self.contains('..')",
                "spec.data.source must stay inside the artifact store: no absolute path, no '..'",
            ),
        ),
    )
    target: str = Field(description="The column to predict.", min_length=1, max_length=253)
    features: Features = section(Features, "Feature columns and their types.")
    time_column: str | None = Field(
        None,
        description=(
            "Column with each row's event time (a date-time or a number). When set, the holdout is the "
            "newest rows (an out-of-time split: the model is judged on the future it will meet) and "
            "cross-validation folds train on the past and validate on what follows. Never a feature."
        ),
        min_length=1,
        max_length=253,
    )


class Preprocessing(ApiModel):
    impute: bool = Field(
        True, description="Fill missing values (median for numbers, most frequent category)."
    )
    scale: bool = Field(True, description="Standardise numeric columns.")
    one_hot: bool = Field(
        True, description="One-hot encode categorical columns (otherwise they are dropped)."
    )


class ModelSpec(ApiModel):
    estimator: str | None = Field(
        None,
        description=(
            "The scikit-learn estimator by import path, e.g. `sklearn.ensemble.RandomForestClassifier`. "
            "Only module prefixes allowed by the operator's admin may be named. Required except for AutoML."
        ),
        max_length=253,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the estimator, e.g. `{n_estimators: 100}`."
    )
    task: Literal["classification", "regression"] = Field(
        "classification", description="What the model predicts: a class or a number."
    )
    preprocessing: Preprocessing = section(Preprocessing, "Steps of the pipeline before the estimator.")


class ResourceRequirements(ApiModel):
    """The resources of a container, as in a Pod spec."""

    requests: dict[str, int | str] = Field(
        default_factory=dict, description="e.g. `{cpu: 500m, memory: 1Gi}`"
    )
    limits: dict[str, int | str] = Field(default_factory=dict, description="e.g. `{memory: 2Gi}`")


class TrainingSpec(ApiModel):
    holdout: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of rows held out for evaluation and champion/challenger decisions.",
    )
    cross_validation: int = Field(
        5,
        ge=0,
        le=20,
        description="Folds of k-fold cross-validation on the training rows; 0 turns it off.",
        json_schema_extra=cel(
            rule("self != 1", "spec.training.crossValidation must be 0 (off) or at least 2")
        ),
    )
    schedule: str | None = cron_field(
        "Retrain periodically on this cron schedule as well (trigger `Schedule`)."
    )
    backoff_limit: int = Field(
        2,
        ge=0,
        le=10,
        description=(
            "Retries of a training Pod that failed for a reason a retry may fix (a crash, a lost node); "
            "invalid data or model parameters fail the training at once."
        ),
    )
    active_deadline_seconds: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="A training Job running longer than this fails."
    )
    resources: ResourceRequirements = section(ResourceRequirements, "Resources of the training container.")


class Autoscaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.minReplicas <= self.maxReplicas",
                "spec.serving.autoscaling.minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: int = Field(1, ge=1, le=100, description="Fewest serving replicas.")
    max_replicas: int = Field(5, ge=1, le=100, description="Most serving replicas.")
    target_cpu_utilization_percentage: int = Field(
        70,
        ge=1,
        le=100,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU use the HorizontalPodAutoscaler aims at.",
    )


class ServingSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "!(has(self.replicas) && has(self.autoscaling))",
                "spec.serving: set either replicas or autoscaling, not both",
                ".replicas",
            )
        )
    )

    replicas: int | None = Field(
        None, ge=0, le=100, description="Fixed number of serving replicas (default 1)."
    )
    autoscaling: Autoscaling | None = Field(None, description="Scale the serving Deployment on CPU instead.")
    model_version: str | None = Field(
        None,
        description="Pin serving to this model version; empty serves the newest promoted version.",
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    resources: ResourceRequirements = section(ResourceRequirements, "Resources of the serving container.")


class BatchSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "!has(self.labels) || has(self.idColumn)",
                "spec.batch.labels are joined to the predictions on spec.batch.idColumn: set it",
                ".labels",
            )
        )
    )

    input: str = store_path_field(
        "spec.batch.input", "Rows to predict: a CSV or Parquet file or glob relative to the artifact store."
    )
    output: str = store_path_field(
        "spec.batch.output",
        "Folder, relative to the artifact store, that receives one predictions file per run.",
    )
    schedule: str | None = cron_field("Predict on this cron schedule; without it, once per promoted model.")
    passthrough_columns: list[ColumnName] = Field(
        default_factory=list,
        description=(
            "Input columns copied to every prediction row as they are (an id, a date), so that predictions "
            "join back to what they are about."
        ),
        max_length=100,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": []},
    )
    id_column: ColumnName | None = Field(
        None,
        description=(
            "The input column that names each row (an order id; unique across runs): copied to every "
            "prediction row, and the id the monitor knows the row's prediction by, so that labels join to it."
        ),
    )
    labels: str | None = store_path_field(
        "spec.batch.labels",
        "Ground truth of predicted rows that comes later: CSV or Parquet files (a glob relative to the "
        "artifact store) with spec.batch.idColumn and spec.data.target. The monitoring job joins the files "
        "written since its last look to the runs' recorded predictions and measures the promotion metric "
        "on them, as for labels sent to a served model.",
        optional=True,
    )
    max_reject_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description=(
            "Share of input rows that may fail the feature checks (missing or mistyped values, wrong "
            "columns): they are written to the run's rejects with a reason; above this share the run fails."
        ),
    )
    parallelism: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Pods that predict one run together (an Indexed Job): each takes its own share of the input "
            "files (or Parquet row groups); a failed share is retried on its own."
        ),
    )

    def copied_columns(self) -> list[str]:
        """The input columns copied to every prediction row: the id column, then the passthrough ones."""
        return list(dict.fromkeys([*([self.id_column] if self.id_column else []), *self.passthrough_columns]))


class PerformanceSpec(ApiModel):
    """When the served model is judged to have decayed on labelled production data."""

    tolerance: float = Field(
        0.05,
        ge=0,
        le=1e9,
        description=(
            "How far the promotion metric (spec.promotion.metric) measured on labelled predictions may fall "
            "below the served version's holdout value (rise above it for mse and mae) before the model is "
            "Degraded; in the metric's units."
        ),
    )
    min_labelled_rows: int = Field(
        200,
        ge=1,
        le=10_000_000,
        description=(
            "Fewer labelled predictions than this is 'not enough labels', never 'no decay'; the window keeps "
            "growing until there are enough."
        ),
    )
    on_decay: Literal["Retrain", "Alert"] = Field(
        "Retrain",
        description="Retrain (trigger Performance) when the model is Degraded, or only record it and alert.",
    )
    on_estimated_decay: Literal["Ignore", "Alert", "Retrain"] = Field(
        "Ignore",
        description=(
            "Classifiers with probabilities: what an estimated decay (confidence-based performance "
            "estimation on the unlabelled window) does. Ignore reports the estimate only; Alert also posts "
            "an Event; Retrain retrains on the estimate alone (trigger Performance)."
        ),
    )


class FairnessSpec(ApiModel):
    """Who the model may treat differently: per-group metrics in the model card, and the promotion gate."""

    sensitive_features: list[ColumnName] = Field(
        default_factory=list,
        description=(
            "Columns of the data whose groups the model card compares (e.g. `sex`, `age_band`): per group "
            "the selection rate, the task's metrics and the row count on the holdout, and the demographic "
            "parity and equalized odds differences. They may be model inputs or not: list "
            "spec.data.features to keep them out of the model."
        ),
        max_length=20,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": []},
    )
    gap: Literal["EqualizedOdds", "DemographicParity"] = Field(
        "EqualizedOdds",
        description=(
            "The difference spec.promotion.maxFairnessGap bounds: EqualizedOdds (the largest gap between "
            "groups in true or false positive rate) or DemographicParity (the largest gap in selection rate)."
        ),
    )


class MonitoringSpec(ApiModel):
    schedule: str = cron_field("When the drift check runs.", default="*/15 * * * *")
    drift_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of drifted feature columns at or above which the data has drifted.",
    )
    min_samples: int = Field(
        200,
        ge=1,
        le=10_000_000,
        description="Fewer live rows than this is 'not enough data', never 'no drift'.",
    )
    on_drift: Literal["Retrain", "Alert"] = Field(
        "Retrain", description="Retrain on drift, or only record it and alert."
    )
    cooldown: str = Field(
        "1h",
        description=(
            "No retraining triggered by the monitoring (drift or performance) within this long of the "
            "previous one, e.g. `30m`, `1h`."
        ),
        max_length=32,
        pattern=r"^([0-9]+(s|m|h))+$",
    )
    max_retrains_per_day: int = Field(
        4,
        ge=0,
        le=96,
        description="Cap on retrainings the monitoring triggers (drift and performance) per day.",
    )
    performance: PerformanceSpec = section(
        PerformanceSpec,
        "The served model's measured performance on labelled predictions (`POST /feedback` on the serving "
        "Pods), compared with its holdout metric.",
    )
    fairness: FairnessSpec = section(
        FairnessSpec, "Per-group metrics of every version on its holdout (the model card), for fairness."
    )


class PromotionSpec(ApiModel):
    metric: Metric | None = Field(
        None,
        description=(
            "Holdout metric that decides champion/challenger (default f1_macro for classification, r2 for "
            "regression). Errors (mse, mae) count lower as better."
        ),
    )
    min_improvement: float = Field(
        0.0, ge=0, le=1, description="A challenger must beat the champion by at least this much to be served."
    )
    min_holdout_rows: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description=(
            "Fewest held-out rows, seen by neither model, that can decide between champion and challenger. "
            "With fewer, the champion stays and the challenger is Rejected (reason InsufficientHoldout)."
        ),
    )
    max_fairness_gap: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "A challenger whose fairness gap (spec.monitoring.fairness.gap, the largest over the sensitive "
            "features, on its holdout) exceeds this is Rejected (reason FairnessGap) and the champion stays. "
            "Needs spec.monitoring.fairness.sensitiveFeatures; classification only."
        ),
    )


class SecretReference(ApiModel):
    name: str = Field(description="A Secret in the workflow's namespace.", min_length=1, max_length=253)


class KafkaSource(ApiModel):
    bootstrap_servers: str = Field(
        description="Comma-separated `host:port` list of Kafka brokers (librdkafka `bootstrap.servers`).",
        min_length=1,
        max_length=2048,
    )
    topic: str = Field(
        description="The topic of labelled examples: one JSON object per message, the features and the "
        "target.",
        min_length=1,
        max_length=249,
        pattern=r"^[a-zA-Z0-9._-]+$",
    )
    group_id: str | None = Field(
        None,
        description="Consumer group (default `mlworkflow.<namespace>.<name>`). Offsets are committed only "
        "after a mini-batch is applied or quarantined.",
        max_length=255,
    )
    secret_ref: SecretReference | None = Field(
        None,
        description="Credentials: every key of this Secret is a librdkafka property (e.g. "
        "`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.pem`).",
    )


class OnlineSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "has(self.kafka) != has(self.path)",
                "spec.online.source needs exactly one of kafka (a topic) or path (files in the "
                "artifact store)",
            )
        )
    )

    kafka: KafkaSource | None = Field(None, description="Read labelled examples from a Kafka topic.")
    path: str | None = Field(
        None,
        description="Glob of CSV or Parquet files relative to the artifact store; each new file is new data, "
        "read once in name order.",
        min_length=1,
        max_length=1024,
        json_schema_extra=cel(
            rule(
                "!self.startsWith('/') && !self.contains('..')",
                "spec.online.source.path must stay inside the artifact store: no absolute path, no '..'",
            )
        ),
    )
    poll_interval_seconds: int = Field(
        10, ge=1, le=3600, description="Files: how often to look for new files. Kafka: unused."
    )


class Guardrails(ApiModel):
    max_invalid_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of invalid rows (missing or null values, wrong types, out of range, unknown "
        "class) a mini-batch may hold; invalid rows are dropped, a batch with more is quarantined."
        " A missing column always quarantines the batch.",
    )
    range_margin: float = Field(
        0.5,
        ge=0,
        le=100,
        description="A numeric value further outside the reference's [min, max] than this share of its width "
        "is out of range.",
    )
    max_class_shift: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Classification: a batch whose class shares differ from the recent ones by more than "
        "this total variation distance is quarantined (1 turns the check off).",
    )
    max_metric_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The updated copy's canary score may fall at most this far below the smoothed baseline "
        "(an exponentially weighted mean of accepted scores); a batch that costs more is quarantined and the "
        "model stays as it was.",
    )


class SnapshotSpec(ApiModel):
    every_samples: int = Field(
        1000, ge=1, le=100_000_000, description="A new snapshot after this many newly learned samples..."
    )
    every_seconds: int = Field(
        2, ge=1, le=86_400, description="...or this long after the previous one, when anything was learned."
    )
    keep: int = Field(
        20, ge=2, le=1000, description="Snapshots kept in the model store (the served one is never removed)."
    )


class StreamArchive(ApiModel):
    retention_hours: int = Field(
        24,
        ge=0,
        le=24 * 90,
        description="Applied examples are kept in the artifact store, partitioned by hour, this long "
        "(0: off). A retraining (schedule, drift, manual) trains a batch model on this window.",
    )


class OnlineSpec(ApiModel):
    source: OnlineSource = Field(description="The stream the learner reads.")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="Examples per `partial_fit` mini-batch.")
    max_wait_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="A smaller mini-batch is learned when no more examples came this long.",
    )
    classes: list[str | int] | None = Field(
        None,
        description="Classification: every class the model may learn (the first `partial_fit` needs them "
        "all), also those the warm-up data lacks: its training learns them all with `partial_fit`, and "
        "refuses data holding another (ClassNotDeclared); default: the classes of spec.data.source.",
        max_length=10_000,
    )
    guardrails: Guardrails = section(Guardrails, "What keeps a bad mini-batch away from the served model.")
    snapshots: SnapshotSpec = section(SnapshotSpec, "When the learned model becomes a served version.")
    archive: StreamArchive = section(
        StreamArchive, "The stream kept for batch retraining (lambda architecture)."
    )


class Candidate(ApiModel):
    estimator: str = Field(
        description="A scikit-learn estimator by import path.",
        max_length=253,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Search space per parameter: a list of values, or a range `{low: 1, high: 10, log: false}` — of "
            "integers when both bounds are whole numbers, of floats otherwise; `type: float` (or `int`) says "
            "which when that is not what is meant (the API server does not keep `10.0` apart from `10`)."
        ),
    )


class AutoMLSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "self.parallelism <= self.trials",
                "spec.automl.parallelism must not exceed spec.automl.trials",
                ".parallelism",
            )
        )
    )

    candidates: list[Candidate] = Field(
        default_factory=list,
        max_length=20,
        description=(
            "Model families to search, each with its parameter space. Empty: a preset for spec.model.task "
            "(linear, histogram gradient boosting, extra trees, random forest, k-NN for small data)."
        ),
        json_schema_extra={"default": []},
    )
    search: Literal["random", "grid", "tpe"] = Field(
        "random",
        description=(
            "How trials sample the space (Optuna's samplers): random, grid (every combination of listed "
            "values), or tpe (a Tree-structured Parzen Estimator learning from finished trials)."
        ),
    )
    trials: int = Field(20, ge=1, le=1000, description="How many trials to run in all.")
    parallelism: int = Field(4, ge=1, le=64, description="Worker Pods running trials at once.")
    metric: Metric | None = Field(None, description="Metric that ranks trials (default as for promotion).")
    seed: int = Field(0, ge=0, description="Seed of the search, for a repeatable search.")
    time_budget_seconds: int | None = Field(
        None,
        ge=10,
        le=7 * 24 * 3600,
        description="Stop starting trials after this long (the running ones finish); unset: trials decide.",
    )
    max_failed_trials: int = Field(
        5,
        ge=0,
        le=1000,
        description=(
            "Failed trials (a fit that raises, e.g. a parameter combination the estimator refuses) the "
            "search tolerates; one more fails it."
        ),
    )
    pruning: Literal["none", "median", "successive-halving"] = Field(
        "none",
        description=(
            "Stop unpromising trials early on their cross-validation folds: Optuna's median pruner or "
            "successive halving."
        ),
    )


class PVCStorage(ApiModel):
    claim_name: str = Field(
        description="PersistentVolumeClaim in the workflow's namespace (ReadWriteMany when serving scales).",
        min_length=1,
        max_length=253,
    )


class StorageSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                "has(self.pvc) != has(self.path)",
                "spec.storage: set exactly one of pvc (on a cluster) or path (for the local runner)",
            )
        )
    )

    pvc: PVCStorage | None = Field(None, description="The artifact store is this PersistentVolumeClaim.")
    path: str | None = Field(
        None, description="The artifact store is this local folder (local runner only).", max_length=1024
    )


class RuntimeSpec(ApiModel):
    image: str | None = Field(
        None, description="Image of the runtime Pods; default: the operator's.", max_length=512
    )
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the runtime Pods; default: the namespace's default.",
        max_length=253,
    )


class MLflowTracking(ApiModel):
    """Where the runs and versions of this workflow are logged (see docs/tracking.md)."""

    tracking_uri: str | None = Field(
        None,
        description="The MLflow tracking server, `http://` or `https://`; default: the operator's "
        "(Helm value `tracking.mlflow.trackingUri`). The runtime Pods must reach it.",
        max_length=2048,
        json_schema_extra=cel(
            rule(
                "self.startsWith('http://') || self.startsWith('https://')",
                "spec.tracking.mlflow.trackingUri must be an http:// or https:// URL",
            )
        ),
    )
    experiment: str | None = Field(
        None,
        description="The MLflow experiment of the runs; default `<namespace>/<name>`.",
        min_length=1,
        max_length=500,
    )
    registered_model: str | None = Field(
        None,
        description="The registered model whose versions are this workflow's; default `<namespace>.<name>`. "
        "The served version carries the alias `champion`.",
        min_length=1,
        max_length=256,
    )
    secret_ref: SecretReference | None = Field(
        None,
        description="Credentials: the keys MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, of this Secret become those environment variables of the runtime Pods "
        "(each optional).",
    )


class TrackingSpec(ApiModel):
    mlflow: MLflowTracking | None = Field(
        None,
        description="Log every run (training, search trial, batch run, drift check) to MLflow and register "
        "every trained version in its Model Registry. `{}` takes the operator's tracking server.",
    )


PATTERN_SECTIONS = {"batch": Pattern.FORECAST, "online": Pattern.ONLINE_LEARNING, "automl": Pattern.AUTOML}


def _pattern_section_rules() -> list[dict[str, str]]:
    rules = []
    for section, pattern in PATTERN_SECTIONS.items():
        rules.append(
            rule(
                f"self.pattern != '{pattern}' || has(self.{section})",
                f"spec.{section} is required when spec.pattern is {pattern}",
            )
        )
        rules.append(
            rule(
                f"self.pattern == '{pattern}' || !has(self.{section})",
                f"spec.{section} is only allowed when spec.pattern is {pattern}",
                f".{section}",
            )
        )
    return rules


def _metric_rule(section_name: str) -> dict[str, str]:
    """The metric of `spec.<section>.metric` must suit the task (an error metric cannot rank classifiers)."""
    metric = f"self.{section_name}.metric"
    regression = "(has(self.model) && self.model.task == 'regression')"
    reg = "[" + ", ".join(f"'{m}'" for m in REGRESSION_METRICS) + "]"
    cls = "[" + ", ".join(f"'{m}'" for m in CLASSIFICATION_METRICS) + "]"
    return rule(
        f"!has(self.{section_name}) || !has({metric}) || "
        f"({regression} ? {metric} in {reg} : {metric} in {cls})",
        f"spec.{section_name}.metric must suit spec.model.task: {', '.join(CLASSIFICATION_METRICS)} for "
        f"classification; {', '.join(REGRESSION_METRICS)} for regression",
        f".{section_name}.metric",
    )


class MLWorkflowSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            *_pattern_section_rules(),
            rule(
                "self.pattern == 'AutoML' || (has(self.model) && has(self.model.estimator))",
                "spec.model.estimator is required unless spec.pattern is AutoML",
            ),
            rule(
                "self.pattern != 'AutoML' || !has(self.model) || !has(self.model.estimator)",
                "spec.model.estimator is not used by AutoML: list estimators in spec.automl.candidates",
                ".model",
            ),
            rule(
                "self.pattern != 'Forecast' || !has(self.serving)",
                "spec.serving is not allowed when spec.pattern is Forecast: "
                "predictions go to spec.batch.output",
                ".serving",
            ),
            _metric_rule("promotion"),
            _metric_rule("automl"),
            rule(
                "!has(self.promotion) || !has(self.promotion.maxFairnessGap) || (has(self.monitoring)"
                " && has(self.monitoring.fairness) && size(self.monitoring.fairness.sensitiveFeatures) > 0)",
                "spec.promotion.maxFairnessGap needs spec.monitoring.fairness.sensitiveFeatures: the groups "
                "whose gap it bounds",
                ".promotion.maxFairnessGap",
            ),
        )
    )

    pattern: Pattern = Field(
        description="Which ML workflow pattern to run. Immutable.",
        json_schema_extra=cel(
            rule("self == oldSelf", "spec.pattern is immutable: create a new MLWorkflow for another pattern")
        ),
    )
    data: DataSpec = Field(description="The training data.")
    model: ModelSpec | None = Field(None, description="The estimator to train (AutoML: only `task`).")
    training: TrainingSpec = section(TrainingSpec, "How models are trained.")
    serving: ServingSpec | None = Field(
        None, description="The BentoML serving Deployment (WebService, OnlineLearning, AutoML)."
    )
    batch: BatchSpec | None = Field(None, description="Batch predictions (Forecast only; required there).")
    monitoring: MonitoringSpec = section(
        MonitoringSpec, "Drift monitoring of live inputs against the training data."
    )
    promotion: PromotionSpec = section(PromotionSpec, "When a newly trained model replaces the served one.")
    online: OnlineSpec | None = Field(
        None, description="Incremental learning (OnlineLearning only; required there)."
    )
    automl: AutoMLSpec | None = Field(None, description="The model search (AutoML only; required there).")
    storage: StorageSpec = Field(
        description="The artifact store: models, reference data, reports, predictions."
    )
    runtime: RuntimeSpec = section(RuntimeSpec, "How the runtime Pods run.")
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking and model registry outside the cluster (MLflow)."
    )


# --- status ---------------------------------------------------------------------------------------------


def promotion_metric(spec: MLWorkflowSpec) -> str:
    """The metric that judges versions: spec.promotion.metric, or f1_macro (classification) / r2."""
    task = spec.model.task if spec.model else "classification"
    return spec.promotion.metric or ("r2" if task == "regression" else "f1_macro")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """metav1.Condition: the shape kstatus, `kubectl wait`, Flux and Argo CD read."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(
        description="Ready, Reconciling, Stalled (kstatus), Trained, Serving, Drifted, Degraded.",
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus
    observed_generation: int | None = Field(
        None, ge=0, description="The spec generation this condition is about."
    )
    last_transition_time: datetime = Field(description="When the status last changed.")
    reason: str = Field(
        max_length=1024,
        min_length=1,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason, e.g. TrainingFailed.",
    )
    message: str = Field("", max_length=32768, description="What happened, for a human.")


class Trigger(StrEnum):
    INITIAL = "Initial"
    DRIFT = "Drift"
    SCHEDULE = "Schedule"
    SPEC_CHANGE = "SpecChange"
    MANUAL = "Manual"
    PERFORMANCE = "Performance"


class ModelStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    version: str | None = Field(
        None, description="The served (or, for Forecast, the predicting) model version."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Its holdout metrics.")
    trained_at: datetime | None = Field(None, description="When it was trained.")
    trigger: Trigger | None = Field(None, description="Why it was trained.")
    backend: str | None = Field(None, description="onnxruntime or sklearn: what computes its predictions.")


class DriftStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    checked_at: datetime | None = Field(
        None, description="When the last drift check started: its window of live inputs ends then."
    )
    share: float | None = Field(None, ge=0, le=1, description="Share of drifted feature columns.")
    drifted: bool | None = Field(None, description="Whether share reached spec.monitoring.driftThreshold.")
    report: str | None = Field(None, description="The Evidently report, relative to the artifact store.")


class PerformanceStatus(ApiModel):
    """The last performance check: the served version's promotion metric on labelled predictions."""

    model_config = ConfigDict(extra="ignore")

    checked_at: datetime | None = Field(
        None, description="When the last performance check started: its window of predictions ends then."
    )
    version: str | None = Field(None, description="The version whose predictions were measured.")
    metric: str | None = Field(None, description="The promotion metric measured.")
    measured: float | None = Field(
        None, description="Its value on the labelled predictions of the window (absent: too few labels)."
    )
    estimated: float | None = Field(
        None,
        description=(
            "Its estimate on the whole window before the labels (confidence-based performance estimation; "
            "classifiers with probabilities; every classification metric but roc_auc)."
        ),
    )
    baseline: float | None = Field(None, description="The version's holdout value, the comparison.")
    labelled_rows: int | None = Field(None, ge=0, description="Predictions of the window with a label.")
    unknown_labels: int | None = Field(
        None,
        ge=0,
        description=(
            "Labels whose prediction id matches no recorded prediction (not sampled, aged out, or never "
            "served)."
        ),
    )
    degraded: bool | None = Field(
        None, description="Whether measured fell past spec.monitoring.performance.tolerance."
    )
    report: str | None = Field(None, description="The check's result, relative to the artifact store.")


class HoldoutRecord(ApiModel):
    """The rows a version was judged on."""

    model_config = ConfigDict(extra="ignore")

    rows: int = Field(ge=0, description="Held-out rows: trained on by neither this version nor the champion.")
    excluded_rows: int | None = Field(
        None,
        ge=0,
        description=(
            "Rows of the data kept out of the holdout because the champion was trained on them; "
            "absent when the champion's training rows are not recorded."
        ),
    )
    split: Literal["Random", "OutOfTime"] = Field(
        "Random", description="Random (seeded, stratified for classes), or the newest rows (timeColumn)."
    )


class ModelRecord(ApiModel):
    """One trained model version and what became of it."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(description="The version, e.g. v3.")
    trigger: Trigger = Field(description="Why it was trained.")
    spec_hash: str = Field(description="Hash of the spec fields that shape the model.")
    outcome: Literal["Promoted", "Rejected", "Failed"] = Field(description="What became of it.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Holdout metrics.")
    backend: str | None = Field(
        None, description="onnxruntime when a verified ONNX model serves it, else sklearn."
    )
    trained_at: datetime | None = Field(None, description="When its training finished.")
    reason: str | None = Field(
        None,
        max_length=64,
        description=(
            "Why this outcome, in one word: Initial, SpecChange, Better, NoChampion, ChampionUnscored "
            "(Promoted); NotBetter, InsufficientHoldout, FairnessGap (Rejected); DataInvalid, ModelInvalid, "
            "JobFailed (Failed)."
        ),
    )
    message: str = Field("", max_length=4096, description="The decision or failure, for a human.")
    champion: str | None = Field(None, description="The served version it was compared with.")
    champion_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="The champion's metrics on this version's holdout, when compared.",
    )
    holdout: HoldoutRecord | None = Field(None, description="The rows its metrics were measured on.")
    data_sha256: str | None = Field(
        None, description="Hash of the data it was trained on (see its model card)."
    )
    drift_report: str | None = Field(
        None,
        description="The monitoring check (drift or performance) that triggered it, in the artifact store.",
    )


class BatchRunRecord(ApiModel):
    """One batch prediction run (Forecast) and how it ended."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="The run id: its Job's name; its output is <spec.batch.output>/<id>/.")
    version: str = Field(description="The model version that predicted.")
    trigger: Literal["Promotion", "Schedule", "Manual"] = Field(
        description="Why it ran: a newly promoted version, spec.batch.schedule, or the predict annotation."
    )
    state: Literal["Running", "Succeeded", "Failed"] = Field(description="How it ended (or that it runs).")
    rows_in: int | None = Field(None, ge=0, description="Input rows read.")
    predicted: int | None = Field(None, ge=0, description="Rows predicted.")
    rejected: int | None = Field(None, ge=0, description="Rows refused by the feature checks (see rejects).")
    output: str | None = Field(None, description="The published run folder, relative to the artifact store.")
    seconds: float | None = Field(None, ge=0, description="How long it ran.")
    finished_at: datetime | None = Field(None, description="When it finished.")
    message: str = Field("", max_length=4096, description="Why it failed, for a human.")


class BatchStatus(ApiModel):
    """Forecast: the batch side."""

    model_config = ConfigDict(extra="ignore")

    runs: list[BatchRunRecord] = Field(
        default_factory=list, description="The latest runs, newest first (at most 10).", max_length=10
    )
    last_succeeded_at: datetime | None = Field(None, description="When a run last succeeded.")
    last_handled_predict: str | None = Field(
        None,
        max_length=1024,
        description=f"The value of the {PREDICT_ANNOTATION} annotation whose run was started last.",
    )


class LeaderboardEntry(ApiModel):
    """One trial of a model search (AutoML)."""

    model_config = ConfigDict(extra="ignore")

    rank: int = Field(ge=1, description="1 is the best cross-validation score.")
    estimator: str = Field(description="The estimator's import path.")
    params: dict[str, Any] = Field(default_factory=dict, description="The trial's parameters.")
    score: float | None = Field(None, description="Mean cross-validation score (the search's metric).")
    std: float | None = Field(None, description="Its standard deviation over the folds.")
    seconds: float | None = Field(None, description="Fit and score time of the trial.")


class SearchStatus(ApiModel):
    """AutoML: the latest model search."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(description="The model version the search chooses (its winner is refit as it).")
    state: Literal["Running", "Succeeded", "Failed"] = Field(description="How the search stands.")
    trials_complete: int | None = Field(None, ge=0, description="Trials that finished with a score.")
    trials_failed: int | None = Field(None, ge=0, description="Trials whose fit raised (see the store).")
    trials_pruned: int | None = Field(None, ge=0, description="Trials stopped early as unpromising.")
    trials_running: int | None = Field(None, ge=0, description="Trials being fit now (while it runs).")
    trials: int | None = Field(None, ge=0, description="The trial budget (spec.automl.trials).")
    metric: str | None = Field(None, description="The metric trials are ranked by.")
    best_estimator: str | None = Field(
        None, max_length=256, description="The best trial's estimator: so far while it runs, then the winner."
    )
    best_score: float | None = Field(
        None, description="The best trial's mean cross-validation score: so far while it runs, then final."
    )
    started_at: datetime | None = Field(None, description="When the search's first worker started.")
    reported_at: datetime | None = Field(
        None,
        description="When a worker last reported the search's progress (the counts and best so far while "
        "it runs); after it ended, the counts are its workers' final summary.",
    )
    leaderboard: list[LeaderboardEntry] = Field(
        default_factory=list,
        max_length=10,
        description="The ten best trials; every trial is in <store>/<workflow>/automl/<version>/.",
    )
    seconds: float | None = Field(
        None, ge=0, description="How long the search ran (its slowest worker); so far, while it runs."
    )
    finished_at: datetime | None = Field(None, description="When the search finished.")
    message: str = Field("", max_length=4096, description="Why it failed, for a human.")


class TrackingStatus(ApiModel):
    """How MLflow stands against the history: whether its registry shows the decisions made here."""

    state: Literal["Syncing", "Synced", "NotTracked"] = Field(
        description="Synced: every decided version is registered, tagged with its outcome, and `champion` "
        "names the served one; NotTracked: the tracking server could not be reached (retried)."
    )
    registered_model: str | None = Field(None, description="The registered model's name.")
    synced: str | None = Field(
        None, max_length=64, description="Digest of the decisions MLflow last showed completely."
    )
    synced_at: datetime | None = Field(None, description="When they were last synced.")
    message: str = Field("", max_length=4096, description="What was synced, or why not, for a human.")


class QuarantineRecord(ApiModel):
    batch: str = Field(
        description="The batch id; its rows and reason are under <workflow>/online/quarantine/."
    )
    reason: str = Field(
        description="CamelCase: MissingColumn, InvalidRows, UnknownClass, ClassShift, CanaryDrop, ..."
    )
    message: str = Field("", max_length=1024, description="What was wrong, for a human.")
    time: datetime | None = Field(None, description="When it was quarantined.")


class OnlineStatus(ApiModel):
    """What the learner last reported (through its Lease): the operator copies it here."""

    learner: str | None = Field(None, description="The Pod that holds the learner's Lease (the one writer).")
    start_version: str | None = Field(None, description="The version the learner started from.")
    snapshot: str | None = Field(None, description="The newest snapshot, e.g. v1.12: the served version.")
    snapshot_time: datetime | None = Field(None, description="When it was written.")
    samples_seen: int = Field(0, ge=0, description="Examples learned since the start version.")
    batches_applied: int = Field(0, ge=0, description="Mini-batches learned.")
    batches_quarantined: int = Field(0, ge=0, description="Mini-batches refused by the guardrails.")
    rollbacks: int = Field(0, ge=0, description="Of those, updates undone because the canary score dropped.")
    lag: int | None = Field(
        None, ge=0, description="Examples in the source not read yet (Kafka consumer lag)."
    )
    canary_score: float | None = Field(None, description="The served snapshot's score on the canary holdout.")
    canary_baseline: float | None = Field(None, description="The smoothed baseline it is compared with.")
    quarantines: list[QuarantineRecord] = Field(
        default_factory=list, description="The latest quarantined batches, newest first.", max_length=10
    )
    reported: datetime | None = Field(None, description="When the learner last reported.")
    tracking: str | None = Field(
        None,
        max_length=500,
        description="MLflow (spec.tracking.mlflow): the run the snapshots are logged in, or why they are not "
        "(they wait and are sent again later).",
    )


class MLWorkflowStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(None, description="The spec generation this status is about.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current state; Ready, Reconciling and Stalled follow kstatus.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: str | None = Field(
        None, max_length=32, description="One word for `kubectl get`: Pending, Training, Serving, Failed, ..."
    )
    model: ModelStatus | None = Field(None, description="The model in use.")
    drift: DriftStatus | None = Field(None, description="The last drift check.")
    performance: PerformanceStatus | None = Field(
        None, description="The last performance check on labelled predictions."
    )
    retrains: int = Field(0, ge=0, description="Retrainings since creation (every trigger but Initial).")
    endpoint: str | None = Field(None, description="In-cluster URL of the prediction Service.")
    batch: BatchStatus | None = Field(None, description="Forecast: the batch prediction runs.")
    search: SearchStatus | None = Field(None, description="AutoML: the latest model search.")
    online: OnlineStatus | None = Field(None, description="OnlineLearning: the learner's progress.")
    tracking: TrackingStatus | None = Field(None, description="MLflow tracking (spec.tracking.mlflow).")
    history: list[ModelRecord] = Field(
        default_factory=list,
        description="The latest trained versions, newest first (at most 20).",
        max_length=20,
    )
    last_handled_retrain: str | None = Field(
        None,
        max_length=1024,
        description=f"The value of the {RETRAIN_ANNOTATION} annotation whose retraining was started last.",
    )


class MLWorkflow(ApiModel):
    """One ML workflow: a pattern, its data and model, and how it is served, monitored and retrained."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            rule(
                f"!has(self.metadata.name) || size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it prefixes the names of the "
                "Jobs, Services and CronJobs the operator creates",
            )
        )
    )

    api_version: Literal["mlworkflow.io/v1alpha1"] = "mlworkflow.io/v1alpha1"
    kind: Literal["MLWorkflow"] = "MLWorkflow"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: MLWorkflowSpec
    status: MLWorkflowStatus | None = None
