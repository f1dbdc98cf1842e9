"""A local Kubernetes for tests and developers: a real control plane on 127.0.0.1 (`controlplane`) and a
node whose Pods really run as local processes (`processnode`). No Docker.

Test and developer tooling: not shipped in the operator package.
"""
