"""`model-operator render`: print the objects the operator would create for a ModelDeployment,
without a cluster. The artifact digest is a placeholder until a Job has produced one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from ..api.hashing import spec_hash
from ..api.types import ScalingEngine, Target
from ..api.validation import SpecError, load_spec
from ..config import OperatorConfig
from . import autoscaling, job, serving


def render(doc: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    meta = doc.get("metadata") or {}
    name, namespace = meta.get("name", "model"), meta.get("namespace", "default")
    spec = load_spec(doc.get("spec") or {})
    objs: list[dict[str, Any]] = [job.build_worker_job(name, namespace, spec, config)]
    if spec.target == Target.device:
        return objs
    digest = spec_hash(spec)
    artifact = serving.ArtifactRef(
        uri=config.artifact_store.uri_for(namespace, name, digest), sha256="<sha256 from the worker's report>", revision=digest
    )
    replicas = spec.serving.replicas if spec.serving else 1
    objs.append(serving.build_deployment(name, namespace, spec, config, artifact, replicas=replicas))
    objs.append(serving.build_service(name, namespace))
    pdb = serving.build_pdb(name, namespace, replicas)
    if pdb:
        objs.append(pdb)
    if spec.autoscaling and spec.autoscaling.enabled:
        if spec.autoscaling.engine == ScalingEngine.keda:
            objs.append(autoscaling.build_keda_scaled_object(name, namespace, spec.autoscaling, config.prometheus_url))
        elif spec.autoscaling.engine == ScalingEngine.hpa:
            objs.append(autoscaling.build_hpa(name, namespace, spec.autoscaling))
    return objs


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
