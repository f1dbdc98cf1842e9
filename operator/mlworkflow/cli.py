"""The `mlworkflow` command."""

from __future__ import annotations

import argparse
import os
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


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from mlworkflow.controller import handlers  # noqa: F401 - registers the handlers

    if args.metrics_port:
        os.environ["MLW_METRICS_PORT"] = str(args.metrics_port)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,  # one replica; no kopf peering CRDs to install
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlworkflow", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    crds = commands.add_parser("crds", help="print the MLWorkflow CustomResourceDefinition")
    crds.add_argument("--output", "-o", default="-", help="file to write ('-': standard output)")
    crds.set_defaults(handler=_crds)
    operator = commands.add_parser(
        "operator", help="run the operator against the current kubeconfig or in-cluster"
    )
    operator.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    operator.add_argument("--health-port", type=int, default=0, help="serve /healthz on this port (0: off)")
    operator.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (0: off; $MLW_METRICS_PORT)",
    )
    operator.add_argument("--verbose", "-v", action="store_true")
    operator.set_defaults(handler=_operator)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
