"""Many ModelDeployments on the simulated cluster: how long until all are Ready, the operator's
peak memory, the API requests per second it makes while idle, and its reconcile rate, measured
at two fleet sizes in one run (a tenth of the objects first, then all of them), so idle traffic
and memory can be compared side by side.

Served ModelDeployments get Triton pods on KWOK nodes (nothing runs; KWOK makes them Ready);
device targets publish only. The optimization step is skipped: each object's status already
carries an artifact for its spec hash (as after a previous run), so no Job is made.

    python benchmarks/scale_many.py [--count 1000] [--device-share 0.3] [--out benchmarks/results/scale-DATE.md]

Targets (issue #7): all Ready within 10 minutes on 2 cores, operator memory under 300 MiB, idle
API traffic that does not grow with the number of objects beyond its watches.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import harness
from harness import log

harness.use_paths("operator")

from kubetest.cluster import Cluster  # noqa: E402
from kubetest.nodepools import CPU_POOL  # noqa: E402
from kubetest.wait import wait_for  # noqa: E402
from model_operator.api.hashing import spec_hash  # noqa: E402
from model_operator.api.validation import load_spec  # noqa: E402

GROUP, VERSION, PLURAL = "serving.model-operator.io", "v1alpha1", "modeldeployments"
NS = "scale"
# What an idle operator may touch: its own kind and the children it writes.
RESOURCES = ("modeldeployments", "deployments", "services", "jobs", "poddisruptionbudgets", "events", "horizontalpodautoscalers")


def spec_for(i: int, device: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": f"s3://models/m{i}.onnx", "format": "onnx"},
        "optimization": {"quantization": {"mode": "none"}},
        "monitoring": {"goldenProbe": {"enabled": False}, "serviceMonitor": False},
    }
    if device:
        spec["target"] = "device"
    else:
        spec["serving"] = {"nodePool": "cpu", "replicas": 1}
    return spec


class Sampler(threading.Thread):
    """Peak resident memory of a process (VmHWM is per process; read VmRSS to see it move)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
                self.peak = max(self.peak, int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024)  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass
            self.stop_flag.wait(0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apiserver_requests(cluster: Cluster) -> dict[str, float]:
    """apiserver_request_total for the operator's resources, by verb (WATCH counted when opened)."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("resource") in RESOURCES:
            key = f"{labels['verb']} {labels['resource']}{'/' + labels['subresource'] if labels.get('subresource') else ''}"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def operator_reconciles(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("model_operator_reconcile_total{"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--device-share", type=float, default=0.3)
    ap.add_argument("--idle-seconds", type=float, default=60)
    harness.add_out(ap, "scale")
    args = ap.parse_args()

    from kubernetes import client

    n_device = int(args.count * args.device_share)
    nodes = math.ceil((args.count - n_device) / 100) + 1
    state = harness.new_state_dir("bench-scale-")
    machine = harness.machine_line(harness.load_average("before the run"))
    cluster = harness.start_kwok_cluster(state, (CPU_POOL.with_count(nodes),))
    rows: list[dict[str, Any]] = []
    try:
        kube = harness.connect(cluster, pool_maxsize=16)
        custom_api = kube.custom
        harness.install_crds(cluster)
        harness.make_namespace(kube.core, NS)

        metrics_port = 19000 + os.getpid() % 1000
        cfg = harness.write_config(state, {
            "artifact_store": {"type": "s3", "bucket": "models", "prefix": "mo"},
            "node_pools": {"cpu": {"node_selector": {"node-pool": "cpu"}, "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}},
            "default_node_pool": {"cloud": "cpu", "edge": "cpu"},
            "prometheus_url": "http://127.0.0.1:9", "prometheus_timeout_seconds": 0.5,
            "metrics_port": metrics_port,
        })

        def create(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                device = int((i + 1) * args.device_share) > int(i * args.device_share)
                spec = spec_for(i, device)
                digest = spec_hash(load_spec(spec))
                name = f"md-{i:04d}"
                custom_api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec})
                custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, {"status": {"artifact": {
                    "uri": f"s3://models/mo/{NS}/{name}/{digest}", "sha256": "0" * 64, "specHash": digest, "format": "onnx"}}})
                if (i + 1) % 100 == 0:
                    log(f"created {i + 1} ModelDeployments")

        def ready_count() -> int:
            items = custom_api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
            return sum(1 for m in items if (m.get("status") or {}).get("phase") == "Ready")

        # The chart's defaults (no MODEL_OPERATOR_* from this shell) and its Deployment's MALLOC_ARENA_MAX.
        env = harness.operator_env(cluster.kubeconfig, {"MALLOC_ARENA_MAX": "2"}, clean=True)
        done = 0
        for total in (max(1, args.count // 10), args.count):
            # Objects are made while no operator runs (it would start a Job before the artifact is
            # in status); the operator then starts with all of them, as after an upgrade or a restart.
            create(done, total)
            with harness.run_operator(state, cfg, env, ("--namespace", NS), liveness_port=0, stop_timeout=60) as op:
                sampler = Sampler(op.pid)
                sampler.start()
                t0 = time.monotonic()
                last = -1

                def all_ready(total: int = total, t0: float = t0) -> bool:
                    nonlocal last
                    n = ready_count()
                    if n != last:
                        log(f"{n}/{total} Ready after {time.monotonic() - t0:.0f}s")
                        last = n
                    return n >= total

                wait_for(all_ready, timeout=1800, interval=5, message=f"{total} ModelDeployments Ready")
                to_ready = time.monotonic() - t0
                done = total
                time.sleep(20)  # let the last status writes and Events settle before measuring idle
                req0, rec0, cpu0, w0 = apiserver_requests(cluster), operator_reconciles(metrics_port), cpu_seconds(op.pid), time.monotonic()
                time.sleep(args.idle_seconds)  # the idle window being measured
                req1, rec1, cpu1, w1 = apiserver_requests(cluster), operator_reconciles(metrics_port), cpu_seconds(op.pid), time.monotonic()
                window = w1 - w0
                by_verb = {v: (req1.get(v, 0) - req0.get(v, 0)) / window for v in req1}
                jobs = len(client.BatchV1Api(kube.api).list_namespaced_job(NS).items)
                rows.append({
                    "objects": total, "to_ready": to_ready, "peak_mib": sampler.peak / 2**20, "jobs": jobs,
                    "idle_rps": sum(r for v, r in by_verb.items() if not v.startswith("WATCH")),
                    "by_verb": {v: round(r, 3) for v, r in sorted(by_verb.items()) if r},
                    "reconcile_rate": (rec1 - rec0) / window, "cpu_share": (cpu1 - cpu0) / window,
                })
                log(f"{total} objects: all Ready in {to_ready:.0f}s; peak RSS {sampler.peak / 2**20:.0f} MiB; idle "
                    f"{rows[-1]['idle_rps']:.2f} API requests/s {rows[-1]['by_verb']}; {rows[-1]['reconcile_rate']:.0f} reconciles/s; "
                    f"operator CPU {rows[-1]['cpu_share']:.2f} cores; {jobs} Jobs")
                sampler.stop_flag.set()
    finally:
        cluster.stop()

    small, big = rows[0], rows[-1]
    lines = harness.header(f"{args.count} ModelDeployments on the simulated cluster", machine, [
        f"Cluster: kube-apiserver v1.34, controller-manager, scheduler and KWOK ({nodes} simulated cpu nodes) on loopback; "
        "the operator as a process with the chart's defaults (reconcile timer 5 s, scaler tick 1 s), one namespace.",
        f"Objects: {args.device_share:.0%} `target: device`, the rest served with one Triton replica each (KWOK pods); "
        "optimization skipped (an artifact for the spec hash already in status, so no Job).",
        f"Idle window: {args.idle_seconds:.0f} s, 20 s after the last object became Ready; requests counted from the API "
        f"server's apiserver_request_total for {', '.join(RESOURCES)} (watches are opened once and not counted).",
    ])
    lines += [
        "| objects | all Ready after operator start (s) | operator peak RSS (MiB) | idle API requests/s (by verb) | reconciles/s "
        "| operator CPU idle (cores) | Jobs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['objects']} | {r['to_ready']:.0f} | {r['peak_mib']:.0f} | {r['idle_rps']:.2f} {r['by_verb']} | "
                     f"{r['reconcile_rate']:.0f} | {r['cpu_share']:.2f} | {r['jobs']} |")
    lines += [
        "",
        f"Ratios, {big['objects']} vs {small['objects']} objects: idle API requests/s "
        + (f"{big['idle_rps'] / small['idle_rps']:.2f}x" if small["idle_rps"] else f"{small['idle_rps']:.2f} -> {big['idle_rps']:.2f} per second")
        + ", peak memory "
        f"{big['peak_mib'] / small['peak_mib']:.2f}x, reconciles/s {big['reconcile_rate'] / max(small['reconcile_rate'], 1e-9):.2f}x.",
        f"Targets: all Ready within 600 s: {'met' if big['to_ready'] <= 600 else 'missed'} ({big['to_ready']:.0f} s); "
        f"peak memory under 300 MiB: {'met' if big['peak_mib'] < 300 else 'missed'} ({big['peak_mib']:.0f} MiB).",
    ]
    harness.write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
