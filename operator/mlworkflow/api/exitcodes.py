"""Exit codes of the runtimes (`python -m mlworkflow.runtime.*`): a contract between the programs in the
Pods, which exit with them, and the Jobs that run those programs (`mlworkflow.desired.children`), which
decide on them whether a failed Pod is worth another try."""

from __future__ import annotations

INVALID_INPUT = 2
"""The input is invalid (the data or the model spec for training; the stored reference or the columns for a
drift check): the same run would fail the same way, so the Job fails at once instead of retrying. argparse
exits with 2 on a wrong command line too, which no retry fixes either."""
