"""The API types accept the examples and give the same defaults as the CRD."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlworkflow.api.v1alpha1 import MLWorkflow, Pattern

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_is_an_example_per_pattern() -> None:
    patterns = {yaml.safe_load(p.read_text())["spec"]["pattern"] for p in EXAMPLES}
    assert patterns == {p.value for p in Pattern}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    workflow = MLWorkflow.model_validate(yaml.safe_load(path.read_text()))
    assert workflow.spec.storage.pvc is not None


def test_round_trip_uses_the_wire_names() -> None:
    workflow = MLWorkflow.model_validate(yaml.safe_load(EXAMPLES[0].read_text()))
    wire = workflow.model_dump(by_alias=True, exclude_none=True)
    assert "crossValidation" in wire["spec"]["training"]
    assert MLWorkflow.model_validate(wire) == workflow


def test_unknown_fields_are_refused() -> None:
    document = yaml.safe_load(EXAMPLES[0].read_text())
    document["spec"]["trainnig"] = {}
    with pytest.raises(ValueError, match="trainnig"):
        MLWorkflow.model_validate(document)
