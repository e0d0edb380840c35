"""Gemm with a constant weight as MatMul + Add, for quantizers that take MatMul only (ONNX
Runtime's MatMulNBitsQuantizer: int4 blocks of a CNN's classifier, which exports as Gemm)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def _attr(node: Any, name: str, default: float) -> float:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def gemm_to_matmul(model: Any, names: Collection[str] | None = None, skip: Collection[str] = ()) -> list[str]:
    """Rewrite in place every Gemm of `model` (those named in `names`, when given; none named in
    `skip`) whose weight B is an initializer and A is not transposed: MatMul(A, alpha * B')
    followed by Add(beta * C) when C is there, B' being B or its transpose (transB). The MatMul
    keeps the Gemm's name (so node names in a spec still match), the Add is `<name>/bias`, the
    weight is a new initializer `<B>/matmul`. A C that must be scaled (beta != 1) must be an
    initializer too, else the Gemm stays. Returns the names of the rewritten nodes."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    used = {n for node in g.node for n in node.input}
    done: list[str] = []
    new_nodes = []
    for node in g.node:
        ok = node.op_type == "Gemm" and (names is None or node.name in names) and node.name not in skip
        ok = ok and len(node.input) > 1 and node.input[1] in inits and not _attr(node, "transA", 0)
        c = node.input[2] if len(node.input) > 2 else ""
        beta = float(_attr(node, "beta", 1.0))
        if ok and c and beta != 1.0 and c not in inits:
            ok = False
        if not ok:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        w = w.T if _attr(node, "transB", 0) else w
        alpha = float(_attr(node, "alpha", 1.0))
        w = np.ascontiguousarray(w * np.asarray(alpha, dtype=w.dtype) if alpha != 1.0 else w)
        w_name = node.input[1] + "/matmul"
        g.initializer.append(numpy_helper.from_array(w, w_name))
        name = node.name or node.output[0]
        if not c:
            new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=name))
        else:
            if beta != 1.0:
                bias = numpy_helper.to_array(inits[c])
                c_name = c + "/scaled"
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(bias * np.asarray(beta, dtype=bias.dtype)), c_name))
                c = c_name
            mid = node.output[0] + "/matmul"
            new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mid], name=name))
            new_nodes.append(helper.make_node("Add", [mid, c], list(node.output), name=name + "/bias"))
        done.append(name)
    if done:
        del g.node[:]
        g.node.extend(new_nodes)
        still = {n for node in g.node for n in node.input}
        for init in list(g.initializer):  # a weight only the old Gemm read
            if init.name in used and init.name not in still:
                g.initializer.remove(init)
    return done
