"""Memory of the operator's child informers' first lists against a cluster that already holds a
fleet: the lists taken in page by page (what the operator does) against each kind's whole list
held as bodies before it is taken in (what it did before), and against summaries that keep each
child's whole status (what they did before), side by side, each in a fresh process.

Run by hand against a running cluster with a fleet in it (e.g. `scale_many.py`'s, from its state
folder's kubeconfig while its later phases run):

    python3 benchmarks/informer_lists.py --kubeconfig <state>/kubeconfig --namespace scale

Each child process starts the operator's informers (handlers.start_informers: every child kind,
the operator's label selector, one thread per kind, as in the operator) and waits until every
first list is in; it reports its peak RSS (ru_maxrss), its RSS after the imports, the time and
the children cached. Nothing else of the operator runs in it (no kopf, no reconciles).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from harness import REPO, add_out, header, load_average, log, machine_line, use_paths, write_result

MODES = {"page": "page by page (the operator's informers)", "whole": "each kind's whole list held first (before)",
         "status": "page by page, each child's whole status kept (before)"}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str, kubeconfig: str, namespace: str) -> dict[str, Any]:
    use_paths("operator")
    import kubernetes

    from model_operator.controller import children, handlers
    from model_operator.plan import status

    kubernetes.config.load_kube_config(config_file=kubeconfig)
    if mode == "whole":
        take = children.ChildCache.replace

        def whole(self: Any, group: str, kind: str, ns: str | None, objs: Any) -> None:
            take(self, group, kind, ns, list(objs))
        children.ChildCache.replace = whole  # type: ignore[method-assign]
    if mode == "status":
        status.child_status = dict  # type: ignore[assignment]
    base = rss_mib()
    cache = children.ChildCache()
    t0 = time.monotonic()
    informers = handlers.start_informers(cache, [namespace], "")
    if not cache.wait_synced(600):
        raise SystemExit("the informers' first lists did not come in 600 s")
    took = time.monotonic() - t0
    for informer in informers:
        informer.stop()
    return {"mode": mode, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mib": base,
            "after_mib": rss_mib(), "seconds": took, "children": cache.size(), "owners": cache.owners()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="scale")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="page,whole", help=f"comma-separated, the first the baseline: {', '.join(MODES)}")
    ap.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    add_out(ap, "informer-lists")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.kubeconfig, args.namespace)))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: each of {', '.join(MODES)}, got {args.modes!r}")
    machine = machine_line(load_average("before the run"))
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--kubeconfig", args.kubeconfig,
                                  "--namespace", args.namespace], check=True, capture_output=True, text=True, cwd=REPO)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"round {r + 1}/{args.repeats}: {runs[-1]}")
    lines = header("The child informers' first lists: " + " against ".join(MODES[m] for m in modes), machine, [
        f"Cluster: the one at `--kubeconfig`, namespace `{args.namespace}`; each run a fresh process that starts the "
        "operator's child informers (every child kind, its label selector) and waits for every first list.",
        f"Rounds: {args.repeats}, the order alternating; {load_average('after the run')}.",
    ])
    lines += ["| mode | peak RSS (MiB) | RSS after imports | RSS after the lists | seconds | children cached |",
              "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {MODES[run['mode']]} | {run['peak_mib']:.0f} | {run['base_mib']:.0f} | {run['after_mib']:.0f} | "
                     f"{run['seconds']:.1f} | {run['children']} |")
    peak = {m: sorted(r["peak_mib"] - r["base_mib"] for r in runs if r["mode"] == m) for m in modes}
    median = {m: v[len(v) // 2] for m, v in peak.items() if v}
    base = modes[0]
    lines += ["", "Median peak above the imports: " + "; ".join(
        f"{MODES[m]} {median[m]:.0f} MiB" + (f" ({median[m] / median[base]:.2f}x)" if m != base and median[base] else "")
        for m in modes) + "."]
    write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
