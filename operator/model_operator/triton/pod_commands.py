"""Commands that run inside the pods the operator creates, on the worker image:

- `assemble` (the Triton pod's init container): fetch an artifact, refuse it unless its digest
  is the one the report promised, and write the model repository with a config.pbtxt for the
  current serving block;
- `probe` (a container beside Triton): send the golden samples to the pod's own Triton on an
  interval and export the verdict as Prometheus gauges;
- `artifacts delete|verify` (the finalizer's cleanup Job, and by hand).

Each prints one line on failure and writes it where Kubernetes shows it (the termination log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..api.types import Backend, Serving, Target

TERMINATION_LOG = Path("/dev/termination-log")


def _fail(message: str, code: int, summary_path: str | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    target = Path(summary_path) if summary_path else TERMINATION_LOG
    if not summary_path and not TERMINATION_LOG.exists():
        return code  # not in a pod: stderr is the report
    try:
        target.write_text(json.dumps({"ok": False, "reason": message})[:4000] if summary_path else message[:4000])
    except OSError:
        pass
    return code


def _artifact_format(model_dir: Path) -> str:
    version = model_dir / "1"
    if (version / "model.onnx").exists():
        return "onnx"
    if (version / "model.pt").exists():
        return "torchscript"
    raise FileNotFoundError(f"{model_dir}: no model.onnx or model.pt under 1/")


def is_decoupled(config_text: str) -> bool:
    """Whether a config.pbtxt declares a decoupled model (one request, a stream of responses)."""
    return bool(re.search(r"model_transaction_policy\s*\{[^}]*decoupled\s*:\s*true", config_text))


def assemble(artifact: Path, name: str, target: str, serving: Serving, output: Path) -> Path:
    """Copy `artifact/repository/<name>` to `output/<name>` with config.pbtxt regenerated.

    A decoupled model (a generation artifact: triton/generation_model.py streaming tokens) keeps
    its own config: its inputs are Triton's generate extension's and it batches nothing, so of the
    serving block only instanceCount applies."""
    from . import generation_model
    from .config import build_model_config, read_signature

    source = artifact / "repository" / name
    if not (source / "config.pbtxt").is_file():
        raise FileNotFoundError(f"{source}/config.pbtxt: the artifact holds no model named {name!r}")
    original = (source / "config.pbtxt").read_text()
    if is_decoupled(original):
        if not (source / "1" / "model.py").is_file():
            raise FileNotFoundError(f"{source}/1/model.py: a decoupled model needs its Python-backend model")
        return _copy_model(source, output / name, generation_model.config_pbtxt(name, serving.instance_count))
    inputs, outputs, _ = read_signature(original)
    backend: Backend | str | None = serving.backend
    if backend is None and (source / "1" / "model.py").exists():
        backend = Backend.python
    text = build_model_config(
        name, inputs, outputs, artifact_format=_artifact_format(source), serving=serving, target=Target(target), backend=backend
    )
    return _copy_model(source, output / name, text)


def _copy_model(source: Path, dest: Path, config_text: str) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    (dest / "config.pbtxt").write_text(config_text)
    return dest


def _download(args: argparse.Namespace, dest: Path) -> Path:
    """The artifact, from its pre-signed GET when the pod was given one, else from its URI."""
    from ..storage import download_dir
    from ..storage.presigned import get_archive

    url_file = getattr(args, "artifact_url_file", None)
    if url_file:
        return get_archive(url_file, dest, args.artifact)
    return download_dir(args.artifact, dest)


def assemble_main(args: argparse.Namespace) -> int:
    from ..storage import StorageError, verify_dir

    try:
        serving = Serving.model_validate(json.loads(args.serving_json or "{}"))
    except ValueError as exc:
        return _fail(f"--serving-json: {exc}".splitlines()[0], 2)
    with tempfile.TemporaryDirectory(prefix="mo-assemble-") as tmp:
        try:
            local = _download(args, Path(tmp) / "artifact")
            digest = verify_dir(local, args.sha256, uri=args.artifact)
            dest = assemble(local, args.name, args.target, serving, Path(args.output))
            golden = local / "golden.npz"
            golden_output = getattr(args, "golden_output", None)
            if golden_output and golden.is_file():
                shutil.copyfile(golden, Path(golden_output) / "golden.npz")
        except StorageError as exc:
            return _fail(f"refusing to serve {args.artifact}: {exc}", 3)
        except (FileNotFoundError, ValueError) as exc:
            return _fail(f"{args.artifact}: {exc}", 2)
    print(f"assembled {dest} from {args.artifact} (sha256 {digest[:12]}…)")
    return 0


# What the `probe` container exports, by status.quality key: (metric, help). Each series carries
# the labels modeldeployment, revision and track; Prometheus adds namespace and pod.
PROBE_GAUGES: dict[str, tuple[str, str]] = {
    "time": ("model_operator_golden_probe_timestamp_seconds", "Unix time of the last probe that reached the model."),
    "ok": ("model_operator_golden_probe_ok", "1 when the last probe compared the answers, 0 when it could not."),
    "passed": ("model_operator_golden_passed", "1 when the last probe's answers met the quality gate, 0 when not."),
    "agreement": ("model_operator_golden_agreement", "Share of golden samples whose live top-1 answer matched the report."),
    "cosine": ("model_operator_golden_cosine", "Lowest mean cosine similarity of live and reported outputs."),
    "maxAbsError": ("model_operator_golden_max_abs_error", "Largest absolute difference of live and reported outputs."),
    "samples": ("model_operator_golden_samples", "Golden samples the last probe sent."),
}


def probe_values(result: Any, now: float) -> dict[str, float | None]:
    """The gauges for one probe's outcome: a ProbeResult, or the ProbeError's message when the
    answers could not be compared (then no verdict is exported: None removes a series)."""
    if isinstance(result, str):
        return {"time": now, "ok": 0.0, "passed": None, "agreement": None, "cosine": None, "maxAbsError": None, "samples": None}
    return {"time": now, "ok": 1.0, "passed": 1.0 if result.passed else 0.0, "agreement": result.agreement,
            "cosine": result.cosine, "maxAbsError": result.max_abs_error, "samples": float(result.samples)}


def _probe_once(endpoint: str, model: str, golden: Path, gate: dict[str, Any], samples: int, wait: float) -> Any:
    """A ProbeResult, the reason the answers could not be compared, or None while Triton is not
    ready (a pod starting or Triton restarting: nothing is claimed, the last probe time ages)."""
    from .client import ProbeError, probe, wait_ready

    try:
        wait_ready(endpoint, model, timeout=wait)
    except Exception:  # noqa: BLE001 - not ready (TimeoutError) or unreachable: try again next interval
        return None
    if not golden.is_file():
        return f"{golden}: no golden set (the artifact holds no golden.npz)"
    try:
        return probe(endpoint, model, golden, gate, samples=samples)
    except ProbeError as exc:
        return str(exc)


def probe_main(args: argparse.Namespace) -> int:
    """(the `probe` container beside Triton) every --interval seconds, send --samples golden samples
    to the pod's own Triton, judge the answers against the quality gate, and export the verdict as
    Prometheus gauges on --port (the ServiceMonitor scrapes it; the operator reads the whole fleet
    with one query). Logs one line when the verdict changes, not per probe."""
    import signal
    import threading
    import time

    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    gate: dict[str, Any] = json.loads(args.gate_json or "{}")
    labels = {"modeldeployment": args.model, "revision": args.revision, "track": args.track}
    registry = CollectorRegistry()
    gauges = {key: Gauge(metric, doc, list(labels), registry=registry) for key, (metric, doc) in PROBE_GAUGES.items()}
    if args.port:
        start_http_server(args.port, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    said = ""
    while True:
        result = _probe_once(args.triton, args.model, Path(args.golden), gate, args.samples, wait=min(args.interval, 30))
        if result is not None:
            for key, value in probe_values(result, time.time()).items():
                if value is not None:
                    gauges[key].labels(**labels).set(value)
                else:
                    with contextlib.suppress(KeyError):
                        gauges[key].remove(*labels.values())
            verdict = result if isinstance(result, str) else f"golden probe: {json.dumps(result.summary(), sort_keys=True)}"
            if verdict != said:
                print(verdict, file=sys.stderr if isinstance(result, str) else sys.stdout, flush=True)
                said = verdict
            if args.once:
                return 0 if not isinstance(result, str) and result.passed else 1
        elif args.once:
            return _fail(f"{args.triton}: Triton or model {args.model} not ready", 2)
        if stop.wait(args.interval):
            return 0


def artifacts_main(args: argparse.Namespace) -> int:
    from ..storage import StorageError, delete_prefix, verify

    try:
        if args.artifacts_command == "delete":
            count = delete_prefix(args.uri, keep_root=args.keep_root)
            print(f"deleted {count} file(s) under {args.uri}")
        else:
            digest = verify(args.uri, args.sha256)
            print(f"{args.uri}: complete, sha256 {digest}")
    except StorageError as exc:
        return _fail(str(exc), 2)
    return 0


def autotune_summary(table: list[Any], chosen: Any, *, cores: int, concurrency: int) -> dict[str, Any]:
    """What the autotune Job reports (the termination log, < 4 KiB for the default grid): the table,
    the row chosen by `tuning.choose`, and the conditions it was measured under."""
    return {
        "ok": chosen is not None,
        "cores": cores,
        "concurrency": concurrency,
        "chosen": chosen.knobs.name if chosen is not None else None,
        "table": [r.as_dict() for r in table],
        **({} if chosen is not None else {"reason": "no config of the sweep answered without errors"}),
    }


def autotune_main(args: argparse.Namespace) -> int:
    """(autotune Job) measure the sweep grid on the Triton at --grpc, on the model `--name` that
    `assemble` wrote into --repository (the server runs with explicit model control on the same
    directory); report the table and the choice."""
    import os

    from .client import wait_ready
    from .config import read_signature
    from .sweep import run_sweep, sample_inputs
    from .tuning import choose, sweep_grid

    try:
        serving = Serving.model_validate(json.loads(args.serving_json or "{}"))
    except ValueError as exc:
        return _fail(f"--serving-json: {exc}".splitlines()[0], 2, args.report_summary)
    source = Path(args.repository) / args.name
    try:
        inputs, outputs, _ = read_signature((source / "config.pbtxt").read_text())
        model_file = source / "1" / "model.onnx"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: the autotune sweep serves ONNX artifacts only")
    except (OSError, ValueError) as exc:
        return _fail(f"{source}: {exc}", 2, args.report_summary)
    cores = args.cores or len(os.sched_getaffinity(0))
    try:
        wait_ready(args.grpc, timeout=args.ready_timeout, protocol="grpc")
        table = run_sweep(
            args.grpc, Path(args.repository), f"{args.name}-sweep", model_file, inputs=inputs, outputs=outputs,
            serving=serving, target=args.target, grid=sweep_grid(cores, limit=args.limit, min_max_batch=serving.max_batch_size),
            request=sample_inputs(inputs),
            concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup, progress=print,
        )
    except Exception as exc:  # noqa: BLE001 - the Job reports what broke; the operator serves the untuned config
        return _fail(f"autotune sweep failed: {exc}".splitlines()[0], 1, args.report_summary)
    chosen = choose(table, min_max_batch=serving.max_batch_size)
    summary = autotune_summary(table, chosen, cores=cores, concurrency=args.concurrency)
    text = json.dumps(summary, separators=(",", ":"))
    if args.report_summary:
        Path(args.report_summary).write_text(text)
    print(text)
    return 0 if summary["ok"] else 1
