"""`model-operator local up FILE`: the embedded default. Optimize, package and serve a
ModelDeployment on this machine, no cluster.

1. Read the YAML (a whole ModelDeployment or only its spec); plain relative paths in it
   (`model.uri`, `data.*.uri`) resolve relative to the YAML file's directory. The spec is checked
   with `load_spec`, so a bad one fails here the way the operator would refuse it.
2. Run the worker (`model-operator optimize`, a subprocess) with its output in
   `<workdir>/artifact/` (the artifact of docs/contracts.md: `repository/<name>/...`,
   `golden.npz`, `report.json`, `COMPLETE`) and its summary in `<workdir>/summary.json`.
   `--skip-optimize` reuses an artifact already there (it must have its `COMPLETE` marker).
   The workdir defaults to `./_out/<name>`.
3. `target: device`: nothing is served; the status block names the artifact, exit 0.
   Otherwise write `<workdir>/repository/<name>/` from the artifact's ONNX file, its signature
   and the spec's serving block, for the Python backend (the local Triton, nvidia-pytriton's
   build, has no other: `model.py` runs the same ONNX file with ONNX Runtime; see
   `serving_repository`), start the real Triton server
   (`triton.server.TritonServer`) on it, wait for it to be ready, and print a status block shaped
   like the ModelDeployment's `status` (YAML, with the endpoint) on stdout; serve until SIGINT or
   SIGTERM, then stop Triton and exit 0. Progress goes to stderr through logging; Triton's log is
   `<workdir>/triton.log`.

Exit codes: 0 served and stopped cleanly (or packaged, for devices); 2 bad input (the file, the
spec, the worker's exit 2); 3 the worker's quality gate rejected the model; 1 anything else
(including Triton failing to start or dying while serving).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

import yaml

from ..api.types import (
    API_VERSION,
    KIND,
    ArtifactStatus,
    Backend,
    Condition,
    Endpoint,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    OptimizationStatus,
    Phase,
    Serving,
    Target,
)
from ..api.validation import SpecError, load_spec
from ..triton.config import DEFAULT_ONNX_FILE, ConfigError, read_signature
from ..triton.pod_commands import assemble, is_decoupled
from ..triton.repository import VERSION, write_repository

log = logging.getLogger("model_operator.local")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
READY_TIMEOUT_S: Final = 300.0
_URI_SCHEMES: Final = ("s3://", "http://", "https://", "pvc://")


class LocalError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --- reading the file ----------------------------------------------------------------------


def _resolve_path(uri: str, base: Path) -> str:
    """A plain or file:// path made absolute against `base`; URIs with other schemes unchanged."""
    if uri.startswith(_URI_SCHEMES):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the spec dict with `model.uri` and `data.{calibration,validation}.uri` resolved."""
    out = json.loads(json.dumps(spec))
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("uri"), str):
        model["uri"] = _resolve_path(model["uri"], base)
    data = out.get("data")
    if isinstance(data, dict):
        for key in ("calibration", "validation"):
            ref = data.get(key)
            if isinstance(ref, dict) and isinstance(ref.get("uri"), str):
                ref["uri"] = _resolve_path(ref["uri"], base)
    return out


def read_file(path: Path) -> tuple[str, dict[str, Any]]:
    """(name, spec dict with paths resolved) from a ModelDeployment YAML (or a bare spec)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LocalError(f"{path}: {exc.strerror or exc}", EXIT_BAD_INPUT) from None
    except yaml.YAMLError as exc:
        raise LocalError(f"{path}: not valid YAML: {exc}", EXIT_BAD_INPUT) from None
    if not isinstance(doc, dict):
        raise LocalError(f"{path}: expected a ModelDeployment mapping", EXIT_BAD_INPUT)
    if "spec" in doc:
        if doc.get("kind", KIND) != KIND:
            raise LocalError(f"{path}: kind is {doc.get('kind')!r}, expected {KIND}", EXIT_BAD_INPUT)
        spec = doc["spec"]
        name = str((doc.get("metadata") or {}).get("name") or path.stem)
    else:
        spec, name = doc, path.stem
    if not isinstance(spec, dict):
        raise LocalError(f"{path}: spec must be a mapping", EXIT_BAD_INPUT)
    return name, resolve_paths(spec, path.resolve().parent)


# --- the worker ----------------------------------------------------------------------------


def worker_command(spec: dict[str, Any], name: str, output: Path, summary: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "model_operator.cli",
        "optimize",
        "--spec-json",
        json.dumps(spec),
        "--name",
        name,
        "--output",
        str(output),
        "--report-summary",
        str(summary),
    ]


def _child_env() -> dict[str, str]:
    """Our environment, with the directory model_operator was imported from on PYTHONPATH (so
    `python -m model_operator.cli` works from a source checkout too)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{root}{os.pathsep}{old}" if old else root
    return env


def run_worker(spec: dict[str, Any], name: str, output: Path, summary: Path) -> dict[str, Any]:
    """Run `model-operator optimize`; return its summary. Raises LocalError with its exit code."""
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.unlink(missing_ok=True)
    log.info("optimizing %s (worker output %s)", name, output)
    proc = subprocess.run(
        worker_command(spec, name, output, summary),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
        check=False,
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    result: dict[str, Any] = {}
    if summary.exists():
        try:
            result = json.loads(summary.read_text(encoding="utf-8"))
        except ValueError:
            result = {}
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        reason = result.get("reason") or (lines[-1] if lines else f"exit code {proc.returncode}")
        code = proc.returncode if proc.returncode in (2, 3) else EXIT_FAILED
        raise LocalError(f"the optimization worker failed: {reason}", code)
    return result


def existing_summary(artifact: Path, summary: Path) -> dict[str, Any]:
    """The summary of an artifact already in the workdir (for --skip-optimize)."""
    if not (artifact / "COMPLETE").is_file():
        raise LocalError(f"--skip-optimize: {artifact} holds no complete artifact (no COMPLETE marker); run without it", EXIT_BAD_INPUT)
    if summary.is_file():
        try:
            return dict(json.loads(summary.read_text(encoding="utf-8")))
        except ValueError:
            pass
    marker = json.loads((artifact / "COMPLETE").read_text(encoding="utf-8") or "{}")
    return {"ok": True, "specHash": marker.get("specHash"), "artifact": {"uri": str(artifact), "sha256": marker.get("sha256")}}


# --- status --------------------------------------------------------------------------------


def status_block(
    spec: ModelDeploymentSpec, name: str, summary: dict[str, Any], artifact: Path, endpoint: Endpoint | None
) -> dict[str, Any]:
    """A dict shaped like ModelDeploymentStatus (camelCase), for printing."""
    art = dict(summary.get("artifact") or {})
    art.setdefault("uri", str(artifact))
    if summary.get("specHash"):
        art.setdefault("specHash", summary["specHash"])
    serving = endpoint is not None
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    replicas = 1 if serving else None
    message = f"serving {name} at {endpoint.http}" if endpoint else f"packaged for devices at {artifact}"
    status = ModelDeploymentStatus(
        phase=Phase.ready,
        conditions=[
            Condition(type="OptimizationSucceeded", status="True", reason="Optimized", message=str(art.get("uri")), last_transition_time=now),
            Condition(type="ArtifactReady", status="True", reason="Packaged", message=str(art.get("sha256") or ""), last_transition_time=now),
            Condition(
                type="Available",
                status="True",
                reason="TritonReady" if serving else "PackagedOnly",
                message=message,
                last_transition_time=now,
            ),
        ],
        artifact=ArtifactStatus.model_validate(art),
        optimization=OptimizationStatus.model_validate(summary["optimization"]) if summary.get("optimization") else None,
        replicas=replicas,
        ready_replicas=replicas,
        ready=f"{replicas}/{replicas}" if serving else None,
        endpoint=endpoint,
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def print_status(block: dict[str, Any], name: str) -> None:
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "status": block}
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    sys.stdout.flush()


# --- serving -------------------------------------------------------------------------------


class _Stop:
    """Set by SIGINT/SIGTERM; serving waits on it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum
        self.event.set()


def serve(repository: Path, name: str, args: argparse.Namespace, log_file: Path, on_ready: Any) -> int:
    from ..triton.server import TritonError, TritonServer

    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(
        repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode="explicit",
        load_models=[name],
        log_file=log_file,
    )
    try:
        try:
            server.start()
            if not server.wait_ready(timeout=READY_TIMEOUT_S, cancel=stop.event):
                log.info("stopping before Triton was ready")
                return EXIT_OK
        except TritonError as exc:
            raise LocalError(str(exc)) from None
        on_ready(server)
        while not stop.event.wait(0.5):
            code = server.process.poll() if server.process else None
            if code is not None:
                raise LocalError(f"Triton exited with code {code} while serving:\n{server.log_tail()}")
        log.info("received %s: stopping Triton", signal.Signals(stop.signal or signal.SIGINT).name)
        return EXIT_OK
    finally:
        code = server.stop()
        if code not in (None, 0):
            log.warning("Triton exited with code %s; see %s", code, log_file)
        for s, handler in old.items():
            signal.signal(s, handler)


def serving_repository(source: Path, repository: Path, spec: ModelDeploymentSpec) -> Path:
    """`<repository>/<name>/` for the local Triton from the artifact's model directory `source`.

    Like the operator's init container, the config is generated again from the spec's serving
    block (a serving change needs no new optimization), with the signature read from the
    artifact's config. The local Triton has only the Python backend, so the ONNX file is served
    by `model.py` with ONNX Runtime, on CPU instances (this machine's GPUs are not scheduled).
    A generation artifact (a decoupled Python-backend model) is copied with its own config, as the
    init container does."""
    if source.parent.name == "repository" and is_decoupled((source / "config.pbtxt").read_text(encoding="utf-8")):
        try:
            return assemble(source.parent.parent, source.name, spec.target.value, spec.serving or Serving(), repository)
        except (FileNotFoundError, OSError) as exc:
            raise LocalError(f"{source}: {exc}", EXIT_BAD_INPUT) from None
    onnx_file = source / VERSION / DEFAULT_ONNX_FILE
    if not onnx_file.is_file():
        raise LocalError(
            f"{source}: the local Triton serves ONNX artifacts only (it has only the Python backend) and "
            f"{onnx_file.relative_to(source)} is missing: set conversion.format: onnx",
            EXIT_BAD_INPUT,
        )
    try:
        inputs, outputs, _ = read_signature((source / "config.pbtxt").read_text(encoding="utf-8"))
        serving = (spec.serving or Serving()).model_copy(update={"gpus": 0, "backend": Backend.python})
        return write_repository(
            repository,
            source.name,
            onnx_file,
            artifact_format="onnx",
            inputs=inputs,
            outputs=outputs,
            serving=serving,
            target=spec.target,
            backend=Backend.python,
        )
    except (ConfigError, OSError, ValueError) as exc:
        raise LocalError(f"{source}: {exc}", EXIT_BAD_INPUT) from None


def _endpoint(server: Any, name: str, openai: str | None = None) -> Endpoint:
    return Endpoint(
        http=server.http_url,
        grpc=server.grpc_endpoint,
        metrics=server.metrics_url,
        model_name=name,
        openai=openai,
    )


def start_openai_front(args: argparse.Namespace, triton_url: str, name: str) -> Any:
    """The OpenAI-compatible front (triton/openai_api.py) for a generation model, in a thread:
    the same API the operator's pods serve on their `openai` port."""
    from ..triton.openai_api import OpenAiServer

    try:
        front = OpenAiServer((args.host, args.openai_port), triton_url, name)
    except OSError as exc:
        raise LocalError(f"--openai-port {args.openai_port}: {exc}") from None
    threading.Thread(target=front.serve_forever, name="openai-front", daemon=True).start()
    return front


def up(args: argparse.Namespace) -> int:
    path = Path(args.file)
    name, spec_dict = read_file(path)
    try:
        spec = load_spec(spec_dict)
    except SpecError as exc:
        raise LocalError(f"{path}: {exc}", EXIT_BAD_INPUT) from None
    workdir = Path(args.workdir) if args.workdir else Path.cwd() / "_out" / name
    workdir = workdir.resolve()
    artifact = workdir / "artifact"
    summary_file = workdir / "summary.json"
    if args.skip_optimize:
        summary = existing_summary(artifact, summary_file)
        log.info("reusing the artifact in %s", artifact)
    else:
        summary = run_worker(spec_dict, name, artifact, summary_file)
    if spec.target == Target.device:
        log.info("target device: packaged %s, nothing to serve", artifact)
        print_status(status_block(spec, name, summary, artifact, None), name)
        return EXIT_OK
    source = artifact / "repository" / name
    if not (source / "config.pbtxt").is_file():
        raise LocalError(f"{source}/config.pbtxt is missing: the artifact has no Triton model {name!r}")
    repository = workdir / "repository"
    serving_repository(source, repository, spec)
    fronts: list[Any] = []

    def on_ready(server: Any) -> None:
        openai = None
        if spec.model.task.value == "generation":
            fronts.append(start_openai_front(args, server.http_url, name))
            openai = f"http://{args.host}:{fronts[0].server_address[1]}/v1"
        endpoint = _endpoint(server, name, openai)
        log.info("Triton is ready: %s (model %s), gRPC %s, metrics %s", endpoint.http, name, endpoint.grpc, endpoint.metrics)
        if openai:
            log.info("OpenAI-compatible API: %s", openai)
        print_status(status_block(spec, name, summary, artifact, endpoint), name)
        log.info("serving; Ctrl-C stops")

    try:
        return serve(repository, name, args, workdir / "triton.log", on_ready)
    finally:
        for front in fronts:
            front.shutdown()
            front.server_close()


def main(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if getattr(args, "local_command", "up") != "up":
        sys.stderr.write(f"error: unknown local command {args.local_command}\n")
        return EXIT_BAD_INPUT
    try:
        return up(args)
    except LocalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
