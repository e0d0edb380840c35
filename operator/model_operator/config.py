"""The operator's configuration: one class, read from a YAML file and MODEL_OPERATOR_* env vars.

Nested values come from env with a double underscore, e.g.
MODEL_OPERATOR_ARTIFACT_STORE__CLAIM=models. Helm renders the file; env overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .resources.images import PATTERN_HELP, invalid_patterns, repository


class NodePool(BaseModel):
    """Where a ModelDeployment's Triton pods run when `spec.serving.nodePool` names this pool."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    gpu_product: str | None = Field(default=None, description="Value of nvidia.com/gpu.product to require.")
    resources: dict[str, dict[str, str]] = Field(default_factory=dict, description="Default requests/limits.")
    arch: str | None = Field(default=None, description="kubernetes.io/arch of the pool (edge pools: arm64).")


class ArtifactStore(BaseModel):
    """Where optimized artifacts live. `pvc`: a claim mounted by the worker and the Triton init
    container; `s3`: a bucket/prefix. Only the operator holds the S3 keys (its own environment,
    from `secret` in its own namespace); tenants' pods get short-lived pre-signed URLs for their
    own ModelDeployment's artifacts, one object and one verb each (docs/threat-model.md)."""

    type: Literal["pvc", "s3"] = "pvc"
    claim: str = "model-artifacts"
    bucket: str | None = None
    prefix: str = "model-operator"
    endpoint: str | None = None
    region: str = "us-east-1"
    secret: str | None = Field(
        default=None, description="Secret in the operator's namespace with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                                  "(the chart passes it to the operator pod only; no tenant pod gets it).")
    url_ttl_seconds: int = Field(
        default=3600, ge=120, le=7 * 24 * 3600,
        description="Lifetime of a pre-signed URL; the operator re-signs when 50% to 30% of it is left "
                    "(each object at its own point, so URLs signed together are not all re-signed together).")

    def uri_for(self, namespace: str, name: str, spec_hash: str) -> str:
        return f"{self.root_uri(namespace, name)}/{spec_hash}"

    def root_uri(self, namespace: str, name: str) -> str:
        if self.type == "s3":
            return f"s3://{self.bucket}/{self.prefix.strip('/')}/{namespace}/{name}"
        return f"pvc://{self.claim}/{namespace}/{name}"


class SecurityContext(BaseModel):
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODEL_OPERATOR_", env_nested_delimiter="__", extra="ignore")

    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty means all.")
    shard: str = Field(
        default="", max_length=63, pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$",
        description="The fleet share this operator runs: the ModelDeployments labelled model-operator.io/shard=<shard>; "
                    "empty: those without the label. The API server filters every watch by it.",
    )
    worker_image: str = "model-operator-worker:0.1.0"
    triton_image: str = "tritonserver:24.10-py3"
    allowed_triton_images: list[str] = Field(
        default_factory=list,
        description="Images a ModelDeployment's serving.tritonImage may name: REPO (any tag or digest), REPO:TAG, "
                    "REPO@DIGEST or PREFIX/* (resources/images.py). Empty: only the repository of triton_image.",
    )
    image_pull_policy: str = "IfNotPresent"
    artifact_store: ArtifactStore = Field(default_factory=ArtifactStore)
    node_pools: dict[str, NodePool] = Field(default_factory=dict)
    default_node_pool: dict[str, str] = Field(
        default_factory=lambda: {"cloud": "gpu", "edge": "edge"}, description="Pool per target when the spec names none."
    )
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_timeout_seconds: float = 5.0
    prometheus_window: str = Field(default="1m", description="Range of rate() in scaling and health queries.")
    reconcile_interval_seconds: float = Field(
        default=5.0, gt=0, description="How soon a ModelDeployment with work under way that no watch event announces "
                                       "(a Job's progress, an analysis window, a refused apply) is reconciled again "
                                       "($MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS overrides it).")
    resync_seconds: float = Field(
        default=60.0, gt=0, description="How often a settled ModelDeployment (Ready or Failed) is reconciled without "
                                        "any change ($MODEL_OPERATOR_RESYNC_SECONDS overrides it).")
    reconcile_workers: int = Field(default=4, ge=1, le=64, description="Reconciles running at once.")
    progress_deadline_seconds: int = Field(
        default=600, ge=10, description="A Triton rollout that makes no progress this long is rolled back (Deployment progressDeadlineSeconds)."
    )
    drain_seconds: int = Field(
        default=5, ge=0, le=120,
        description="A Triton pod being removed keeps serving this long before it is signalled (a preStop sleep), so "
                    "kube-proxy and clients drop it from the Service first; 0 turns the pause off.",
    )
    health_interval_seconds: float = Field(default=30.0, description="How often serving health is read from Prometheus.")
    job_backoff_limit: int = 2
    job_ttl_seconds: int = 3600
    worker_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    )
    autotune_seconds_per_config: float = Field(
        default=5.0, gt=0, le=600, description="Counted seconds of load per config in the serving autotune's sweep (plus 1 s warm-up)."
    )
    autotune_max_configs: int = Field(
        default=16, ge=2, le=64, description="Most Triton configs one autotune sweep measures, the batch-1 baseline included."
    )
    worker_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Where worker Jobs run that have no target pool (worker_placement: worker, device targets, cleanup).")
    worker_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    worker_placement: Literal["target-pool", "worker"] = Field(
        default="target-pool",
        description="target-pool: the optimization Job runs on the pool that will serve the model (its selectors, tolerations, "
                    "arch, one GPU when it serves on GPUs), so the search measures latency where the artifact will run; "
                    "worker: on worker_node_selector.",
    )
    benchmark_pools: dict[str, str] = Field(
        default_factory=dict,
        description="Target (cloud, edge, device) -> node pool the optimization Job runs on instead of the serving pool: "
                    "a pool of the same hardware kept for benchmarks, or the pool a device target's devices match.",
    )
    worker_service_account: str | None = None
    triton_service_account: str | None = None
    triton_args: list[str] = Field(default_factory=list, description="Extra tritonserver arguments.")
    security: SecurityContext = Field(default_factory=SecurityContext)
    metrics_port: int = 9090
    api_request_connections: int = Field(
        default=16, ge=1,
        description="Connections to the API server for requests, on top of one per watch stream; bounds memory in large fleets.",
    )
    finalizer_timeout_seconds: int = 600

    @field_validator("allowed_triton_images")
    @classmethod
    def _patterns_parse(cls, value: list[str]) -> list[str]:
        bad = invalid_patterns(value)
        if bad:
            raise ValueError(f"allowed_triton_images: {', '.join(map(repr, bad))} can never match an image; use {PATTERN_HELP}")
        return value

    @model_validator(mode="after")
    def _benchmark_pools_exist(self) -> "OperatorConfig":
        unknown = {target: pool for target, pool in self.benchmark_pools.items() if pool not in self.node_pools}
        if unknown:
            known = ", ".join(sorted(self.node_pools)) or "none configured"
            raise ValueError(f"benchmark_pools: {unknown} names no node pool (known: {known})")
        targets = set(self.benchmark_pools) - {"cloud", "edge", "device"}
        if targets:
            raise ValueError(f"benchmark_pools: {sorted(targets)} are not targets (cloud, edge, device)")
        return self

    def triton_image_patterns(self) -> list[str]:
        """The allow-list in force: the configured patterns, else the Triton image's repository
        (the operator's own image always runs: it is the platform's choice, not a tenant's)."""
        return list(self.allowed_triton_images) or [repository(self.triton_image)]

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[no-untyped-def]  # pydantic-settings' hook, typed by its base class
        # Env wins over the file (passed as init kwargs), so a Helm-rendered file can be overridden per pod.
        return (env_settings, init_settings)

    @classmethod
    def load(cls, path: str | Path | None = None) -> OperatorConfig:
        data: dict[str, Any] = {}
        if path:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        return cls(**data)
