"""Entry point for `bentoml build` and `bentoml serve service:ModelService` from this folder.

The service itself lives in the operator package (mlworkflow.runtime.serve) so that the serving Pods run it
from the installed package, with no source folder to copy.
"""

from mlworkflow.runtime.serve import ModelService

__all__ = ["ModelService"]
