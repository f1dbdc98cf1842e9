"""A workflow's resync waits until a child's progress wakes it, not for the whole resync interval."""

from __future__ import annotations

import asyncio
import json
import time

from mlworkflow.controller.wakeups import Wakeups
from mlworkflow.kube import milestone, record

WORKFLOW = ("ns", "iris")


def job(*conditions: str) -> dict[str, object]:
    return {
        "kind": "Job",
        "metadata": {"name": "iris-train-v1", "namespace": "ns", "managedFields": [{"big": "x" * 1000}]},
        "spec": {
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"x": "y" * 1000}]}}
        },
        "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]},
    }


def test_a_wake_ends_the_wait_and_one_during_a_reconcile_is_kept() -> None:
    async def scenario() -> tuple[float, float, float, float]:
        wakeups, never = Wakeups(), asyncio.get_running_loop().create_future()
        began = time.monotonic()
        await wakeups.wait(WORKFLOW, 30, never)  # the first time: at once (created, or a restart)
        first = time.monotonic() - began
        began = time.monotonic()
        await wakeups.wait(WORKFLOW, 0.2, never)  # nothing wakes it: the resync interval
        idle = time.monotonic() - began
        asyncio.get_running_loop().call_later(0.05, wakeups.wake, WORKFLOW)
        began = time.monotonic()
        await wakeups.wait(WORKFLOW, 30, never)
        woken = time.monotonic() - began
        wakeups.wake(WORKFLOW)  # while "reconciling": the next wait returns at once
        began = time.monotonic()
        await wakeups.wait(WORKFLOW, 30, never)
        return first, idle, woken, time.monotonic() - began

    first, idle, woken, kept = asyncio.run(scenario())
    assert first < 5 and idle >= 0.2 and woken < 5 and kept < 5


def test_a_stopped_timer_stops_waiting() -> None:
    async def scenario() -> float:
        stopped = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, stopped.set_result, None)
        wakeups = Wakeups()
        await wakeups.wait(WORKFLOW, 30, stopped)  # the first, at once
        began = time.monotonic()
        await wakeups.wait(WORKFLOW, 30, stopped)
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5


def test_only_a_change_of_progress_or_a_deletion_counts() -> None:
    wakeups = Wakeups()
    shown = [
        wakeups.shown("Job", "ns", "iris-train-v1", milestone("Job", job()), deleted=False),  # first seen
        wakeups.shown("Job", "ns", "iris-train-v1", milestone("Job", job()), deleted=False),  # a Pod started
        wakeups.shown("Job", "ns", "iris-train-v1", milestone("Job", job("Complete")), deleted=False),
        wakeups.shown("Job", "ns", "iris-train-v1", milestone("Job", job("Complete")), deleted=True),
    ]
    assert shown == [True, False, True, True]


def test_a_record_keeps_what_a_reconcile_reads_and_not_the_rest() -> None:
    kept = record(job("Complete"))
    assert "managedFields" not in kept["metadata"] and "spec" not in kept["spec"]["template"]
    assert milestone("Job", kept) == "Succeeded"
    assert len(str(kept)) < len(str(job("Complete"))) / 5


def test_a_learner_lease_wakes_on_its_holder_and_its_counts_not_on_renewals() -> None:
    def lease(holder: str | None, **report: object) -> dict[str, object]:
        annotations = {"mlworkflow.io/progress": json.dumps(report)} if report else {}
        return {"metadata": {"annotations": annotations}, "spec": {"holderIdentity": holder}}

    wakeups, key = Wakeups(), ("Lease", "ns", "wine-learner")
    seen = [
        lease(None),
        lease("pod-a", startVersion="v1", reported="t0"),
        lease("pod-a", startVersion="v1", reported="t1"),  # renewed, nothing learned
        lease("pod-a", startVersion="v1", snapshot="v1.1", samplesSeen=256, reported="t2"),
        lease("pod-b", startVersion="v1", snapshot="v1.1", samplesSeen=256, reported="t3"),
    ]
    assert [wakeups.shown(*key, milestone("Lease", obj), deleted=False) for obj in seen] == [
        True,
        True,
        False,
        True,
        True,
    ]


def test_a_search_lease_wakes_on_each_trial_not_on_each_report() -> None:
    def lease(reported: str, complete: int) -> dict[str, object]:
        report = {"complete": complete, "running": 2, "reported": reported}
        return {
            "metadata": {
                "labels": {"app.kubernetes.io/component": "search"},
                "annotations": {"mlworkflow.io/progress": json.dumps(report)},
            },
            "spec": {},
        }

    wakeups, key = Wakeups(), ("Lease", "ns", "cancer-search")
    seen = [lease("t0", 0), lease("t1", 0), lease("t2", 1)]
    assert [wakeups.shown(*key, milestone("Lease", obj), deleted=False) for obj in seen] == [
        True,
        False,
        True,
    ]
