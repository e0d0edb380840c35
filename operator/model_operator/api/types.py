"""ModelDeployment spec and status: the one definition the CRD, the worker and the operator share.

Field names are camelCase on the wire (what users write in YAML) and snake_case in Python.
Cross-field rules are written once in `rules.py`: each as CEL (the CRD carries it, the API server
enforces it) and as a Python predicate (for the worker and `local`, which see specs that never
passed through an API server).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .rules import cel_validations

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


class ApiModel(BaseModel):
    """Base of the spec and status types (a pydantic model of the API, not an ML model). A field's
    docstring is its description in the CRD (`kubectl explain`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True)


# --- enums -------------------------------------------------------------------------------


class ModelFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    torch_export = "torch-export"
    hf = "hf"


class Task(str, Enum):
    classification = "classification"
    embedding = "embedding"
    regression = "regression"
    generation = "generation"


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
    int8_weight_only = "int8-weight-only"


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class FloatType(str, Enum):
    float32 = "float32"
    float16 = "float16"


class KeptType(str, Enum):
    """What the sensitive layers of a partial quantization keep: float32 or float16 weights, or
    (int4-weight-only only) 8-bit block-quantized weights."""

    float32 = "float32"
    float16 = "float16"
    int8 = "int8"


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
    # generation models (triton/generation_model.py's metrics)
    time_to_first_token = "timeToFirstToken"
    inter_token_latency = "interTokenLatency"
    tokens_per_second = "tokensPerSecond"
    requests_in_flight = "requestsInFlight"


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


class TensorSpec(ApiModel):
    """One named input or output of the model."""

    name: TensorName
    """Tensor name as the model knows it."""
    dtype: DType = DType.float32
    """Element type."""
    shape: list[Annotated[int, Field(ge=-1)]] = Field(
        description="Dimensions including the batch dimension; -1 marks a dynamic axis.",
        min_length=1,
        max_length=8,
    )


class ModelSource(ApiModel):
    """Where the trained model comes from."""

    uri: Uri = Field(description="s3://bucket/key, http(s)://..., or pvc://claim/path to the model file.")
    format: ModelFormat | None = Field(
        default=None,
        description=(
            "onnx, torchscript (.pt), torch-export (.pt2), or hf (a Hugging Face decoder checkpoint directory: config.json,"
            " safetensors weights and, unless generation.tokenizerUri names another, the tokenizer files); guessed from the extension when omitted."
        ),
    )
    task: Task = Field(
        default=Task.classification,
        description="Chooses the quality metric of the gate; generation (decoder language models) needs format: hf and gates on perplexity.",
    )
    inputs: list[TensorSpec] | None = Field(
        default=None, max_length=32, description="Input signature; required when the format doesn't carry one (TorchScript)."
    )
    outputs: list[TensorSpec] | None = Field(default=None, max_length=32)
    """Output signature; required when the format doesn't carry one (TorchScript)."""
    credentials_secret: K8sName | None = Field(
        default=None, description="Secret in the same namespace with S3 or HTTP credentials for the URIs of this spec."
    )


class DataRef(ApiModel):
    """A dataset as an .npz file: one array per model input (by name), optionally `labels` (classification)
    or `targets` (regression/embedding reference outputs). For model.task: generation, a UTF-8 text file of
    held-out text: the gate's perplexity is measured on it and its paragraphs' beginnings are the greedy prompts."""

    uri: Uri
    """s3://, http(s):// or pvc://claim/path of the .npz file."""
    samples: int | None = Field(default=None, ge=1, le=1_000_000, description="Use at most this many samples.")


class Data(ApiModel):
    calibration: DataRef | None = Field(default=None, description="Calibration samples for static int8 and gradient pruning.")
    validation: DataRef | None = Field(default=None, description="Validation samples for the quality gate and the golden probe.")


# --- optimization --------------------------------------------------------------------------


class SensitiveLayers(ApiModel):
    auto: bool = Field(default=False, description="Find the layers whose quantization hurts quality most and keep them in float (at 8 bits with dtype: int8).")
    count: int = Field(default=2, ge=1, le=64, description="How many layers the automatic search keeps in float (at 8 bits with dtype: int8).")
    names: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=256, description="Layer (node or module) names to keep in float."
    )
    dtype: KeptType | None = Field(
        default=None,
        description="Type the kept layers store their weights in: float32 (default), float16 (half the bytes; computed in float32 on CPU), "
                    "or int8 (int4-weight-only only: the kept MatMuls get 8-bit block-quantized weights instead of 4-bit; embeddings stay 4-bit).",
    )


class Quantization(ApiModel):
    mode: QuantizationMode = QuantizationMode.none
    """none, dynamic-int8, static-int8 (needs data.calibration), fp16, int4-weight-only, or int8-weight-only (generation models:
    8-bit block-quantized MatMul weights)."""
    scope: QuantizationScope = QuantizationScope.full
    """full, or partial: the sensitive layers stay in float (needs a mode other than none)."""
    per_channel: bool = Field(default=True, description="Per-channel weight scales (else per-tensor).")
    sensitive_layers: SensitiveLayers = Field(default_factory=SensitiveLayers)
    """Layers kept in float with scope: partial."""
    op_types: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None, max_length=64, description="Quantize only these operator types (e.g. MatMul, Conv)."
    )
    calibration_method: CalibrationMethod | None = Field(
        default=None, description="static-int8 activation ranges: minmax (default), entropy or percentile (ONNX Runtime's calibrators)."
    )
    reduce_range: bool | None = Field(
        default=None, description="7-bit weights for int8 (avoids overflow on CPUs without VNNI); default false."
    )
    int4_op_types: list[Annotated[str, Field(pattern=r"^(MatMul|Gemm|Gather)$")]] | None = Field(
        default=None, max_length=3,
        description="dynamic-int8 and static-int8: store the weights of these op types (MatMul, Gemm, Gather) as int4 blocks instead "
                    "(weight-only: MatMulNBits, GatherBlockQuantized; a Gemm becomes MatMul + Add first), e.g. [Gemm] for a CNN's classifier.",
    )


class Clipping(ApiModel):
    method: ClippingMethod = ClippingMethod.none
    """none, threshold (needs threshold) or percentile (needs percentile)."""
    threshold: float | None = Field(default=None, gt=0, description="Clip weights to [-threshold, threshold].")
    percentile: float | None = Field(default=None, gt=50, le=100, description="Clip each weight tensor at this |w| percentile.")


class Pruning(ApiModel):
    method: PruningMethod = PruningMethod.none
    """none, magnitude, gradient (needs data.calibration) or structured (into ONNX: whole channels, FFN rows and attention heads removed, the graph shrinks)."""
    sparsity: float = Field(default=0.5, ge=0.0, le=0.95, description="Fraction to remove: of weights; structured: of channels and of heads.")


class Recipe(ApiModel):
    """One candidate of a search: overrides of the base optimization."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """Candidate name, shown in status.optimization.candidates."""
    quantization: Quantization | None = None
    """Replaces optimization.quantization for this candidate."""
    clipping: Clipping | None = None
    """Replaces optimization.clipping for this candidate."""
    pruning: Pruning | None = None
    """Replaces optimization.pruning for this candidate."""
    graph_optimization_level: Annotated[str, Field(pattern=r"^(disable|basic|extended|all)$")] | None = None
    """ONNX Runtime graph optimization level baked into the artifact: disable, basic, extended or all."""


class Search(ApiModel):
    enabled: bool = False
    """Try several recipes and keep the fastest that passes the quality gate."""
    candidates: list[Recipe] | None = Field(
        default=None, max_length=32, description="Recipes to try; a built-in set when omitted."
    )
    max_candidates: int = Field(default=8, ge=1, le=32)
    """Try at most this many candidates."""
    latency_batch_size: int = Field(default=1, ge=1, le=1024)
    """Batch size latency is measured at when candidates are compared."""


class QualityGate(ApiModel):
    max_top1_drop: float = Field(default=0.01, ge=0, le=1, description="Largest allowed top-1 accuracy drop (0.01 = 1 point).")
    min_cosine: float = Field(default=0.99, ge=-1, le=1, description="Smallest allowed mean cosine similarity of outputs.")
    max_abs_error: float | None = Field(default=None, gt=0, description="Largest allowed absolute output error.")
    min_sample_cosine: float | None = Field(
        default=None, ge=-1, le=1, description="Smallest allowed cosine similarity of any one sample (embedding, regression)."
    )
    pooling: Pooling | None = Field(
        default=None,
        description=(
            "Embedding tasks with a token-level output [batch, sequence, hidden]: compare mean- or cls-pooled embeddings"
            " (default none: the whole output)."
        ),
    )
    mask_input: TensorName | None = Field(
        default=None,
        description="Embedding tasks: the model input holding the attention mask; padding tokens are left out of the comparison and of mean pooling.",
    )
    max_perplexity_ratio: float = Field(
        default=1.05, ge=1, le=100, description="Generation: largest allowed perplexity on data.validation's held-out text, as a ratio to the original's."
    )
    min_greedy_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description=(
            "Generation: smallest allowed share of the original's greedy tokens (greedyTokens per held-out prompt) that the optimized"
            " model also picks top-1 at the same step, given the same prefix."
        ),
    )
    greedy_tokens: int = Field(default=16, ge=1, le=1024, description="Generation: tokens greedily decoded per held-out prompt for minGreedyAgreement.")


class Optimization(ApiModel):
    quantization: Quantization = Field(default_factory=Quantization)
    """Weight/activation quantization."""
    clipping: Clipping = Field(default_factory=Clipping)
    """Weight clipping before quantization."""
    pruning: Pruning = Field(default_factory=Pruning)
    """Weight pruning (sparsity)."""
    search: Search = Field(default_factory=Search)
    """Search over candidate recipes."""
    quality_gate: QualityGate = Field(default_factory=QualityGate)
    """What the optimized model must keep compared with the original on data.validation."""
    time_budget_seconds: int = Field(default=1800, ge=10, le=86400, description="Deadline of the optimization Job.")
    objective: Objective | None = Field(
        default=None,
        description=(
            "What the search optimizes among candidates that pass the gate: latency, size or balanced;"
            " default size for edge and device targets, latency for cloud."
        ),
    )


class DynamicAxes(ApiModel):
    batch: bool = True
    """Export the first axis as dynamic (batching)."""
    sequence: bool = Field(default=False, description="Mark axis 1 of integer inputs dynamic (token sequences).")


class Conversion(ApiModel):
    format: ConversionFormat = ConversionFormat.onnx
    """Format of the artifact: onnx or torchscript."""
    opset: int = Field(default=17, ge=11, le=23)
    """ONNX opset of the export."""
    dynamic_axes: DynamicAxes = Field(default_factory=DynamicAxes)
    """Which axes stay dynamic in the exported model."""


# --- generation (decoder language models) ------------------------------------------------


class Sampling(ApiModel):
    """Sampling defaults of a generation model: what a request gets for every parameter it leaves out."""

    temperature: float = Field(default=0.7, ge=0, le=2, description="Softmax temperature; 0 decodes greedily.")
    top_k: int = Field(default=0, ge=0, le=1000, description="Sample among the k most likely tokens (0: all).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Sample among the most likely tokens whose probabilities sum to p (1: all).")
    repetition_penalty: float = Field(default=1.0, ge=1, le=10, description="Penalty on tokens already in the sequence (1: none).")


class Generation(ApiModel):
    """What a decoder language model (model.task: generation) needs besides its weights."""

    tokenizer_uri: Uri | None = Field(
        default=None,
        description=(
            "Directory (s3://, http(s):// or pvc:// prefix) with the tokenizer files (tokenizer.json, tokenizer_config.json);"
            " default: alongside the model, in model.uri."
        ),
    )
    max_context_tokens: int | None = Field(
        default=None, ge=16, le=1_048_576, description="Longest sequence, prompt plus generated tokens; default: the model config's max_position_embeddings."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=65536, description="Most tokens one request may generate; must be < maxContextTokens.")
    eos_token: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="End-of-sequence token text (e.g. <|endoftext|>); default: the model config's eos_token_id."
    )
    eos_token_id: int | None = Field(default=None, ge=0, le=10_000_000, description="End-of-sequence token id; overrides eosToken.")
    sampling: Sampling = Field(default_factory=Sampling)
    """Defaults for the sampling parameters a request leaves out."""


# --- serving ------------------------------------------------------------------------------

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$", max_length=32)]


class Resources(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Resource requests of the Triton container (cpu, memory, ...)."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Resource limits of the Triton container."""


class DynamicBatching(ApiModel):
    enabled: bool = True
    """Let Triton combine requests into batches."""
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=list, max_length=16)
    """Batch sizes Triton prefers to form; each must be <= serving.maxBatchSize."""
    max_queue_delay_microseconds: int = Field(default=100, ge=0, le=10_000_000)
    """How long a request may wait for a batch to fill."""


class Serving(ApiModel):
    node_pool: K8sName | None = Field(default=None, description="Node pool from the operator's configuration.")
    replicas: int = Field(default=1, ge=0, le=1000)
    """Triton replicas (the autoscaler changes it when autoscaling is on)."""
    resources: Resources = Field(default_factory=Resources)
    """Requests and limits of the Triton container; the node pool's defaults fill the rest."""
    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per replica (cloud target).")
    triton_image: Annotated[str, Field(max_length=512)] | None = Field(default=None, description="Overrides the operator's Triton image.")
    backend: Backend | None = Field(default=None, description="Triton backend; follows the artifact format when omitted.")
    max_batch_size: int = Field(default=8, ge=0, le=65536)
    """Largest batch Triton sends to the model (0: no batching)."""
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    """Triton's dynamic batcher."""
    instance_count: int = Field(default=1, ge=1, le=64)
    """Model instances per replica (parallel executions)."""
    gpu_accelerator: GpuAccelerator = Field(default=GpuAccelerator.none, description="ONNX Runtime TensorRT execution accelerator (GPU pools).")
    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    """ONNX Runtime intra-op threads per model instance (onnxruntime and python backends); ONNX Runtime's own choice when omitted."""
    autotune: bool = Field(
        default=False,
        description="Before the rollout, measure a bounded sweep of Triton configs (max batch size, queue delay, instance count, "
        "intra-op threads) on the serving pool and serve the best; the sweep's table goes to status.autotune.",
    )


class ScalingMetric(ApiModel):
    type: ScalingMetricType
    """queueTime, inferenceRate, pendingRequests, gpuUtilization, cpuUtilization; for generation models timeToFirstToken,
    interTokenLatency, tokensPerSecond or requestsInFlight."""
    target: float = Field(
        gt=0,
        description=(
            "Per-replica target: ms for queueTime, timeToFirstToken and interTokenLatency (means over the window), req/s for"
            " inferenceRate, generated tokens/s for tokensPerSecond, a count for pendingRequests and requestsInFlight, or percent."
        ),
    )


class ScalingRules(ApiModel):
    stabilization_seconds: int = Field(ge=0, le=3600)
    """Window of past recommendations considered before changing replicas."""
    max_percent: int = Field(default=100, ge=1, le=1000, description="Largest change per period, percent of current replicas.")
    max_pods: int = Field(default=4, ge=1, le=1000, description="Largest change per period, in pods.")
    period_seconds: int = Field(default=15, ge=1, le=1800)
    """Period the maxPercent/maxPods limits apply to."""


def _scale_up_default() -> ScalingRules:
    return ScalingRules(stabilization_seconds=0)


def _scale_down_default() -> ScalingRules:
    return ScalingRules(stabilization_seconds=300)


class Autoscaling(ApiModel):
    enabled: bool = True
    """Scale replicas on load."""
    engine: ScalingEngine = ScalingEngine.operator
    """operator (the built-in scaler), hpa (a HorizontalPodAutoscaler) or keda (a KEDA ScaledObject)."""
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; must be <= maxReplicas."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Most replicas."""
    metrics: list[ScalingMetric] = Field(
        default_factory=lambda: [ScalingMetric(type=ScalingMetricType.queue_time, target=5.0)], max_length=8
    )
    """Per-replica targets; the metric asking for the most replicas wins."""
    tolerance: float = Field(default=0.1, ge=0, le=1)
    """Relative deviation from a target that causes no change (0.1 = 10 %)."""
    scale_up: ScalingRules = Field(default_factory=_scale_up_default)
    """How fast replicas are added."""
    scale_down: ScalingRules = Field(default_factory=_scale_down_default)
    """How fast replicas are removed."""
    poll_seconds: int = Field(default=5, ge=1, le=600)
    """How often the built-in scaler reads Prometheus."""


class Canary(ApiModel):
    weight: int = Field(default=10, ge=1, le=99, description="Share of replicas (percent) that serve the new artifact.")
    analysis_seconds: int = Field(default=120, ge=10, le=86400)
    """How long the new artifact is analysed before it is promoted."""
    max_error_ratio: float = Field(default=0.01, ge=0, le=1)
    """Failed / all requests of the canary above this rolls it back."""
    max_latency_ratio: float = Field(default=1.5, ge=1, le=100, description="Canary p99 / stable p99 above this fails.")
    min_requests: int = Field(
        default=10, ge=0, le=1_000_000,
        description="Requests the canary must answer during its analysis before it can be promoted; with fewer it is held "
                    "(reason NoCanaryTraffic), neither promoted nor rolled back. 0 promotes a canary no request reached.")


class Rollout(ApiModel):
    strategy: RolloutStrategy = RolloutStrategy.rolling
    """rolling (replace, then watch) or canary (a share of replicas first)."""
    canary: Canary = Field(default_factory=Canary)
    """The canary's share, analysis window and thresholds."""
    auto_rollback: bool = True
    """Return to the last good artifact when an analysis fails."""


class GoldenProbe(ApiModel):
    enabled: bool = True
    """Send the artifact's golden samples to the serving pods periodically and compare the answers with the report."""
    interval_seconds: int = Field(default=60, ge=5, le=86400)
    """Seconds between probes."""
    samples: int = Field(default=16, ge=1, le=1024)
    """Golden samples per probe."""


class Monitoring(ApiModel):
    service_monitor: bool = True
    """Create a ServiceMonitor for Triton's metrics when the cluster serves the kind."""
    golden_probe: GoldenProbe = Field(default_factory=GoldenProbe)
    """Periodic check that live answers match the optimization report."""
    max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    """Failed / all requests above this marks the deployment Degraded (status.health)."""
    p99_latency_ms: float | None = Field(default=None, gt=0)
    """p99 request latency objective in ms, from Triton's latency summaries; above it is Degraded."""


# Cross-field rules: api/rules.py (CEL here, the same rules in Python there).
_SPEC_RULES: Any = cel_validations()  # JSON for json_schema_extra


class ModelDeploymentSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    model: ModelSource
    """The trained model and its signature."""
    generation: Generation | None = None
    """Tokenizer, lengths, end-of-sequence token and sampling defaults of a decoder language model (model.task: generation)."""
    target: Target = Target.cloud
    """cloud (Triton on a node pool), edge (Triton on edge nodes) or device (publish the artifact only)."""
    data: Data = Field(default_factory=Data)
    """Calibration and validation datasets."""
    optimization: Optimization = Field(default_factory=Optimization)
    """How the model is optimized and the quality it must keep."""
    conversion: Conversion = Field(default_factory=Conversion)
    """The served artifact's format."""
    serving: Serving | None = None
    """How Triton serves the artifact (cloud and edge targets)."""
    autoscaling: Autoscaling | None = None
    """Replicas from load (cloud and edge targets)."""
    rollout: Rollout = Field(default_factory=Rollout)
    """How a new artifact replaces the serving one."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    """Health objectives and checks of the serving deployment."""


# --- status -------------------------------------------------------------------------------


class StatusModel(ApiModel):
    """Base of the status types: fields the operator adds before the schema names them are kept."""

    model_config = ConfigDict(extra="allow")


class Condition(StatusModel):
    type: str
    """Condition type, e.g. Available, Progressing, Degraded."""
    status: Annotated[str, Field(pattern=r"^(True|False|Unknown)$")]
    """True, False or Unknown."""
    reason: str = ""
    """One-word reason, CamelCase."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When status last changed."""
    observed_generation: int | None = None
    """The spec generation this condition is about."""


class Candidate(StatusModel):
    name: str
    """Candidate recipe name."""
    passed: bool
    """Whether it passed the quality gate."""
    latency_ms: float | None = None
    """Measured latency in ms."""
    size_bytes: int | None = None
    """Artifact size in bytes."""
    quality: dict[str, float] = Field(default_factory=dict)
    """Quality metrics measured on the validation data."""
    reason: str = ""
    """Why it was rejected or failed."""
    latency_spread: float | None = Field(default=None, description="Relative range of the latency over interleaved rounds.")
    pareto: bool | None = Field(default=None, description="No other passed candidate is both faster and smaller.")
    transfer_bytes: int | None = Field(default=None, description="Gzip-compressed size of its model file (edge and device targets).")


class ArtifactStatus(StatusModel):
    uri: str | None = None
    """Where the artifact is."""
    sha256: str | None = None
    """Digest of the artifact's files."""
    format: str | None = None
    """onnx or torchscript."""
    size_bytes: int | None = None
    """Size of the optimized model."""
    size: str | None = Field(default=None, description="Human-readable artifact size, for kubectl get.")
    original_size_bytes: int | None = None
    """Size of the original model."""
    transfer_bytes: int | None = Field(
        default=None, description="Edge and device targets: size of the package as it travels, a gzip-compressed tar."
    )
    spec_hash: str | None = None
    """Hash of the spec fields that made this artifact."""


class OptimizationProgress(StatusModel):
    """Where the running worker is (read from the worker's /progress while its Job runs)."""

    summary: str = Field(default="", description="One line for kubectl get: step k/n, candidate k/n, elapsed.")
    step: str | None = Field(default=None, description="The worker's current step.")
    step_number: int | None = Field(default=None, description="Its number, 1-based.")
    steps: int | None = Field(default=None, description="How many steps a run has.")
    candidate: int | None = Field(default=None, description="The candidate recipe being tried, 1-based.")
    candidates: int | None = Field(default=None, description="How many candidates this run tries.")
    elapsed_seconds: int | None = Field(default=None, description="Seconds since the worker started.")
    latest: list[Candidate] = Field(default_factory=list, description="The latest candidates' results, newest last.")


class MeasuredOn(StatusModel):
    node: str | None = None
    """The node the optimization Job ran on."""
    pool: str | None = None
    """Its node pool: the serving pool, or the target's benchmark pool (operator config); absent when the Job ran on the worker's own placement."""
    arch: str | None = None
    """The machine architecture the worker saw (x86_64, aarch64)."""


class OptimizationStatus(StatusModel):
    recipe: str | None = None
    """The recipe that was chosen."""
    job: str | None = None
    """The optimization Job."""
    progress: OptimizationProgress | None = Field(default=None, description="While the optimization Job runs: where it is.")
    candidates: list[Candidate] = Field(default_factory=list)
    """Every candidate tried, with its result (also after a gate rejection)."""
    quality_before: dict[str, float] = Field(default_factory=dict)
    """Quality of the original model."""
    quality_after: dict[str, float] = Field(default_factory=dict)
    """Quality of the chosen artifact."""
    latency_ms_before: float | None = Field(
        default=None,
        description="Latency of the original model in ms, in its own framework (PyTorch eager / TorchScript, or ONNX Runtime for an ONNX source).",
    )
    latency_ms_after: float | None = None
    """Latency of the chosen artifact in ms."""
    latency_ms_onnx_fp32: float | None = Field(default=None, description="Latency of the unquantized conversion in ONNX Runtime, in ms.")
    speedup: float | None = Field(default=None, description="latencyMsBefore / latencyMsAfter.")
    speedup_vs_onnx_fp32: float | None = Field(default=None, description="latencyMsOnnxFp32 / latencyMsAfter.")
    latency_batch_size: int | None = Field(default=None, description="Batch size of every latency here.")
    threads: int | None = Field(default=None, description="Threads of every runtime measured (intra-op).")
    latency_spread: float | None = Field(default=None, description="Relative range of the chosen candidate's latency over interleaved rounds.")
    quality_samples: int | None = Field(
        default=None, description="Held-out validation samples qualityBefore/qualityAfter are measured on (not those that chose the recipe)."
    )
    objective: str | None = None
    """The objective the recipe was chosen for: latency, size or balanced."""
    measured_on: MeasuredOn | None = Field(default=None, description="Where the latencies were measured.")


class Endpoint(StatusModel):
    http: str | None = None
    """HTTP inference endpoint (or the artifact's URI for target: device)."""
    grpc: str | None = None
    """gRPC inference endpoint."""
    metrics: str | None = None
    """Triton's metrics endpoint."""
    model_name: str | None = None
    """Model name in Triton's repository."""
    openai: str | None = None
    """OpenAI-compatible API base URL (/v1/completions, /v1/chat/completions) of a generation model."""


class ScalingDecision(StatusModel):
    time: str
    """When (RFC 3339)."""
    unix_time: float | None = None
    """When (seconds since the epoch)."""
    from_replicas: int
    """Replicas before."""
    to_replicas: int
    """Replicas after."""
    reason: str
    """Which metric asked for it and why."""


class RecommendationRecord(StatusModel):
    time: float = Field(description="Unix time of the recommendation.")
    replicas: int
    """Replicas recommended at that time."""


class ScalingStatus(StatusModel):
    engine: str | None = None
    """operator, hpa or keda."""
    desired: int | None = None
    """Replicas the engine wants now."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """The latest value of each autoscaling metric."""
    reason: str = ""
    """Why the engine wants that many."""
    last_scale_time: str | None = None
    """When replicas last changed."""
    history: list[ScalingDecision] = Field(default_factory=list, max_length=20)
    """Recent scaling decisions, newest last."""
    last_poll: float | None = None
    """When the metrics shown were read (the built-in scaler writes them on a decision, on a changed
    stabilization window, and at least every 10 minutes)."""


class TrackStatus(StatusModel):
    uri: str
    """Artifact URI of this track."""
    sha256: str
    """Artifact digest of this track."""
    revision: str = ""
    """Spec hash of the artifact."""
    started: float | None = Field(default=None, description="Unix time the analysis of this track began.")


class RolloutStatus(StatusModel):
    stable: TrackStatus | None = Field(default=None, description="The last good artifact, serving every stable replica.")
    canary: TrackStatus | None = Field(default=None, description="The artifact under canary analysis.")
    watch: TrackStatus | None = Field(default=None, description="A rolling update under post-rollout analysis.")
    failed_revisions: list[str] = Field(default_factory=list, max_length=50)
    """Artifacts rolled back; not retried until the spec changes them."""
    analysis: str | None = None
    """The running analysis and where it stands."""


class QualityStatus(StatusModel):
    time: float | None = Field(
        default=None,
        description="Unix time of the golden probe the verdict was read from (the oldest replica's last probe); "
        "rewritten when the verdict changes, else at most hourly.",
    )
    passed: bool | None = None
    """Whether every replica's last golden probe met the quality gate; null: unknown (no readings, a probe that cannot compare, or stale)."""
    agreement: float | None = None
    """Share of golden samples whose live answer matched (the worst replica's)."""
    cosine: float | None = None
    """Mean cosine similarity of live and reported outputs (the worst replica's)."""
    max_abs_error: float | None = None
    """Largest absolute difference of live and reported outputs."""
    samples: int | None = None
    """Samples sent."""
    revision: str | None = None
    """Artifact revision probed."""
    reason: str = ""
    """Why it passed or failed."""


class HealthStatus(StatusModel):
    healthy: bool | None = Field(default=None, description="From Prometheus: error ratio and p99 against spec.monitoring; null without traffic.")
    reason: str = ""
    """WithinObjectives, NoTraffic, ErrorRatioHigh, LatencyAboveObjective or MetricsUnavailable."""
    message: str = ""
    """The measured values against the objectives."""
    request_rate: float | None = None
    """Requests per second over the query window."""
    error_ratio: float | None = None
    """Failed / all requests (Triton's and the Python backend's failures)."""
    p99_latency_ms: float | None = None
    """p99 request latency in ms (Triton's latency summaries; the slowest pod)."""


class AccessStatus(StatusModel):
    grants: list[str] = Field(default_factory=list, max_length=64)
    """The grants the access Secret holds (`get-<revision>`, `put-<revision>`); never the URLs."""
    expires_at: int | None = None
    """When its URLs expire (Unix seconds); the operator signs them again when 50% to 30% of their lifetime is left."""


class AutotuneRow(StatusModel):
    name: str
    """The config's name: b<max batch>-d<queue delay>us-i<instances>-t<threads>, or batch1-... for the baseline."""
    max_batch_size: int = Field(description="Largest batch Triton forms.")
    dynamic_batching: bool = Field(description="Whether the dynamic batcher is on (off: the batch-1 baseline).")
    max_queue_delay_microseconds: int = Field(description="How long a request may wait for a batch to fill.")
    instance_count: int = Field(description="Model instances.")
    intra_op_threads: int = Field(description="ONNX Runtime intra-op threads per instance.")
    throughput: float = Field(description="Answered requests per second.")
    p50_ms: float = Field(description="Median round trip seen by the load generator, ms.")
    p95_ms: float = Field(description="95th percentile round trip, ms.")
    p99_ms: float = Field(description="99th percentile round trip, ms.")
    errors: int = Field(default=0, description="Requests answered with an error.")
    requests: int = Field(default=0, description="Requests answered in the counted window.")


class AutotuneStatus(StatusModel):
    state: str
    """Running, Succeeded or Failed."""
    job: str | None = None
    """The sweep Job."""
    artifact_sha256: str | None = None
    """The artifact the sweep measured (a new artifact runs a new sweep)."""
    serving_hash: str | None = None
    """Hash of the serving block the sweep started from (a change runs a new sweep)."""
    chosen: str | None = None
    """The config served: the highest throughput whose p95 is no worse than the batch-1 row's (ties to the simplest)."""
    cores: int | None = None
    """Cores the sweep shared out between instances (the serving container's CPU)."""
    concurrency: int | None = None
    """Closed-loop clients of each measurement."""
    table: list[AutotuneRow] = Field(default_factory=list, max_length=64)
    """The measured configs, baseline first."""
    message: str | None = None
    """Why the sweep failed (the untuned config is served then)."""


class ModelDeploymentStatus(StatusModel):
    phase: Phase | None = None
    """Pending, Optimizing, Deploying, Ready, Degraded or Failed."""
    ready: str | None = Field(default=None, description="readyReplicas/replicas, for kubectl get.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """OptimizationSucceeded, ArtifactReady, Available, Progressing, Degraded and others."""
    observed_generation: int | None = None
    """The spec generation the status is about."""
    artifact: ArtifactStatus | None = None
    """The artifact the current spec produced (or the previous one while a new one is made)."""
    optimization: OptimizationStatus | None = None
    """The optimization's result, or its progress while the Job runs."""
    replicas: int | None = None
    """Triton replicas wanted."""
    ready_replicas: int | None = None
    """Triton replicas ready."""
    selector: str | None = None
    """Label selector of the Triton pods (scale subresource)."""
    endpoint: Endpoint | None = None
    """Where to send inference requests."""
    scaling: ScalingStatus | None = None
    """The autoscaler's state."""
    scaling_window: list[RecommendationRecord] = Field(
        default_factory=list, max_length=2002,
        description="The built-in scaler's stabilization window, kept for an operator restart: only the recommendations "
                    "that can still decide it (one entry while the recommendation holds steady).",
    )
    rollout: RolloutStatus | None = None
    """Which artifact each track serves, and the analysis."""
    quality: QualityStatus | None = None
    """The last golden probe's result."""
    health: HealthStatus | None = None
    """Serving health against the monitoring objectives."""
    autotune: AutotuneStatus | None = None
    """The serving autotune's sweep (serving.autotune) and the config it chose."""
    access: AccessStatus | None = None
    """The S3 store's access Secret as last written: kept here so a restarted operator doesn't sign it again."""


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Parse a spec dict as written in YAML (camelCase). Raises pydantic.ValidationError."""
    return ModelDeploymentSpec.model_validate(spec)


def dump_spec(spec: ModelDeploymentSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
