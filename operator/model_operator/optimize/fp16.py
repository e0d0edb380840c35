"""float32 -> float16 conversion of an ONNX graph, written here (no onnxconverter-common).

Every float initializer and float tensor becomes float16; graph inputs and outputs keep float32
(a Cast at each end), so clients and the Triton config do not change. Nodes whose op type is in
the block list stay float32 with Casts around them: ops ONNX Runtime has no float16 kernel for
on the target (found by `convert_checked`, which retries with the failing op blocked), nodes
with subgraphs, and nodes of non-standard domains. `Cast(to=float)`, `Constant` and
`ConstantOfShape` values are switched to float16 so the graph stays type-consistent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import numpy as np

# Inputs that must stay float32 whatever the graph's type (op_type -> input indices).
FLOAT32_ONLY_INPUTS: Final[dict[str, set[int]]] = {"Resize": {1, 2}, "Upsample": {1}}
DEFAULT_BLOCK: Final = frozenset({"Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


def _tensor_types(model: Any) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the model declares
        inferred = model
    g = inferred.graph
    types = {}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def convert(model: Any, block: Iterable[str] = ()) -> Any:
    """A float16 copy of `model` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    blocked_ops = set(DEFAULT_BLOCK) | set(block)
    types = _tensor_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph

    def is_float(name: str) -> bool:
        return types.get(name) == FLOAT

    for init in g.initializer:
        if init.data_type == FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))

    def blocked(node: Any) -> bool:
        return (
            node.op_type in blocked_ops
            or (node.domain not in ("", "ai.onnx", "com.microsoft"))
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        )

    io_in = {vi.name for vi in g.input if is_float(vi.name)}
    io_out = {vi.name for vi in g.output if is_float(vi.name)}
    rename_in = {n: f"{n}__fp16" for n in io_in}
    rename_out = {n: f"{n}__fp16" for n in io_out}
    new_nodes = [helper.make_node("Cast", [n], [rename_in[n]], to=HALF, name=f"{n}__cast_in") for n in sorted(io_in)]
    counter = 0

    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename_in:
                node.input[i] = rename_in[name]
            elif name in rename_out:
                node.input[i] = rename_out[name]
        for i, name in enumerate(node.output):
            if name in rename_out:
                node.output[i] = rename_out[name]
        if blocked(node):
            for i, name in enumerate(node.input):
                base = _base(name)
                if name and (is_float(base) or name.endswith("__fp16")):
                    counter += 1
                    cast_out = f"{name}__to32_{counter}"
                    new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=FLOAT, name=f"cast32_{counter}"))
                    node.input[i] = cast_out
            after = []
            for i, name in enumerate(node.output):
                if name and is_float(_base(name)):
                    counter += 1
                    raw = f"{name}__fp32_{counter}"
                    after.append(helper.make_node("Cast", [raw], [name], to=HALF, name=f"cast16_{counter}"))
                    node.output[i] = raw
            new_nodes.append(node)
            new_nodes.extend(after)
            continue
        # float32-only inputs of a converted node
        for i in FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and is_float(_base(node.input[i])):
                counter += 1
                cast_out = f"{node.input[i]}__to32_{counter}"
                new_nodes.append(helper.make_node("Cast", [node.input[i]], [cast_out], to=FLOAT, name=f"cast32_{counter}"))
                node.input[i] = cast_out
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = HALF
            elif attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
        new_nodes.append(node)

    for n in sorted(io_out):
        new_nodes.append(helper.make_node("Cast", [rename_out[n]], [n], to=FLOAT, name=f"{n}__cast_out"))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return out


def _base(name: str) -> str:
    return re.sub(r"__fp16$", "", name)


_NO_KERNEL = re.compile(r"implementation for (\w+)\(\d+\)")


def convert_checked(model: Any, *, max_tries: int = 12) -> tuple[Any, list[str]]:
    """convert(), retried with each op type ONNX Runtime (CPU) has no float16 kernel for added
    to the block list. Returns (model, blocked op types)."""
    import onnxruntime as ort

    block: list[str] = []
    last = ""
    for _ in range(max_tries):
        converted = convert(model, block)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            ort.InferenceSession(converted.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return converted, block
        except Exception as exc:  # noqa: BLE001 - NOT_IMPLEMENTED / type errors from ORT
            last = str(exc)
            m = _NO_KERNEL.search(last)
            if not m or m.group(1) in block:
                break
            block.append(m.group(1))
    raise RuntimeError(f"float16 conversion produced a graph ONNX Runtime cannot load: {last.splitlines()[0] if last else '?'}")
