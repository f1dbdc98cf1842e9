"""The operator's settings, from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlworkflow.desired.validation import DEFAULT_ALLOWED_PREFIXES


@dataclass(frozen=True)
class OperatorConfig:
    # Module prefixes a workflow may name estimators from: a manifest must not import arbitrary code.
    allowed_estimator_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES

    @classmethod
    def from_env(cls) -> OperatorConfig:
        prefixes = os.environ.get("MLW_ALLOWED_ESTIMATOR_PREFIXES", "")
        return cls(
            allowed_estimator_prefixes=tuple(p.strip() for p in prefixes.split(",") if p.strip())
            or DEFAULT_ALLOWED_PREFIXES,
        )
