"""The artifact store: one folder (a PVC on a cluster, a local folder for the local runner).

<root>/                      data sources are paths relative to here (`data/train-*.csv`)
<root>/<workflow>/bentoml/   the BentoML model store of the workflow (BENTOML_HOME)
<root>/<workflow>/samples/   inputs and predictions (with their ids) recorded by the serving Pods
<root>/<workflow>/feedback/  labels of served predictions (`POST /feedback`), recorded by the serving Pods
<root>/<workflow>/drift/     the monitoring job's results (drift and performance) and its state
<root>/<workflow>/reports/   pages for people: `story.html` (the monitoring job's, `mlworkflow.runtime.story`)
<root>/<workflow>/retrain    the local runner's retrain request (`mlworkflow retrain`)
<root>/<workflow>/predict    the local runner's predict request (`mlworkflow predict`, Forecast)
<root>/<workflow>/online/    OnlineLearning: `latest` (the newest published snapshot's version),
                             `progress.json` and `lock` (the learner's report and lock without a Lease),
                             `quarantine/<batch>.parquet` and `.json` (refused mini-batches, with the reason)
<root>/<workflow>/stream/    OnlineLearning: the applied examples, `<YYYY-MM-DD-HH>/part-<snapshot>.parquet`
<root>/<workflow>/automl/<version>/   AutoML: the search's study (`journal.log`), leaderboard, `winner.json`,
                             `progress.json` (the workers' progress report without a Lease) and
                             `tracking.json` (where MLflow has the whole search, `runtime.tracking`)
<root>/<workflow>/tracking/  MLflow: `<version>.json`, where each trained version was logged
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkflowStore:
    root: Path
    workflow: str

    @property
    def base(self) -> Path:
        return self.root / self.workflow

    @property
    def bentoml_home(self) -> Path:
        return self.base / "bentoml"

    @property
    def samples(self) -> Path:
        return self.base / "samples"

    @property
    def feedback(self) -> Path:
        return self.base / "feedback"

    @property
    def monitoring(self) -> Path:
        """The monitoring job's results (a folder per check) and the state of its windows."""
        return self.base / "drift"

    @property
    def reports(self) -> Path:
        return self.base / "reports"

    @property
    def retrain_request(self) -> Path:
        return self.base / "retrain"

    @property
    def predict_request(self) -> Path:
        return self.base / "predict"

    @property
    def online(self) -> Path:
        return self.base / "online"

    @property
    def online_latest(self) -> Path:
        """The newest complete snapshot's version, one line, replaced atomically: what serving follows."""
        return self.online / "latest"

    @property
    def online_progress(self) -> Path:
        return self.online / "progress.json"

    @property
    def online_lock(self) -> Path:
        return self.online / "lock"

    @property
    def quarantine(self) -> Path:
        return self.online / "quarantine"

    @property
    def stream_archive(self) -> Path:
        return self.base / "stream"

    def stream_archive_files(self) -> list[Path]:
        """The archived stream, oldest hour first (`stream/<YYYY-MM-DD-HH>/part-*.parquet`)."""
        return sorted(self.stream_archive.glob("*/part-*.parquet"))

    def model_dir(self, version: str) -> Path:
        """Where a version lives in the workflow's BentoML model store (card, pipeline, trained rows)."""
        return self.bentoml_home / "models" / self.model_name() / version

    def model_name(self) -> str:
        """The BentoML model name of the workflow's versions (a workflow name is already a valid one)."""
        return self.workflow
