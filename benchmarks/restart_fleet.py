"""A restart of the operator that runs a fleet benchmark's cluster, measured on its own: the running
operator process is stopped and started again with the same command line and environment, and the
new process's peak RSS, time until every object was reconciled once, own writes, RSS and CPU in a
steady window after it, and the cluster's children are reported.

For when `scale_many.py`'s whole sequence does not fit the time at hand (its 10,000-object cold
start took 41 minutes and more on a 2-core machine, before its restarts): stop the benchmark's
script with SIGKILL (its cluster and operator, its children, keep running), then

    python3 benchmarks/restart_fleet.py --pid <operator pid> --count 10000 \
        --kubeconfig <state>/kubeconfig --namespace scale

The cluster is left running; stop it with `hack/cluster down --state-dir <state>` or by its
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from harness import add_out, header, load_average, log, machine_line, wait_for, write_result
from scale_many import Sampler, _op_writes, _up, cpu_seconds, fetch, reconciled

from kubetest.wait import WaitTimeout

# The operator's children by kind: everything of the kind in the benchmark's namespace, where only
# the operator makes objects (the API server sends no remainingItemCount for a label-selected list).
CHILD_PATHS = {
    "Deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Services": "/api/v1/namespaces/{ns}/services",
    "Pods": "/api/v1/namespaces/{ns}/pods",
    "ServiceMonitors": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
    "Secrets": "/api/v1/namespaces/{ns}/secrets",
}


def kubectl_raw(kubeconfig: str, path: str) -> dict[str, Any]:
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", path], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    return dict(json.loads(out))


def count_items(kubeconfig: str, path: str) -> int:
    """Items a LIST would return, from one item and the server's remainingItemCount."""
    page = kubectl_raw(kubeconfig, path + "?limit=1")
    return len(page.get("items") or []) + int(page.get("metadata", {}).get("remainingItemCount") or 0)


def phases(kubeconfig: str, namespace: str) -> dict[str, int]:
    """ModelDeployments per status.phase, listed in pages of 500."""
    out: dict[str, int] = {}
    cont = ""
    while True:
        page = kubectl_raw(kubeconfig, f"/apis/serving.model-operator.io/v1alpha1/namespaces/{namespace}/modeldeployments"
                                       f"?limit=500{'&continue=' + cont if cont else ''}")
        for item in page["items"]:
            phase = (item.get("status") or {}).get("phase") or "none"
            out[phase] = out.get(phase, 0) + 1
        cont = page["metadata"].get("continue") or ""
        if not cont:
            return out


def cluster_state(kubeconfig: str, namespace: str) -> dict[str, Any]:
    return {"phases": phases(kubeconfig, namespace),
            "children": {kind: count_items(kubeconfig, path.format(ns=namespace)) for kind, path in CHILD_PATHS.items()}}


def proc_command(pid: int) -> tuple[list[str], dict[str, str]]:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    return [a.decode() for a in argv], env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the running operator's process")
    ap.add_argument("--count", type=int, required=True, help="ModelDeployments in the namespace")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="scale")
    ap.add_argument("--steady-seconds", type=float, default=120)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--note", default="", help="conditions to state on the page (how the cluster got here)")
    add_out(ap, "restart-fleet")
    args = ap.parse_args()

    argv, env = proc_command(args.pid)
    config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
    metrics_url = f"http://127.0.0.1:{config['metrics_port']}/metrics"
    state = Path(argv[argv.index("--config") + 1]).parent
    machine = machine_line(load_average("before the restart"))
    log("counting the cluster's objects before the restart")
    before = cluster_state(args.kubeconfig, args.namespace)
    log(f"before: {before}")

    old_rss = int(next(ln.split()[1] for ln in Path(f"/proc/{args.pid}/status").read_text().splitlines() if ln.startswith("VmRSS:"))) / 1024
    log(f"stopping the operator {args.pid} (RSS {old_rss:.0f} MiB)")
    os.kill(args.pid, 15)
    wait_for(lambda: not Path(f"/proc/{args.pid}").exists() or "zombie" in Path(f"/proc/{args.pid}/status").read_text(),
             timeout=180, interval=0.5, message="the old operator stopped")

    with open(state / "operator.log", "a") as op_log:
        op = subprocess.Popen(argv, env=env, stdout=op_log, stderr=subprocess.STDOUT)
    sampler = Sampler(op.pid)
    sampler.start()
    t0 = time.monotonic()
    try:
        wait_for(lambda: _up(lambda: fetch(metrics_url)), timeout=600, interval=1, message="the new operator's metrics endpoint")
        seen, done = [-1], [0]

        def converged() -> bool:
            n = done[0] = int(reconciled(fetch(metrics_url)))
            if n * 20 // args.count != seen[0]:
                seen[0] = n * 20 // args.count
                log(f"{n}/{args.count} reconciled after {time.monotonic() - t0:.0f}s "
                    f"(RSS {sampler.rss[-1][1] / 2**20 if sampler.rss else 0:.0f} MiB, peak {sampler.peak / 2**20:.0f})")
            return n >= args.count

        try:
            wait_for(converged, timeout=args.timeout, interval=2, message=f"{args.count} objects reconciled after the restart")
            converged_s = f"{time.monotonic() - t0:.0f}"
        except WaitTimeout:  # reported as such: how far it got by the deadline
            converged_s = f"not within {args.timeout:.0f} ({done[0]} of {args.count} reconciled)"
        peak_converged = sampler.peak / 2**20
        writes_converged = _op_writes(fetch(metrics_url))
        log(f"converged: {converged_s} s, peak {peak_converged:.0f} MiB, the operator's writes {writes_converged}")
        time.sleep(20)  # the last writes settle
        w0, c0, s0 = _op_writes(fetch(metrics_url)), cpu_seconds(op.pid), time.monotonic()
        time.sleep(args.steady_seconds)
        w1, c1, s1 = _op_writes(fetch(metrics_url)), cpu_seconds(op.pid), time.monotonic()
        steady_rss = sampler.mean_rss(s0) / 2**20
        peak = sampler.peak / 2**20
        steady_writes = {k: round((v - w0.get(k, 0.0)) / (s1 - s0), 3) for k, v in w1.items() if v - w0.get(k, 0.0)}
        cpu = (c1 - c0) / (s1 - s0)
    finally:
        sampler.stop_flag.set()
        op.terminate()
        op.wait(timeout=120)
    after = cluster_state(args.kubeconfig, args.namespace)

    lines = header(f"Operator restart against a fleet of {args.count} ModelDeployments", machine, [
        f"Cluster: the running fleet benchmark's (`{args.namespace}` namespace), as found: {before}.",
        "Restart: the running operator stopped with SIGTERM, then started with the same command line and environment "
        "(its config, the chart's defaults, MALLOC_ARENA_MAX as it had); converged = every object reconciled once "
        "(model_operator_reconcile_total, autoscale and delete handlers left out).",
        *([f"Conditions stated by hand: {args.note}"] if args.note else []),
        f"After the steady window: {after}; {load_average('after')}.",
    ])
    lines += [
        "| old process RSS (MiB) | converged (s) | peak RSS until then (MiB) | peak RSS (MiB) | steady RSS (MiB) "
        "| steady CPU (cores) | the operator's writes until converged | its writes/s, steady |",
        "|---|---|---|---|---|---|---|---|",
        f"| {old_rss:.0f} | {converged_s} | {peak_converged:.0f} | {peak:.0f} | {steady_rss:.0f} | {cpu:.2f} | "
        f"{sum(writes_converged.values()):.0f} {writes_converged} | {steady_writes or 0} |",
        "",
        f"Against the chart's 512Mi limit: peak {peak / 512:.2f}x.",
    ]
    write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
