"""Leader election over a coordination.k8s.io/v1 Lease: of the operator's replicas, exactly one acts.

The rules are client-go's (k8s.io/client-go/tools/leaderelection, as controller-runtime uses them): a
candidate takes the Lease when it is free or its holder has not renewed it for `leaseDurationSeconds`; the
holder renews it every `retry_period`; writes carry the Lease's resourceVersion, so of two candidates racing
for it the API server lets one win (409 Conflict for the other). A leader that cannot renew for
`renew_deadline` has lost: it stops at once (the process exits and its Pod restarts as a candidate), since a
second replica may already act. The standby replica runs no kopf at all: no watch, no write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubernetes import client

from mlworkflow.kube import Kube

log = logging.getLogger(__name__)

Move = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class Timing:
    """Seconds, as client-go names them. `renew_deadline` < `lease_duration`: a leader gives up before a
    standby may take over."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def next_move(lease: dict[str, Any] | None, identity: str, now: datetime) -> Move:
    """What `identity` does about `lease` (a Lease as a dict, None when there is none) at `now` (aware)."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == identity:
        return "renew"
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    duration = spec.get("leaseDurationSeconds") or 0
    if not holder or renewed is None:
        return "take"
    expiry = datetime.fromisoformat(renewed.replace("Z", "+00:00")) + timedelta(seconds=duration)
    return "take" if now >= expiry else "wait"


def lease_body(
    lease: dict[str, Any] | None, name: str, identity: str, timing: Timing, now: datetime
) -> dict[str, Any]:
    """The Lease `identity` writes to hold it at `now`: renewed, taken over (one more transition), or new."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec = dict((lease or {}).get("spec") or {})
    if spec.get("holderIdentity") != identity:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
    spec.update(
        holderIdentity=identity, renewTime=stamp, leaseDurationSeconds=max(1, round(timing.lease_duration))
    )
    metadata = {"name": name}
    if lease:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


class LeaderElector:
    """Holds the Lease `namespace/name` for `identity`. `acquire()` blocks until it leads; then a thread
    renews it and calls `on_lost` when a renewal has not succeeded for `renew_deadline`."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        on_lost: Callable[[], None],
        timing: Timing = Timing(),
    ) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.on_lost, self.timing = on_lost, timing
        self._stop = threading.Event()

    def try_once(self) -> bool:
        """One attempt to hold the Lease now; True when this candidate holds it afterwards."""
        lease = self.kube.read_lease(self.namespace, self.name)
        move = next_move(lease, self.identity, datetime.now(UTC))
        if move == "wait":
            return False
        body = lease_body(lease, self.name, self.identity, self.timing, datetime.now(UTC))
        try:
            self.kube.write_lease(self.namespace, body, create=move == "create")
        except client.ApiException as error:
            if error.status in (409, 404):  # another candidate wrote first, or the Lease was deleted
                return False
            raise
        return True

    def acquire(self) -> None:
        """Block until this candidate leads, then start renewing in the background."""
        log.info("leader election: %s waits for Lease %s/%s", self.identity, self.namespace, self.name)
        while not self._attempt():
            self._stop.wait(self.timing.retry_period)
        log.info("leader election: %s leads", self.identity)
        threading.Thread(target=self._renew, name="lease-renewal", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _attempt(self) -> bool:
        try:
            return self.try_once()
        except (client.ApiException, OSError) as error:  # the API is unreachable: try again later
            log.warning("leader election: %s", error)
            return False

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.timing.retry_period):
            if self._attempt():
                renewed = time.monotonic()
            elif time.monotonic() - renewed >= self.timing.renew_deadline:
                log.error("leader election: %s lost Lease %s/%s", self.identity, self.namespace, self.name)
                self.on_lost()
                return
