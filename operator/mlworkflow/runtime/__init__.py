"""The programs that run inside the Pods (and under the local runner): train, serve, and later predict,
drift, learn and trial. They know the API types and the artifact store, never the cluster."""
