"""Automatic partial quantization: find the layers whose quantization hurts the output most.

Each quantizable node is quantized alone (everything else stays float) and the model's outputs
on a small validation subset are compared with the original's; the nodes with the largest error
(1 - cosine of the first output, ties broken by max abs error) are kept in float. Bounded: at
most MAX_NODES nodes (the ones with the largest weights) are measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..api.types import Quantization
from .data import Dataset
from .quantize import quantizable_nodes, quantize
from .runtime import OrtRunner, run_all
from .validate import cosine, max_abs_error

log = logging.getLogger("model_operator.optimize")

MAX_NODES = 48
SUBSET = 32


def rank_sensitive(scores: dict[str, tuple[float, float]], count: int) -> list[str]:
    """The `count` node names with the largest (error, max abs error), largest first."""
    return [n for n, _ in sorted(scores.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:count]]


def measure(
    pre: Path,
    q: Quantization,
    *,
    validation: Dataset,
    reference: Sequence[np.ndarray],
    calibration: Dataset | None,
    input_names: Sequence[str],
    work: Path,
    deadline: Callable[[], bool] = lambda: False,
) -> dict[str, tuple[float, float]]:
    """{node name: (1 - cosine, max abs error)} with only that node quantized."""
    import onnx

    model = onnx.load(str(pre), load_external_data=False)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    nodes = quantizable_nodes(model, q.op_types)
    nodes.sort(key=lambda n: -max((sizes.get(x, 0) for x in n.input), default=0))
    nodes = nodes[:MAX_NODES]
    sub = validation.take(SUBSET)
    ref = [r[: sub.size] for r in reference]
    calib = calibration.take(16) if calibration is not None else None
    scores: dict[str, tuple[float, float]] = {}
    work.mkdir(parents=True, exist_ok=True)
    single = Quantization.model_validate({**q.model_dump(), "op_types": None, "int4_op_types": None})
    for i, node in enumerate(nodes):
        if deadline():
            log.info("sensitivity: time budget reached after %d of %d nodes", i, len(nodes))
            break
        out = work / f"single-{i}.onnx"
        quantize(pre, out, single, calibration=calib, input_names=input_names, nodes_to_quantize=[node.name])
        got = run_all(OrtRunner(out, level="basic"), sub.inputs)
        scores[node.name] = (1.0 - cosine(got[0], ref[0]), max_abs_error(got, ref))
        out.unlink(missing_ok=True)
    return scores


def describe(scores: dict[str, tuple[float, float]], chosen: list[str]) -> list[dict[str, Any]]:
    return [{"node": n, "error": round(scores[n][0], 6), "maxAbsError": round(scores[n][1], 6)} for n in chosen]
