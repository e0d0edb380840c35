"""`model-operator` entry points. Each subcommand imports its heavy dependencies lazily, so the
operator image never needs torch and `model-operator crd` runs anywhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_crd(args: argparse.Namespace) -> int:
    from .api.crd import render_crd_yaml

    text = render_crd_yaml()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .optimize.main import main as optimize_main

    return optimize_main(args)


def _cmd_openai(args: argparse.Namespace) -> int:
    import logging

    from .triton.openai_api import OpenAiServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    server = OpenAiServer((args.host, args.port), args.triton, args.model)
    logging.getLogger("model_operator.openai").info("OpenAI-compatible API for %s (Triton %s) on http://%s:%d/v1", args.model, args.triton,
                                                    args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _cmd_local(args: argparse.Namespace) -> int:
    from .local.main import main as local_main

    return local_main(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from .controller.main import main as run_main

    return run_main(args)


def _cmd_render(args: argparse.Namespace) -> int:
    from .plan.render import main as render_main

    return render_main(args)


def _cmd_assemble(args: argparse.Namespace) -> int:
    from .triton.pod_commands import assemble_main

    return assemble_main(args)


def _cmd_probe(args: argparse.Namespace) -> int:
    from .triton.pod_commands import probe_main

    return probe_main(args)


def _cmd_artifacts(args: argparse.Namespace) -> int:
    from .triton.pod_commands import artifacts_main

    return artifacts_main(args)


def _cmd_autotune(args: argparse.Namespace) -> int:
    from .triton.pod_commands import autotune_main

    return autotune_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crd", help="print the ModelDeployment CRD generated from the API types")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("optimize", help="the worker: optimize, convert, validate and package a model")
    p.add_argument("--spec", help="ModelDeployment YAML/JSON file (the whole object or its spec)")
    p.add_argument("--spec-json", help="the spec as a JSON string (what the Job passes)")
    p.add_argument("--name", default=None, help="model name in the Triton repository (default: metadata.name)")
    p.add_argument("--output", required=True, help="destination: a directory, or s3://bucket/prefix")
    p.add_argument("--report-summary", default=None, help="also write the <4 KiB summary here (e.g. /dev/termination-log)")
    p.add_argument("--work-dir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--progress-port", type=int, default=0, help="answer GET /progress on this port while running (0: off)")
    p.add_argument("--upload-url-file", default=None,
                   help="publish the artifact as one archive to the pre-signed PUT URL in this file (read when publishing)")
    p.set_defaults(func=_cmd_optimize)

    p = sub.add_parser("local", help="run the pipeline and a real Triton server on this machine")
    local_sub = p.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="optimize, package and serve a ModelDeployment locally")
    up.add_argument("file", help="ModelDeployment YAML")
    up.add_argument("--workdir", default=None, help="where artifacts go (default: ./_out/<name>)")
    up.add_argument("--http-port", type=int, default=8000)
    up.add_argument("--grpc-port", type=int, default=8001)
    up.add_argument("--metrics-port", type=int, default=8002)
    up.add_argument("--openai-port", type=int, default=9000, help="the OpenAI-compatible API of a generation model (model.task: generation)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--skip-optimize", action="store_true", help="reuse the artifact already in the workdir")
    up.set_defaults(func=_cmd_local)

    p = sub.add_parser("run", help="run the operator (kopf)")
    p.add_argument("--config", default=None, help="operator configuration file (YAML); env MODEL_OPERATOR_* override")
    p.add_argument("--namespace", action="append", default=None, help="namespace to watch (repeatable; default: all)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("assemble", help="(Triton init container) fetch and verify an artifact, write config.pbtxt")
    p.add_argument("--artifact", required=True, help="artifact URI (pvc://, s3:// or a directory)")
    p.add_argument("--sha256", required=True, help="the artifact digest the report promised; anything else is refused")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--target", default="cloud", choices=["cloud", "edge", "device"])
    p.add_argument("--serving-json", default="{}", help="spec.serving as JSON, for config.pbtxt")
    p.add_argument("--output", required=True, help="model repository to write (e.g. /models)")
    p.add_argument("--artifact-url-file", default=None, help="read the artifact's archive from the pre-signed GET URL in this file")
    p.add_argument("--golden-output", default=None, help="copy the artifact's golden.npz into this directory (for the probe container)")
    p.set_defaults(func=_cmd_assemble)

    p = sub.add_parser("probe", help="(container beside Triton) probe the local model with the golden set on an interval, export gauges")
    p.add_argument("--model", required=True, help="the model's name in Triton (the ModelDeployment's)")
    p.add_argument("--golden", required=True, help="the artifact's golden.npz, as the init container copied it")
    p.add_argument("--triton", default="127.0.0.1:8000", help="Triton's HTTP host:port")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between probes")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--gate-json", default="{}", help="spec.optimization.qualityGate as JSON")
    p.add_argument("--revision", default="", help="the artifact revision served (a label on every series)")
    p.add_argument("--track", default="stable", help="stable or canary (a label on every series)")
    p.add_argument("--port", type=int, default=9090, help="metrics port (0: none)")
    p.add_argument("--once", action="store_true", help="probe once, print the verdict, exit 0 when it passed")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("autotune", help="(autotune Job) sweep Triton configs of an assembled model and report the best")
    p.add_argument("--repository", required=True, help="the model repository `assemble` wrote (Triton serves it, explicit mode)")
    p.add_argument("--name", required=True, help="the assembled model's name")
    p.add_argument("--target", default="cloud", choices=["cloud", "edge", "device"])
    p.add_argument("--serving-json", default="{}", help="spec.serving as JSON: the base the sweep varies")
    p.add_argument("--grpc", default="127.0.0.1:8001", help="Triton's gRPC endpoint")
    p.add_argument("--cores", type=int, default=0, help="cores the serving container gets (default: this process's CPUs)")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients per measurement")
    p.add_argument("--duration", type=float, default=5.0, help="counted seconds per config")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per config")
    p.add_argument("--limit", type=int, default=16, help="most configs measured (the batch-1 baseline included)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for Triton")
    p.add_argument("--report-summary", default=None, help="write the JSON summary here (e.g. /dev/termination-log)")
    p.set_defaults(func=_cmd_autotune)

    p = sub.add_parser("artifacts", help="manage artifacts in a store")
    art = p.add_subparsers(dest="artifacts_command", required=True)
    d = art.add_parser("delete", help="delete everything under a prefix (the finalizer's cleanup Job)")
    d.add_argument("--uri", required=True)
    d.add_argument("--keep-root", action="store_true",
                   help="empty the directory but keep it: it is the Job's own sub-path mount, which only the kubelet can remove")
    v = art.add_parser("verify", help="check an artifact's completion marker and digest")
    v.add_argument("--uri", required=True)
    v.add_argument("--sha256", default=None)
    p.set_defaults(func=_cmd_artifacts)

    p = sub.add_parser("openai", help="an OpenAI-compatible /v1/completions and /v1/chat/completions in front of a Triton generation model")
    p.add_argument("--triton", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    p.add_argument("--model", required=True, help="the generation model's name in Triton")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.set_defaults(func=_cmd_openai)

    p = sub.add_parser("render", help="print the Kubernetes objects the operator would create for a ModelDeployment")
    p.add_argument("file", help="ModelDeployment YAML")
    p.add_argument("--config", default=None, help="operator configuration file (YAML)")
    p.set_defaults(func=_cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
