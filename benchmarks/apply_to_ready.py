"""Time from `kubectl apply` to Ready for the digits example on the test cluster, with the
optimization (dynamic int8 + quality gate) and with it skipped (conversion and packaging only),
side by side in one run. The operator runs as a real process (`model-operator run`).

    python benchmarks/apply_to_ready.py [--rounds 3] [--out benchmarks/results/apply-to-ready.md]

Prints progress per round; writes a Markdown table with the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import harness
from harness import log

harness.use_paths("tests/e2e/operator")

import md_helpers as h  # noqa: E402
from conftest import operator_config  # noqa: E402

from kubetest.wait import wait_for  # noqa: E402


def one_round(custom_api: Any, namespace: str, name: str, optimization: dict[str, Any]) -> dict[str, float]:
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


# What every apply → Ready measurement runs on.
CLUSTER = [
    "Cluster: kube-apiserver v1.34 on loopback; the worker Job and Triton (nvidia-pytriton's 2.51, python backend, test image)",
    "run as containers on the real node (kubelet, containerd, images pre-pulled); operator as a process with a 1 s reconcile timer.",
]

# The two variants, measured alternately: the optimization with its quality gate, and none.
VARIANTS: dict[str, dict[str, Any]] = {
    "optimized": {"quantization": {"mode": "dynamic-int8"}, "qualityGate": {"maxTop1Drop": 0.02}},
    "skipped": {"quantization": {"mode": "none"}},
}


def run_rounds(kube: harness.Clients, namespace: str, rounds: int, prefix: str = "",
               check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, list[dict[str, float]]]:
    """`rounds` rounds of every variant (created, timed to Ready, `check`ed, deleted) against
    the running operator: variant -> one {"artifact", "ready"} (seconds after the create) per
    round. Prints "round i/n <variant>: artifact Xs, Ready Ys" per round (apply_to_ready_ab.py
    reads those lines), after `prefix`."""
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for i in range(rounds):
        for variant, opt in VARIANTS.items():
            name = f"{variant}-{i}"
            marks = one_round(kube.custom, namespace, name, opt)
            results[variant].append(marks)
            if check:
                check(h.get_md(kube.custom, namespace, name))
            log(f"{prefix}round {i + 1}/{rounds} {variant}: artifact {marks['artifact']:.1f}s, Ready {marks['ready']:.1f}s")
            kube.custom.delete_namespaced_custom_object(h.GROUP, h.VERSION, namespace, h.PLURAL, name)
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    harness.add_out(ap, "apply-to-ready")
    args = ap.parse_args()

    state = harness.new_state_dir("bench-cluster-")
    cluster, images = harness.start_real_node_cluster(state, prometheus=True)
    try:
        kube = harness.connect(cluster)
        harness.install_crds(cluster)
        namespace = "bench"
        harness.make_namespace(kube.core, namespace)
        harness.put_digits_claims(kube.core, namespace, state)

        cfg = harness.write_config(state, operator_config(cluster.prometheus_url or "http://127.0.0.1:1", harness.free_port(), images))
        env = harness.operator_env(cluster.kubeconfig, {"MODEL_OPERATOR_CONFIG": str(cfg), "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1"})
        with harness.run_operator(state, cfg, env):
            results = run_rounds(kube, namespace, args.rounds)
    finally:
        cluster.stop()

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    lines = harness.header("apply → Ready, digits example, test cluster", harness.machine_line(*harness.python_and_system()), [
        *CLUSTER, f"Rounds: {args.rounds}, alternating the two variants; medians below.",
    ])
    lines += [
        "| variant | artifact ready (s) | Ready (s) |",
        "|---|---|---|",
    ]
    for variant in results:
        lines.append(f"| {variant} | {med(variant, 'artifact'):.1f} | {med(variant, 'ready'):.1f} |")
    ratio = med("optimized", "ready") / med("skipped", "ready")
    lines += ["", f"Optimized / skipped time to Ready: {ratio:.2f}x.", "",
              "Per round: " + "; ".join(f"{v} {r['ready']:.1f}s" for v, rs in results.items() for r in rs)]
    harness.write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
