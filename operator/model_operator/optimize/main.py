"""`model-operator optimize`: the optimization Job's program.

    model-operator optimize (--spec FILE | --spec-json JSON) [--name NAME] --output DEST
                            [--report-summary FILE] [--work-dir DIR] [--upload-url-file FILE]

Exit codes: 0 success; 2 bad input (spec, data, model file, URI, credentials); 3 quality gate
rejected; 1 anything else. On failure the last line on stderr is `error: <field or file>:
<reason>`, the summary file gets `{"ok": false, "reason": ...}`, and nothing is left at DEST.
Relative paths in a `--spec` file resolve against the file's directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from ..api.validation import SpecError, load_spec
from .errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, InputError, WorkerError, one_line

log = logging.getLogger("model_operator.optimize")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _setup_logging() -> None:
    if log.handlers or logging.getLogger().handlers:
        log.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s optimize: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def read_spec(spec_file: str | None, spec_json: str | None) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """(spec dict, metadata, base dir for relative paths) from --spec or --spec-json. Either
    may hold the whole ModelDeployment or only its spec."""
    import yaml

    if bool(spec_file) == bool(spec_json):
        raise InputError("--spec", "give exactly one of --spec FILE or --spec-json JSON")
    base_dir: Path | None = None
    if spec_file:
        path = Path(spec_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError("--spec", f"{spec_file}: {exc.strerror or exc}") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError("--spec", f"{spec_file}: not valid YAML/JSON: {one_line(str(exc), 200)}") from None
        base_dir = path.resolve().parent
        where = spec_file
    else:
        try:
            doc = json.loads(spec_json or "")
        except ValueError as exc:
            raise InputError("--spec-json", f"not valid JSON: {exc}") from None
        where = "--spec-json"
    if not isinstance(doc, dict):
        raise InputError("--spec" if spec_file else "--spec-json", f"{where}: expected a ModelDeployment or its spec (a mapping)")
    if "spec" in doc and isinstance(doc["spec"], dict) and ("kind" in doc or "apiVersion" in doc or "metadata" in doc):
        return doc["spec"], doc.get("metadata") or {}, base_dir
    return doc, {}, base_dir


def run_worker(
    spec: Any, *, name: str, output: str, work_dir: str | Path | None = None, base_dir: Path | None = None, upload_url_file: str | None = None
) -> dict[str, Any]:
    """Run the pipeline for a parsed spec (ModelDeploymentSpec) and return the summary.
    Raises WorkerError (with exit_code) on failure. For callers inside this package (local runs)."""
    from .pipeline import run
    from .quiet import silence_libraries

    silence_libraries()
    if work_dir is not None:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        return run(spec, name=name, output=output, work=work, base_dir=base_dir, upload_url_file=upload_url_file)
    with tempfile.TemporaryDirectory(prefix="model-operator-optimize-") as tmp:
        return run(spec, name=name, output=output, work=Path(tmp), base_dir=base_dir, upload_url_file=upload_url_file)


def _write_summary(path: str | None, summary: dict[str, Any]) -> None:
    if not path:
        return
    from .report import dumps

    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(dumps(summary))
    except OSError as exc:
        log.warning("could not write the summary to %s: %s", path, exc.strerror or exc)


def main(args: argparse.Namespace) -> int:
    _setup_logging()
    if getattr(args, "progress_port", 0):
        from .progress import serve

        serve(args.progress_port)
    summary_path = getattr(args, "report_summary", None)
    shash = ""
    try:
        spec_dict, metadata, base_dir = read_spec(getattr(args, "spec", None), getattr(args, "spec_json", None))
        spec = load_spec(spec_dict)
        from ..api.hashing import spec_hash

        shash = spec_hash(spec)
        name = getattr(args, "name", None) or metadata.get("name") or "model"
        if not NAME_PATTERN.match(name):
            raise InputError("--name", f"'{name}' is not a valid model name (letters, digits, '_', '.', '-')")
        summary = run_worker(spec, name=name, output=args.output, work_dir=getattr(args, "work_dir", None), base_dir=base_dir,
                             upload_url_file=getattr(args, "upload_url_file", None))
    except WorkerError as exc:
        return _fail(summary_path, shash, exc.line, exc.exit_code, getattr(exc, "candidates", None))
    except SpecError as exc:
        return _fail(summary_path, shash, str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        return _fail(summary_path, shash, "interrupted", EXIT_INTERNAL)
    except Exception as exc:  # noqa: BLE001 - the Job must end with a one-line reason, whatever happened
        log.debug("%s", traceback.format_exc())
        return _fail(summary_path, shash, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
    _write_summary(summary_path, summary)
    opt = summary["optimization"]
    art = summary["artifact"]
    if "tokensPerSecondAfter" in opt:
        log.info("done: %s, %d -> %d bytes, %s -> %s tokens/s, TTFT %s -> %s ms, %s threads, artifact %s", opt["recipe"], art["originalSizeBytes"],
                 art["sizeBytes"], opt["tokensPerSecondBefore"], opt["tokensPerSecondAfter"], opt["ttftMsBefore"], opt["ttftMsAfter"], opt.get("threads"),
                 art["uri"])
        return EXIT_OK
    log.info("done: %s, %d -> %d bytes, latency %s ms (original) / %s ms (ONNX Runtime fp32) -> %s ms at batch %s, %s threads, artifact %s",
             opt["recipe"], art["originalSizeBytes"], art["sizeBytes"], opt["latencyMsBefore"], opt.get("latencyMsOnnxFp32"),
             opt["latencyMsAfter"], opt.get("latencyBatchSize"), opt.get("threads"), art["uri"])
    return EXIT_OK


def _fail(summary_path: str | None, shash: str, reason: str, code: int, candidates: list[dict[str, Any]] | None = None) -> int:
    from .report import failure

    line = one_line(reason)
    _write_summary(summary_path, failure(shash, line, code, candidates))
    for h in log.handlers:
        h.flush()
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    return code
