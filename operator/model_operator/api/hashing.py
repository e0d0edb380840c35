"""Which spec fields make an artifact, and the hash that names it.

The hash names the optimization Job and the artifact path, so a restart or a resumed handler
finds the Job it already started instead of starting a second one; a change to serving-only
fields (replicas, batching, resources, pool) leaves it unchanged and re-optimizes nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .types import ModelDeploymentSpec

HASH_LENGTH = 10


def artifact_fields(spec: ModelDeploymentSpec) -> dict[str, Any]:
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    backend = spec.serving.backend.value if spec.serving and spec.serving.backend else None
    fields: dict[str, Any] = {k: dumped.get(k) for k in ("model", "target", "data", "optimization", "conversion")}
    # The backend decides the repository layout (a python-backend model carries model.py).
    fields["backend"] = backend
    # The time budget bounds the Job, it doesn't change what the Job produces.
    fields["optimization"].pop("timeBudgetSeconds", None)
    return fields


def spec_hash(spec: ModelDeploymentSpec) -> str:
    canonical = json.dumps(artifact_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]
