"""Time from `kubectl apply` to Ready for the digits example on the test cluster, with the
optimization (dynamic int8 + quality gate) and with it skipped (conversion and packaging only),
side by side in one run. The operator runs as a real process (`model-operator run`).

    python benchmarks/apply_to_ready.py [--rounds 3] [--out benchmarks/results/apply-to-ready.md]

Prints progress per round; writes a Markdown table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "tests" / "e2e" / "operator"))

from kubetest import imagebuild  # noqa: E402
from kubetest.wait import wait_for  # noqa: E402

import md_helpers as h  # noqa: E402
from conftest import free_port, operator_config  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def one_round(cluster: Any, custom_api, core_api, namespace: str, name: str, optimization: dict) -> dict[str, float]:
    body = h.digits_md(name, optimization=optimization)
    t0 = time.perf_counter()
    h.create_md(custom_api, namespace, body)
    marks: dict[str, float] = {}

    def check() -> bool:
        st = (h.get_md(custom_api, namespace, name).get("status") or {})
        now = time.perf_counter() - t0
        if st.get("artifact", {}).get("sha256") and "artifact" not in marks:
            marks["artifact"] = now
        if st.get("phase") == "Ready":
            marks["ready"] = now
            return True
        if st.get("phase") == "Failed":
            raise RuntimeError(f"{name} failed: {st.get('conditions')}")
        return False

    wait_for(check, timeout=600, interval=0.25, message=f"{name} Ready")
    return marks


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"apply-to-ready-{time.strftime('%Y-%m-%d')}.md"))
    args = ap.parse_args()

    from kubernetes import client, config

    state = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    log(f"starting the test cluster in {state}")
    cluster, images = imagebuild.real_node_cluster(state, prometheus=True)
    try:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom_api, core_api = client.CustomObjectsApi(api), client.CoreV1Api(api)
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        namespace = "bench"
        core_api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        wait_for(lambda: core_api.read_namespaced_service_account("default", namespace), timeout=30, ignore=(Exception,))
        models = h.make_claim(core_api, namespace, h.MODELS_CLAIM)
        h.make_claim(core_api, namespace, h.STORE_CLAIM)
        log("training the digits example")
        h.put_digits(models, state)

        cfg = state / "operator.yaml"
        cfg.write_text(yaml.safe_dump(operator_config(cluster.prometheus_url or "http://127.0.0.1:1", free_port(), images)))
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "MODEL_OPERATOR_CONFIG": str(cfg),
               "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1"}
        op_log = open(state / "operator.log", "w")
        op = subprocess.Popen([sys.executable, "-m", "model_operator.cli", "run", "--config", str(cfg),
                               "--liveness", f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=op_log, stderr=subprocess.STDOUT)
        try:
            results: dict[str, list[dict[str, float]]] = {"optimized": [], "skipped": []}
            variants = {
                "optimized": {"quantization": {"mode": "dynamic-int8"}, "qualityGate": {"maxTop1Drop": 0.02}},
                "skipped": {"quantization": {"mode": "none"}},
            }
            for i in range(args.rounds):
                for variant, opt in variants.items():
                    name = f"{variant}-{i}"
                    marks = one_round(cluster, custom_api, core_api, namespace, name, opt)
                    results[variant].append(marks)
                    log(f"round {i + 1}/{args.rounds} {variant}: artifact {marks['artifact']:.1f}s, Ready {marks['ready']:.1f}s")
                    custom_api.delete_namespaced_custom_object(h.GROUP, h.VERSION, namespace, h.PLURAL, name)
        finally:
            op.terminate()
            op.wait(timeout=30)
    finally:
        cluster.stop()

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    lines = [
        "# apply → Ready, digits example, test cluster",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "Cluster: kube-apiserver v1.34 on loopback; the worker Job and Triton (nvidia-pytriton's 2.51, python backend, test image)",
        "run as containers on the real node (kubelet, containerd, images pre-pulled); operator as a process with a 1 s reconcile timer.",
        f"Rounds: {args.rounds}, alternating the two variants; medians below.",
        "",
        "| variant | artifact ready (s) | Ready (s) |",
        "|---|---|---|",
    ]
    for variant in results:
        lines.append(f"| {variant} | {med(variant, 'artifact'):.1f} | {med(variant, 'ready'):.1f} |")
    ratio = med("optimized", "ready") / med("skipped", "ready")
    lines += ["", f"Optimized / skipped time to Ready: {ratio:.2f}x.", "",
              "Per round: " + "; ".join(f"{v} {r['ready']:.1f}s" for v, rs in results.items() for r in rs)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
