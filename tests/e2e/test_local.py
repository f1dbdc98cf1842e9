"""The local runner: the README's main job (`make demo`) and `mlworkflow run`, as a newcomer meets them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from kubelocal.net import free_port
from mlflow_server import MLflowServer
from support import REPO, story_traces, wait_for

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
    assert f"<td>{status['history'][0]['metrics']['f1_macro']:.4f}</td>" in page, "and the challenger's"
    drawn = story_traces(page)  # the story, drawn from the status's history and the store's checks
    versions = {
        v: (outcome, y)
        for outcome in ("promoted", "rejected")
        for v, y in zip(drawn[f"{outcome} version"]["text"], drawn[f"{outcome} version"]["y"], strict=True)
    }
    assert versions["v2"] == (outcome["decision"].lower(), status["history"][0]["metrics"]["f1_macro"])
    assert versions["v1"][0] == "promoted" and drawn["champion on the same rows"]["y"] == [champion_f1]
    assert set(drawn["drift threshold"]["y"]) == {0.5} and max(drawn["drift share"]["y"]) >= 0.5
    assert "The loop closed" in done.stdout and "index.html" in done.stdout


def test_the_demo_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [MLWORKFLOW, "demo", "--quick", f"--store={tmp_path}", f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ignore_sigint,
    )
    status_file = tmp_path / "demo" / "status.json"
    try:
        wait_for(
            lambda: status_file.exists() and json.loads(status_file.read_text()).get("phase") == "Serving",
            120,
            "the demo's v1 serving",
        )
        assert len(processes_of(tmp_path)) >= 2, "the server and its worker, found while serving"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        output = stopped(process, signal.SIGTERM)
        leftovers = processes_of(tmp_path)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopping (SIGTERM)" in output and "the demo stopped by SIGTERM before the loop closed" in output
    assert leftovers == [], "SIGTERM left processes of the demo running"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the prediction service outlived SIGTERM"


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


def ignore_sigint() -> None:
    """What a non-interactive shell does to a job it starts in the background (`make test &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_until(
    path: Path,
    port: int,
    phase: str,
    timeout: float,
    then: Callable[[Path], None] | None = None,
    stop: signal.Signals = signal.SIGINT,
) -> tuple[int, str]:
    """`mlworkflow run`, started with SIGINT ignored, until the workflow reaches `phase` (and `then(status
    file)` returns), then `stop` (Ctrl-C by default) to it; its exit code and output."""
    process = subprocess.Popen(
        [MLWORKFLOW, "run", str(path), f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ignore_sigint,
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
        os.kill(process.pid, stop)
        output = stopped(process, stop)
    return process.returncode, output


def stopped(process: subprocess.Popen[str], stop: signal.Signals) -> str:
    """The output of `process` once it has ended after `stop`, within 30 s (else it is killed: a failure)."""
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running 30 s after {stop.name}:\n{process.communicate()[0]}") from None


def processes_of(store: Path) -> list[int]:
    """The processes the runner started for `store`: each has it in its environment (its termination-log path,
    BENTOML_HOME), inherited by what it starts in turn (the server's workers)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours
            if str(store).encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
    return found


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """The store of `manifest(tmp_path)`; what of the runner's processes outlived a failed test is killed."""
    yield tmp_path / "store"
    for pid in processes_of(tmp_path / "store"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_stops_the_server_and_every_process(
    tmp_path: Path, store: Path, stop: signal.Signals
) -> None:
    port = free_port()
    started: list[int] = []
    code, output = run_until(
        manifest(tmp_path),
        port,
        "Serving",
        120,
        then=lambda _: started.extend(processes_of(store)),
        stop=stop,
    )
    assert code == 0, output
    assert f"stopping ({stop.name})" in output
    assert len(started) >= 2, "the server and its worker, found while serving"
    assert processes_of(store) == [], f"{stop.name} left processes of the runner running"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"the prediction service outlived {stop.name}"


def test_a_stop_signal_ends_a_running_training(tmp_path: Path, store: Path) -> None:
    slow = manifest(
        tmp_path,
        model={"estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 100_000}},
    )
    training: list[int] = []
    code, output = run_until(
        slow,
        free_port(),
        "Training",
        60,
        then=lambda _: training.extend(processes_of(store)),
        stop=signal.SIGTERM,
    )
    assert code == 0 and "stopping (SIGTERM)" in output, output
    assert len(training) == 1, "the training process, found while it ran"
    assert processes_of(store) == [], "the training outlived SIGTERM"


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


def test_a_missing_data_file_fails_the_training_and_retrain_retries_it_once_fixed(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris

    path = manifest(tmp_path, data={"source": "data/missing.csv", "target": "target"})

    def fix_and_retrain(status_file: Path) -> None:
        (tmp_path / "store" / "data").mkdir()
        load_iris(as_frame=True).frame.to_csv(tmp_path / "store" / "data" / "missing.csv", index=False)
        asked = subprocess.run([MLWORKFLOW, "retrain", str(path)], capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0, asked.stderr
        wait_for(lambda: json.loads(status_file.read_text())["phase"] == "Serving", 120, "the retried v2")

    code, output = run_until(path, free_port(), "Failed", 60, then=fix_and_retrain)
    assert code == 0, output
    assert "TrainingFailed" in output and "no file matches 'data/missing.csv'" in output
    status = json.loads((tmp_path / "store" / "iris-classifier" / "status.json").read_text())
    assert [(h["version"], h["trigger"], h["outcome"]) for h in status["history"]] == [
        ("v2", "Manual", "Promoted"),
        ("v1", "Initial", "Failed"),
    ]
    assert status["model"]["version"] == "v2" and status["lastHandledRetrain"]


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


def test_the_forecast_example_runs_locally_and_predicts_when_asked(tmp_path: Path) -> None:
    """The example as its header tells a newcomer to run it: a batch of patients, `mlworkflow run`, and
    `mlworkflow predict` for a run now (its schedule is daily)."""
    import pandas as pd
    from sklearn.datasets import load_diabetes

    document = yaml.safe_load((REPO / "examples" / "forecast-diabetes.yaml").read_text())
    document["spec"]["storage"] = {"path": str(tmp_path / "store")}
    document["spec"]["model"]["params"] = {"n_estimators": 20}
    path = tmp_path / "forecast.yaml"
    path.write_text(yaml.safe_dump(document))
    (tmp_path / "store" / "incoming").mkdir(parents=True)
    patients = load_diabetes(as_frame=True).data.assign(patient=range(442))
    patients.to_csv(tmp_path / "store" / "incoming" / "diabetes-1.csv", index=False)

    def predict_now(status_file: Path) -> None:
        asked = subprocess.run([MLWORKFLOW, "predict", str(path)], capture_output=True, text=True, timeout=60)
        assert asked.returncode == 0, asked.stderr
        wait_for(
            lambda: (
                (runs := json.loads(status_file.read_text()).get("batch", {}).get("runs"))
                and runs[0]["state"] != "Running"
            ),
            120,
            "the asked-for batch run",
        )

    code, output = run_until(path, free_port(), "Scheduled", 120, then=predict_now)
    assert code == 0, output
    status = json.loads((tmp_path / "store" / "diabetes-progression" / "status.json").read_text())
    [run] = status["batch"]["runs"]
    assert (run["state"], run["trigger"], run["version"], run["predicted"]) == (
        "Succeeded",
        "Manual",
        "v1",
        442,
    )
    folder = tmp_path / "store" / run["output"]
    assert (folder / "_SUCCESS").exists() and run["output"].startswith(
        "predictions/diabetes-progression-predict-v1-"
    )
    predicted = pd.concat(pd.read_parquet(part) for part in folder.glob("part-*.parquet"))
    assert sorted(predicted["patient"].astype(int)) == list(range(442)), "two indexes, every patient once"
    page = (tmp_path / "store" / "diabetes-progression" / "index.html").read_text()
    assert "Batch runs" in page and f"../{run['output']}/_manifest.json" in page


def test_the_local_runner_runs_forecast_on_its_schedule_once_per_firing(tmp_path: Path) -> None:
    """`spec.batch.schedule` honoured by the runner (its clock stepped past 06:00, as a CronJob's would
    pass it): one run per firing, of the promoted version, its indexes as parallel processes; no run per
    promoted version while a schedule is set."""
    from datetime import timedelta

    from sklearn.datasets import load_diabetes

    from mlworkflow.api.v1alpha1 import MLWorkflowSpec
    from mlworkflow.local.runner import LocalRunner
    from workflows import CHECKS_BY_HAND

    document = yaml.safe_load((REPO / "examples" / "forecast-diabetes.yaml").read_text())["spec"]
    document["model"]["params"] = {"n_estimators": 20}
    document["monitoring"]["schedule"] = CHECKS_BY_HAND  # the stepped clock must start no drift check
    (tmp_path / "incoming").mkdir()
    patients = load_diabetes(as_frame=True).data.assign(patient=range(442))
    patients.iloc[:221].to_csv(tmp_path / "incoming" / "diabetes-1.csv", index=False)
    patients.iloc[221:].to_csv(tmp_path / "incoming" / "diabetes-2.csv", index=False)  # a file per index
    said: list[str] = []
    runner = LocalRunner(
        "forecast", MLWorkflowSpec.model_validate(document), tmp_path, free_port(), say=said.append
    )
    try:
        wait_for(lambda: runner.tick() or runner.status.phase == "Scheduled", 120, "v1 trained")
        assert not runner.batch_runs, "with a schedule, a promoted version waits for it"
        tomorrow = runner.started_at + timedelta(days=1)
        six = tomorrow.replace(hour=6, minute=0, second=0, microsecond=0)
        runner.tick(six - timedelta(minutes=1))
        assert not runner.batch_runs
        for minute in (1, 2):  # fired once: the second look finds nothing new
            runner.tick(six + timedelta(minutes=minute))
        [run] = runner.batch_runs.values()
        assert (run.trigger, run.version, len(run.indexes)) == ("Schedule", "v1", 2)
        assert run.id == f"forecast-predict-{six:%Y%m%d}0601"

        def finished() -> bool:
            runner.tick(six + timedelta(minutes=3))
            return bool(runner.status.batch and runner.status.batch.runs[0].state != "Running")

        wait_for(finished, 120, "the scheduled run")
    finally:
        runner.stop()
    assert runner.status.batch is not None
    [record] = runner.status.batch.runs
    assert (record.state, record.trigger, record.predicted, record.rejected) == (
        "Succeeded",
        "Schedule",
        442,
        0,
    )
    assert record.output is not None
    manifest = json.loads((tmp_path / record.output / "_manifest.json").read_text())
    assert [i["rowsIn"] for i in manifest["indexes"]] == [221, 221], "two indexes, a file each"
    page = (tmp_path / "forecast" / "index.html").read_text()
    assert f'<a href="../{record.output}/_manifest.json">' in page


def test_the_automl_example_searches_with_local_workers_and_serves_the_winner(
    tmp_path: Path, tracking_server: MLflowServer
) -> None:
    """... and, tracked, shows the search, its trials, the refit and the decision in MLflow, as on a
    cluster (the same runtimes, the same sync)."""
    from mlflow import MlflowClient

    document = yaml.safe_load((REPO / "examples" / "automl-breast-cancer.yaml").read_text())
    document["spec"]["storage"] = {"path": str(tmp_path / "store")}
    document["spec"]["serving"] = {"replicas": 1}
    document["spec"]["automl"].update({"trials": 4, "parallelism": 2})
    document["spec"]["training"] = {"crossValidation": 3}
    document["spec"]["tracking"] = {"mlflow": {"trackingUri": tracking_server.uri}}
    path = tmp_path / "automl.yaml"
    path.write_text(yaml.safe_dump(document))

    def synced(status_file: Path) -> None:
        wait_for(
            lambda: json.loads(status_file.read_text()).get("tracking", {}).get("state") == "Synced",
            120,
            "the decision synced to MLflow",
        )

    code, output = run_until(path, free_port(), "Serving", 240, then=synced)
    assert code == 0, output
    client = MlflowClient(tracking_server.uri, registry_uri=tracking_server.uri)
    champion = client.get_model_version_by_alias("local.breast-cancer-automl", "champion")
    assert champion.tags["mlworkflow.version"] == "v1" and champion.tags["mlworkflow.outcome"] == "Promoted"
    refit = client.get_run(champion.run_id)
    searched = client.get_run(refit.data.tags["mlworkflow.searchRunId"])
    assert searched.data.tags["mlworkflow.refitRunId"] == refit.info.run_id
    trials = client.search_runs(
        [searched.info.experiment_id], f"tags.mlflow.parentRunId = '{searched.info.run_id}'"
    )
    assert len(trials) == 4 and refit.data.tags["mlworkflow.namespace"] == "local"
    status = json.loads((tmp_path / "store" / "breast-cancer-automl" / "status.json").read_text())
    search = status["search"]
    assert search["state"] == "Succeeded"
    assert search["trialsComplete"] + search["trialsFailed"] + search["trialsPruned"] == 4
    winner = search["leaderboard"][0]
    card = json.loads(
        (
            tmp_path
            / "store"
            / "breast-cancer-automl"
            / "bentoml"
            / "models"
            / "breast-cancer-automl"
            / "v1"
            / "card.json"
        ).read_text()
    )
    assert card["pipeline"]["estimator"] == winner["estimator"], "the winner is what was trained"
    board = tmp_path / "store" / "breast-cancer-automl" / "automl" / "v1" / "leaderboard.csv"
    assert board.exists() and len(board.read_text().splitlines()) == 5, "every trial, in the store"
    assert "SearchSucceeded" in output and "Promoted" in output
    assert "searching v1: " in output and "/4 trials" in output, "the search's progress, live"
    assert card["search"]["trials"] == 4 and card["search"]["top"][0]["estimator"] == winner["estimator"]
    page = (tmp_path / "store" / "breast-cancer-automl" / "index.html").read_text()
    assert "Model search v1: Succeeded" in page and 'href="automl/v1/leaderboard.csv"' in page
