"""The kwok Stage that completes training Pods with a summary (bench/operator_scale): valid YAML whose
termination message is the summary, as the operator reads it."""

from __future__ import annotations

import yaml

from kubelocal.controlplane import TRAINING_POD_LABELS, training_result_stage
from mlworkflow.desired.children import TRAINING
from mlworkflow.runtime import termination


def test_the_stage_selects_training_pods_and_carries_the_summary() -> None:
    summary = {"status": "ok", "version": "v1", "metrics": {"f1_macro": 0.9}, "holdout": {"rows": 30}}
    stage = yaml.safe_load(training_result_stage(summary))

    assert stage["spec"]["selector"]["matchLabels"] == TRAINING_POD_LABELS
    assert TRAINING_POD_LABELS["app.kubernetes.io/component"] == TRAINING
    assert stage["spec"]["weight"] == 1  # chosen over the stock pod-complete (weight 0)
    # The status template, with its Go actions replaced, is YAML holding the summary as the message.
    template = stage["spec"]["next"]["statusTemplate"]
    rendered = "\n".join(
        line for line in template.splitlines() if "{{ range" not in line and "{{ end" not in line
    ).replace("{{ $now := Now }}", "")
    for action in ("{{ $item.image | Quote }}", "{{ $item.name | Quote }}", "{{ $now | Quote }}"):
        rendered = rendered.replace(action, '"x"')
    status = yaml.safe_load(rendered)
    message = status["containerStatuses"][0]["state"]["terminated"]["message"]
    assert termination.read(message) == summary
