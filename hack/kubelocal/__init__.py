"""A local Kubernetes for tests and developers: a real control plane on 127.0.0.1, no Docker.

Test and developer tooling: not shipped in the operator package.
"""

from kubelocal.controlplane import ComponentError, ControlPlane, build_binaries

__all__ = ["ComponentError", "ControlPlane", "build_binaries"]
