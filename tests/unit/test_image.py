"""The Dockerfile, checked without an OCI builder (none runs here): what it copies exists and is not ignored,
it runs as the user the Pods expect, and the package installed from exactly what it copies is complete."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

from mlworkflow.desired.children import pod_security
from support import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def copied_from_context() -> list[str]:
    sources = []
    for instruction, arguments in instructions():
        words = arguments.split()
        if instruction == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (rules in order, the last match wins)."""
    verdict = False
    for rule in (REPO / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), pattern) or path.startswith(pattern + "/"):
            verdict = not negated
    return verdict


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = copied_from_context()
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert not ignored(source), f"COPY {source}: .dockerignore keeps it out of the build context"


def test_the_image_runs_as_the_numeric_non_root_user_the_pods_expect() -> None:
    final_user = [arguments for instruction, arguments in instructions() if instruction == "USER"][-1]
    uid, _, gid = final_user.partition(":")
    assert uid.isdigit() and uid != "0", "a numeric user: runAsNonRoot can only check a number"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == pod_security()["runAsUser"] == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == pod_security()["runAsGroup"] == values["podSecurityContext"]["runAsGroup"]


def test_the_package_built_from_what_the_image_copies_has_every_module_and_the_command(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    for source in copied_from_context():
        target = context / source
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, target)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            context,
        ],
        check=True,
    )
    (wheel,) = wheels.glob("mlworkflow_operator-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "mlworkflow = mlworkflow.cli:main" in archive.read(entry_points).decode()
    # Every module imports from the installed copy alone: `-S` skips the editable install's path hook, so a
    # module the wheel lacks cannot be found in the source tree instead.
    source_modules = sorted(
        ".".join(p.relative_to(REPO / "operator").with_suffix("").parts)
        for p in (REPO / "operator" / "mlworkflow").rglob("*.py")
    )
    check = (
        "import importlib, sys\n"
        f"for name in {source_modules!r}:\n"
        "    module = importlib.import_module(name.removesuffix('.__init__'))\n"
        f"    assert module.__file__.startswith({str(installed)!r}), (name, module.__file__)\n"
    )
    site_packages = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{installed}:{site_packages}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-S", "-c", check], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
