"""The `mlworkflow` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from mlworkflow.api import crd

    text = crd.render_yaml()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlworkflow", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    crds = commands.add_parser("crds", help="print the MLWorkflow CustomResourceDefinition")
    crds.add_argument("--output", "-o", default="-", help="file to write ('-': standard output)")
    crds.set_defaults(handler=_crds)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
