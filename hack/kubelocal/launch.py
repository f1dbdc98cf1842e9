"""Start one container's process: a private mount namespace with the Pod's volumes bind-mounted at their
mountPaths, then exec the container's command.

    python -m kubelocal.launch SPEC.json

SPEC: {"argv": [...], "env": {...}, "cwd": "...", "mounts": [{"source", "target", "readOnly", "file"}]}.
Run by the process node; it is the container's process (exec), so signals reach the program itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount_volumes(mounts: list[dict[str, object]]) -> None:
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Mounts made here must not propagate back to the host.
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # Hold every source open first: a mount over /tmp must not hide a source that lives under /tmp.
    sources = {id(m): os.open(str(m["source"]), os.O_PATH) for m in mounts}
    for mount in sorted(mounts, key=lambda m: len(str(m["target"]))):
        source, target = f"/proc/self/fd/{sources[id(mount)]}", Path(str(mount["target"]))
        if mount.get("file"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
        _check(
            libc.mount(source.encode(), str(target).encode(), None, MS_BIND | MS_REC, None), f"bind {target}"
        )
        if mount.get("readOnly"):
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            _check(libc.mount(None, str(target).encode(), None, flags, None), f"read-only {target}")


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # The container dies with the node agent, as it would with its kubelet.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        # Held before the mounts, which may hide it; a workingDir inside a volume appears only after them.
        workdir = os.open(spec["cwd"], os.O_PATH) if os.path.isdir(spec["cwd"]) else None
        mount_volumes(spec["mounts"])
        if workdir is None:
            os.makedirs(spec["cwd"], exist_ok=True)
            os.chdir(spec["cwd"])
        else:
            os.fchdir(workdir)
    except OSError as error:
        print(f"kubelocal: cannot set up the container's mounts: {error}", file=sys.stderr, flush=True)
        sys.exit(128)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as error:
        print(f"kubelocal: cannot run {argv[0]!r}: {error}", file=sys.stderr, flush=True)
        sys.exit(127)


if __name__ == "__main__":
    main()
