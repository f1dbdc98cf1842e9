"""The local runner: the README's main job (`make demo`) and `mlworkflow run`, as a newcomer meets them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from kubelocal.net import free_port
from support import wait_for

MLWORKFLOW = str(Path(sys.executable).parent / "mlworkflow")


def test_the_demo_closes_the_loop(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [MLWORKFLOW, "demo", "--quick", f"--store={tmp_path}", f"--port={port}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads((tmp_path / "demo" / "demo-result.json").read_text())
    assert outcome["driftDetected"] is True and outcome["driftShare"] >= 0.5
    assert outcome["retrained"] == "v2" and outcome["decision"] in ("Promoted", "Rejected")
    if outcome["decision"] == "Promoted":
        assert outcome["servedBy"] == "v2", "predictions are answered by the new version"
        challenger, champion = outcome["metrics"]["challenger"], outcome["metrics"]["champion"]
        assert challenger["f1_macro"] >= champion["f1_macro"]
    # The decision was made on rows neither model was trained on, and says so.
    assert outcome["excludedRows"] == 480 and outcome["holdoutRows"] >= 100, "v1 trained on 480 rows"
    assert "held-out rows, trained on by neither" in outcome["why"] and outcome["why"] in done.stdout
    status = json.loads((tmp_path / "demo" / "status.json").read_text())
    assert [h["version"] for h in status["history"]] == ["v2", "v1"]
    assert status["history"][0]["trigger"] == "Drift" and status["history"][0]["driftReport"]
    page = (tmp_path / "demo" / "index.html").read_text()
    assert "drift report" in page and "card.md" in page
    champion_f1 = status["history"][0]["championMetrics"]["f1_macro"]
    assert f"<td>{champion_f1:.4f} (v1)</td>" in page, "the page shows the champion's score on the same rows"
    assert "The loop closed" in done.stdout and "index.html" in done.stdout


def manifest(tmp_path: Path, **spec: object) -> Path:
    document = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "examples" / "webservice-iris.yaml").read_text()
    )
    document["spec"]["storage"] = {"path": str(tmp_path / "store")}
    document["spec"]["serving"] = {"replicas": 1}
    document["spec"]["model"]["params"] = {"n_estimators": 10}
    document["spec"].update(spec)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_until(
    path: Path, port: int, phase: str, timeout: float, then: Callable[[Path], None] | None = None
) -> tuple[int, str]:
    """`mlworkflow run` until the workflow reaches `phase` (and `then(status file)` returns), then Ctrl-C;
    its exit code and output."""
    process = subprocess.Popen(
        [MLWORKFLOW, "run", str(path), f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    status_file = path.parent / "store" / yaml.safe_load(path.read_text())["metadata"]["name"] / "status.json"
    try:
        wait_for(
            lambda: status_file.exists() and json.loads(status_file.read_text()).get("phase") == phase,
            timeout,
            f"phase {phase}",
        )
        if then is not None:
            then(status_file)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    return process.returncode, output


def test_run_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    code, output = run_until(manifest(tmp_path), port, "Serving", 120)
    assert code == 0, output
    assert "stopping (Ctrl-C)" in output
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the prediction service outlived Ctrl-C"


def test_a_typo_in_the_manifest_names_the_field(tmp_path: Path) -> None:
    done = subprocess.run(
        [MLWORKFLOW, "run", str(manifest(tmp_path, trainnig={"holdout": 0.2}))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "is not a valid MLWorkflow" in done.stderr and "spec.trainnig" in done.stderr


def test_a_missing_file_and_a_busy_port_say_what_to_do(tmp_path: Path) -> None:
    missing = subprocess.run([MLWORKFLOW, "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [MLWORKFLOW, "run", str(manifest(tmp_path)), f"--port={port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0 and f"port {port} is in use" in done.stderr and "--port" in done.stderr


def test_a_missing_data_file_is_a_training_failure_with_its_message(tmp_path: Path) -> None:
    path = manifest(tmp_path, data={"source": "data/missing.csv", "target": "target"})
    _, output = run_until(path, free_port(), "Failed", 60)
    assert "TrainingFailed" in output and "no file matches 'data/missing.csv'" in output


def test_retrain_asks_a_running_workflow_for_a_manual_retraining(tmp_path: Path) -> None:
    path = manifest(tmp_path, promotion={"minHoldoutRows": 20})

    def ask_and_wait(status_file: Path) -> None:
        asked = subprocess.run([MLWORKFLOW, "retrain", str(path)], capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0 and "retraining" in asked.stdout, asked.stderr
        wait_for(
            lambda: len(json.loads(status_file.read_text())["history"]) == 2,
            120,
            "the manual retraining decided",
        )

    code, output = run_until(path, free_port(), "Serving", 120, then=ask_and_wait)
    assert code == 0, output
    status = json.loads((tmp_path / "store" / "iris-classifier" / "status.json").read_text())
    manual = status["history"][0]
    assert (manual["version"], manual["trigger"], manual["champion"]) == ("v2", "Manual", "v1")
    assert manual["reason"] in ("Better", "NotBetter") and manual["holdout"]["rows"] == 29
    assert "TrainingStarted: training v2 (trigger Manual)" in output
