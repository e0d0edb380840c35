"""Every example ModelDeployment validates against the generated CRD schema and the spec types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from model_operator.api import crd
from model_operator.api import types as t
from model_operator.api.validation import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/**/modeldeployment*.yaml"))


def to_jsonschema(node: dict[str, Any], local: bool = False) -> dict[str, Any]:
    """Kubernetes' OpenAPI dialect -> JSON Schema draft 4 (boolean exclusiveMinimum, x-kubernetes-*).
    With `local`, URI fields take the paths `model-operator local up` reads (the one rule a
    local example may break: the CRD admits only s3://, http(s):// and pvc://)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v, local) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value, local)
        elif key == "pattern" and local and value == t.CLUSTER_URI_PATTERN:
            out[key] = r"^[^\s]+$"
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        # The API server prunes unknown fields; for examples, treat them as errors so typos show.
        out.setdefault("additionalProperties", False)
    return out


SCHEMA = to_jsonschema(crd.openapi_schema())
LOCAL_SCHEMA = to_jsonschema(crd.openapi_schema(), local=True)


def is_local_example(doc: dict[str, Any]) -> bool:
    return not doc["spec"]["model"]["uri"].startswith(("s3://", "http://", "https://", "pvc://"))


def test_there_are_examples() -> None:
    names = {p.parent.name for p in EXAMPLES}
    assert {"edge", "cloud", "device"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_validates(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "serving.model-operator.io/v1alpha1" and doc["kind"] == "ModelDeployment"
    schema = LOCAL_SCHEMA if is_local_example(doc) else SCHEMA
    jsonschema.Draft4Validator(schema).validate({k: v for k, v in doc.items() if k != "metadata"})
    load_spec(doc["spec"])


def test_cluster_schema_refuses_local_paths() -> None:
    doc = yaml.safe_load((ROOT / "examples/digits/modeldeployment.yaml").read_text())
    assert is_local_example(doc)
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.Draft4Validator(SCHEMA).validate({"spec": doc["spec"]})


def test_schema_rejects_a_typo() -> None:
    doc = yaml.safe_load((ROOT / "examples/edge/modeldeployment.yaml").read_text())
    doc["spec"]["serving"]["replicaz"] = 3
    with pytest.raises(jsonschema.ValidationError, match="replicaz"):
        jsonschema.Draft4Validator(SCHEMA).validate({"spec": doc["spec"]})
