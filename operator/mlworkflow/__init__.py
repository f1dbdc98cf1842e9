"""mlworkflow-operator: four ML workflow patterns as one Kubernetes resource, MLWorkflow."""

__version__ = "0.1.0"
