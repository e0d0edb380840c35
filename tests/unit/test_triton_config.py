"""config.pbtxt generation: every generated config parses into Triton's ModelConfig protobuf and
says what the signature, the serving block and the target ask for."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from model_operator.api.types import Backend, DType, DynamicBatching, Serving, Target, TensorSpec
from model_operator.triton.config import (
    ConfigError,
    build_model_config,
    effective_backend,
    model_filename,
    parse_model_config,
    read_signature,
)

IMAGE_IN = [TensorSpec(name="input", dtype=DType.float32, shape=[-1, 1, 8, 8])]
IMAGE_OUT = [TensorSpec(name="logits", dtype=DType.float32, shape=[-1, 10])]
# A transformer encoder: int64 ids and mask with dynamic batch and sequence axes.
TEXT_IN = [
    TensorSpec(name="input_ids", dtype=DType.int64, shape=[-1, -1]),
    TensorSpec(name="attention_mask", dtype=DType.int64, shape=[-1, -1]),
]
TEXT_OUT = [TensorSpec(name="last_hidden_state", dtype=DType.float32, shape=[-1, -1, 64])]

GPU_TRT = Serving(gpus=2, gpu_accelerator="tensorrt", instance_count=2, max_batch_size=16,
                  dynamic_batching=DynamicBatching(preferred_batch_sizes=[4, 8, 32], max_queue_delay_microseconds=500))
CPU = Serving(instance_count=3, max_batch_size=8)
NO_BATCH = Serving(max_batch_size=0)
NO_DYNAMIC = Serving(max_batch_size=4, dynamic_batching=DynamicBatching(enabled=False))

CASES = {
    # id: (inputs, outputs, format, serving, target, backend)
    "onnx-cloud-gpu-trt": (IMAGE_IN, IMAGE_OUT, "onnx", GPU_TRT, Target.cloud, None),
    "onnx-cloud-cpu": (IMAGE_IN, IMAGE_OUT, "onnx", CPU, Target.cloud, None),
    "onnx-edge": (IMAGE_IN, IMAGE_OUT, "onnx", CPU, Target.edge, None),
    "onnx-device-no-serving": (IMAGE_IN, IMAGE_OUT, "onnx", None, Target.device, None),
    "onnx-no-batching": (IMAGE_IN, IMAGE_OUT, "onnx", NO_BATCH, Target.edge, None),
    "onnx-batching-without-dynamic": (IMAGE_IN, IMAGE_OUT, "onnx", NO_DYNAMIC, Target.edge, None),
    "torchscript-gpu": (IMAGE_IN, IMAGE_OUT, "torchscript", GPU_TRT, Target.cloud, None),
    "torchscript-edge": (IMAGE_IN, IMAGE_OUT, "torchscript", CPU, Target.edge, None),
    "python-edge": (IMAGE_IN, IMAGE_OUT, "onnx", CPU, Target.edge, Backend.python),
    "python-gpu": (IMAGE_IN, IMAGE_OUT, "onnx", GPU_TRT, Target.cloud, Backend.python),
    "text-onnx-gpu": (TEXT_IN, TEXT_OUT, "onnx", GPU_TRT, Target.cloud, None),
    "text-python-edge": (TEXT_IN, TEXT_OUT, "onnx", CPU, Target.edge, Backend.python),
    "text-torchscript-no-batch": (TEXT_IN, TEXT_OUT, "torchscript", NO_BATCH, Target.cloud, None),
}


def build(case: str, **kw: Any) -> tuple[str, mc.ModelConfig]:
    inputs, outputs, fmt, serving, target, backend = CASES[case]
    text = build_model_config("m", inputs, outputs, artifact_format=fmt, serving=serving, target=target, backend=backend, **kw)
    return text, text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("warmup", [False, True])
def test_every_config_parses_and_round_trips(case: str, warmup: bool) -> None:
    text, cfg = build(case, warmup=warmup)
    assert cfg.name == "m"
    # Printing the parsed message again gives the same text: nothing was dropped or invented.
    assert text_format.MessageToString(cfg) == text
    inputs, outputs, *_ = CASES[case]
    assert [i.name for i in cfg.input] == [t.name for t in inputs]
    assert [o.name for o in cfg.output] == [t.name for t in outputs]
    assert len(cfg.instance_group) == 1
    assert bool(cfg.model_warmup) is warmup


@pytest.mark.parametrize(
    "case, platform, backend",
    [
        ("onnx-edge", "onnxruntime_onnx", "onnxruntime"),
        ("torchscript-edge", "pytorch_libtorch", "pytorch"),
        ("python-edge", "", "python"),
    ],
)
def test_platform_and_backend_follow_the_format(case: str, platform: str, backend: str) -> None:
    _, cfg = build(case)
    assert cfg.platform == platform
    assert cfg.backend == backend


def test_batch_axis_is_left_out_of_dims_when_batching() -> None:
    _, cfg = build("onnx-edge")
    assert cfg.max_batch_size == 8
    assert list(cfg.input[0].dims) == [1, 8, 8]
    assert list(cfg.output[0].dims) == [10]
    assert cfg.input[0].data_type == mc.TYPE_FP32


def test_no_batching_keeps_full_shapes_and_no_dynamic_batcher() -> None:
    _, cfg = build("onnx-no-batching")
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [-1, 1, 8, 8]
    assert not cfg.HasField("dynamic_batching")


def test_batching_without_the_dynamic_batcher() -> None:
    _, cfg = build("onnx-batching-without-dynamic")
    assert cfg.max_batch_size == 4
    assert not cfg.HasField("dynamic_batching")


def test_a_fixed_batch_axis_cannot_be_batched() -> None:
    text = build_model_config(
        "m",
        [TensorSpec(name="x", shape=[1, 3, 224, 224])],
        [TensorSpec(name="y", shape=[1, 1000])],
        artifact_format="onnx",
        serving=Serving(max_batch_size=8),
        target="edge",
    )
    cfg = parse_model_config(text)
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [1, 3, 224, 224]
    assert not cfg.HasField("dynamic_batching")


def test_dynamic_batching_preferred_sizes_and_delay() -> None:
    _, cfg = build("onnx-cloud-gpu-trt")
    # 32 > max_batch_size 16 is dropped: Triton refuses preferred sizes above the maximum.
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500


def test_gpu_instances_and_tensorrt_fp16_on_cloud_gpus() -> None:
    _, cfg = build("onnx-cloud-gpu-trt")
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(group.gpus) == [0, 1]
    assert group.count == 2
    accs = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accs] == ["tensorrt"]
    assert accs[0].parameters["precision_mode"] == "FP16"


@pytest.mark.parametrize("case", ["onnx-cloud-cpu", "onnx-edge", "onnx-device-no-serving", "python-edge", "torchscript-edge"])
def test_cpu_instances_without_gpus(case: str) -> None:
    _, cfg = build(case)
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert not cfg.instance_group[0].gpus
    assert not cfg.HasField("optimization")


@pytest.mark.parametrize("case", ["torchscript-gpu", "python-gpu"])
def test_tensorrt_only_for_the_onnxruntime_backend(case: str) -> None:
    _, cfg = build(case)
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert not cfg.HasField("optimization")


def test_tensorrt_ignored_without_gpus() -> None:
    cfg = parse_model_config(
        build_model_config("m", IMAGE_IN, IMAGE_OUT, artifact_format="onnx",
                           serving=Serving(gpu_accelerator="tensorrt"), target="cloud")
    )
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert not cfg.HasField("optimization")


def test_transformer_signature_int64_dynamic_sequence() -> None:
    _, cfg = build("text-onnx-gpu")
    assert [i.data_type for i in cfg.input] == [mc.TYPE_INT64, mc.TYPE_INT64]
    assert [list(i.dims) for i in cfg.input] == [[-1], [-1]]
    assert list(cfg.output[0].dims) == [-1, 64]
    _, cfg = build("text-torchscript-no-batch")
    assert [list(i.dims) for i in cfg.input] == [[-1, -1], [-1, -1]]


def test_python_backend_names_its_onnx_file() -> None:
    _, cfg = build("python-edge")
    assert cfg.parameters["onnx_file"].string_value == "model.onnx"


@pytest.mark.parametrize(
    ("fmt", "backend", "key"),
    [("onnx", "python", "intra_op_threads"), ("onnx", "onnxruntime", "intra_op_thread_count"), ("torchscript", "pytorch", None)],
)
def test_intra_op_threads_reach_the_backend_that_reads_them(fmt: str, backend: str, key: str | None) -> None:
    text = build_model_config("m", IMAGE_IN, IMAGE_OUT, artifact_format=fmt, serving=Serving(intra_op_threads=3, backend=backend),
                              target=Target.edge)
    params = dict(parse_model_config(text).parameters)
    threads = {k: v.string_value for k, v in params.items() if "thread" in k}
    assert threads == ({key: "3"} if key else {})
    unset = build_model_config("m", IMAGE_IN, IMAGE_OUT, artifact_format=fmt, serving=Serving(backend=backend), target=Target.edge)
    assert not [k for k in parse_model_config(unset).parameters if "thread" in k]


def test_a_batch_only_output_is_reshaped() -> None:
    text = build_model_config(
        "m", IMAGE_IN, [TensorSpec(name="score", shape=[-1])], artifact_format="onnx", serving=None, target="edge"
    )
    cfg = parse_model_config(text)
    assert list(cfg.output[0].dims) == [1]
    assert cfg.output[0].HasField("reshape") and not cfg.output[0].reshape.shape
    inputs, outputs, mbs = read_signature(text)
    assert outputs[0].shape == [-1]


@pytest.mark.parametrize("dtype", list(DType))
def test_every_dtype_maps_to_a_triton_type(dtype: DType) -> None:
    text = build_model_config(
        "m", [TensorSpec(name="x", dtype=dtype, shape=[-1, 4])], IMAGE_OUT, artifact_format="onnx", serving=None, target="edge"
    )
    inputs, _, _ = read_signature(text)
    assert inputs[0].dtype == dtype


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_signature_inverts_the_config(case: str) -> None:
    text, cfg = build(case)
    inputs, outputs, mbs = read_signature(text)
    exp_in, exp_out, *_ = CASES[case]
    assert mbs == cfg.max_batch_size
    assert [t.model_dump() for t in inputs] == [t.model_dump() for t in exp_in]
    assert [t.model_dump() for t in outputs] == [t.model_dump() for t in exp_out]


@pytest.mark.parametrize(
    "fmt, backend",
    [("torchscript", "python"), ("torchscript", "onnxruntime"), ("onnx", "pytorch"), ("pt2", None)],
)
def test_backend_that_cannot_serve_the_format_is_refused(fmt: str, backend: str | None) -> None:
    with pytest.raises(ConfigError):
        build_model_config("m", IMAGE_IN, IMAGE_OUT, artifact_format=fmt, serving=None, target="edge", backend=backend)


def test_serving_backend_is_used_when_no_override() -> None:
    cfg = parse_model_config(
        build_model_config("m", IMAGE_IN, IMAGE_OUT, artifact_format="onnx", serving=Serving(backend="python"), target="edge")
    )
    assert cfg.backend == "python"


def test_duplicate_or_missing_tensors_are_refused() -> None:
    with pytest.raises(ConfigError, match="unique"):
        build_model_config("m", IMAGE_IN, [TensorSpec(name="input", shape=[-1, 2])], artifact_format="onnx", serving=None, target="edge")
    with pytest.raises(ConfigError, match="at least one"):
        build_model_config("m", [], IMAGE_OUT, artifact_format="onnx", serving=None, target="edge")


def test_model_filenames() -> None:
    assert model_filename("onnx") == "model.onnx"
    assert model_filename("torchscript") == "model.pt"
    assert model_filename("onnx", "python") == "model.py"
    assert effective_backend("onnx") == Backend.onnxruntime
    assert effective_backend("torchscript") == Backend.pytorch
