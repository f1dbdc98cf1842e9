"""How the operator reads what the cluster holds, on Job objects as the API server returns them."""

from __future__ import annotations

from typing import Any

from mlworkflow.kube import started_last


def job(name: str, started: str, finished: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": started}
    if finished:
        status |= {
            "completionTime": finished,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": finished}],
        }
    return {"metadata": {"name": name, "creationTimestamp": started}, "status": status}


def test_the_check_that_started_last_is_the_newest_even_when_an_older_one_finished_later() -> None:
    # Found in use: the CronJob's check read the window before the labels came, finished after the check
    # made by hand once they had come, and its stale result replaced the newer one.
    scheduled = job("decay-drift-29410", "2026-11-30T14:30:00Z", "2026-11-30T14:30:40Z")
    by_hand = job("decay-drift-manual-1", "2026-11-30T14:30:10Z", "2026-11-30T14:30:30Z")
    newest = started_last([by_hand, scheduled])
    assert newest is not None and newest[1]["metadata"]["name"] == "decay-drift-manual-1"
    assert newest[0].isoformat() == "2026-11-30T14:30:10+00:00"


def test_a_running_check_is_not_the_newest_and_none_finished_is_none() -> None:
    running = job("decay-drift-2", "2026-11-30T14:31:00Z", None)
    done = job("decay-drift-1", "2026-11-30T14:30:00Z", "2026-11-30T14:30:20Z")
    assert started_last([running, done])[1]["metadata"]["name"] == "decay-drift-1"  # type: ignore[index]
    assert started_last([running]) is None
