"""The CRD is generated from the API types; the committed copies must be exactly the generator's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlworkflow.api import crd
from mlworkflow.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
COMMITTED = [
    REPO / "crds" / "mlworkflow.io_mlworkflows.yaml",
    REPO / "charts" / "mlworkflow-operator" / "crds" / "mlworkflow.io_mlworkflows.yaml",
]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crd_is_the_generators_output(path: Path) -> None:
    assert path.read_text() == crd.render_yaml(), f"{path} is stale: run `make crds` and commit the result"


def test_cli_prints_the_same_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["crds"]) == 0
    assert capsys.readouterr().out == crd.render_yaml()


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, child in node.items():
            found.extend(_walk(child, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found.extend(_walk(child, f"{path}[{i}]"))
    return found


def test_schema_is_structural() -> None:
    schema = crd.openapi_schema()
    for path, node in _walk(schema):
        for keyword in ("$ref", "anyOf", "allOf", "oneOf", "title", "$defs", "const"):
            assert keyword not in node, f"{keyword} at {path}"
        if "properties" in node:
            assert node.get("type") == "object", f"object without type at {path}"
            assert "additionalProperties" not in node, f"properties beside additionalProperties at {path}"


def test_printer_columns_and_names() -> None:
    document = yaml.safe_load(crd.render_yaml())
    version = document["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Pattern",
        "Phase",
        "Model",
        "Drift",
        "Ready",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
    assert document["spec"]["names"]["shortNames"] == ["mlw"]
    assert document["spec"]["names"]["categories"] == ["ml"]


def test_sections_default_to_empty_objects_so_the_server_fills_their_defaults() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]["properties"]
    for section in ("training", "monitoring", "promotion", "runtime"):
        assert spec[section]["default"] == {}
    for section in ("batch", "online", "automl", "serving", "model"):
        assert "default" not in spec[section], f"{section} belongs to some patterns only"
    assert spec["monitoring"]["properties"]["driftThreshold"]["default"] == 0.3
