"""The worker's pipeline: fetch -> load -> data -> reference -> candidates (transform, convert,
quantize, validate) -> latency -> choose -> package -> publish.

Honest figures: the validation set is split (seeded) into a selection part, on which the gate
decides at batch 1 and at the serving batch size, and a held-out report part, whose quality is
the one reported. Latencies are measured side by side in interleaved rounds after each runtime
has settled, at one batch size and thread count (both reported): the original in its own
framework, its unquantized ONNX conversion in ONNX Runtime, and every candidate.

Progress goes to the `model_operator.optimize` logger, one line per step and per candidate.
Nothing is written at the destination until the artifact is complete (storage.publish_dir).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..api.hashing import spec_hash as compute_spec_hash
from ..api.types import (
    Clipping,
    ConversionFormat,
    DType,
    KeptType,
    ModelDeploymentSpec,
    ModelFormat,
    Pooling,
    Pruning,
    PruningMethod,
    Quantization,
    QuantizationMode,
    QuantizationScope,
    Serving,
    Target,
    Task,
    TensorSpec,
)
from . import report as rep
from .data import Dataset, Split, load_npz, split
from .errors import GateError, InputError, OptimizationError, WorkerError, first_line
from .load import SourceModel, load_source
from .progress import PROGRESS
from .quiet import captured
from .runtime import OrtRunner, TorchRunner, configure_torch, latency_feeds, measure_interleaved, run_all, threads
from .search import Outcome, Plan, check_plans, choose, default_objective, pareto, plans_for
from .signature import dynamic_axes, is_integer, sample_feeds, with_dynamic
from .validate import View, compare, gate, reference_quality, worst

log = logging.getLogger("model_operator.optimize")

SYNTHETIC_SAMPLES = 8
GOLDEN_MIN = 64
BUDGET_SHARE = 0.85
BATCH1_SAMPLES = 256  # the gate at batch 1 looks at this many selection samples at most
LATENCY_ROUNDS = 5
EVAL_BATCH_DEVICE = 32  # evaluation batch when nothing is served (device target)
SHRINK_SAMPLES = 64  # samples whose activations score the channels of structured pruning


@dataclass
class Run:
    spec: ModelDeploymentSpec
    name: str
    output: str
    work: Path
    base_dir: Path | None
    started: float = field(default_factory=time.monotonic)
    steps: list[dict[str, Any]] = field(default_factory=list)
    step_no: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    def deadline_near(self) -> bool:
        return time.monotonic() - self.started > self.spec.optimization.time_budget_seconds * BUDGET_SHARE

    def step(self, title: str) -> "_Step":
        self.step_no += 1
        return _Step(self, title)


class _Step:
    TOTAL = 8

    def __init__(self, run: Run, title: str) -> None:
        self.run, self.title = run, title

    def __enter__(self) -> "_Step":
        self.t0 = time.monotonic()
        log.info("step %d/%d %s", self.run.step_no, self.TOTAL, self.title)
        PROGRESS.update(step=self.title, stepNumber=self.run.step_no, steps=self.TOTAL)
        return self

    def __exit__(self, *exc: object) -> None:
        self.run.steps.append({"step": self.title, "seconds": round(time.monotonic() - self.t0, 3)})


def _fetch(run: Run, uri: str, field_name: str) -> Path:
    try:
        return storage.fetch(uri, run.work / "inputs" / field_name.replace(".", "_"), base_dir=run.base_dir)
    except storage.StorageError as exc:
        raise InputError(field_name, str(exc)) from None


def _raw_arrays(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception:  # noqa: BLE001 - reported properly by load_npz once the signature is known
        return None


def check_destination(output: str, base_dir: Path | None, upload_url_file: str | None = None) -> None:
    """Fail fast on a destination that cannot work (bad URI, wrong S3 credentials, no upload
    grant), before the expensive part."""
    try:
        loc = storage.parse(output, base_dir=base_dir)
        if loc.kind == "http":
            raise storage.StorageError(output, "cannot publish to an http(s) URI: use a directory, pvc:// or s3://")
        if loc.kind == "s3":
            if not (loc.key or "").strip("/"):
                raise storage.StorageError(output, "refusing to publish at the root of a bucket: use s3://bucket/prefix")
            if upload_url_file:
                from ..storage.presigned import read_url

                read_url(upload_url_file)  # the pod has no key to list with: the grant is all it has
            else:
                storage.list_artifact(output)
        elif loc.path is not None and loc.path.exists() and not loc.path.is_dir():
            raise storage.StorageError(output, "exists and is not a directory")
    except storage.StorageError as exc:
        raise InputError("--output", str(exc)) from None


def run(
    spec: ModelDeploymentSpec, *, name: str, output: str, work: Path, base_dir: Path | None = None, upload_url_file: str | None = None
) -> dict[str, Any]:
    """Optimize, package and publish; returns the summary. Raises WorkerError subclasses.
    With `upload_url_file`, the artifact goes to `output` as one archive through the pre-signed
    PUT in that file (a pod of the operator's: it holds no store key), else with publish_dir."""
    r = Run(spec=spec, name=name, output=output, work=work, base_dir=base_dir)
    if Task(spec.model.task) == Task.generation:
        from .pipeline_generation import run_generation

        return run_generation(r)
    n_threads = threads()
    configure_torch(n_threads)
    shash = compute_spec_hash(spec)
    opt = spec.optimization
    task = Task(spec.model.task)

    with r.step("fetch"):
        check_destination(output, base_dir, upload_url_file)
        model_path = _fetch(r, spec.model.uri, "spec.model.uri")
        val_path = _fetch(r, spec.data.validation.uri, "spec.data.validation.uri") if spec.data.validation else None
        cal_path = _fetch(r, spec.data.calibration.uri, "spec.data.calibration.uri") if spec.data.calibration else None
        log.info("fetched %s (%d bytes)%s%s", spec.model.uri, model_path.stat().st_size,
                 f", validation {spec.data.validation.uri}" if spec.data.validation else "",
                 f", calibration {spec.data.calibration.uri}" if spec.data.calibration else "")

    with r.step("load"):
        raw = _raw_arrays(val_path) if val_path else (_raw_arrays(cal_path) if cal_path else None)
        source = load_source(model_path, spec.model, raw)
        log.info("%s model: inputs %s; outputs %s", source.kind, _sig(source.inputs), _sig(source.outputs))

    with r.step("data"):
        validation = calibration = None
        if val_path is not None:
            assert spec.data.validation is not None
            validation = load_npz(val_path, field_name="spec.data.validation.uri", uri=spec.data.validation.uri, inputs=source.inputs,
                                  samples=spec.data.validation.samples)
        if cal_path is not None:
            assert spec.data.calibration is not None
            calibration = load_npz(cal_path, field_name="spec.data.calibration.uri", uri=spec.data.calibration.uri, inputs=source.inputs,
                                   samples=spec.data.calibration.samples)
        optimizing = (
            opt.quantization.mode != QuantizationMode.none or opt.pruning.method != PruningMethod.none
            or opt.clipping.method.value != "none" or opt.search.enabled
        )
        if validation is None:
            if optimizing:
                raise InputError("spec.data.validation", "the quality gate needs validation data: set data.validation")
            validation = Dataset(inputs=sample_feeds(source.inputs, None, SYNTHETIC_SAMPLES), uri="(synthetic)")
        log.info("validation: %d samples%s; calibration: %s", validation.size,
                 " with labels" if validation.labels is not None else "", f"{calibration.size} samples" if calibration else "none")

    conversion = ConversionFormat(spec.conversion.format)
    plan_args: dict[str, Any] = dict(has_calibration=calibration is not None, torch_source=source.is_torch, conversion=conversion)
    check_plans(plans_for(opt, **plan_args), opt, **plan_args)
    if not source.is_torch and conversion == ConversionFormat.torchscript:
        raise InputError("spec.conversion.format", "an ONNX model cannot be converted to TorchScript: set conversion.format: onnx")
    view = _view(spec, source, validation)
    fixed_batch = source.inputs[0].shape[0] if source.inputs[0].shape[0] != -1 else None
    gate_batches = _gate_batches(spec, fixed_batch)
    eval_batch = gate_batches[-1]
    lat_batch = fixed_batch or opt.search.latency_batch_size
    lat_inputs = latency_feeds(validation.inputs, lat_batch)
    synthetic = validation.uri == "(synthetic)"
    parts = Split(np.arange(validation.size), np.arange(validation.size), held_out=False) if synthetic else split(validation.size)
    objective = default_objective(opt, Target(spec.target))

    with r.step("reference"):
        ref_runner = TorchRunner(source.load_fresh(), source.inputs) if source.is_torch else OrtRunner(source.path, level="all")
        try:
            reference = run_all(ref_runner, validation.inputs, eval_batch)
        except Exception as exc:  # noqa: BLE001 - any error of the original model on the data is the data's field to fix
            raise InputError("spec.data.validation.uri", f"the original model fails on the validation data: {first_line(exc)}") from None
        _check_view(view, reference, spec)
        quality_before = _quality(task, reference, validation, parts.report)
        if parts.held_out:
            log.info("original: %s on %d held-out samples; the gate decides on %d others, at batch %s", _q(quality_before) or "no ground truth",
                     len(parts.report), len(parts.selection), " and ".join(map(str, gate_batches)))
        else:
            log.info("original: %s on %d samples (too few to hold some out: the gate and the report use them all), gate at batch %s",
                     _q(quality_before) or "no ground truth", validation.size, " and ".join(map(str, gate_batches)))
        onnx_fp32: Path | None = None
        if conversion == ConversionFormat.onnx:
            onnx_fp32 = source.path if not source.is_torch else _exported(r, source, calibration, validation, task)
        counts = _quantizable_counts(onnx_fp32) if onnx_fp32 is not None else None
        model_ops = frozenset(counts) if counts is not None else None
        plans = plans_for(opt, **plan_args, model_ops=model_ops, matmuls=counts.get("MatMul", 0) if counts else None, objective=objective)
        check_plans(plans, opt, **plan_args)

    outcomes: list[Outcome] = []
    digests: dict[str, str] = {}
    with r.step(f"candidates ({len(plans)})"):
        for i, plan in enumerate(plans):
            PROGRESS.update(candidate=i + 1, candidates=len(plans))
            if i > 0 and r.deadline_near():
                outcomes.append(Outcome(plan, reason="skipped: time budget (optimization.timeBudgetSeconds) nearly spent"))
                log.info("candidate %d/%d %s: skipped (time budget)", i + 1, len(plans), plan.name)
                continue
            t0 = time.monotonic()
            try:
                o = _candidate(r, i, plan, source, validation, calibration, reference, parts, view, gate_batches, task, digests)
            except WorkerError as exc:
                if len(plans) == 1 or isinstance(exc, InputError):
                    raise
                o = Outcome(plan, reason=exc.line)
            except Exception as exc:  # noqa: BLE001 - one broken candidate must not end a search
                if len(plans) == 1:
                    raise OptimizationError("spec.optimization", f"{plan.name}: {type(exc).__name__}: {first_line(exc)}") from None
                o = Outcome(plan, reason=f"{type(exc).__name__}: {first_line(exc)}")
            o.seconds = round(time.monotonic() - t0, 3)
            outcomes.append(o)
            PROGRESS.candidate_done(rep.candidate_entry(o))
            if o.artifact is not None:
                log.info("candidate %d/%d %s: %s, %s, %s%s", i + 1, len(plans), plan.name,
                         "passed" if o.passed else "REJECTED", _bytes(o.size_bytes or 0), _q(o.quality), "" if o.passed else f": {o.reason}")
            else:
                log.info("candidate %d/%d %s: %s", i + 1, len(plans), plan.name, o.reason if o.reason.startswith("skipped") else f"failed: {o.reason}")

    if not any(o.passed for o in outcomes):
        gated = [o for o in outcomes if o.artifact is not None]
        if gated:
            table = [rep.candidate_entry(o) for o in outcomes]
            closest = _closest_to_gate(gated)
            if len(plans) == 1:
                raise GateError("spec.optimization.qualityGate", f"{plans[0].name} rejected: {closest.reason}", table)
            raise GateError("spec.optimization.qualityGate",
                            f"no candidate passed the gate ({len(outcomes)} tried); best {closest.plan.name}: {closest.reason}", table)
        raise OptimizationError("spec.optimization", f"every candidate failed; {outcomes[0].plan.name}: {outcomes[0].reason}")

    with r.step("latency"):
        fp32_runner = OrtRunner(onnx_fp32, level="all") if onnx_fp32 is not None and source.is_torch else None
        before, fp32 = _measure_latencies(r, ref_runner, fp32_runner, outcomes, source, lat_inputs)
        del ref_runner, fp32_runner
        if fp32 is None and not source.is_torch:
            fp32 = before  # the original is the ONNX Runtime fp32 model
        latency_before, latency_fp32 = before.ms, (fp32.ms if fp32 else None)
        log.info("latency (batch %d, %d threads, median of %d interleaved rounds after warm-up): original (%s) %.4g ms ±%.0f%%%s",
                 lat_batch, n_threads, before.rounds, _framework(source), latency_before, before.spread * 100,
                 f", ONNX Runtime fp32 {latency_fp32:.4g} ms" if latency_fp32 is not None and source.is_torch else "")
        for i, o in enumerate(outcomes):
            if o.latency_ms is not None:
                log.info("latency %d/%d %s: %.4g ms ±%.0f%% (%s)%s", i + 1, len(outcomes), o.plan.name, o.latency_ms, (o.latency_spread or 0) * 100,
                         _speedups(latency_before, latency_fp32, o.latency_ms), "" if o.passed else " (rejected)")
    flags = pareto(outcomes)
    for o, f in zip(outcomes, flags):
        o.pareto = f
    best = choose(outcomes, objective)
    assert best is not None, "a passed candidate always has a latency"
    won = outcomes[best]
    assert won.latency_ms is not None
    quality_after = won.details.get("heldOutQuality", won.quality)
    log.info("chosen %s (objective %s): %.4g ms (%s), %s vs %s original; held-out quality %s (original %s)", won.plan.name, objective.value,
             won.latency_ms, _speedups(latency_before, latency_fp32, won.latency_ms), _bytes(won.size_bytes or 0), _bytes(source.size_bytes),
             _q(quality_after), _q(quality_before) or "no ground truth")
    figures = rep.rounded({
        "latencyMsBefore": latency_before,
        "latencyMsAfter": won.latency_ms,
        "latencyMsOnnxFp32": latency_fp32,
        "speedup": latency_before / won.latency_ms if won.latency_ms else None,
        "speedupVsOnnxFp32": latency_fp32 / won.latency_ms if latency_fp32 and won.latency_ms else None,
        "latencyBatchSize": lat_batch,
        "threads": n_threads,
        "latencySpread": won.latency_spread,
        "qualitySamples": len(parts.report),
        "objective": objective.value,
        "measuredOn": measured_on(),
    })

    with r.step("package"):
        stage = work / "stage"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        art = won.artifact
        fmt = "torchscript" if conversion == ConversionFormat.torchscript else "onnx"
        in_sig, out_sig = _artifact_signature(source, spec)
        _check_artifact_io(art, fmt, in_sig, out_sig)
        from ..triton.config import ConfigError
        from ..triton.repository import write_repository

        try:
            model_dir = write_repository(stage / "repository", name, art, artifact_format=fmt, inputs=in_sig, outputs=out_sig,
                                         serving=spec.serving, target=spec.target)
        except ConfigError as exc:
            raise InputError("spec.serving", str(exc)) from None
        golden_n = min(validation.size, max(GOLDEN_MIN, spec.monitoring.golden_probe.samples))
        golden_inputs = {k: v[:golden_n] for k, v in validation.inputs.items()}
        golden_outputs = _run_artifact(art, source, won.plan.graph_level, golden_inputs, eval_batch)
        np.savez(stage / "golden.npz", **golden_inputs, **{t.name: a for t, a in zip(out_sig, golden_outputs)})
        files = storage.file_digests(stage)
        digest = storage.digest.digest_of(files)
        model_rel = next(p for p in files if p.startswith(f"repository/{name}/1/model.") and not p.endswith(".py"))
        size = (stage / model_rel).stat().st_size
        compress = Target(spec.target) != Target.cloud
        transfer: dict[str, Any] = {}
        if compress:  # what an edge node or device downloads: the package as a gzip-compressed tar
            from ..storage.presigned import GZIP_LEVEL, write_archive

            transfer = {"transferBytes": write_archive(stage, work / "transfer.tar.gz", compress=True),
                        "transferCompression": f"tar+gzip level {GZIP_LEVEL} (model repository and golden samples)"}
        report = {
            "name": name,
            "specHash": shash,
            "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "worker": _environment(n_threads),
            "source": {"uri": spec.model.uri, "format": source.kind, "sizeBytes": source.size_bytes, "sha256": storage.file_sha256(source.path),
                       "inputs": _dump(source.inputs), "outputs": _dump(source.outputs)},
            "data": {
                "validation": {"uri": validation.uri, "samples": validation.size, "labels": validation.labels is not None,
                               "selectionSamples": len(parts.selection), "reportSamples": len(parts.report), "heldOut": parts.held_out,
                               "gateBatchSizes": gate_batches},
                "calibration": {"uri": calibration.uri, "samples": calibration.size} if calibration else None,
            },
            "artifact": {
                "uri": output, "sha256": digest, "format": fmt, "modelFile": model_rel, "sizeBytes": size,
                "originalSizeBytes": source.size_bytes, "sizeRatio": rep.rounded(source.size_bytes / size if size else 0.0, 4),
                "inputs": _dump(in_sig), "outputs": _dump(out_sig), "backend": _backend(model_dir), "files": files,
                "graphOptimizationLevel": won.plan.graph_level, **transfer, **_onnx_facts(art, fmt),
            },
            "optimization": rep.rounded({
                "recipe": won.plan.name,
                "plan": won.plan.describe(),
                "qualityBefore": quality_before,
                "qualityAfter": quality_after,
                "qualityOn": (f"held-out validation samples ({len(parts.report)})" if parts.held_out
                              else f"all validation samples ({len(parts.report)}): too few to hold some out"),
                **figures,
                "originalRuntime": _framework(source),
                "selectionQualityAfter": won.quality,
                "gate": spec.optimization.quality_gate.model_dump(mode="json", by_alias=True),
                "task": task.value,
                "search": bool(opt.search.enabled),
                "candidates": [rep.candidate_entry(o, full=True) for o in outcomes],
                **{k: v for k, v in won.details.items()},
            }),
            "golden": {"file": "golden.npz", "samples": golden_n, "inputs": [t.name for t in in_sig], "outputs": [t.name for t in out_sig]},
            "steps": r.steps,
        }
        (stage / storage.REPORT).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        (stage / storage.MARKER).write_text(json.dumps({"sha256": digest, "specHash": shash}) + "\n", encoding="utf-8")

    with r.step("publish"):
        try:
            if upload_url_file:
                from ..storage.presigned import put_archive

                put_archive(stage, upload_url_file, output, compress=compress)
            else:
                storage.publish_dir(stage, output, base_dir=base_dir)
        except storage.StorageError as exc:
            raise InputError("--output", str(exc)) from None
        log.info("published %s (sha256 %s)", output, digest)

    return rep.summary(
        spec_hash=shash, uri=output, sha256=digest, fmt=fmt, size_bytes=size, original_size_bytes=source.size_bytes,
        recipe=won.plan.name, quality_before=quality_before, quality_after=quality_after, figures=figures, outcomes=outcomes, chosen=best,
        transfer_bytes=transfer.get("transferBytes"),
    )


# --- one candidate --------------------------------------------------------------------------------


def _float_model(
    r: Run, plan: Plan, source: SourceModel, calibration: Dataset | None, validation: Dataset, task: Task, samples: Dataset | None = None
) -> tuple[Path, dict[str, Any]]:
    """The clipped/pruned float model of `plan` (ONNX, or TorchScript for conversion.format
    torchscript), shared by every plan with the same transform. Structured pruning of an ONNX
    artifact removes the channels and attention heads from the exported graph (shrink.py,
    heads.py), scored on `samples` (calibration data, else the validation selection part); into
    TorchScript it zeroes channels."""
    key = "float:" + plan.transform_key()
    if key in r.cache:
        return r.cache[key]
    d = r.work / "float" / str(len([k for k in r.cache if k.startswith("float:")]))
    d.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {}
    conversion = r.spec.conversion
    shrinking = plan.pruning.method == PruningMethod.structured and ConversionFormat(conversion.format) == ConversionFormat.onnx
    weight_pruning = Pruning() if shrinking else plan.pruning
    if source.is_torch:
        from .convert import export_onnx, save_torchscript
        from .transform import transform_torch

        module = source.load_fresh()
        clip_stats, prune_stats = transform_torch(module, plan.clipping, weight_pruning, calibration=calibration, inputs=source.inputs, task=task.value)
        if ConversionFormat(conversion.format) == ConversionFormat.torchscript:
            path = save_torchscript(source.kind, module, d / "model.pt")
        else:
            sample = sample_feeds(source.inputs, validation.inputs)
            path = export_onnx(source.kind, module, d / "model.onnx", inputs=source.inputs, outputs=source.outputs, conversion=conversion, sample=sample)
    else:
        import onnx

        from .onnxweights import transform_onnx

        model, clip_stats, prune_stats = transform_onnx(source.onnx_model, plan.clipping, weight_pruning)
        path = d / "model.onnx"
        onnx.save(model, str(path))
    if plan.clipping.method.value != "none":
        details["clipping"] = clip_stats.as_dict()
    if shrinking:
        details["pruning"] = _shrunk(path, plan.pruning.sparsity, calibration or samples)
    elif plan.pruning.method != PruningMethod.none:
        details["pruning"] = prune_stats.as_dict()
    r.cache[key] = (path, details)
    return path, details


def _shrunk(path: Path, amount: float, samples: Dataset | None) -> dict[str, Any]:
    """Remove `amount` of the prunable channels of the ONNX model at `path` (in place)."""
    import onnx

    from .heads import ort_check
    from .shrink import ort_sampler, shrink

    model = onnx.load(str(path))
    feeds = None if samples is None else samples.take(SHRINK_SAMPLES).inputs
    shrunk, stats = shrink(model, amount, sample=ort_sampler(feeds) if feeds else None, check=ort_check(feeds) if feeds else None)
    onnx.save(shrunk, str(path))
    h = stats.heads
    if h.blocks:
        log.info("structured pruning: %d of %d attention heads removed in %d blocks%s", h.removed, h.heads, h.blocks,
                 f" (heads left whole: {h.refused})" if h.refused else "")
    if not stats.groups:
        log.info("structured pruning: no layer whose channels can leave safely (%d producers feed residual adds, reshapes, "
                 "grouped convolutions or outputs): the candidate is the unpruned model", stats.skipped)
    else:
        log.info("structured pruning: %d of %d channels removed in %d layers (%d left whole: residual, grouped or shared); parameters %d -> %d",
                 stats.removed, stats.channels, stats.groups, stats.skipped, stats.params_before, stats.params_after)
    return stats.as_dict()


def _candidate(
    r: Run, idx: int, plan: Plan, source: SourceModel, validation: Dataset, calibration: Dataset | None, reference: list[np.ndarray],
    parts: Split, view: View, gate_batches: list[int], task: Task, digests: dict[str, str],
) -> Outcome:
    from .quantize import match_names, preprocess, quantize

    float_path, details = _float_model(r, plan, source, calibration, validation, task, validation.subset(parts.selection))
    details = dict(details)
    q = plan.quantization
    mode = QuantizationMode(q.mode)
    cdir = r.work / "candidates" / f"{idx:02d}"
    cdir.mkdir(parents=True, exist_ok=True)
    if float_path.suffix == ".pt":
        art = cdir / "model.pt"
        shutil.copyfile(float_path, art)
    elif mode == QuantizationMode.none:
        art = float_path
    else:
        pre_key = "pre:" + plan.transform_key()
        if pre_key not in r.cache:
            r.cache[pre_key] = preprocess(float_path, float_path.with_name("model.pre.onnx"))
        pre = r.cache[pre_key]
        exclude: list[str] = []
        if q.scope == QuantizationScope.partial and mode != QuantizationMode.fp16:
            import onnx

            model = onnx.load(str(pre), load_external_data=False)
            if q.sensitive_layers.names:
                field_name = "spec.optimization.quantization.sensitiveLayers.names"
                exclude += match_names(model, q.sensitive_layers.names, field_name)
            if q.sensitive_layers.auto:
                exclude += [n for n in _sensitive(r, plan, pre, validation.subset(parts.selection), reference, parts, calibration) if n not in exclude]
            details["excludedNodes"] = exclude
        art = cdir / "model.onnx"
        res = quantize(pre, art, q, calibration=calibration, input_names=[t.name for t in source.inputs], exclude=exclude)
        details["quantizedNodes"] = res.quantized_nodes
        if res.blocked_fp16_ops:
            details["fp16BlockedOps"] = res.blocked_fp16_ops
    digest = storage.file_sha256(art)
    if digest in digests:
        return Outcome(plan, reason=f"skipped: the same model file as {digests[digest]}", details={"identicalTo": digests[digest]})
    digests[digest] = plan.name
    o = Outcome(plan, details=details, artifact=art)
    runner = _runner_or_fail(art, source, plan.graph_level)
    verdicts, by_batch = [], {}
    outputs_b = None
    for b in gate_batches:
        idx_b = parts.selection if b != 1 or len(gate_batches) == 1 else parts.selection[:BATCH1_SAMPLES]
        if b == gate_batches[-1]:
            outputs_b = _run_or_fail(runner, validation.inputs, b)
            outs = [x[idx_b] for x in outputs_b]
        else:
            outs = _run_or_fail(runner, {k: v[idx_b] for k, v in validation.inputs.items()}, b)
        before = _quality(task, reference, validation, idx_b)
        after = compare(task, [x[idx_b] for x in reference], outs, _take(validation.labels, idx_b), _take(validation.targets, idx_b), view.subset(idx_b))
        by_batch[str(b)] = after
        verdicts.append((b, gate(task, before, after, r.spec.optimization.quality_gate)))
    assert outputs_b is not None
    o.quality = worst(list(by_batch.values()))
    failed = [(b, v) for b, v in verdicts if not v.passed]
    o.passed = not failed
    o.reason = "" if not failed else (failed[0][1].reason + (f" (at batch {failed[0][0]})" if len(gate_batches) > 1 else ""))
    details["qualityByBatch"] = by_batch
    details["heldOutQuality"] = compare(task, [x[parts.report] for x in reference], [x[parts.report] for x in outputs_b],
                                        _take(validation.labels, parts.report), _take(validation.targets, parts.report), view.subset(parts.report))
    o.details = details
    o.size_bytes = art.stat().st_size
    if Target(r.spec.target) != Target.cloud:
        o.transfer_bytes = gzip_size(art)
    return o


def gzip_size(path: Path) -> int:
    """Size of `path` gzip-compressed at the level the edge/device archive uses: zeros of pruned
    weights cost (almost) nothing in transfer."""
    import zlib

    from ..storage.presigned import GZIP_LEVEL

    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += len(comp.compress(chunk))
    return n + len(comp.flush())


def _take(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[idx]


# Quality keys where higher is better, in the order they decide which rejected candidate came closest.
_CLOSEST_KEYS = ("agreement", "top1", "cosine", "minCosine", "r2")


def _closest_to_gate(gated: list[Outcome]) -> Outcome:
    """The rejected candidate whose quality came closest to the gate: its metric is the one worth
    showing against the gate (the first in _CLOSEST_KEYS they all measured; else the first tried)."""
    for key in _CLOSEST_KEYS:
        if all(key in o.quality for o in gated):
            return max(gated, key=lambda o: o.quality[key])
    return gated[0]


def _quality(task: Task, reference: list[np.ndarray], ds: Dataset, idx: np.ndarray) -> dict[str, float]:
    return reference_quality(task, [x[idx] for x in reference], _take(ds.labels, idx), _take(ds.targets, idx))


def _exported(r: Run, source: SourceModel, calibration: Dataset | None, validation: Dataset, task: Task) -> Path:
    """The unquantized, untransformed ONNX conversion of a torch source (the fp32 baseline; the
    candidates without clipping or pruning share it)."""
    try:
        return _float_model(r, Plan("fp32", Quantization(), Clipping(), Pruning()), source, calibration, validation, task)[0]
    except WorkerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors
        raise OptimizationError("spec.conversion", f"the model could not be converted to ONNX: {type(exc).__name__}: {first_line(exc)}") from None


def _quantizable_counts(path: Path) -> dict[str, int]:
    """{op type: how many of its nodes carry a weight quantization would convert}."""
    import onnx

    from .quantize import quantizable_nodes

    return dict(Counter(n.op_type for n in quantizable_nodes(onnx.load(str(path), load_external_data=False))))


def _gate_batches(spec: ModelDeploymentSpec, fixed: int | None) -> list[int]:
    """Batch sizes the gate evaluates at: 1 and the serving maxBatchSize (dynamic int8 scales
    activations per batch, kernels differ by shape), or the model's fixed batch."""
    if fixed:
        return [fixed]
    if Target(spec.target) == Target.device:
        top = EVAL_BATCH_DEVICE
    else:
        top = (spec.serving or Serving()).max_batch_size or 1
    return sorted({1, top})


def _view(spec: ModelDeploymentSpec, source: SourceModel, validation: Dataset) -> View:
    """How the gate compares outputs. That pooling and maskInput need task: embedding is a rule of
    api/rules.py (the worker's load_spec enforces it); here: the mask names a [batch, sequence] input."""
    g = spec.optimization.quality_gate
    field_name = "spec.optimization.qualityGate.maskInput"
    mask = None
    if g.mask_input is not None:
        t = next((t for t in source.inputs if t.name == g.mask_input), None)
        if t is None:
            names = ", ".join(t.name for t in source.inputs)
            raise InputError(field_name, f"'{g.mask_input}' is not an input of the model (inputs: {names})")
        if len(t.shape) != 2 or not (is_integer(t) or DType(t.dtype) in (DType.bool_, DType.float32)):
            raise InputError(field_name, f"'{t.name}' must be a [batch, sequence] mask (it is {DType(t.dtype).value} {list(t.shape)})")
        mask = validation.inputs[t.name]
    return View(mask=mask, pooling=Pooling(g.pooling or Pooling.none))


def _check_view(view: View, reference: list[np.ndarray], spec: ModelDeploymentSpec) -> None:
    out = reference[0]
    if view.pooling != Pooling.none and out.ndim < 3:
        raise InputError("spec.optimization.qualityGate.pooling",
                         f"pooling needs a token-level first output [batch, sequence, hidden]; it is {list(out.shape)}")
    if view.mask is not None and (out.ndim < 2 or out.shape[:2] != view.mask.shape) and view.pooling == Pooling.none:
        raise InputError("spec.optimization.qualityGate.maskInput",
                         f"the mask {list(view.mask.shape)} does not match the first output {list(out.shape)}: "
                         "its first two axes must be [batch, sequence]")


def _framework(source: SourceModel) -> str:
    return {ModelFormat.onnx.value: "ONNX Runtime fp32", ModelFormat.torchscript.value: "TorchScript",
            ModelFormat.torch_export.value: "PyTorch eager"}.get(source.kind, source.kind)


def _speedups(before: float, fp32: float | None, after: float) -> str:
    text = f"{before / after:.2f}x the original's speed" if after else "?"
    if fp32 is not None and after:
        text += f", {fp32 / after:.2f}x ONNX Runtime fp32's"
    return text


def _measure_latencies(
    r: Run, ref_runner: OrtRunner | TorchRunner, fp32_runner: OrtRunner | None, outcomes: list[Outcome], source: SourceModel,
    lat_inputs: dict[str, np.ndarray],
) -> tuple[Any, Any]:
    """Latency of the original, of its ONNX Runtime fp32 conversion (when there is one) and of
    every built candidate, side by side in LATENCY_ROUNDS interleaved rounds (rejected
    candidates: one). Sets each outcome's latency_ms and latency_spread; returns the original's
    and the fp32 conversion's Latency (or None)."""
    runners: list[OrtRunner | TorchRunner] = [ref_runner] + ([fp32_runner] if fp32_runner is not None else [])
    timed = [o for o in outcomes if o.artifact is not None]
    runners += [_runner(o.artifact, source, o.plan.graph_level) for o in timed]
    first = len(runners) - len(timed)
    fns = [lambda runner=runner: runner.run(lat_inputs) for runner in runners]
    res = measure_interleaved(fns, rounds=LATENCY_ROUNDS, rounds_for=lambda i: LATENCY_ROUNDS if i < first or timed[i - first].passed else 1,
                              stop=r.deadline_near)
    for o, lat in zip(timed, res[first:]):
        o.latency_ms, o.latency_spread = lat.ms, (lat.spread if lat.rounds > 1 else None)
    return res[0], (res[1] if fp32_runner is not None else None)


def _sensitive(r: Run, plan: Plan, pre: Path, validation: Dataset, reference: list[np.ndarray], parts: Split, calibration: Dataset | None) -> list[str]:
    from . import sensitivity

    q = plan.quantization
    if q.sensitive_layers.dtype == KeptType.int8:  # only MatMuls have 8-bit blocks (quantize._int4): rank only them
        q = q.model_copy(update={"op_types": ["MatMul"]})
    key = json.dumps(["sens", plan.transform_key(), QuantizationMode(q.mode).value, q.per_channel, q.op_types])
    if key not in r.cache:
        t0 = time.monotonic()
        scores = sensitivity.measure(pre, q, validation=validation, reference=[x[parts.selection] for x in reference], calibration=calibration,
                                     input_names=list(validation.inputs), work=r.work / "sensitivity",
                                     deadline=r.deadline_near)
        r.cache[key] = scores
        log.info("sensitivity: measured %d layers in %.1f s", len(scores), time.monotonic() - t0)
    scores = r.cache[key]
    chosen = sensitivity.rank_sensitive(scores, q.sensitive_layers.count)
    log.info("sensitive layers kept in %s: %s", "8 bits" if q.sensitive_layers.dtype == KeptType.int8 else "float", ", ".join(chosen) or "none")
    return chosen


def _runner(art: Path, source: SourceModel, level: str) -> OrtRunner | TorchRunner:
    if art.suffix == ".pt":
        import torch

        with captured():
            module = torch.jit.load(str(art), map_location="cpu")
        module.eval()
        return TorchRunner(module, source.inputs)
    return OrtRunner(art, level=level)


def _runner_or_fail(art: Path, source: SourceModel, level: str) -> OrtRunner | TorchRunner:
    try:
        return _runner(art, source, level)
    except Exception as exc:  # noqa: BLE001 - any error loading the optimized model fails the candidate with its reason
        raise OptimizationError("spec.optimization", f"the optimized model fails to load: {first_line(exc)}") from None


def _run_or_fail(runner: OrtRunner | TorchRunner, inputs: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    try:
        return run_all(runner, inputs, batch)
    except Exception as exc:  # noqa: BLE001 - any error running the optimized model fails the candidate with its reason
        raise OptimizationError("spec.optimization", f"the optimized model fails to run: {first_line(exc)}") from None


def _run_artifact(art: Path, source: SourceModel, level: str, inputs: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    return _run_or_fail(_runner_or_fail(art, source, level), inputs, batch)


# --- helpers --------------------------------------------------------------------------------------


def _artifact_signature(source: SourceModel, spec: ModelDeploymentSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if not source.is_torch:
        return list(source.inputs), list(source.outputs)
    ins = [with_dynamic(t, dynamic_axes(t, spec.conversion, is_input=True)) for t in source.inputs]
    outs = [with_dynamic(t, dynamic_axes(t, spec.conversion, is_input=False)) for t in source.outputs]
    return ins, outs


def _check_artifact_io(art: Path, fmt: str, ins: list[TensorSpec], outs: list[TensorSpec]) -> None:
    if fmt != "onnx":
        return
    runner = OrtRunner(art, level="basic")
    if runner.input_names != [t.name for t in ins] and sorted(runner.input_names) != sorted(t.name for t in ins):
        raise OptimizationError("spec.conversion", f"the artifact's inputs {runner.input_names} differ from the signature {[t.name for t in ins]}")
    if runner.output_names != [t.name for t in outs]:
        raise OptimizationError("spec.conversion", f"the artifact's outputs {runner.output_names} differ from the signature {[t.name for t in outs]}")


def _onnx_facts(art: Path, fmt: str) -> dict[str, Any]:
    if fmt != "onnx":
        return {}
    import onnx

    m = onnx.load(str(art), load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    weights: dict[str, int] = {}
    for init in m.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type).lower()
        weights[name] = weights.get(name, 0) + int(np.prod(init.dims)) if init.dims else weights.get(name, 0) + 1
    return {"opset": opset, "weightElementsByType": weights}


def _backend(model_dir: Path) -> str:
    text = (model_dir / "config.pbtxt").read_text()
    for line in text.splitlines():
        if line.startswith("backend:"):
            return line.split(":", 1)[1].strip().strip('"')
    return ""


def measured_on(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Where the latencies were taken: the node and pool the Job ran on (from its pod spec, the
    operator's placement) and the machine's architecture, as the worker sees them."""
    out = {"arch": platform.machine()}
    for key, var in (("node", "MODEL_OPERATOR_NODE_NAME"), ("pool", "MODEL_OPERATOR_POOL")):
        if env.get(var):
            out[key] = env[var]
    return out


def _environment(n_threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime

    env: dict[str, Any] = {"python": platform.python_version(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                           "threads": n_threads, "machine": platform.machine()}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), None)
        if cpu:
            env["cpu"] = cpu
    except OSError:
        pass
    return env


def _dump(ts: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": t.name, "dtype": DType(t.dtype).value, "shape": list(t.shape)} for t in ts]


def _sig(ts: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {DType(t.dtype).value} {list(t.shape)}" for t in ts)


def _q(q: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in q.items())


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
