"""The operator: kopf handlers that read the cluster, apply desired state and write status."""
