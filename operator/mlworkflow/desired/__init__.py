"""Desired state: pure functions from an MLWorkflow to what should exist. No I/O, no cluster."""
