"""Operator memory at N workflows, for one or more operator sources in one run (ratios to the first).

    python bench/operator_scale/memory.py --workflows 250 --sources /work/main/operator operator [--trace DIR]

The same setup as run.py (the tests' control plane, kwok nodes, the training result stage), without the
floor and the steady windows: for each source (a directory holding the `mlworkflow` package, put first on
the operator's PYTHONPATH), the operator is started, N WebService workflows are created, and once all are
Ready its peak resident memory (VmHWM) and the main heap's size (`[heap]` in /proc/PID/smaps) are read.
`--trace DIR` runs the operator under tracemalloc (`traced.py` beside this file): snapshots at its traced
peaks and once all are Ready, in DIR/<source index>/, to read with `tracemalloc.Snapshot.load`; its
resident memory is then not the operator's own (tracemalloc's traces count too).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PODS_PER_KWOK_NODE, REPO, SUMMARY, Api, status_kib, stop

from kubelocal.controlplane import ControlPlane, build_binaries, training_result_stage


def _heap_kib(pid: int) -> int:
    lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith("[heap]"):
            for entry in lines[i + 1 : i + 30]:
                if entry.startswith("Rss:"):
                    return int(entry.split()[1])
    return 0


def run_operator(
    api: Api, source: Path, extra_env: dict[str, str], n: int, trace: Path | None, log: Path
) -> dict[str, float]:
    namespace = api.namespace("op")
    env = {
        **os.environ,
        **extra_env,
        "KUBECONFIG": str(api.plane.kubeconfig),
        "MLW_RESYNC_SECONDS": "10",
        "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "mlworkflow.cli"]
    if trace is not None:
        env["MLW_TRACE_DIR"] = str(trace)
        command = [sys.executable, str(Path(__file__).with_name("traced.py"))]
    with open(log, "wb") as output:
        operator = subprocess.Popen(
            [*command, "operator", "--namespace", namespace], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        time.sleep(5 if trace is None else 30)  # kopf's start: watches opened before the first workflow
        if trace is not None:
            operator.send_signal(signal.SIGUSR2)
        start_kib = status_kib(operator.pid, "VmRSS")
        began = time.monotonic()
        for i in range(n):
            api.create_workflow(namespace, f"wf-{i:04d}")
        api.wait(lambda: api.ready_workflows(namespace) >= n, 3600, "the ramp", interval=2.0)
        seconds = time.monotonic() - began
        time.sleep(15)
        if trace is not None:
            operator.send_signal(signal.SIGUSR1)
            time.sleep(20)
        result = {
            "seconds": seconds,
            "start_mib": start_kib / 1024,
            "peak_mib": status_kib(operator.pid, "VmHWM") / 1024,
            "rss_mib": status_kib(operator.pid, "VmRSS") / 1024,
            "heap_mib": _heap_kib(operator.pid) / 1024,
        }
    finally:
        stop(operator)
    api.delete_namespaces(1800)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=250)
    parser.add_argument(
        "--sources",
        nargs="+",
        default=[str(REPO / "operator")],
        help="operator sources, each DIR or NAME=VALUE,...@DIR (environment variables for that run)",
    )
    parser.add_argument("--trace", type=Path, help="run under tracemalloc, snapshots in this directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mlw-bench-memory-"))
    plane = ControlPlane(
        build_binaries(), workdir=workdir, extra_kwok_stages=[training_result_stage(SUMMARY)]
    )
    with plane:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd/mlworkflows.mlworkflow.io", "--timeout=60s")
        for node in range(1, (args.workflows + 10) // PODS_PER_KWOK_NODE + 1):
            plane.add_kwok_node(f"kwok-node-{node}")
        api = Api(plane)
        results = []
        for i, source in enumerate(args.sources):
            trace = args.trace / str(i) if args.trace else None
            settings, _, directory = source.rpartition("@")
            extra_env = dict(item.split("=", 1) for item in settings.split(",") if item)
            log = workdir / f"operator-{i}.log"
            result = run_operator(api, Path(directory).resolve(), extra_env, args.workflows, trace, log)
            print(f"{source}: {result}", flush=True)
            results.append((source, result))
    first = results[0][1]
    print(f"\n{args.workflows} workflows; load average {os.getloadavg()[0]:.1f}")
    print(
        "| source | seconds to all Ready | MiB at start | peak MiB | vs first | peak above start | heap MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for source, r in results:
        print(
            f"| {source} | {r['seconds']:.0f} | {r['start_mib']:.0f} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / first['peak_mib']:.2f}x | {r['peak_mib'] - r['start_mib']:.0f} | "
            f"{r['heap_mib']:.0f} |"
        )
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
