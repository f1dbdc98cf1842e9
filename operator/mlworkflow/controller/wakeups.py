"""Reconciling a workflow as soon as one of its children changed, not at the next resync.

The watches of the children (controller.handlers) tell which workflow a child belongs to (its workflow
label); the workflow's resync timer waits on an asyncio.Event per workflow, up to the resync interval. Only
a change the planner acts on wakes it (`kube.milestone`: a Job finishing, a Deployment rolled out, a Lease's
new holder; a child edited or deleted by someone else), not every status update of a child. Nothing here
is state the operator converges from: after a restart every workflow is reconciled at resume anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

Key = tuple[str, str]  # (namespace, name)


class Wakeups:
    """The events the resync timers wait on, and what each watched child last showed (`kube.milestone`)."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}
        self._shown: dict[tuple[str, str, str], object] = {}

    async def wait(self, workflow: Key, timeout: float, stopped: Awaitable[object]) -> None:
        """Return when `workflow` is woken, after `timeout` seconds, or when `stopped` (the timer's stop
        flag) is done, whichever comes first; at once for a workflow this process has not waited for yet
        (just created, or the operator just started). A wake that came while the workflow was being
        reconciled is kept for the next wait."""
        if workflow not in self._events:
            self._events[workflow] = asyncio.Event()
            return
        event = self._events[workflow]
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        event.clear()

    def wake(self, workflow: Key) -> None:
        """Reconcile `workflow` now (nothing when its timer has not started: it reconciles as it starts)."""
        event = self._events.get(workflow)
        if event is not None:
            event.set()

    def forget(self, workflow: Key) -> None:
        self._events.pop(workflow, None)

    def shown(self, kind: str, namespace: str, name: str, progress: object, deleted: bool) -> bool:
        """Record what a child shows now; True when it is gone or shows something else than before."""
        key = (kind, namespace, name)
        if deleted:
            self._shown.pop(key, None)
            return True
        before = self._shown.get(key, _NOTHING)
        self._shown[key] = progress
        return before != progress


_NOTHING = object()
