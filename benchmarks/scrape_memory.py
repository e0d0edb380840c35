"""Memory and time of one scrape of the operator's /metrics at fleet sizes: the endpoint the
operator serves (controller/metrics_server.py: the per-ModelDeployment families written a few
hundred objects at a time) against the same series through a Collector registered with
prometheus_client and its start_http_server (what the operator did before), side by side, each
in a fresh process.

    python3 benchmarks/scrape_memory.py --objects 10000 --repeats 3

Each child process exports `--objects` ModelDeployments with every exported field (the nine
condition types, sizes, latencies), starts the endpoint on a free port, scrapes it `--scrapes`
times from the parent process over HTTP with gzip accepted (as Prometheus asks), and reports its
peak RSS (ru_maxrss) above the RSS after the export, the seconds per scrape and the bytes
served. Nothing else of the operator runs in it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
import urllib.request
from typing import Any

from harness import REPO, add_out, free_port, header, load_average, log, machine_line, use_paths, write_result

MODES = {"stream": "the operator's endpoint, written in pieces", "registry": "a registered Collector, prometheus_client's server (before)"}


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def registry_collector() -> Any:
    """The same series as GaugeMetricFamily samples from a Collector: the library's path."""
    from prometheus_client.core import GaugeMetricFamily

    from model_operator.controller import metrics

    md = ("namespace", "modeldeployment")

    class Before:
        def collect(self) -> Any:
            snapshot = list(metrics.MODELDEPLOYMENTS._series.items())  # noqa: SLF001 - a benchmark of its two paths
            phases = GaugeMetricFamily("model_operator_modeldeployments", "ModelDeployments by phase.", labels=("namespace", "phase"))
            fams = {name: GaugeMetricFamily(name, help_, labels=(*md, *extra)) for name, help_, extra in metrics._FAMILIES}  # noqa: SLF001
            counts: dict[tuple[str, str], int] = {}
            for (ns, name), s in snapshot:
                if s.phase:
                    counts[(ns, s.phase)] = counts.get((ns, s.phase), 0) + 1
                fams["model_operator_desired_replicas"].add_metric([ns, name], s.desired)
                fams["model_operator_ready_replicas"].add_metric([ns, name], s.ready)
                fams["model_operator_max_replicas"].add_metric([ns, name], s.max_replicas)
                for stage, v in s.sizes:
                    fams["model_operator_artifact_size_bytes"].add_metric([ns, name, stage], v)
                for stage, v in s.latencies:
                    fams["model_operator_optimization_latency_seconds"].add_metric([ns, name, stage], v)
                for type_, current in s.conditions:
                    for status in ("True", "False", "Unknown"):
                        fams["model_operator_condition"].add_metric([ns, name, type_, status], 1.0 if current == status else 0.0)
            for (ns, phase), n in counts.items():
                phases.add_metric([ns, phase], n)
            yield phases
            yield from fams.values()

    return Before()


def child(mode: str, objects: int) -> None:
    """The operator's side: export, serve, say the port and RSS; report the peak when asked."""
    use_paths("operator")
    from model_operator.controller import metrics, metrics_server
    from model_operator.plan.status import CONDITION_TYPES

    status = {"phase": "Ready", "replicas": 2, "readyReplicas": 2,
              "conditions": [{"type": c, "status": "True"} for c in CONDITION_TYPES],
              "artifact": {"originalSizeBytes": 10_000_000, "sizeBytes": 2_500_000},
              "optimization": {"latencyMsBefore": 8.0, "latencyMsAfter": 3.0}}
    for i in range(objects):
        metrics.export_modeldeployment(f"team-{i % 20}", f"md-{i:05d}", status, 10)
    port = free_port()
    if mode == "stream":
        metrics_server.serve(port, "127.0.0.1")
    else:
        from prometheus_client import REGISTRY, start_http_server

        REGISTRY.register(registry_collector())
        start_http_server(port, "127.0.0.1")
    print(json.dumps({"port": port, "base_mib": rss_mib()}), flush=True)
    sys.stdin.readline()  # the scrapes are done
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "after_mib": rss_mib()}), flush=True)


def one_run(mode: str, objects: int, scrapes: int) -> dict[str, Any]:
    """A fresh server process, scraped from this one (so the client's buffers are not counted)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--objects", str(objects)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = json.loads(proc.stdout.readline())
        seconds, size, series = [], 0, 0
        for _ in range(scrapes):
            start = time.perf_counter()
            req = urllib.request.Request(f"http://127.0.0.1:{ready['port']}/metrics", headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(req, timeout=300) as resp:
                body = resp.read()
                zipped = resp.headers.get("Content-Encoding") == "gzip"
            seconds.append(time.perf_counter() - start)
            size = len(body)
            text = gzip.decompress(body) if zipped else body
            series = text.count(b"\nmodel_operator_condition{")
        proc.stdin.write("done\n")
        proc.stdin.flush()
        report = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    return {"mode": mode, **ready, **report, "seconds": sorted(seconds)[len(seconds) // 2], "bytes": size, "condition_series": series}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    add_out(ap, "scrape-memory")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.objects)
        return 0
    modes = ["stream", "registry"]
    machine = machine_line(load_average("before the run"))
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            runs.append(one_run(mode, args.objects, args.scrapes))
            log(f"round {r + 1}/{args.repeats}: {runs[-1]}")
    lines = header(f"One scrape of the operator's /metrics at {args.objects:,} ModelDeployments: "
                   + " against ".join(MODES[m] for m in modes), machine, [
        f"Each run a fresh process: {args.objects:,} objects exported with every field (nine condition types, sizes, "
        f"latencies), then {args.scrapes} scrapes over HTTP on loopback with gzip accepted, as Prometheus asks, from "
        "the parent process. Nothing else of the operator runs in the server process.",
        f"Rounds: {args.repeats}, the order alternating; {load_average('after the run')}.",
    ])
    lines += ["| mode | peak RSS (MiB) | RSS before the scrapes | RSS after | median s per scrape | bytes (gzip) | condition series |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {MODES[run['mode']]} | {run['peak_mib']:.0f} | {run['base_mib']:.0f} | {run['after_mib']:.0f} | "
                     f"{run['seconds']:.2f} | {run['bytes']:,} | {run['condition_series']:,} |")
    rise = {m: sorted(r["peak_mib"] - r["base_mib"] for r in runs if r["mode"] == m) for m in modes}
    secs = {m: sorted(r["seconds"] for r in runs if r["mode"] == m) for m in modes}
    med = {m: v[len(v) // 2] for m, v in rise.items()}
    med_s = {m: v[len(v) // 2] for m, v in secs.items()}
    lines += ["", f"Median peak above the RSS before the scrapes: {MODES['stream']} {med['stream']:.0f} MiB, "
              f"{MODES['registry']} {med['registry']:.0f} MiB ({med['registry'] / max(med['stream'], 1):.1f}x). "
              f"Median seconds per scrape: {med_s['stream']:.2f} against {med_s['registry']:.2f} "
              f"({med_s['registry'] / med_s['stream']:.1f}x)."]
    write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
