"""`make kafka-broker`: a single-node Kafka broker in the foreground until Ctrl-C.

    python -m kafkalocal [--port PORT] [--topic NAME:PARTITIONS ...] [--workdir DIR]

Prints the bootstrap servers; the topics given are created.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path

from kafkalocal.broker import KafkaBroker, fetch_jars


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kafkalocal", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, help="the PLAINTEXT listener's port (default: a free one)")
    parser.add_argument("--topic", action="append", default=[], help="NAME:PARTITIONS, created at start")
    parser.add_argument("--workdir", type=Path, help="keep server.properties, log dir and kafka.log here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # stop as cleanly on `kill` as on Ctrl-C
    with KafkaBroker(fetch_jars(), args.workdir, port=args.port) as broker:
        for topic in args.topic:
            name, _, partitions = topic.partition(":")
            broker.create_topic(name, int(partitions or 1))
        print(f"kafka up in {broker.start_seconds:.1f}s; log {broker.log_path}")
        print(f"bootstrap servers: {broker.bootstrap_servers}")
        print("Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
