from datetime import UTC, datetime, timedelta

from mlworkflow.controller.leader import Timing, lease_body, next_move

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def lease(holder: str | None, renewed: datetime, duration: int = 15, transitions: int = 0) -> dict:
    return {
        "metadata": {"name": "op", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "acquireTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "leaseDurationSeconds": duration,
            "leaseTransitions": transitions,
        },
    }


def test_a_candidate_creates_a_missing_lease_and_renews_its_own() -> None:
    assert next_move(None, "a", NOW) == "create"
    assert next_move(lease("a", NOW - timedelta(seconds=60)), "a", NOW) == "renew"


def test_a_candidate_waits_while_the_holder_renews_and_takes_over_after_the_lease_duration() -> None:
    assert next_move(lease("b", NOW - timedelta(seconds=14)), "a", NOW) == "wait"
    assert next_move(lease("b", NOW - timedelta(seconds=15)), "a", NOW) == "take"
    assert next_move(lease(None, NOW), "a", NOW) == "take", "a released Lease is free"


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    old = lease("b", NOW - timedelta(seconds=30), transitions=2)
    taken = lease_body(old, "op", "a", Timing(lease_duration=4), NOW)
    assert taken["metadata"] == {"name": "op", "resourceVersion": "7"}, "a write based on what was read"
    assert taken["spec"]["holderIdentity"] == "a" and taken["spec"]["leaseTransitions"] == 3
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"] == "2026-11-30T12:00:00.000000Z"
    assert taken["spec"]["leaseDurationSeconds"] == 4
    taken["metadata"]["resourceVersion"] = "8"
    renewed = lease_body(taken, "op", "a", Timing(lease_duration=4), NOW + timedelta(seconds=2))
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == "2026-11-30T12:00:00.000000Z"
    assert renewed["spec"]["renewTime"] == "2026-11-30T12:00:02.000000Z"
    created = lease_body(None, "op", "a", Timing(), NOW)
    assert created["spec"]["leaseTransitions"] == 0 and "resourceVersion" not in created["metadata"]
