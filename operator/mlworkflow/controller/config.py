"""The operator's settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mlworkflow.api.estimators import DEFAULT_ALLOWED_PREFIXES
from mlworkflow.desired.children import RuntimeContext


@dataclass(frozen=True)
class OperatorConfig:
    runtime: RuntimeContext = field(default_factory=RuntimeContext)
    # How long a workflow goes unreconciled when nothing about it changed: its spec and its children's
    # progress wake it at once (controller.wakeups), so this only bounds time-driven decisions (a
    # schedule coming due, a learner's Lease expiring).
    resync_seconds: float = 60.0

    @property
    def allowed_estimator_prefixes(self) -> tuple[str, ...]:
        return tuple(self.runtime.allowed_estimator_prefixes)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        prefixes = os.environ.get("MLW_ALLOWED_ESTIMATOR_PREFIXES", "")
        defaults = RuntimeContext()
        return cls(
            runtime=RuntimeContext(
                image=os.environ.get("MLW_RUNTIME_IMAGE", defaults.image),
                image_pull_policy=os.environ.get("MLW_IMAGE_PULL_POLICY", defaults.image_pull_policy),
                serving_access_log=os.environ.get("MLW_SERVING_ACCESS_LOG", "false") == "true",
                mlflow_tracking_uri=os.environ.get("MLW_MLFLOW_TRACKING_URI", ""),
                allowed_estimator_prefixes=tuple(p.strip() for p in prefixes.split(",") if p.strip())
                or DEFAULT_ALLOWED_PREFIXES,
            ),
            resync_seconds=float(os.environ.get("MLW_RESYNC_SECONDS", "60")),
        )
