"""`mlworkflow operator` under tracemalloc (bench/operator_scale/memory.py --trace): SIGUSR2 starts tracing,
SIGUSR1 writes a snapshot and the live objects counted by type to $MLW_TRACE_DIR. Tracing starts only once
the operator runs: the imports under tracemalloc take minutes on a loaded machine."""

import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

from mlworkflow.cli import main

OUT = Path(os.environ["MLW_TRACE_DIR"])


def snapshot(*_: object) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    current, peak = tracemalloc.get_traced_memory()
    types = Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.take_snapshot().dump(str(OUT / "final.snap"))
    lines = [f"traced {current / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB"]
    (OUT / "final.txt").write_text("\n".join(lines + [f"{n} {t}" for t, n in types.most_common(50)]))


if __name__ == "__main__":
    frames = int(os.environ.get("MLW_TRACE_FRAMES", "8"))
    signal.signal(signal.SIGUSR2, lambda *_: tracemalloc.start(frames))
    signal.signal(signal.SIGUSR1, snapshot)
    sys.exit(main(sys.argv[1:]))
