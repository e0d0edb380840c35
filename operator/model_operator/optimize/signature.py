"""Model signatures: dtype mappings, merging the model's own signature with `spec.model.inputs`,
dynamic axes, and sample inputs for tracing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from ..api.types import Conversion, DType, TensorSpec
from .errors import InputError

NUMPY_DTYPES: Final[dict[DType, type]] = {
    DType.float32: np.float32,
    DType.float16: np.float16,
    DType.int64: np.int64,
    DType.int32: np.int32,
    DType.int8: np.int8,
    DType.uint8: np.uint8,
    DType.bool_: np.bool_,
}

# onnx.TensorProto element types.
ONNX_DTYPES: Final[dict[int, DType]] = {1: DType.float32, 10: DType.float16, 7: DType.int64, 6: DType.int32, 3: DType.int8, 2: DType.uint8, 9: DType.bool_}
ONNX_TYPE_NAMES: Final[dict[int, str]] = {11: "double", 8: "string", 12: "uint32", 13: "uint64", 5: "int16", 4: "uint16", 16: "bfloat16"}

INTEGER_DTYPES: Final = {DType.int64, DType.int32, DType.int8, DType.uint8}

# Sizes used for dynamic axes when a sample input has to be made up.
SAMPLE_BATCH: Final = 2
SAMPLE_OTHER: Final = 8


def numpy_dtype(dtype: DType | str) -> type:
    return NUMPY_DTYPES[DType(dtype)]


def dtype_of_numpy(dtype: np.dtype) -> DType | None:
    for k, v in NUMPY_DTYPES.items():
        if np.dtype(v) == np.dtype(dtype):
            return k
    return None


def describe(t: TensorSpec) -> str:
    return f"{t.name} {DType(t.dtype).value} {list(t.shape)}"


def is_integer(t: TensorSpec) -> bool:
    return DType(t.dtype) in INTEGER_DTYPES


def dynamic_axes(t: TensorSpec, conversion: Conversion, *, is_input: bool) -> list[int]:
    """Axes of `t` exported as dynamic: the batch axis (conversion.dynamicAxes.batch), axis 1 of
    integer inputs (conversion.dynamicAxes.sequence), and every axis the signature marks -1."""
    axes = {i for i, d in enumerate(t.shape) if d == -1}
    if conversion.dynamic_axes.batch and t.shape:
        axes.add(0)
    if is_input and conversion.dynamic_axes.sequence and is_integer(t) and len(t.shape) >= 2:
        axes.add(1)
    return sorted(axes)


def with_dynamic(t: TensorSpec, axes: Sequence[int]) -> TensorSpec:
    shape = [(-1 if i in axes else d) for i, d in enumerate(t.shape)]
    return TensorSpec(name=t.name, dtype=t.dtype, shape=shape)


def merge_inputs(model: Sequence[TensorSpec], spec: Sequence[TensorSpec] | None, *, by_name: bool) -> list[TensorSpec]:
    """The input signature: the model's, overridden by `spec.model.inputs` where the model leaves
    something open (dynamic dims; names of positional torch inputs). A contradiction raises an
    InputError naming `spec.model.inputs`."""
    if not spec:
        return list(model)
    field = "spec.model.inputs"
    if by_name:
        model_names = [t.name for t in model]
        spec_names = [t.name for t in spec]
        for i, name in enumerate(spec_names):
            if name not in model_names:
                raise InputError(f"{field}[{i}].name", f"'{name}' is not an input of the model (the model's inputs: {', '.join(model_names)})")
        for name in model_names:
            if name not in spec_names:
                raise InputError(field, f"the model's input '{name}' is missing (the model's inputs: {', '.join(model_names)})")
        by = {t.name: t for t in model}
        pairs = [(i, s, by[s.name]) for i, s in enumerate(spec)]
    else:
        if len(spec) != len(model):
            raise InputError(field, f"lists {len(spec)} inputs but the model takes {len(model)} ({', '.join(describe(t) for t in model)})")
        pairs = [(i, s, m) for i, (s, m) in enumerate(zip(spec, model))]
    out = []
    for i, s, m in pairs:
        if DType(s.dtype) != DType(m.dtype):
            raise InputError(f"{field}[{i}].dtype", f"'{s.name}' is {DType(s.dtype).value} in the spec but {DType(m.dtype).value} in the model")
        if m.shape and len(s.shape) != len(m.shape):
            raise InputError(f"{field}[{i}].shape", f"'{s.name}' has rank {len(s.shape)} in the spec but {len(m.shape)} in the model {list(m.shape)}")
        for axis, (sd, md) in enumerate(zip(s.shape, m.shape)):
            if sd != -1 and md != -1 and sd != md:
                raise InputError(f"{field}[{i}].shape", f"'{s.name}' axis {axis} is {sd} in the spec but {md} in the model {list(m.shape)}")
        shape = [sd if sd != -1 else md for sd, md in zip(s.shape, m.shape)] if m.shape else list(s.shape)
        out.append(TensorSpec(name=s.name, dtype=s.dtype, shape=shape))
    return out


def sample_feeds(inputs: Sequence[TensorSpec], data: Mapping[str, np.ndarray] | None = None, n: int = SAMPLE_BATCH) -> dict[str, np.ndarray]:
    """A small batch for tracing and trial runs: the first `n` data samples when there are data,
    else zeros (integers) / standard normal values (floats) with dynamic axes set small."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for t in inputs:
        arr = _matching(t, data, len(inputs))
        if arr is not None:
            feeds[t.name] = np.ascontiguousarray(arr[:n]).astype(numpy_dtype(t.dtype))
            continue
        shape = [(n if i == 0 else SAMPLE_OTHER) if d == -1 else d for i, d in enumerate(t.shape)]
        dt = numpy_dtype(t.dtype)
        if DType(t.dtype) == DType.bool_:
            feeds[t.name] = np.ones(shape, dtype=dt)
        elif is_integer(t):
            feeds[t.name] = np.ones(shape, dtype=dt)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def _matching(t: TensorSpec, data: Mapping[str, np.ndarray] | None, n_inputs: int) -> np.ndarray | None:
    """The data array for input `t` when its rank and fixed dims fit the signature."""
    if data is None:
        return None
    arr = data.get(t.name)
    if arr is None and n_inputs == 1:
        arr = next((data[k] for k in ("x", "input") if k in data), None)
    if arr is None or arr.ndim != len(t.shape) or len(arr) == 0:
        return None
    if any(d != -1 and d != a for d, a in zip(t.shape[1:], arr.shape[1:])):
        return None
    return arr
