"""Property-based tests of the config.pbtxt generator: for any signature and serving block the
spec admits, the answer is a config Triton's own ModelConfig parser reads back, with the same
signature, or a ConfigError that says which choice cannot be served, never another exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from tritonclient.grpc import model_config_pb2 as mc

from model_operator.api.types import Backend, DType, DynamicBatching, GpuAccelerator, Serving, Target, TensorSpec
from model_operator.triton.config import ConfigError, build_model_config, parse_model_config, read_signature

names = hs.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,20}", fullmatch=True)
shapes = hs.lists(hs.integers(-1, 64), min_size=1, max_size=5)
tensors = hs.builds(TensorSpec, name=names, dtype=hs.sampled_from(list(DType)), shape=shapes)
servings = hs.builds(
    Serving,
    max_batch_size=hs.integers(0, 65536),
    dynamic_batching=hs.builds(DynamicBatching, enabled=hs.booleans(),
                               preferred_batch_sizes=hs.lists(hs.integers(1, 65536), max_size=4),
                               max_queue_delay_microseconds=hs.integers(0, 10_000_000)),
    instance_count=hs.integers(1, 64),
    gpus=hs.integers(0, 8),
    backend=hs.one_of(hs.none(), hs.sampled_from(list(Backend))),
    gpu_accelerator=hs.sampled_from(list(GpuAccelerator)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=hs.lists(tensors, min_size=0, max_size=4),
    outputs=hs.lists(tensors, min_size=0, max_size=3),
    fmt=hs.sampled_from(["onnx", "torchscript"]),
    serving=hs.one_of(hs.none(), servings),
    target=hs.sampled_from(list(Target)),
    warmup=hs.booleans(),
)
def test_any_signature_and_serving_block_gives_a_config_triton_reads(
    inputs: list[TensorSpec], outputs: list[TensorSpec], fmt: str, serving: Serving | None, target: Target, warmup: bool,
) -> None:
    try:
        text = build_model_config("m", inputs, outputs, artifact_format=fmt, serving=serving, target=target, warmup=warmup)
    except ConfigError as exc:
        message = str(exc)
        assert message and any(word in message for word in ("backend", "signature", "names")), message
        return
    cfg = parse_model_config(text)
    got_in, got_out, max_batch = read_signature(text)
    assert [t.name for t in got_in] == [t.name for t in inputs] and [t.name for t in got_out] == [t.name for t in outputs]
    assert [t.dtype for t in got_in] == [DType(t.dtype) for t in inputs]
    s = serving or Serving()
    batching = max_batch > 0
    assert max_batch in (0, s.max_batch_size)
    assert batching == (s.max_batch_size > 0 and all(t.shape[0] == -1 for t in (*inputs, *outputs)))
    # The signature reads back as given (with batching, the batch axis comes back as -1).
    assert [t.shape for t in got_in] == [t.shape for t in inputs]
    assert [t.shape for t in got_out] == [t.shape for t in outputs]
    assert all(b <= max_batch for b in cfg.dynamic_batching.preferred_batch_size)
    (group,) = cfg.instance_group
    assert group.count == s.instance_count
    gpu = target == Target.cloud and s.gpus > 0
    assert group.kind == (mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU)
    assert list(group.gpus) == (list(range(s.gpus)) if gpu else [])


