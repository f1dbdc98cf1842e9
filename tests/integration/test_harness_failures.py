"""The harness fails fast and says which component failed, with its log tail, and leaves nothing running."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubelocal.controlplane import ComponentError, ControlPlane, build_binaries


def plane_with_broken_apiserver(tmp_path: Path, script: str, timeout: float) -> ControlPlane:
    """The real binaries, but kube-apiserver replaced by `script`."""
    real = build_binaries()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in real.iterdir():
        (bin_dir / binary.name).symlink_to(binary)
    (bin_dir / "kube-apiserver").unlink()
    (bin_dir / "kube-apiserver").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "kube-apiserver").chmod(0o755)
    return ControlPlane(bin_dir, workdir=tmp_path / "work", start_timeout=timeout)


def test_a_component_that_exits_is_named_with_its_log(tmp_path: Path) -> None:
    plane = plane_with_broken_apiserver(tmp_path, 'echo "unknown flag: --frobnicate" >&2; exit 3', 30)
    with pytest.raises(ComponentError, match="kube-apiserver exited with code 3") as failed:
        plane.start()
    assert "unknown flag: --frobnicate" in str(failed.value)
    started = [c.name for c in plane.components]
    assert started == ["etcd", "kube-apiserver"]
    assert all(p.poll() is not None for p in plane.processes()), "a failed start stops what it started"


def test_a_component_that_hangs_times_out_with_a_clear_error(tmp_path: Path) -> None:
    plane = plane_with_broken_apiserver(tmp_path, 'echo "waiting forever"; exec sleep 600', 2)
    with pytest.raises(ComponentError, match=r"kube-apiserver was not healthy after 2s") as failed:
        plane.start()
    assert "waiting forever" in str(failed.value)
    assert all(p.poll() is not None for p in plane.processes()), "the hung process was not stopped"
