"""ModelDeployment spec and status: the one definition the CRD, the worker and the operator share.

Field names are camelCase on the wire (what users write in YAML) and snake_case in Python.
Cross-field rules live twice on purpose: as CEL on the models (enforced by the API server)
and in `validation.py` (enforced by the worker and `local`, which see specs that never
passed through an API server).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "serving.model-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md", "mdep"]


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --- enums -------------------------------------------------------------------------------


class ModelFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    torch_export = "torch-export"


class Task(str, Enum):
    classification = "classification"
    embedding = "embedding"
    regression = "regression"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    int64 = "int64"
    int32 = "int32"
    int8 = "int8"
    uint8 = "uint8"
    bool_ = "bool"


class QuantizationMode(str, Enum):
    none = "none"
    dynamic_int8 = "dynamic-int8"
    static_int8 = "static-int8"
    fp16 = "fp16"
    int4_weight_only = "int4-weight-only"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class FloatType(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Pooling(str, Enum):
    none = "none"
    mean = "mean"
    cls = "cls"


class Objective(str, Enum):
    latency = "latency"
    size = "size"
    balanced = "balanced"


class QuantizationScope(str, Enum):
    full = "full"
    partial = "partial"


class ClippingMethod(str, Enum):
    none = "none"
    threshold = "threshold"
    percentile = "percentile"


class PruningMethod(str, Enum):
    none = "none"
    magnitude = "magnitude"
    gradient = "gradient"
    structured = "structured"


class ConversionFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class Target(str, Enum):
    cloud = "cloud"
    edge = "edge"
    device = "device"


class Backend(str, Enum):
    onnxruntime = "onnxruntime"
    pytorch = "pytorch"
    python = "python"


class GpuAccelerator(str, Enum):
    none = "none"
    tensorrt = "tensorrt"


class ScalingEngine(str, Enum):
    operator = "operator"
    keda = "keda"
    hpa = "hpa"


class ScalingMetricType(str, Enum):
    queue_time = "queueTime"
    inference_rate = "inferenceRate"
    pending_requests = "pendingRequests"
    gpu_utilization = "gpuUtilization"
    cpu_utilization = "cpuUtilization"


class RolloutStrategy(str, Enum):
    rolling = "rolling"
    canary = "canary"


class Phase(str, Enum):
    pending = "Pending"
    optimizing = "Optimizing"
    deploying = "Deploying"
    ready = "Ready"
    degraded = "Degraded"
    failed = "Failed"


# --- model source --------------------------------------------------------------------------

K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
TensorName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")]
# s3://, http(s)://, pvc://claim/path, or a plain/file:// path (the last two only outside a cluster;
# the operator refuses them, the schema can't know where it runs).
def _no_dotdot(value: str) -> str:
    if "/../" in value or value.endswith("/..") or value.startswith("../"):
        raise ValueError("'..' path segments are not allowed")
    return value


# In a cluster (what the CRD admits): s3://, http(s):// or pvc://claim/path. The worker and
# `model-operator local` also take plain paths and file://, so the Python pattern is wider.
CLUSTER_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/|https?://|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/)[^\s]+$"
Uri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(s3://|https?://|pvc://|file://|/|\./|[A-Za-z0-9_])[^\s]*$",
        json_schema_extra={
            "pattern": CLUSTER_URI_PATTERN,
            "x-kubernetes-validations": [
                {"rule": "!self.contains('/../') && !self.endsWith('/..')", "message": "'..' path segments are not allowed"}
            ],
        },
    ),
    AfterValidator(_no_dotdot),
]


class TensorSpec(Model):
    """One named input or output of the model."""

    name: TensorName
    dtype: DType = DType.float32
    shape: list[Annotated[int, Field(ge=-1)]] = Field(
        description="Dimensions including the batch dimension; -1 marks a dynamic axis.",
        min_length=1,
        max_length=8,
    )


class ModelSource(Model):
    """Where the trained model comes from."""

    uri: Uri = Field(description="s3://bucket/key, http(s)://..., or pvc://claim/path to the model file.")
    format: ModelFormat | None = Field(
        default=None, description="onnx, torchscript (.pt), or torch-export (.pt2); guessed from the extension when omitted."
    )
    task: Task = Field(default=Task.classification, description="Chooses the quality metric of the gate.")
    inputs: list[TensorSpec] | None = Field(
        default=None, max_length=32, description="Input signature; required when the format doesn't carry one (TorchScript)."
    )
    outputs: list[TensorSpec] | None = Field(default=None, max_length=32)
    credentials_secret: K8sName | None = Field(
        default=None, description="Secret in the same namespace with S3 or HTTP credentials for the URIs of this spec."
    )


class DataRef(Model):
    """A dataset as an .npz file: one array per model input (by name), optionally `labels` (classification)
    or `targets` (regression/embedding reference outputs)."""

    uri: Uri
    samples: int | None = Field(default=None, ge=1, le=1_000_000, description="Use at most this many samples.")


class Data(Model):
    calibration: DataRef | None = Field(default=None, description="Calibration samples for static int8 and gradient pruning.")
    validation: DataRef | None = Field(default=None, description="Validation samples for the quality gate and the golden probe.")


# --- optimization --------------------------------------------------------------------------


class SensitiveLayers(Model):
    auto: bool = Field(default=False, description="Find the layers whose quantization hurts quality most and keep them in float.")
    count: int = Field(default=2, ge=1, le=64, description="How many layers the automatic search keeps in float.")
    names: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=256, description="Layer (node or module) names to keep in float."
    )
    dtype: FloatType | None = Field(
        default=None,
        description="Float type the kept layers store their weights in: float32 (default) or float16 (half the bytes; computed in float32 on CPU).",
    )


class Quantization(Model):
    mode: QuantizationMode = QuantizationMode.none
    scope: QuantizationScope = QuantizationScope.full
    per_channel: bool = Field(default=True, description="Per-channel weight scales (else per-tensor).")
    sensitive_layers: SensitiveLayers = Field(default_factory=SensitiveLayers)
    op_types: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=64, description="Quantize only these operator types (e.g. MatMul, Conv)."
    )
    calibration_method: CalibrationMethod | None = Field(
        default=None, description="static-int8 activation ranges: minmax (default), entropy or percentile (ONNX Runtime's calibrators)."
    )
    reduce_range: bool | None = Field(
        default=None, description="7-bit weights for int8 (avoids overflow on CPUs without VNNI); default false."
    )


class Clipping(Model):
    method: ClippingMethod = ClippingMethod.none
    threshold: float | None = Field(default=None, gt=0, description="Clip weights to [-threshold, threshold].")
    percentile: float | None = Field(default=None, gt=50, le=100, description="Clip each weight tensor at this |w| percentile.")


class Pruning(Model):
    method: PruningMethod = PruningMethod.none
    sparsity: float = Field(default=0.5, ge=0.0, le=0.95, description="Fraction of weights (or channels) to remove.")


class Recipe(Model):
    """One candidate of a search: overrides of the base optimization."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    quantization: Quantization | None = None
    clipping: Clipping | None = None
    pruning: Pruning | None = None
    graph_optimization_level: Annotated[str, Field(pattern=r"^(disable|basic|extended|all)$")] | None = None


class Search(Model):
    enabled: bool = False
    candidates: list[Recipe] | None = Field(
        default=None, max_length=32, description="Recipes to try; a built-in set when omitted."
    )
    max_candidates: int = Field(default=8, ge=1, le=32)
    latency_batch_size: int = Field(default=1, ge=1, le=1024)


class QualityGate(Model):
    max_top1_drop: float = Field(default=0.01, ge=0, le=1, description="Largest allowed top-1 accuracy drop (0.01 = 1 point).")
    min_cosine: float = Field(default=0.99, ge=-1, le=1, description="Smallest allowed mean cosine similarity of outputs.")
    max_abs_error: float | None = Field(default=None, gt=0, description="Largest allowed absolute output error.")
    min_sample_cosine: float | None = Field(
        default=None, ge=-1, le=1, description="Smallest allowed cosine similarity of any one sample (embedding, regression)."
    )
    pooling: Pooling | None = Field(
        default=None,
        description="Embedding tasks with a token-level output [batch, sequence, hidden]: compare mean- or cls-pooled embeddings (default none: the whole output).",
    )
    mask_input: TensorName | None = Field(
        default=None,
        description="Embedding tasks: the model input holding the attention mask; padding tokens are left out of the comparison and of mean pooling.",
    )


class Optimization(Model):
    quantization: Quantization = Field(default_factory=Quantization)
    clipping: Clipping = Field(default_factory=Clipping)
    pruning: Pruning = Field(default_factory=Pruning)
    search: Search = Field(default_factory=Search)
    quality_gate: QualityGate = Field(default_factory=QualityGate)
    time_budget_seconds: int = Field(default=1800, ge=10, le=86400, description="Deadline of the optimization Job.")
    objective: Objective | None = Field(
        default=None,
        description="What the search optimizes among candidates that pass the gate: latency, size or balanced; default size for edge and device targets, latency for cloud.",
    )


class DynamicAxes(Model):
    batch: bool = True
    sequence: bool = Field(default=False, description="Mark axis 1 of integer inputs dynamic (token sequences).")


class Conversion(Model):
    format: ConversionFormat = ConversionFormat.onnx
    opset: int = Field(default=17, ge=11, le=23)
    dynamic_axes: DynamicAxes = Field(default_factory=DynamicAxes)


# --- serving ------------------------------------------------------------------------------

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$", max_length=32)]


class Resources(Model):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class DynamicBatching(Model):
    enabled: bool = True
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=list, max_length=16)
    max_queue_delay_microseconds: int = Field(default=100, ge=0, le=10_000_000)


class Serving(Model):
    node_pool: K8sName | None = Field(default=None, description="Node pool from the operator's configuration.")
    replicas: int = Field(default=1, ge=0, le=1000)
    resources: Resources = Field(default_factory=Resources)
    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per replica (cloud target).")
    triton_image: Annotated[str, Field(max_length=512)] | None = Field(default=None, description="Overrides the operator's Triton image.")
    backend: Backend | None = Field(default=None, description="Triton backend; follows the artifact format when omitted.")
    max_batch_size: int = Field(default=8, ge=0, le=65536)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    instance_count: int = Field(default=1, ge=1, le=64)
    gpu_accelerator: GpuAccelerator = Field(default=GpuAccelerator.none, description="ONNX Runtime TensorRT execution accelerator (GPU pools).")


class ScalingMetric(Model):
    type: ScalingMetricType
    target: float = Field(gt=0, description="Per-replica target: ms for queueTime, req/s for inferenceRate, count, or percent.")


class ScalingRules(Model):
    stabilization_seconds: int = Field(ge=0, le=3600)
    max_percent: int = Field(default=100, ge=1, le=1000, description="Largest change per period, percent of current replicas.")
    max_pods: int = Field(default=4, ge=1, le=1000, description="Largest change per period, in pods.")
    period_seconds: int = Field(default=15, ge=1, le=1800)


def _scale_up_default() -> ScalingRules:
    return ScalingRules(stabilization_seconds=0)


def _scale_down_default() -> ScalingRules:
    return ScalingRules(stabilization_seconds=300)


class Autoscaling(Model):
    enabled: bool = True
    engine: ScalingEngine = ScalingEngine.operator
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=4, ge=1, le=1000)
    metrics: list[ScalingMetric] = Field(
        default_factory=lambda: [ScalingMetric(type=ScalingMetricType.queue_time, target=5.0)], max_length=8
    )
    tolerance: float = Field(default=0.1, ge=0, le=1)
    scale_up: ScalingRules = Field(default_factory=_scale_up_default)
    scale_down: ScalingRules = Field(default_factory=_scale_down_default)
    poll_seconds: int = Field(default=5, ge=1, le=600)


class Canary(Model):
    weight: int = Field(default=10, ge=1, le=99, description="Share of replicas (percent) that serve the new artifact.")
    analysis_seconds: int = Field(default=120, ge=10, le=86400)
    max_error_ratio: float = Field(default=0.01, ge=0, le=1)
    max_latency_ratio: float = Field(default=1.5, ge=1, le=100, description="Canary p99 / stable p99 above this fails.")


class Rollout(Model):
    strategy: RolloutStrategy = RolloutStrategy.rolling
    canary: Canary = Field(default_factory=Canary)
    auto_rollback: bool = True


class GoldenProbe(Model):
    enabled: bool = True
    interval_seconds: int = Field(default=60, ge=5, le=86400)
    samples: int = Field(default=16, ge=1, le=1024)


class Monitoring(Model):
    service_monitor: bool = True
    golden_probe: GoldenProbe = Field(default_factory=GoldenProbe)
    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    p99_latency_ms: float | None = Field(default=None, gt=0)


_SPEC_RULES = [
    _cel(
        "!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas",
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
        ".autoscaling.minReplicas",
    ),
    _cel(
        "!has(self.optimization) || !has(self.optimization.quantization) || !has(self.optimization.quantization.mode)"
        " || self.optimization.quantization.mode != 'static-int8' || (has(self.data) && has(self.data.calibration))",
        "static-int8 quantization needs calibration data: set data.calibration",
        ".optimization.quantization.mode",
    ),
    _cel(
        "!has(self.optimization) || !has(self.optimization.pruning) || !has(self.optimization.pruning.method)"
        " || self.optimization.pruning.method != 'gradient' || (has(self.data) && has(self.data.calibration))",
        "gradient pruning needs calibration data: set data.calibration",
        ".optimization.pruning.method",
    ),
    _cel(
        "!has(self.target) || self.target != 'device' || (!has(self.serving) && !has(self.autoscaling))",
        "target: device serves nothing: remove the serving and autoscaling blocks",
        ".target",
    ),
    _cel(
        "!has(self.optimization) || !has(self.optimization.clipping) || !has(self.optimization.clipping.method)"
        " || self.optimization.clipping.method != 'threshold' || has(self.optimization.clipping.threshold)",
        "threshold clipping needs optimization.clipping.threshold",
        ".optimization.clipping.threshold",
    ),
    _cel(
        "!has(self.optimization) || !has(self.optimization.clipping) || !has(self.optimization.clipping.method)"
        " || self.optimization.clipping.method != 'percentile' || has(self.optimization.clipping.percentile)",
        "percentile clipping needs optimization.clipping.percentile",
        ".optimization.clipping.percentile",
    ),
    _cel(
        "!has(self.serving) || !has(self.serving.gpus) || self.serving.gpus == 0 || !has(self.target) || self.target == 'cloud'",
        "serving.gpus is only for target: cloud",
        ".serving.gpus",
    ),
]


class ModelDeploymentSpec(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    model: ModelSource
    target: Target = Target.cloud
    data: Data = Field(default_factory=Data)
    optimization: Optimization = Field(default_factory=Optimization)
    conversion: Conversion = Field(default_factory=Conversion)
    serving: Serving | None = None
    autoscaling: Autoscaling | None = None
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)


# --- status -------------------------------------------------------------------------------


class Condition(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    type: str
    status: Annotated[str, Field(pattern=r"^(True|False|Unknown)$")]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Candidate(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str
    passed: bool
    latency_ms: float | None = None
    size_bytes: int | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    reason: str = ""
    latency_spread: float | None = Field(default=None, description="Relative range of the latency over interleaved rounds.")
    pareto: bool | None = Field(default=None, description="No other passed candidate is both faster and smaller.")


class ArtifactStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    uri: str | None = None
    sha256: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    size: str | None = Field(default=None, description="Human-readable artifact size, for kubectl get.")
    original_size_bytes: int | None = None
    spec_hash: str | None = None


class OptimizationStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    recipe: str | None = None
    job: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    quality_before: dict[str, float] = Field(default_factory=dict)
    quality_after: dict[str, float] = Field(default_factory=dict)
    latency_ms_before: float | None = Field(default=None, description="The original model in its own framework (PyTorch eager / TorchScript, or ONNX Runtime for an ONNX source).")
    latency_ms_after: float | None = None
    latency_ms_onnx_fp32: float | None = Field(default=None, description="The unquantized conversion in ONNX Runtime.")
    speedup: float | None = Field(default=None, description="latencyMsBefore / latencyMsAfter.")
    speedup_vs_onnx_fp32: float | None = Field(default=None, description="latencyMsOnnxFp32 / latencyMsAfter.")
    latency_batch_size: int | None = Field(default=None, description="Batch size of every latency here.")
    threads: int | None = Field(default=None, description="Threads of every runtime measured (intra-op).")
    latency_spread: float | None = Field(default=None, description="Relative range of the chosen candidate's latency over interleaved rounds.")
    quality_samples: int | None = Field(default=None, description="Held-out validation samples qualityBefore/qualityAfter are measured on (not those that chose the recipe).")
    objective: str | None = None


class Endpoint(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    http: str | None = None
    grpc: str | None = None
    metrics: str | None = None
    model_name: str | None = None


class ScalingDecision(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    time: str
    unix_time: float | None = None
    from_replicas: int
    to_replicas: int
    reason: str


class RecommendationRecord(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    time: float = Field(description="Unix time of the recommendation.")
    replicas: int


class ScalingStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    engine: str | None = None
    desired: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str = ""
    last_scale_time: str | None = None
    history: list[ScalingDecision] = Field(default_factory=list, max_length=20)
    recommendations: list[RecommendationRecord] = Field(
        default_factory=list, max_length=400, description="Recent recommendations, for the stabilization windows."
    )
    last_poll: float | None = None


class TrackStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    uri: str
    sha256: str
    revision: str = ""
    started: float | None = Field(default=None, description="Unix time the analysis of this track began.")


class RolloutStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    stable: TrackStatus | None = Field(default=None, description="The last good artifact, serving every stable replica.")
    canary: TrackStatus | None = Field(default=None, description="The artifact under canary analysis.")
    watch: TrackStatus | None = Field(default=None, description="A rolling update under post-rollout analysis.")
    failed_revisions: list[str] = Field(default_factory=list, max_length=50)
    analysis: str | None = None


class QualityStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    time: float | None = Field(default=None, description="Unix time of the last golden-set probe.")
    passed: bool | None = None
    agreement: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    samples: int | None = None
    revision: str | None = None
    reason: str = ""


class HealthStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    healthy: bool | None = Field(default=None, description="From Prometheus: error ratio and p99 against spec.monitoring; null without traffic.")
    reason: str = ""
    message: str = ""
    request_rate: float | None = None
    error_ratio: float | None = None
    p99_latency_ms: float | None = None


class ModelDeploymentStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    phase: Phase | None = None
    ready: str | None = Field(default=None, description="readyReplicas/replicas, for kubectl get.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    artifact: ArtifactStatus | None = None
    optimization: OptimizationStatus | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None
    endpoint: Endpoint | None = None
    scaling: ScalingStatus | None = None
    rollout: RolloutStatus | None = None
    quality: QualityStatus | None = None
    health: HealthStatus | None = None


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Parse a spec dict as written in YAML (camelCase). Raises pydantic.ValidationError."""
    return ModelDeploymentSpec.model_validate(spec)


def dump_spec(spec: ModelDeploymentSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
