"""The artifact store: one folder (a PVC on a cluster, a local folder for the local runner).

<root>/                      data sources are paths relative to here (`data/train-*.csv`)
<root>/<workflow>/bentoml/   the BentoML model store of the workflow (BENTOML_HOME)
<root>/<workflow>/samples/   inputs and predictions recorded by the serving Pods
<root>/<workflow>/retrain    the local runner's retrain request (`mlworkflow retrain`)
<root>/<workflow>/predict    the local runner's predict request (`mlworkflow predict`, Forecast)
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
    def retrain_request(self) -> Path:
        return self.base / "retrain"

    @property
    def predict_request(self) -> Path:
        return self.base / "predict"

    def model_dir(self, version: str) -> Path:
        """Where a version lives in the workflow's BentoML model store (card, pipeline, trained rows)."""
        return self.bentoml_home / "models" / self.model_name() / version

    def model_name(self) -> str:
        """The BentoML model name of the workflow's versions (a workflow name is already a valid one)."""
        return self.workflow
