"""The CRD is generated from api/types.py; these tests keep the committed file honest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from model_operator.api import crd
from model_operator.api import types as t

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.serving.model-operator.io.yaml"


def test_committed_crd_matches_generated() -> None:
    assert CRD_FILE.read_text() == crd.render_crd_yaml(), (
        "crds/ drifted from api/types.py: run `model-operator crd -o crds/modeldeployments.serving.model-operator.io.yaml`"
    )


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    schema = crd.openapi_schema()
    for path, node in _walk(schema):
        for bad in ("$ref", "anyOf", "allOf", "oneOf", "title", "$defs"):
            assert bad not in node, f"{path} has {bad}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and additionalProperties"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node


def test_crd_names_subresources_and_columns() -> None:
    doc = crd.build_crd()
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["md", "mdep"] and names["kind"] == "ModelDeployment"
    version = doc["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.serving.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Format", "Size", "Age"} <= set(cols)
    assert all(c.get("description") for c in cols.values())


def test_enums_defaults_bounds_and_cel_are_in_schema() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    quant = spec["properties"]["optimization"]["properties"]["quantization"]["properties"]["mode"]
    assert quant["enum"] == ["none", "dynamic-int8", "static-int8", "fp16", "int4-weight-only", "int8-weight-only"]
    assert spec["properties"]["model"]["properties"]["task"]["enum"][-1] == "generation"
    gen = spec["properties"]["generation"]["properties"]
    assert gen["maxNewTokens"]["default"] == 256 and gen["maxContextTokens"]["minimum"] == 16
    assert gen["sampling"]["properties"]["temperature"]["maximum"] == 2
    assert quant["default"] == "none"
    pruning = spec["properties"]["optimization"]["properties"]["pruning"]["properties"]["sparsity"]
    assert pruning["minimum"] == 0 and pruning["maximum"] == 0.95
    assert spec["required"] == ["model"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("minReplicas <= self.autoscaling.maxReplicas" in r for r in rules)
    assert any("static-int8" in r for r in rules)
    assert any("'device'" in r for r in rules)
    conditions = crd.openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"


@pytest.mark.parametrize("field", ["maxLength"])
def test_enum_strings_are_bounded_for_cel_cost(field: str) -> None:
    for path, node in _walk(crd.openapi_schema()):
        if "enum" in node:
            assert field in node, path


def test_short_names_constant() -> None:
    assert t.SHORT_NAMES == ["md", "mdep"]
    assert yaml.safe_load(CRD_FILE.read_text())["metadata"]["name"] == "modeldeployments.serving.model-operator.io"


def test_every_crd_field_has_a_description() -> None:
    """`kubectl explain` shows each field's pydantic docstring or description; none is blank."""
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if path and not node.get("description"):
            missing.append(path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            for name, sub in (node["items"].get("properties") or {}).items():
                walk(sub, f"{path}[].{name}")

    walk(schema, "")
    assert missing == [".metadata", ".metadata.name"]  # the API server allows no description there
