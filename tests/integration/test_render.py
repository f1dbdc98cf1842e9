"""`mlworkflow render`: what the operator would create for each example, accepted by the real API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubelocal.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MLWORKFLOW = str(Path(sys.executable).parent / "mlworkflow")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_rendered_children_apply_cleanly(control_plane: ControlPlane, namespace: str, path: Path) -> None:
    rendered = subprocess.run(
        [MLWORKFLOW, "render", str(path), f"--namespace={namespace}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pattern = yaml.safe_load(path.read_text())["spec"]["pattern"]
    assert rendered.returncode == 0, rendered.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout)]
    expected = {"Job", "CronJob"} if pattern == "Forecast" else {"Job", "Deployment", "Service", "CronJob"}
    assert expected <= set(kinds)
    if pattern == "AutoML":  # a search first (its winner's training is known only after it)
        jobs = [d["metadata"]["name"] for d in yaml.safe_load_all(rendered.stdout) if d["kind"] == "Job"]
        assert jobs == ["breast-cancer-automl-search-v1"]
    if pattern == "Forecast":  # the training Job, an Indexed Job of a run, its CronJob, the drift CronJob
        assert sorted(kinds) == ["CronJob", "CronJob", "Job", "Job"]
    if pattern == "OnlineLearning":  # the learner (and its Lease and rights) beside serving
        assert sorted(kinds) == [
            "CronJob",
            "Deployment",
            "Deployment",
            "Job",
            "Lease",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    applied = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=render-test",
        "-f",
        "-",
        input=rendered.stdout,
    )
    assert applied.stdout.count("(server dry run)") == len(kinds), applied.stdout
