"""Generate the ModelDeployment CustomResourceDefinition from the pydantic types.

Pydantic emits JSON Schema (2020-12); Kubernetes wants a *structural* OpenAPI v3 schema: no
$ref, no anyOf-with-null, boolean exclusiveMinimum, no `additionalProperties: true` beside
properties. This module converts one into the other, so the CRD never drifts from api/types.py.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from . import types as t

_DROP_KEYS = {"title", "examples", "const"}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        inner = _resolve(schema["allOf"][0], defs)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        inner.update(rest)
        return inner
    any_of = schema.get("anyOf")
    if any_of:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) == 1:
            inner = _resolve(non_null[0], defs)
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            if rest.get("default", "missing") is None:
                rest.pop("default")
            inner.update(rest)
            return inner
        raise ValueError(f"cannot express anyOf with several non-null branches in a structural schema: {schema}")
    return schema


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "properties":
            out["properties"] = {name: to_structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is False:
                continue
            else:
                out["additionalProperties"] = to_structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        else:
            out[key] = value
    if "enum" in out and out.get("type") is None:
        out["type"] = "string"
    if "enum" in out and out["type"] == "string" and "maxLength" not in out:
        # CEL cost estimation treats unbounded strings as huge; enums are short.
        out["maxLength"] = max(len(v) for v in out["enum"])
    return out


def _schema_of(model: type[t.ApiModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return to_structural(raw, defs)


def openapi_schema() -> dict[str, Any]:
    spec = _schema_of(t.ModelDeploymentSpec)
    status = _schema_of(t.ModelDeploymentStatus)
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{t.API_VERSION}."},
            "kind": {"type": "string", "description": "ModelDeployment."},
            # The API server allows nothing but name (and generateName) here, not even a description.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63, "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
            },
            "spec": {**spec, "description": "The model, how to optimize it and how to serve it."},
            "status": {**status, "description": "What the operator observed and decided."},
        },
    }


def _column(name: str, path: str, typ: str, description: str, priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": typ, "jsonPath": path, "description": description}
    if priority:
        col["priority"] = priority
    return col


PRINTER_COLUMNS = [
    _column("Phase", ".status.phase", "string", "Lifecycle phase: Pending, Optimizing, Deploying, Ready, Degraded, Failed."),
    _column("Ready", ".status.ready", "string", "Ready Triton replicas / replicas."),
    _column("Format", ".status.artifact.format", "string", "Format of the served artifact."),
    _column("Size", ".status.artifact.size", "string", "Size of the optimized artifact."),
    _column("Progress", ".status.optimization.progress.summary", "string", "Where the running optimization Job is."),
    _column("Age", ".metadata.creationTimestamp", "date", "Time since creation."),
    _column("Target", ".spec.target", "string", "cloud, edge or device.", priority=1),
    _column("Recipe", ".status.optimization.recipe", "string", "Optimization recipe that passed the quality gate.", priority=1),
    _column("Endpoint", ".status.endpoint.http", "string", "HTTP inference endpoint.", priority=1),
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{t.PLURAL}.{t.GROUP}"},
        "spec": {
            "group": t.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": t.KIND,
                "listKind": f"{t.KIND}List",
                "plural": t.PLURAL,
                "singular": t.SINGULAR,
                "shortNames": list(t.SHORT_NAMES),
                "categories": ["all", "ml"],
            },
            "versions": [
                {
                    "name": t.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.serving.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `model-operator crd` from operator/model_operator/api/types.py. Do not edit.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
