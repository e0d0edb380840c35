"""report.json (everything) and the summary (< 4 KiB, for the Job's termination message).

Summary (docs/contracts.md):
{"ok": true, "reason": "", "specHash": "...",
 "artifact": {"uri", "sha256", "format", "sizeBytes", "originalSizeBytes", "transferBytes" (edge/device)},
 "optimization": {"recipe", "qualityBefore", "qualityAfter", "latencyMsBefore", "latencyMsAfter",
                  "latencyMsOnnxFp32", "speedup", "speedupVsOnnxFp32", "latencyBatchSize", "threads",
                  "latencySpread", "qualitySamples", "objective", "measuredOn": {"node", "pool", "arch"},
                  "candidates": [{"name", "passed", "latencyMs", "latencySpread", "pareto", "sizeBytes",
                                  "transferBytes" (edge/device), "quality", "reason"}]}}
transferBytes: the gzip-compressed size an edge node or device downloads (the package archive;
per candidate its model file), where unstructured sparsity pays.
latencyMsBefore is the original in its own framework (PyTorch eager / TorchScript, or ONNX Runtime
for an ONNX source), latencyMsOnnxFp32 its unquantized conversion in ONNX Runtime; every latency
is at latencyBatchSize with `threads` intra-op threads. qualityBefore/qualityAfter are measured on
the held-out part of the validation set (qualitySamples); the candidates' qualities are the
selection part's, the worst over the gate's batch sizes.
On failure: {"ok": false, "reason": "<the one-line reason>", "specHash": "...", "exitCode": 2|3|1},
with "candidates" when the quality gate rejected them (exit 3).
When the candidates don't fit, they are shortened (qualities reduced to the gated metric, reasons
cut), then dropped from the end (the chosen one is always kept) and `candidatesOmitted` says how
many.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from .search import Outcome

SUMMARY_LIMIT: Final = 4096
KEY_METRICS: Final = ("top1", "agreement", "cosine", "minCosine", "maxAbsError", "perplexityRatio", "greedyAgreement")


def rounded(x: Any, digits: int = 6) -> Any:
    """Floats to `digits` significant digits (NaN/inf to None), recursively."""
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    return x


def candidate_entry(o: Outcome, *, full: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": o.plan.name,
        "passed": o.passed,
        "latencyMs": o.latency_ms,
        "latencySpread": o.latency_spread,
        "pareto": o.pareto,
        "sizeBytes": o.size_bytes,
        "transferBytes": o.transfer_bytes,
        "quality": dict(o.quality),
        "reason": o.reason,
    }
    entry = {k: v for k, v in entry.items() if v is not None or k in ("latencyMs", "sizeBytes")}
    if full:
        entry["recipe"] = o.plan.describe()
        entry["seconds"] = o.seconds
        entry.update(o.details)
    return rounded(entry)


def summary(
    *,
    spec_hash: str,
    uri: str,
    sha256: str,
    fmt: str,
    size_bytes: int,
    original_size_bytes: int,
    recipe: str,
    quality_before: dict[str, float],
    quality_after: dict[str, float],
    outcomes: Sequence[Outcome],
    chosen: int,
    figures: dict[str, Any] | None = None,
    latency_before: float | None = None,
    latency_after: float | None = None,
    transfer_bytes: int | None = None,
) -> dict[str, Any]:
    """`figures`: latencyMsBefore, latencyMsAfter and the other latency fields (module docstring)."""
    figures = dict(figures or {"latencyMsBefore": latency_before, "latencyMsAfter": latency_after})
    cands = [candidate_entry(o) for o in outcomes]
    out = {
        "ok": True,
        "reason": "",
        "specHash": spec_hash,
        "artifact": {"uri": uri, "sha256": sha256, "format": fmt, "sizeBytes": size_bytes, "originalSizeBytes": original_size_bytes,
                     **({"transferBytes": transfer_bytes} if transfer_bytes is not None else {})},
        "optimization": rounded(
            {
                "recipe": recipe,
                "qualityBefore": quality_before,
                "qualityAfter": quality_after,
                **{k: v for k, v in figures.items() if v is not None or k in ("latencyMsBefore", "latencyMsAfter")},
                "candidates": cands,
            }
        ),
    }
    return fit(out, chosen)


def failure(spec_hash: str, reason: str, exit_code: int = 1, candidates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The failure summary: the reason, the exit code (2 bad input, 3 gate rejected, 1 other) and,
    for a gate rejection, the candidates (shortened, then dropped from the end, to fit)."""
    out: dict[str, Any] = {"ok": False, "reason": reason[:1500], "specHash": spec_hash, "exitCode": exit_code}
    if not candidates:
        return out
    cands = [{**c, "quality": {k: v for k, v in (c.get("quality") or {}).items() if k in KEY_METRICS}, "reason": str(c.get("reason", ""))[:200]}
             for c in candidates]
    while cands and len(dumps({**out, "candidates": cands}).encode()) >= SUMMARY_LIMIT:
        cands.pop()
    out["candidates"] = cands
    if len(cands) < len(candidates):
        out["candidatesOmitted"] = len(candidates) - len(cands)
    return out


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def fit(summary_obj: dict[str, Any], chosen: int, limit: int = SUMMARY_LIMIT) -> dict[str, Any]:
    """Shrink the candidates list until the summary's JSON is under `limit` bytes."""
    if len(dumps(summary_obj).encode()) < limit:
        return summary_obj
    opt = summary_obj["optimization"]
    cands = opt["candidates"]
    for c in cands:
        c["quality"] = {k: v for k, v in c["quality"].items() if k in KEY_METRICS}
        c["reason"] = c["reason"][:80]
        if not c["reason"]:
            del c["reason"]
    keep = list(range(len(cands)))
    omitted = 0
    while len(dumps(summary_obj).encode()) >= limit and len(keep) > 1:
        drop = next(i for i in reversed(keep) if i != chosen)
        keep.remove(drop)
        omitted += 1
        opt["candidates"] = [cands[i] for i in keep]
        opt["candidatesOmitted"] = omitted
    if len(dumps(summary_obj).encode()) >= limit:
        for c in opt["candidates"]:
            c.pop("quality", None)
            c.pop("reason", None)
    return summary_obj
