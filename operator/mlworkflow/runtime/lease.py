"""The online learner's single-writer guarantee and its progress report: a Lease on a cluster, a lock file
otherwise. Both take the same progress JSON (keys in camelCase, mirroring `OnlineStatus`).

    writer = Lease(name, namespace, identity)   # MLW_LEASE set: a coordination.k8s.io/v1 Lease
    writer = LockFile(store.online_lock, store.online_progress)   # the local runner, tests
    writer.acquire()                 # waits while another learner holds it
    writer.report(progress)          # Lease: the annotation mlworkflow.io/progress; lock: progress.json
    writer.check()                   # raises Lost once this learner may no longer write
    writer.release()

Runtimes that only report progress (the AutoML search workers) write the same annotation on a Lease they
do not hold, or a JSON file without one:

    reporter = Annotation(name, namespace)   # MLW_LEASE set: one JSON merge patch of the annotation
    reporter = ProgressFile(path)            # the local runner, tests
    reporter.report(progress)

This is the one runtime module that talks to the API server, and only to its own Lease: plain HTTPS with
urllib and the Pod's ServiceAccount token (the kubernetes package is not a runtime dependency). The
operator creates the Lease (metadata only) and a Role allowing only what the runtime needs on it alone
(the learner: get, update, patch; a search worker: patch).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

PROGRESS_ANNOTATION = "mlworkflow.io/progress"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LEASE_SECONDS = 15
RENEW_SECONDS = 5


class Lost(RuntimeError):
    """This learner is no longer the single writer: it must stop writing."""


class Reporter(Protocol):
    def report(self, progress: dict[str, Any]) -> None: ...


class Writer(Protocol):
    identity: str

    def acquire(self, timeout: float | None = None) -> bool: ...

    def report(self, progress: dict[str, Any]) -> None: ...

    def check(self) -> None: ...

    def release(self) -> None: ...


def identity() -> str:
    """Who writes: the Pod's name (downward API `POD_NAME`), else host and process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def write_atomically(path: Path, text: str) -> None:
    """`text` in `path`, replaced in one step: a reader sees the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def in_cluster_server() -> str:
    """The API server's URL as a Pod sees it ($KUBERNETES_SERVICE_HOST and _PORT)."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def lease_url(server: str, namespace: str, name: str) -> str:
    return f"{server}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"


def call(
    url: str,
    method: str,
    token_file: Path,
    context: ssl.SSLContext,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One request to the API server with the ServiceAccount token in `token_file` (read at every call:
    projected tokens are rotated); the answer's JSON. Raises urllib.error.HTTPError, OSError."""
    token = token_file.read_text().strip()
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": content_type,
        },
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


class ProgressFile:
    """Progress as a JSON file, replaced atomically at each report (where there is no Lease)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def report(self, progress: dict[str, Any]) -> None:
        write_atomically(self.path, json.dumps(progress, indent=1, default=str))


class Annotation:
    """Progress as the `mlworkflow.io/progress` annotation of the Lease `name`, which this process does not
    hold: each report is one JSON merge patch of that annotation alone, so writers that each report the
    whole picture (every search worker reads the whole study) need no lock: the last write wins. Raises
    OSError (the API server unreachable, HTTP errors with their status and detail)."""

    def __init__(
        self,
        name: str,
        namespace: str,
        server: str | None = None,
        token_file: Path = SERVICE_ACCOUNT / "token",
        ca_file: Path = SERVICE_ACCOUNT / "ca.crt",
    ) -> None:
        self.url = lease_url(server or in_cluster_server(), namespace, name)
        self.token_file = token_file
        self._context = ssl.create_default_context(cafile=str(ca_file))

    def report(self, progress: dict[str, Any]) -> None:
        text = json.dumps(progress, separators=(",", ":"), default=str)
        patch = {"metadata": {"annotations": {PROGRESS_ANNOTATION: text}}}
        try:
            call(self.url, "PATCH", self.token_file, self._context, patch, "application/merge-patch+json")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise OSError(f"PATCH {self.url}: HTTP {error.code}: {detail}") from None


class LockFile:
    """An exclusive `fcntl` lock on a file in the store (released by the kernel when the process dies),
    and the progress in a JSON file beside it."""

    def __init__(self, lock: Path, progress: Path, ident: str | None = None) -> None:
        self.lock, self.progress, self.identity = lock, progress, ident or identity()
        self._file: IO[str] | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds; None: as long as it takes) for the lock; False when not had."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        handle = self.lock.open("a")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(0.2)
                continue
            self._file = handle
            return True

    def report(self, progress: dict[str, Any]) -> None:
        ProgressFile(self.progress).report(progress)

    def check(self) -> None:
        if self._file is None:
            raise Lost(f"{self.identity} does not hold {self.lock}")

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Lease:
    """A coordination.k8s.io/v1 Lease held by this learner, renewed in a background thread.

    It is taken when it has no holder, is this learner's, or its holder stopped renewing: the renew time
    plus the lease duration is past, or the holder and renew time did not change for a lease duration as
    seen by this process's clock (so a skewed node clock delays a takeover by one duration at most). Every
    write is an update with the resourceVersion read, so two learners can never both take it. A learner
    that has not renewed for `duration - renew_every` seconds, or finds another holder, is Lost."""

    def __init__(
        self,
        name: str,
        namespace: str,
        ident: str | None = None,
        server: str | None = None,
        token_file: Path = SERVICE_ACCOUNT / "token",
        ca_file: Path = SERVICE_ACCOUNT / "ca.crt",
        duration: int = LEASE_SECONDS,
        renew_every: float = RENEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.namespace, self.identity = name, namespace, ident or identity()
        self.url = lease_url(server or in_cluster_server(), namespace, name)
        self.token_file, self.duration, self.renew_every, self.clock = (
            token_file,
            duration,
            renew_every,
            clock,
        )
        self._context = ssl.create_default_context(cafile=str(ca_file))
        self._progress: dict[str, Any] | None = None
        self._lease: dict[str, Any] | None = None  # as last written or read
        self._renewed: float | None = None  # local time of the last successful write
        self._observed: tuple[Any, Any, float] | None = None  # (holder, renewTime, local time first seen)
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the Lease, waiting while another learner holds it (at most `timeout` seconds); then renew
        it every `renew_every` seconds in the background. False when not taken in time."""
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            lease = self._request("GET")
            if self._free(lease) and self._take(lease):
                break
            if deadline is not None and self.clock() >= deadline:
                return False
            self._stop.wait(min(1.0, self.renew_every))
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return True

    def report(self, progress: dict[str, Any]) -> None:
        """The progress to write with the next renewal (every `renew_every` seconds)."""
        with self._lock:
            self._progress = progress

    def check(self) -> None:
        with self._lock:
            if self._lost:
                raise Lost(self._lost)
            if self._renewed is None:
                raise Lost(f"{self.identity} has not taken Lease {self.namespace}/{self.name}")
            silent = self.clock() - self._renewed
            if silent > self.duration - self.renew_every:
                raise Lost(
                    f"Lease {self.namespace}/{self.name} not renewed for {silent:.0f}s: another learner may "
                    "take it"
                )

    def renew(self) -> None:
        """One renewal, with the latest progress; marks the Lease lost when another learner holds it."""
        lease = self._lease or self._request("GET")
        for _ in range(3):
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                self._lose(f"Lease {self.namespace}/{self.name} is held by {_holder(lease)!r} now")
                return
            try:
                self._write(lease, transitions=0)
                return
            except Conflict:  # someone else wrote it (the operator's labels, or a takeover): look again
                lease = self._request("GET")

    def release(self) -> None:
        """Stop renewing and give the Lease up (the progress stays), so that a successor need not wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Conflict, OSError, Lost):
            lease = self._request("GET")
            if _holder(lease) == self.identity:
                lease["spec"]["holderIdentity"] = None
                self._write(lease, transitions=0, renew=False)
        with self._lock:
            self._renewed = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except (OSError, ValueError) as error:  # the API server unreachable: `check` counts the silence
                print(f"lease: renewal failed: {error}", flush=True)
            if self._lost:
                return

    def _free(self, lease: dict[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
        if not holder or holder == self.identity:
            return True
        now = self.clock()
        if self._observed is None or self._observed[:2] != (holder, renewed):
            self._observed = (holder, renewed, now)
        duration = spec.get("leaseDurationSeconds") or self.duration
        if now - self._observed[2] > duration:
            return True
        if renewed is None:
            return True
        renewed_at = datetime.fromisoformat(renewed.replace("Z", "+00:00"))
        return (datetime.now(UTC) - renewed_at).total_seconds() > duration

    def _take(self, lease: dict[str, Any]) -> bool:
        spec = lease.setdefault("spec", {})
        previous = spec.get("holderIdentity")
        spec["holderIdentity"] = self.identity
        spec["acquireTime"] = _micro_time()
        try:
            self._write(lease, transitions=int(bool(previous and previous != self.identity)))
        except Conflict:
            return False
        return True

    def _write(self, lease: dict[str, Any], transitions: int, renew: bool = True) -> None:
        spec = lease.setdefault("spec", {})
        spec["leaseDurationSeconds"] = self.duration
        if renew:
            spec["renewTime"] = _micro_time()
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + transitions
        with self._lock:
            progress = self._progress
        if progress is not None:
            annotations = lease.setdefault("metadata", {}).get("annotations") or {}
            annotations[PROGRESS_ANNOTATION] = json.dumps(progress, separators=(",", ":"), default=str)
            lease["metadata"]["annotations"] = annotations
        written = self._request("PUT", lease)
        with self._lock:
            self._lease = written
            if renew:
                self._renewed = self.clock()

    def _lose(self, why: str) -> None:
        with self._lock:
            self._lost = why

    def _request(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return call(self.url, method, self.token_file, self._context, body)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            if error.code == 409:
                raise Conflict(detail) from None
            if error.code == 404:
                raise Lost(
                    f"Lease {self.namespace}/{self.name} does not exist (the operator creates it)"
                ) from None
            raise OSError(f"{method} {self.url}: HTTP {error.code}: {detail}") from None


class Conflict(Exception):
    """The Lease changed since it was read (HTTP 409)."""


def _holder(lease: dict[str, Any]) -> Any:
    return (lease.get("spec") or {}).get("holderIdentity")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
