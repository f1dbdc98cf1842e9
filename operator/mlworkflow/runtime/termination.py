"""The termination message: how a runtime's Pod tells the operator its result without any API access.

A runtime ends with one line of JSON, its summary, in the termination message file. The kubelet keeps at
most 4,096 bytes of that file, and keeps the *last* ones (`tail.ReadAtMost` in pkg/kubelet/kuberuntime), so
a longer line loses its beginning and is no longer JSON. `bounded` makes any summary one line of valid JSON
within that bound, shortening it as little as it can; the full result belongs in the artifact store. `read`
turns what a reader got back into a summary, and says plainly when it was cut or is not JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TERMINATION_LOG = "/dev/termination-log"
MAX_BYTES = 4096  # the kubelet's MaxContainerTerminationMessageLength
# What the readers decide on (kube.py, desired/plan.py): kept, shortened, when nothing else fits.
ESSENTIAL = (
    "status",
    "reason",
    "version",
    "message",
    "share",
    "drifted",
    "threshold",
    "driftedColumns",
    "result",
    "metrics",
    "backend",
    "tag",
    "performance",
)
# Tried in order until the line fits: (items kept of each list or nested mapping, characters of each string).
# Fewer items first: a name cut short identifies nothing, a list of whole names cut short still does.
SHRINK_STEPS = ((100, 1000), (30, 1000), (10, 1000), (10, 200), (3, 200), (3, 50), (1, 50), (0, 12))
ELLIPSIS = "…"


def bounded(summary: Mapping[str, Any], limit: int = MAX_BYTES) -> str:
    """`summary` as one line of JSON of at most `limit` bytes, whatever it holds.

    As it is when it fits. Otherwise lists and nested mappings keep their first items and strings their
    first characters (ending in "…"), less at each step until it fits, and the key `truncated` maps each
    shortened top-level key to the number of list items or mapping entries left out ("and N more"; 0 when
    only strings were shortened). The top-level keys are never dropped unless even that is too long: then
    only the ESSENTIAL ones are kept, and `truncated` counts the others under "(other keys)". NaN and
    infinities become null (JSON has neither); what JSON cannot hold becomes its `str()`. The line is ASCII
    (non-ASCII characters escaped), so a byte is a character.
    """
    line = _dumps(_shrink(summary, None, None)[0])
    if len(line) <= limit:
        return line
    for items, chars in SHRINK_STEPS:
        shortened, omitted = {}, {}
        for key, value in summary.items():
            shortened[str(key)], left_out = _shrink(value, items, chars)
            if left_out is not None:
                omitted[str(key)] = left_out
        line = _dumps({**shortened, "truncated": omitted})
        if len(line) <= limit:
            return line
    kept = {key: _shrink(summary[key], 0, 40)[0] for key in ESSENTIAL if key in summary}
    last_resorts = (
        {**kept, "truncated": {"(other keys)": len(summary) - len(kept)}},
        {"status": kept.get("status"), "truncated": {"(other keys)": len(summary) - 1}},
    )
    return next((line for line in map(_dumps, last_resorts) if len(line) <= limit), "{}")


def _shrink(value: Any, items: int | None, chars: int | None) -> tuple[Any, int | None]:
    """`value` with at most `items` items per list or mapping and `chars` characters per string (None: no
    limit), and how many items were left out beneath it (None when nothing was shortened)."""
    if isinstance(value, str):
        if chars is not None and len(value) > chars:
            return value[:chars] + ELLIPSIS, 0
        return value, None
    if value is None or isinstance(value, bool | int):
        return value, None
    if isinstance(value, float):
        return (value if math.isfinite(value) else None), None
    if isinstance(value, Mapping | list | tuple):
        pairs = list(value.items()) if isinstance(value, Mapping) else list(enumerate(value))
        kept = pairs if items is None else pairs[:items]
        omitted = len(pairs) - len(kept) if len(kept) < len(pairs) else None
        shrunk = []
        for key, item in kept:
            small, left_out = _shrink(item, items, chars)
            shrunk.append((key, small))
            if left_out is not None:
                omitted = (omitted or 0) + left_out
        if isinstance(value, Mapping):
            return {str(k): v for k, v in shrunk}, omitted
        return [v for _, v in shrunk], omitted
    return _shrink(str(value), items, chars)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def report(summary: Mapping[str, Any], path: str) -> None:
    """The summary, bounded: on stdout (the log) and in the termination message file (read by the operator).

    The log gets the same bounded line: the full details are in the artifact store (the runtime writes them
    there); a runtime outside a Pod (no such file) reports on stdout only."""
    line = bounded(summary)
    print(line, flush=True)
    with contextlib.suppress(OSError):
        Path(path).write_text(line)


def read(text: str) -> dict[str, Any]:
    """The summary in a termination message (or the local runner's result file).

    {} when there is none, or when the text is not a JSON object (a Pod's log tail under
    FallbackToLogsOnError; the caller shows that text). A message that looks like JSON but does not parse
    gives an error summary saying so (reason `ResultCut` when it is as long as the kubelet keeps, else
    `ResultUnreadable`), never an exception.
    """
    lines = text.strip().splitlines()
    if not lines:
        return {}
    last = lines[-1]
    try:
        parsed = json.loads(last)
    except ValueError as error:
        if len(text.encode()) >= MAX_BYTES:
            return {
                "status": "error",
                "reason": "ResultCut",
                "message": f"the runtime's summary was cut at the termination message's limit of {MAX_BYTES} "
                "bytes and is no longer JSON; the Pod's log has the whole line",
            }
        if last.startswith("{"):
            return {
                "status": "error",
                "reason": "ResultUnreadable",
                "message": f"the runtime's summary is not valid JSON ({error}): {last[:200]}",
            }
        return {}
    return parsed if isinstance(parsed, dict) else {}
