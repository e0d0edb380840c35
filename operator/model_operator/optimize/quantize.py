"""Quantization with ONNX Runtime's tools: dynamic int8, static int8 (QDQ, calibrated on the
calibration .npz with the MinMax, entropy or percentile calibrator), weight-only int4 of MatMul
weights and embeddings (MatMulNBits / GatherBlockQuantized, block-wise), int8 with the weights of
some op types in int4 blocks instead (`int4OpTypes`, e.g. a CNN's Gemm classifier), fp16 (fp16.py);
per-channel or per-tensor weights, optionally reduce_range (7-bit); a subset of op types; nodes
kept in float (named in the spec or found by sensitivity.py), their weights optionally stored in
float16 behind a Cast that ONNX Runtime folds when it loads the model; in an int4 model, kept
MatMuls optionally stored in 8-bit blocks (MatMulNBits bits=8) instead of float."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.types import CalibrationMethod, KeptType, Quantization, QuantizationMode
from .data import Dataset
from .errors import InputError, OptimizationError, first_line
from .quiet import captured

log = logging.getLogger("model_operator.optimize")

# Ops whose weights quantization stores as int8 (the ones that carry the bytes).
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "LSTM", "GRU")
# Static int8 without opTypes: the weight-carrying ops only. Quantizing every activation (Add,
# Mul, Softmax...) puts a transformer's additive attention mask (float32 min) into an int8 range
# and wipes out everything else in it (pretrained MiniLM: pooled cosine 0.32); the entropy and
# percentile calibrators refuse such a tensor outright. Relu and Clip are in: a convolution's
# output then takes the range of the activation after it (ONNX Runtime narrows it when both are
# quantized) instead of its own, often 30x wider: quantizing a pretrained EfficientNet-Lite0's
# pre-ReLU6 ranges left 53% top-1 agreement with the original.
STATIC_DEFAULT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "Relu", "Clip")
CALIBRATION_BATCH = 8
INT4_BLOCK = 32
# The MatMuls an int4 model keeps at 8 bits (sensitiveLayers.dtype: int8): 8-bit weights lose
# little even in large blocks (pretrained MiniLM, every MatMul 8-bit, activations float: pooled
# cosine 0.9999), so the block is large and the scales cost 0.25 bit per weight.
INT8_KEPT_BLOCK = 128
CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# ONNX Runtime's entropy calibrator, as quantize_static sets it up, has as many histogram bins as
# quantized bins (128): its threshold search then has one choice, the full range, and the result is
# byte-identical to MinMax. The ranges are computed here with a finer histogram and handed to
# quantize_static through its calibration cache.
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128


@dataclass
class QuantResult:
    path: Path
    quantized_nodes: int = 0
    op_types: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    blocked_fp16_ops: list[str] = field(default_factory=list)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (symbolic shape inference, basic graph
    optimization, ONNX shape inference); falls back step by step for graphs it can't handle."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [dict(), dict(skip_symbolic_shape=True), dict(skip_symbolic_shape=True, skip_optimization=True)]
    last: Exception | None = None
    for kwargs in attempts:
        try:
            # It writes sym_shape_infer_temp.onnx (and external data) into the working
            # directory: keep them in the work dir, not the caller's.
            with captured(), contextlib.chdir(dst.parent):
                quant_pre_process(str(src), str(dst), **kwargs)
            return dst
        except Exception as exc:  # noqa: BLE001 - each fallback is cheaper and more permissive
            last = exc
            log.debug("quant_pre_process %s failed: %s", kwargs, first_line(exc))
    log.info("pre-processing for quantization failed (%s); quantizing the exported graph as is", first_line(last) if last else "?")
    shutil.copyfile(src, dst)
    return dst


class NpzReader:
    """CalibrationDataReader over a Dataset, in small batches."""

    def __init__(self, data: Dataset, input_names: Sequence[str], batch: int = CALIBRATION_BATCH) -> None:
        self._data = data
        self._names = list(input_names)
        self._batch = batch
        self._it: Iterator[dict[str, Any]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, Any] | None:
        assert self._it is not None
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = ({k: v for k, v in b.items() if k in self._names} for b in self._data.batches(self._batch))


def quantizable_nodes(model: Any, op_types: Sequence[str] | None = None) -> list[Any]:
    """Nodes with a weight initializer that int8 quantization would convert."""
    inits = {i.name for i in model.graph.initializer}
    wanted = set(op_types) if op_types else set(WEIGHT_OPS)
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        weight_idx = 0 if node.op_type == "Gather" else 1
        if len(node.input) > weight_idx and node.input[weight_idx] in inits:
            out.append(node)
    return out


def quantize(
    pre: Path,
    out: Path,
    q: Quantization,
    *,
    calibration: Dataset | None,
    input_names: Sequence[str],
    exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
) -> QuantResult:
    """Quantize the pre-processed model at `pre` into `out` as `q` asks."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod as CalibrationMethod_
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    mode = QuantizationMode(q.mode)
    if mode == QuantizationMode.none:
        shutil.copyfile(pre, out)
        return QuantResult(out)
    if mode == QuantizationMode.fp16:
        from .fp16 import convert_checked

        try:
            converted, blocked = convert_checked(onnx.load(str(pre)))
        except RuntimeError as exc:
            raise OptimizationError("spec.optimization.quantization.mode", f"fp16: {exc}") from None
        onnx.save(converted, str(out))
        return QuantResult(out, quantized_nodes=len(converted.graph.node), op_types=["*"], blocked_fp16_ops=blocked)

    if mode == QuantizationMode.int4_weight_only:
        return _int4(pre, out, exclude, nodes_to_quantize, kept_int8=q.sensitive_layers.dtype == KeptType.int8)

    kept = list(exclude)  # the sensitive layers (float); int4 nodes are left out of int8 too
    int4_nodes: list[str] = []
    rewritten: Path | None = None  # a copy of `pre` with Gemm as MatMul + Add, removed at the end
    if q.int4_op_types:
        src, int4_nodes = _int4_targets(pre, out, q.int4_op_types, kept, nodes_to_quantize)
        rewritten, pre, exclude = (src if src != pre else None), src, kept + int4_nodes
    op_types = list(q.op_types) if q.op_types else None
    extra: dict[str, Any] = {"MatMulConstBOnly": True}
    reduce_range = bool(q.reduce_range)
    calib = getattr(CalibrationMethod_, CALIBRATORS[(q.calibration_method or CalibrationMethod.minmax).value])
    try:
        with captured(), contextlib.chdir(Path(out).parent):  # temporaries stay in the work dir
            if mode == QuantizationMode.dynamic_int8:
                quantize_dynamic(
                    str(pre), str(out), op_types_to_quantize=op_types, per_channel=q.per_channel, reduce_range=reduce_range,
                    weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), nodes_to_quantize=list(nodes_to_quantize or []),
                    extra_options=extra,
                )
            else:
                if calibration is None:
                    raise InputError("spec.data.calibration", "static-int8 quantization needs calibration data: set data.calibration")
                static_ops = op_types or list(STATIC_DEFAULT_OPS)
                cache = _entropy_ranges(pre, out, calibration, input_names, static_ops) if calib == CalibrationMethod_.Entropy else None
                quantize_static(
                    str(pre), str(out), NpzReader(calibration, input_names), quant_format=QuantFormat.QDQ, calibration_cache_path=cache,
                    op_types_to_quantize=static_ops, per_channel=q.per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                    nodes_to_quantize=list(nodes_to_quantize or []), calibrate_method=calib,
                    extra_options={**extra, "ActivationSymmetric": False, "WeightSymmetric": True},
                )
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's quantizer raises arbitrary classes; reported as the step's failure
        raise OptimizationError("spec.optimization.quantization", f"{mode.value} quantization failed: {first_line(exc)}") from None
    finally:
        if rewritten is not None:
            rewritten.unlink(missing_ok=True)
    if kept and q.sensitive_layers.dtype == KeptType.float16:
        weights_to_float16(out, kept)
    if int4_nodes:
        return _int4(out, out, kept, int4_nodes)
    return _result(out, kept)


def _int4_targets(pre: Path, out: Path, op_types: Sequence[str], exclude: Sequence[str], include: Sequence[str] | None) -> tuple[Path, list[str]]:
    """For int8 with `int4OpTypes`: the model to quantize (Gemm turned into MatMul + Add where
    Gemm is named, written next to `out`) and the nodes whose weights become int4 blocks (the
    MatMul and Gather nodes with an initializer weight, of the types named, not kept in float)."""
    import onnx

    from .gemm import gemm_to_matmul

    wanted = set(op_types)
    model = onnx.load(str(pre))
    include_set = set(include) if include else None
    rewritten = gemm_to_matmul(model, include_set, skip=exclude) if "Gemm" in wanted else []
    if rewritten:
        pre = out.with_suffix(".matmul.onnx")
        onnx.save(model, str(pre))
    types = (wanted & {"MatMul", "Gather"}) | ({"MatMul"} if rewritten else set())
    nodes = [n.name for n in quantizable_nodes(model, sorted(types))
             if n.name not in exclude and (include_set is None or n.name in include_set)
             and (n.op_type != "MatMul" or "MatMul" in wanted or n.name in rewritten)]
    return pre, nodes


def _entropy_ranges(pre: Path, out: Path, calibration: Dataset, input_names: Sequence[str], op_types: Sequence[str]) -> Path:
    """Activation ranges by ONNX Runtime's entropy (KL) calibrator with ENTROPY_BINS bins, saved
    as a calibration cache next to `out`."""
    from onnxruntime.quantization import CalibrationMethod as CalibrationMethod_
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cache = out.with_suffix(".ranges.json")
    augmented = out.with_suffix(".augmented.onnx")
    calibrator = create_calibrator(pre, list(op_types), augmented_model_path=str(augmented), calibrate_method=CalibrationMethod_.Entropy,
                                   extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS, "symmetric": False})
    calibrator.collect_data(NpzReader(calibration, input_names))
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator
    augmented.unlink(missing_ok=True)
    return cache


QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QLinearConv", "QGemm", "QAttention",
                 "DequantizeLinear", "MatMulNBits", "GatherBlockQuantized")


def _result(out: Path, exclude: Sequence[str]) -> QuantResult:
    import onnx

    model = onnx.load(str(out), load_external_data=False)
    qnodes = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    return QuantResult(out, quantized_nodes=len(qnodes), op_types=sorted({n.op_type for n in qnodes}), excluded=list(exclude))


def _int4(pre: Path, out: Path, exclude: Sequence[str], include: Sequence[str] | None, *, kept_int8: bool = False) -> QuantResult:
    """Weight-only int4, asymmetric (a 4-bit zero point per block: pretrained MiniLM, every MatMul
    and embedding 4-bit: pooled cosine 0.972 against 0.963 symmetric, for 2.5% more bytes), blocks of
    INT4_BLOCK along the reduction axis: MatMul weights to MatMulNBits and embedding tables to
    GatherBlockQuantized; activations stay float. Falls
    back to MatMul only where this ONNX Runtime can't quantize Gather. `include`: only these
    nodes. `kept_int8`: the excluded MatMuls get 8-bit blocks of INT8_KEPT_BLOCK (MatMulNBits
    bits=8) in a second pass instead of staying float (Gather has no 8-bit block kernel: an
    excluded embedding stays float)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(pre))
    weighted = quantizable_nodes(model, ("MatMul", "Gather"))
    skip = list(exclude)
    if include:
        # MatMulNBitsQuantizer quantizes a node that is in nodes_to_include *or* of a listed op
        # type: a subset has to be spelled as the exclusion of everything else.
        wanted = set(include)
        skip += [n.name for n in weighted if n.name not in wanted and n.name not in skip]
    kept = {n.name for n in weighted if n.op_type == "MatMul" and n.name in set(exclude)} if kept_int8 else set()
    last: Exception | None = None
    for ops, axes in ((("MatMul", "Gather"), (("MatMul", 0), ("Gather", 1))), (("MatMul",), (("MatMul", 0),))):
        try:
            with captured(), contextlib.chdir(out.parent):  # temporaries stay in the work dir
                quant = MatMulNBitsQuantizer(
                    onnx.load(str(pre)), bits=4, block_size=INT4_BLOCK, is_symmetric=False, accuracy_level=4,
                    nodes_to_exclude=skip, op_types_to_quantize=ops, quant_axes=axes,
                )
                quant.process()
                if kept:
                    quant = MatMulNBitsQuantizer(
                        quant.model.model, bits=8, block_size=INT8_KEPT_BLOCK, is_symmetric=True, accuracy_level=4,
                        nodes_to_exclude=[n.name for n in weighted if n.op_type == "MatMul" and n.name not in kept],
                        op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
                    )
                    quant.process()
                quant.model.save_model_to_file(str(out), use_external_data_format=False)
            return _result(out, [n for n in exclude if n not in kept])
        except Exception as exc:  # noqa: BLE001 - try the narrower op set
            last = exc
            log.debug("int4 with %s failed: %s", ops, first_line(exc))
    raise OptimizationError("spec.optimization.quantization", f"int4-weight-only quantization failed: {first_line(last) if last else '?'}")


def weights_to_float16(path: Path, nodes: Sequence[str]) -> int:
    """Store the float32 weight initializers of `nodes` in float16, each behind a Cast back to
    float32 under its old name (ONNX Runtime folds the Cast at load: the file shrinks, the
    arithmetic stays float32). Returns how many initializers were converted."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    wanted = set(nodes)
    done = 0
    casts = []
    for node in g.node:
        if node.name not in wanted:
            continue
        idx = 0 if node.op_type == "Gather" else 1
        name = node.input[idx] if len(node.input) > idx else ""
        init = inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name + "_fp16")
        g.initializer.remove(init)
        del inits[name]
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], name=name + "_to_fp32", to=onnx.TensorProto.FLOAT))
        done += 1
    if done:
        for c in reversed(casts):
            g.node.insert(0, c)
        onnx.save(model, str(path))
    return done


def match_names(model: Any, names: Sequence[str], field_name: str) -> list[str]:
    """ONNX node names for the layer names of `spec.optimization.quantization.sensitiveLayers.names`.
    A name matches a node by its exact name, by its module path (`layers.0.fc` matches
    `/layers.0/fc/MatMul`), or by the name of its weight initializer."""
    nodes = list(model.graph.node)
    found: list[str] = []
    for i, name in enumerate(names):
        want = name.strip("/").replace("/", ".")
        hits = []
        for n in nodes:
            norm = n.name.strip("/").replace("/", ".")
            if n.name == name or norm == want or norm.startswith(want + ".") or any(inp == name or inp.startswith(want + ".") for inp in n.input[1:2]):
                hits.append(n.name)
        if not hits:
            examples = ", ".join(n.name for n in quantizable_nodes(model)[:4])
            raise InputError(f"{field_name}[{i}]", f"'{name}' matches no node of the model (nodes look like: {examples})")
        found.extend(h for h in hits if h not in found)
    return found
