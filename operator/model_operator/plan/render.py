"""`model-operator render`: print the children plan() gives a ModelDeployment, without a cluster.

Two states of the same plan: a new ModelDeployment (the optimization Job), then the same one
once its Job has published an artifact (the serving children). The artifact's digest is a
placeholder; the rest is byte for byte what the operator applies, ownerReferences included
(the uid is a placeholder unless the document carries one)."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import yaml

from ..api.hashing import spec_hash
from ..api.types import GROUP, KIND, VERSION
from ..api.validation import SpecError
from ..config import OperatorConfig
from ..resources import autoscaling
from . import SERVICE_MONITOR, Observed, admitted_spec, plan

PLACEHOLDER_SHA256 = "<sha256 from the worker's report>"
PLACEHOLDER_UID = "<uid of the ModelDeployment>"
ALL_OPTIONAL = frozenset({SERVICE_MONITOR, autoscaling.KEDA_API})


def _md(doc: dict[str, Any]) -> dict[str, Any]:
    md = copy.deepcopy(doc)
    meta = md.setdefault("metadata", {})
    meta.setdefault("name", "model")
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", PLACEHOLDER_UID)
    md.setdefault("apiVersion", f"{GROUP}/{VERSION}")
    md.setdefault("kind", KIND)
    md.pop("status", None)
    return md


def render(
    doc: dict[str, Any], config: OperatorConfig, served: frozenset[tuple[str, str]] = ALL_OPTIONAL, sha256: str = PLACEHOLDER_SHA256,
) -> list[dict[str, Any]]:
    """The Job a new MD gets, then the children once its artifact (`sha256`) is published.
    `served`: the optional kinds (ServiceMonitor, KEDA) the cluster is assumed to serve."""
    md = _md(doc)
    meta = md["metadata"]
    spec = admitted_spec(md, config)  # the SpecError plan() would put in the MD's status
    first = plan(md, Observed(served=served), config)
    digest = spec_hash(spec)
    md["status"] = {"artifact": {
        "uri": config.artifact_store.uri_for(meta["namespace"], meta["name"], digest), "sha256": sha256, "specHash": digest,
    }}
    serving = plan(md, Observed(served=served), config)
    return first.objects() + [c.obj for c in serving.apply if c.obj["kind"] != "Job"]


def main(args: argparse.Namespace) -> int:
    config = OperatorConfig.load(args.config)
    with open(args.file, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    try:
        objs = render(doc, config)
    except SpecError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0
