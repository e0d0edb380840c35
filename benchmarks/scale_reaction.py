"""How fast the built-in autoscaler reacts to a load step, at the poll intervals the other
engines use by default, side by side in one run on one cluster:

- the operator's scaler polling every 2 s and every 5 s (its default),
- the same scaler polling every 15 s (the HorizontalPodAutoscaler's default sync period),
- and every 30 s (KEDA's default pollingInterval).

Same model, same load, same Prometheus (scrape interval 2 s, rate window 20 s), same policy;
only the poll interval differs. Each round: one Triton replica, quiet; autoscaling switched on;
the load step starts at a random point of the poll cycle; we record the first scale-up decision
(status.scaling.history) and the moment the second replica is Ready.

    python benchmarks/scale_reaction.py [--rounds 3] [--polls 2,5,15,30] [--out benchmarks/results/scale-reaction-DATE.md]

Target (issue #5): the decision within two scrape intervals plus one poll interval of the step.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

import harness
from harness import log

harness.use_paths("tests/e2e/operator")

import md_helpers as h  # noqa: E402
from conftest import operator_config  # noqa: E402

from kubetest.wait import wait_for  # noqa: E402

SCRAPE_S = 2.0
WINDOW = "20s"
NAME = "reaction"
MODEL = {
    "uri": "pvc://models/digits.onnx", "format": "onnx",
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}


def autoscaling(enabled: bool, poll: int) -> dict[str, Any]:
    return {
        "enabled": enabled, "minReplicas": 1, "maxReplicas": 2, "pollSeconds": poll, "tolerance": 0.1,
        "metrics": [{"type": "inferenceRate", "target": 5}],
        "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
        "scaleDown": {"stabilizationSeconds": 300, "periodSeconds": 15},
    }


def one_round(custom_api: Any, core_api: Any, prom_query: Any, namespace: str, poll: int) -> dict[str, float]:
    # Back to one quiet replica, autoscaling off.
    h_patch(custom_api, namespace, {"autoscaling": autoscaling(False, poll), "serving": {"replicas": 1}})
    triton_pods = f"serving.model-operator.io/deployment={NAME},app.kubernetes.io/component=triton"
    wait_for(lambda: len(h.ready_triton_pods(core_api, namespace, NAME)) == 1
             and len(core_api.list_namespaced_pod(namespace, label_selector=triton_pods).items) == 1,
             timeout=180, interval=0.5, message="one Triton replica")
    wait_for(lambda: (prom_query(f'sum(rate(nv_inference_count{{namespace="{namespace}"}}[{WINDOW}]))') or 0.0) == 0.0,
             timeout=120, interval=1, message="no load in Prometheus' window")
    # Autoscaling on; the step comes at a random point of the poll cycle.
    enabled = time.time()
    h_patch(custom_api, namespace, {"autoscaling": autoscaling(True, poll)})
    wait_for(lambda: float((h.get_md(custom_api, namespace, NAME).get("status") or {}).get("scaling", {}).get("lastPoll") or 0) > enabled,
             timeout=60, interval=0.2, message="the scaler's first poll")
    time.sleep(random.uniform(0, poll))  # the benchmark's input: where in the poll cycle the step lands
    t0 = time.time()
    marks: dict[str, float] = {}
    with h.Load(lambda: h.pod_endpoints(core_api, namespace, NAME), seconds=240, pause=0.005, model=NAME) as load:
        def check() -> bool:
            md = h.get_md(custom_api, namespace, NAME)
            st = md.get("status") or {}
            if "decision" not in marks:
                ups = [e for e in st.get("scaling", {}).get("history", []) if e["unixTime"] >= t0 and e["toReplicas"] > e["fromReplicas"]]
                if ups:
                    marks["decision"] = ups[0]["unixTime"] - t0
            if "decision" in marks and int(st.get("readyReplicas") or 0) >= 2:
                marks["ready"] = time.time() - t0
                return True
            return False

        wait_for(check, timeout=240, interval=0.2, message="scale-up decision and the second replica Ready")
    marks["failed"] = float(load.failed)
    marks["sent"] = float(load.sent)
    return marks


def h_patch(custom_api: Any, namespace: str, spec: dict[str, Any]) -> None:
    custom_api.patch_namespaced_custom_object(h.GROUP, h.VERSION, namespace, h.PLURAL, NAME, {"spec": spec})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--polls", default="2,5,15,30")
    harness.add_out(ap, "scale-reaction")
    args = ap.parse_args()
    polls = [int(p) for p in args.polls.split(",")]

    machine = harness.machine_line(harness.load_average("at the start"))
    state = harness.new_state_dir("bench-cluster-")
    cluster, images = harness.start_real_node_cluster(state, prometheus=True, scrape_interval=f"{SCRAPE_S:g}s")
    results: dict[int, list[dict[str, float]]] = {p: [] for p in polls}
    try:
        kube = harness.connect(cluster)
        custom_api, core_api = kube.custom, kube.core
        harness.install_crds(cluster)
        namespace = "bench"
        harness.make_namespace(core_api, namespace)
        harness.put_digits_claims(core_api, namespace, state)

        import requests

        def prom_query(q: str) -> float | None:
            r = requests.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": q}, timeout=5).json()
            res = r["data"]["result"]
            return float(res[0]["value"][1]) if res else None

        conf = operator_config(cluster.prometheus_url, harness.free_port(), images)
        conf["prometheus_window"] = WINDOW
        cfg = harness.write_config(state, conf)
        env = harness.operator_env(cluster.kubeconfig, {"MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1", "MODEL_OPERATOR_SCALER_TICK_SECONDS": "1"})
        with harness.run_operator(state, cfg, env):
            h.create_md(custom_api, namespace, h.digits_md(NAME, model=MODEL, optimization={"quantization": {"mode": "none"}},
                                                           autoscaling=autoscaling(False, 5)))
            h.wait_phase(custom_api, namespace, NAME, "Ready", timeout=300)
            wait_for(lambda: prom_query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")
            for i in range(args.rounds):
                order = polls[i % len(polls):] + polls[: i % len(polls)]  # rotate, so no setting always goes first
                for poll in order:
                    marks = one_round(custom_api, core_api, prom_query, namespace, poll)
                    results[poll].append(marks)
                    log(f"round {i + 1}/{args.rounds} poll {poll:>2}s: decision {marks['decision']:.1f}s, "
                        f"second replica Ready {marks['ready']:.1f}s ({int(marks['sent'])} requests, {int(marks['failed'])} failed)")
    finally:
        cluster.stop()

    def med(poll: int, key: str) -> float:
        return statistics.median(r[key] for r in results[poll])

    base = polls[0]
    lines = harness.header("Load step → scale-up decision → new replica Ready, by poll interval", machine, [
        "Cluster: kube-apiserver v1.34 on loopback; Triton 2.51 (python backend, digits ONNX) as containers on the real node;",
        f"Prometheus 2.55 scraping every {SCRAPE_S:g} s; the operator as a process, scaler tick 1 s, rate window {WINDOW}.",
        "Policy: inferenceRate target 5 req/s per replica, tolerance 0.1, scale-up stabilization 0 s, max 2 replicas.",
        "Load: one client thread, back-to-back requests of 4 images, from the step until the second replica is Ready.",
        f"Rounds: {args.rounds} per setting, settings rotated each round; the step lands at a random point of the poll cycle.",
        "15 s and 30 s are the HPA's default sync period and KEDA's default polling interval, run here by the same",
        "scaler so that only the interval differs (neither HPA nor KEDA can read Triton's metrics here without an adapter).",
    ])
    lines += [
        "| poll interval | decision, median (s) | min–max (s) | target: 2 scrapes + 1 poll (s) | second replica Ready, median (s) | decision vs the "
        f"{base} s poll |",
        "|---|---|---|---|---|---|",
    ]
    for poll in polls:
        dec = [r["decision"] for r in results[poll]]
        target = 2 * SCRAPE_S + poll
        lines.append(f"| {poll} s | {med(poll, 'decision'):.1f} | {min(dec):.1f}–{max(dec):.1f} | {target:.0f} "
                     f"({'met' if max(dec) <= target else 'missed'}) | {med(poll, 'ready'):.1f} | "
                     f"{med(poll, 'decision') / max(med(base, 'decision'), 1e-9):.2f}x |")
    failed = sum(int(r["failed"]) for rs in results.values() for r in rs)
    lines += ["", f"Failed client requests over all rounds: {failed}.", "",
              "Per round (decision / Ready, s): " + "; ".join(
                  f"{p}s: " + ", ".join(f"{r['decision']:.1f}/{r['ready']:.1f}" for r in rs) for p, rs in results.items())]
    harness.write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
