"""The embedded local runner: an MLWorkflow on this machine, with the operator's planner and runtimes."""
