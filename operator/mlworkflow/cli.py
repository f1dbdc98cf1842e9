"""The `mlworkflow` command."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any


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

    if args.leader_elect and args.renew_deadline >= args.lease_duration:
        raise SystemExit(
            "--renew-deadline must be less than --lease-duration: a leader quits before a standby takes over"
        )

    if args.metrics_port:
        os.environ["MLW_METRICS_PORT"] = str(args.metrics_port)
    kopf.configure(verbose=args.verbose)
    if args.leader_elect:
        if args.metrics_port:
            from mlworkflow.controller import metrics

            metrics.serve(args.metrics_port)
        _lead(args)
    kopf.run(
        standalone=True,  # no kopf peering: leader election decides which replica runs kopf at all
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


def _lead(args: argparse.Namespace) -> None:
    """Block until this replica holds the operator's Lease; a standby answers /healthz meanwhile (it is
    healthy, only waiting). A leader that loses the Lease exits at once: the other replica may act."""
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mlworkflow.controller.leader import LeaderElector, Timing
    from mlworkflow.kube import Kube, api_client

    class Standby(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"standby\n")

        def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a log line
            pass

    namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"
    server = ThreadingHTTPServer(("0.0.0.0", args.health_port), Standby) if args.health_port else None
    if server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    elector = LeaderElector(
        Kube(api_client()),
        namespace,
        args.lease_name,
        identity,
        on_lost=lambda: os._exit(1),  # no graceful stop: another replica may already be acting
        timing=Timing(args.lease_duration, args.renew_deadline, args.retry_period),
    )
    elector.acquire()
    if server:
        server.shutdown()
        server.server_close()  # kopf's liveness endpoint binds the same port next


def _port_free(port: int) -> None:
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(
                f"port {port} is in use (another `mlworkflow run`?): pass --port with a free one"
            )


def _load_workflow(path: Path) -> tuple[str, Any]:
    """The name and spec of the MLWorkflow in `path`, or an exit naming the field that is wrong."""
    import yaml
    from pydantic import ValidationError

    from mlworkflow.api.v1alpha1 import MLWorkflow

    if not path.exists():
        raise SystemExit(f"{path}: no such file")
    try:
        workflow = MLWorkflow.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        problems = "\n".join(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"{path} is not a valid MLWorkflow:\n{problems}") from None
    return str(workflow.metadata.get("name", path.stem)), workflow.spec


def _run(args: argparse.Namespace) -> int:
    from mlworkflow.local.runner import LocalRunner, RunnerError

    name, spec = _load_workflow(Path(args.file))
    store = Path(args.store or (spec.storage.path if spec.storage.path else "mlworkflow-data"))
    _port_free(args.port)
    try:
        runner = LocalRunner(name, spec, store, args.port)
    except RunnerError as error:
        raise SystemExit(f"{args.file}: {error}") from None
    runner.run()
    return 0


def _ask(args: argparse.Namespace) -> int:
    """Ask `mlworkflow run` for a retraining or a batch run: a new value in the store, read as the
    mlworkflow.io/retrain or mlworkflow.io/predict annotation."""
    import time

    from mlworkflow.api.v1alpha1 import Pattern
    from mlworkflow.runtime.store import WorkflowStore

    name, spec = _load_workflow(Path(args.file))
    store = WorkflowStore(Path(args.store or spec.storage.path or "mlworkflow-data").resolve(), name)
    if not store.base.exists():
        raise SystemExit(f"{store.base}: no such workflow in the store (is `mlworkflow run` using --store?)")
    if args.command == "predict" and spec.pattern != Pattern.FORECAST:
        raise SystemExit(f"{args.file}: batch runs are for spec.pattern Forecast, not {spec.pattern}")
    request = store.retrain_request if args.command == "retrain" else store.predict_request
    request.write_text(f"{time.time_ns()}\n")
    what = "a retraining (trigger Manual)" if args.command == "retrain" else "a batch run (trigger Manual)"
    print(f"asked {name} for {what}; `mlworkflow run` starts it at its next step")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mlworkflow.local.demo import Stopped, run_demo

    _port_free(args.port)
    try:
        outcome = run_demo(Path(args.store), quick=args.quick, port=args.port)
    except TimeoutError as error:
        logs = Path(args.store) / "demo" / "local"
        raise SystemExit(f"{error}; the runtimes' logs are in {logs}") from None
    except Stopped as stopped:
        print(f"the demo {stopped}", file=sys.stderr)
        return 128 + stopped.signal  # as a shell reports a process ended by that signal
    complete = (
        outcome.get("driftDetected")
        and outcome.get("retrained")
        and (outcome.get("decision") != "Promoted" or outcome.get("servedBy") == outcome.get("retrained"))
    )
    return 0 if complete else 1


def _render(args: argparse.Namespace) -> int:
    """The children the operator would apply for a workflow, as YAML (pure: no cluster is read)."""
    import yaml

    from mlworkflow.api.v1alpha1 import MLWorkflowStatus, Pattern, Trigger
    from mlworkflow.desired import children
    from mlworkflow.desired.lifecycle import BatchRunRequest, Plan, TrainRequest
    from mlworkflow.desired.patterns import PATTERNS

    name, spec = _load_workflow(Path(args.file))
    workflow = children.Workflow(name, args.namespace, "00000000-0000-0000-0000-000000000000", spec)
    context = children.RuntimeContext(image=args.image)
    # A plan that asks for everything: training, the pattern's children for the version, a batch run.
    batch_run = (
        BatchRunRequest(args.version, args.version, "Promotion") if spec.pattern == Pattern.FORECAST else None
    )
    train = TrainRequest(args.version, Trigger.INITIAL)
    plan = Plan(MLWorkflowStatus(), train, args.version, batch_run)
    manifests = [
        # AutoML searches first: its training Job is the search's winner, known only after the search.
        *([children.training_job(workflow, train, context)] if spec.pattern != Pattern.AUTOML else []),
        *PATTERNS[spec.pattern].children_for(workflow, plan, context).apply,
        children.monitoring_cronjob(workflow, args.version, context),
    ]
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
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
    election = operator.add_argument_group(
        "leader election", "several replicas, one acting: the holder of a coordination.k8s.io Lease"
    )
    election.add_argument("--leader-elect", action="store_true", help="act only while holding the Lease")
    election.add_argument("--lease-name", default="mlworkflow-operator", help="the Lease's name")
    election.add_argument(
        "--lease-namespace", help="the Lease's namespace (default: $POD_NAMESPACE, else default)"
    )
    election.add_argument(
        "--lease-duration", type=float, default=15.0, help="seconds a standby waits after the last renewal"
    )
    election.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        help="seconds a leader may fail to renew before it quits",
    )
    election.add_argument("--retry-period", type=float, default=2.0, help="seconds between two attempts")
    operator.set_defaults(handler=_operator)
    run = commands.add_parser("run", help="run an MLWorkflow on this machine, no cluster (Ctrl-C stops it)")
    run.add_argument("file", help="the MLWorkflow manifest (YAML)")
    run.add_argument(
        "--store", help="artifact store folder (default: spec.storage.path, else ./mlworkflow-data)"
    )
    run.add_argument("--port", type=int, default=3000, help="local port of the prediction service")
    run.set_defaults(handler=_run)
    for command, what in (("retrain", "a retraining"), ("predict", "a batch run (Forecast)")):
        ask = commands.add_parser(
            command,
            help=f"ask a running `mlworkflow run` for {what} (as the mlworkflow.io/{command} annotation)",
        )
        ask.add_argument("file", help="the MLWorkflow manifest (YAML) that `mlworkflow run` runs")
        ask.add_argument("--store", help="artifact store folder (as given to `mlworkflow run`)")
        ask.set_defaults(handler=_ask)
    render = commands.add_parser("render", help="print the children the operator would create (YAML)")
    render.add_argument("file", help="the MLWorkflow manifest (YAML)")
    render.add_argument("--namespace", default="default")
    render.add_argument("--version", default="v1", help="the model version to render serving for")
    render.add_argument("--image", default="mlworkflow-operator:0.1.0", help="the runtime image")
    render.set_defaults(handler=_render)
    demo = commands.add_parser("demo", help="the whole loop on generated data: train, serve, drift, retrain")
    demo.add_argument("--store", default="mlworkflow-data", help="artifact store folder")
    demo.add_argument("--port", type=int, default=3000, help="local port of the prediction service")
    demo.add_argument("--quick", action="store_true", help="less data and fewer trees (CI)")
    demo.set_defaults(handler=_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
