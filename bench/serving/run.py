"""Serving benchmark: our BentoML service against the floors and a hand-written peer, measured in one run.

    python bench/serving/run.py [--requests 400] [--duration 10]

One model (ColumnTransformer: impute + scale numerics, one-hot categoricals; RandomForest of 100 trees) on
generated data with numeric and categorical columns and missing values, trained by our training runtime.
Measured: in-process scikit-learn and onnxruntime (the floors), a plain Starlette/uvicorn endpoint calling
scikit-learn, and our service (`bentoml serve`); p50/p99 latency at 1 client (keep-alive HTTP) and
throughput at 32 concurrent connections (wrk), for 1 and 100 rows per request, in both protocols the service
speaks: JSON records (`/predict`) and the Open Inference Protocol's columns (`/v2/models/<name>/infer`). The
plain endpoint reads both too; each ratio is against the plain endpoint on the same protocol in the same run.
Our service runs as the operator deploys it: it records its sample of inputs for the drift monitor (at
most 100 rows a second), which the plain one does not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

from kubelocal.net import free_port  # noqa: E402
from mlworkflow.api.v1alpha1 import MLWorkflowSpec, Trigger  # noqa: E402
from mlworkflow.runtime.store import WorkflowStore  # noqa: E402
from mlworkflow.runtime.train import train  # noqa: E402


def generated(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(8)})
    for name, levels in (("colour", 5), ("city", 12), ("device", 3)):
        frame[name] = rng.choice([f"{name}-{k}" for k in range(levels)], rows)
    frame["label"] = (frame["x0"] + 0.5 * frame["x1"] - (frame["colour"] == "colour-1") > 0).astype(int)
    for column in ("x2", "x5", "city"):
        frame.loc[rng.random(rows) < 0.05, column] = None
    return frame


def inference_request(records: list[dict[str, object]]) -> dict[str, object]:
    """Records as Open Inference Protocol columns (numbers FP64, the rest BYTES)."""
    names = list(records[0])
    return {
        "inputs": [
            {
                "name": name,
                "datatype": "FP64" if name.startswith("x") else "BYTES",
                "shape": [len(records)],
                "data": [r[name] for r in records],
            }
            for name in names
        ]
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)) * 1000, float(np.percentile(samples, 99)) * 1000


def in_process(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def http_latency(port: int, path: str, body: bytes, repeat: int) -> tuple[float, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    samples = []
    for i in range(repeat + 20):
        started = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        if i >= 20:  # warm-up
            samples.append(time.perf_counter() - started)
    connection.close()
    return percentiles(samples)


def wrk_throughput(port: int, path: str, body: bytes, seconds: int, folder: Path) -> float:
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not errors, f"wrk saw errors:\n{out}"
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def start(
    argv: list[str], env: dict[str, str], port: int, ready_path: str, log: Path
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", ready_path)
            if connection.getresponse().status in (200, 405):
                return process
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per latency measurement")
    parser.add_argument("--duration", type=int, default=10, help="seconds per throughput measurement")
    parser.add_argument("--workers", type=int, default=2, help="server processes, the same for both servers")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the throughput runs: apt-get install wrk")

    folder = Path(tempfile.mkdtemp(prefix="mlw-bench-serving-"))
    (folder / "data").mkdir()
    frame = generated(20_000)
    frame.to_csv(folder / "data" / "train.csv", index=False)
    spec = MLWorkflowSpec.model_validate(
        {
            "pattern": "WebService",
            "data": {"source": "data/train.csv", "target": "label"},
            "model": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": {"n_estimators": 100, "random_state": 0, "n_jobs": 1},
            },
            "training": {"crossValidation": 0},
            "storage": {"path": str(folder)},
        }
    )
    store = WorkflowStore(folder, "bench")
    trained = train(spec, store, "v1", Trigger.INITIAL)
    print(
        f"model: RandomForest(100) on {len(frame)} rows; ONNX check: {trained.onnx_check}; "
        f"served by {trained.backend}; {args.workers} worker process(es) per server"
    )
    model_dir = store.bentoml_home / "models" / "bench" / "v1"

    import joblib

    from mlworkflow.runtime.serve import LoadedModel

    pipeline = joblib.load(model_dir / "pipeline.joblib")
    features = frame.drop(columns=["label"]).sample(200, random_state=1)
    records = json.loads(features.to_json(orient="records"))
    # Each protocol: its path on both servers, and its body for 1 and 100 rows.
    protocols = {
        "records": ("/predict", {n: {"records": records[:n]} for n in (1, 100)}),
        "open inference": ("/v2/models/bench/infer", {n: inference_request(records[:n]) for n in (1, 100)}),
    }
    results: dict[tuple[str, str], dict[int, tuple[float, float, float | None]]] = {}

    for n in (1, 100):
        rows = pd.DataFrame.from_records(records[:n])
        results.setdefault(("scikit-learn in-process (floor)", "-"), {})[n] = (
            *in_process(lambda rows=rows: pipeline.predict(rows), args.requests),
            None,
        )
    if (model_dir / "model.onnx").exists():
        model = LoadedModel(model_dir)
        for n in (1, 100):
            batch = model.checker.from_records(records[:n])
            feed = model.onnx.feed(batch.numeric, batch.categorical)  # type: ignore[union-attr]
            results.setdefault(("onnxruntime in-process (floor)", "-"), {})[n] = (
                *in_process(lambda feed=feed: model.onnx.run(feed), args.requests),  # type: ignore[union-attr]
                None,
            )

    servers = {
        "plain Starlette + scikit-learn": (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "plain_app:app",
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
                "--workers",
                str(args.workers),
            ],
            {"PIPELINE": str(model_dir / "pipeline.joblib"), "PYTHONPATH": str(Path(__file__).parent)},
            "/predict",
        ),
        "mlworkflow service (bentoml serve)": (
            [
                str(Path(sys.executable).parent / "bentoml"),
                "serve",
                "mlworkflow.runtime.serve:ModelService",
                "--host",
                "127.0.0.1",
            ],
            {
                "BENTOML_HOME": str(store.bentoml_home),
                "MODEL_TAG": "bench:v1",
                "MLW_SERVING_WORKERS": str(args.workers),
                "BENTOML_DO_NOT_TRACK": "true",
            },
            "/readyz",
        ),
    }
    for name, (argv, env, ready) in servers.items():
        port = free_port()
        process = start([*argv, "--port", str(port)], env, port, ready, folder / f"{port}.log")
        try:
            for protocol, (path, bodies) in protocols.items():
                for n, request in bodies.items():
                    body = json.dumps(request).encode()
                    p50, p99 = http_latency(port, path, body, args.requests)
                    rps = wrk_throughput(port, path, body, args.duration, folder)
                    results.setdefault((name, protocol), {})[n] = (p50, p99, rps)
        finally:
            stop(process)

    print()
    columns = ["implementation", "protocol", "rows/request", "p50 ms (1 client)", "p99 ms (1 client)"]
    print("| " + " | ".join([*columns, "req/s (32 conns)", "vs plain"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for (name, protocol), by_rows in results.items():
        baseline = results.get(("plain Starlette + scikit-learn", protocol), {})
        for n, (p50, p99, rps) in by_rows.items():
            ratio = f"{rps / baseline[n][2]:.1f}x" if rps and baseline.get(n, (0, 0, None))[2] else "-"
            throughput = f"{rps:.0f}" if rps else "-"
            print(f"| {name} | {protocol} | {n} | {p50:.2f} | {p99:.2f} | {throughput} | {ratio} |")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
