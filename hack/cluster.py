"""`make cluster`: start the local control plane in the foreground until Ctrl-C.

    python hack/cluster.py up [--workdir DIR]

Prints the `export KUBECONFIG=...` line; the CRD of this checkout is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubelocal.controlplane import ControlPlane, build_binaries

REPO = Path(__file__).resolve().parents[1]


def up(workdir: Path | None) -> int:
    plane = ControlPlane(build_binaries(), workdir=workdir)
    with plane:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd/mlworkflows.mlworkflow.io", "--timeout=60s")
        # Pods of the default namespace land on the process node: applied examples really train and serve.
        plane.use_process_node("default")
        print(f"control plane up in {plane.start_seconds:.1f}s; logs in {plane.workdir / 'logs'}")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        print(f"alias kubectl={plane.binary('kubectl')}")
        print("Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--workdir", type=Path, help="keep kubeconfig, certs and logs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # stop as cleanly on `kill` as on Ctrl-C
    return up(args.workdir)


if __name__ == "__main__":
    raise SystemExit(main())
