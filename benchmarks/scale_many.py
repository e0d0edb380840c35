"""Many ModelDeployments with the defaults a user gets (golden probe, ServiceMonitor, the built-in
autoscaler) on the simulated cluster, beside unrelated Pods and Deployments (issue #15 item 6).

For each size in --counts, in a fresh cluster with a real Prometheus and the ServiceMonitor CRD:

1. cold start: the ModelDeployments are made while no operator runs, then the operator starts;
   time until all are Ready, peak RSS; a steady window: steady RSS, API requests/s by verb and
   resource (writes/s apart), probe Jobs/Pods created, Prometheus queries per poll, 429s;
2. restart: the operator process is stopped and started again; time until every object was
   reconciled, and the API writes it made meanwhile (target: none, all objects are already right);
3. the unrelated objects are created (bare Pods on their own KWOK nodes, Deployments with
   replicas 0, in other namespaces), then a restart and a steady window again: the RSS with and
   without them side by side.

Served ModelDeployments get Triton pods on KWOK nodes (nothing runs, KWOK makes them Ready, so
Prometheus has no Triton series to return); device targets publish only. The optimization step
is skipped: each object's status already carries an artifact for its spec hash.

    python benchmarks/scale_many.py [--counts 1000,10000] [--unrelated-pods 20000] [--unrelated-deployments 5000]

With --reconcile-workers 4,8,16 it runs phase 1 only (no steady window), once per worker count
and size in a fresh cluster each, the counts interleaved --repeats times, and writes a page of
cold starts side by side: the time to all Ready and its ratio to the first count's in the same
round.

Targets (issue #15) at 10,000 objects: peak RSS <= 512 MiB, restart-to-converged <= 600 s with no
writes for objects already right, <= 20 API writes/s steady, <= 10 Prometheus queries per poll,
unrelated objects change the RSS by < 10 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import harness
from harness import log

harness.use_paths("operator")

from kubetest.cluster import Cluster  # noqa: E402
from kubetest.nodepools import CPU_POOL, NodePool  # noqa: E402
from kubetest.prometheus import Prometheus  # noqa: E402
from kubetest.wait import wait_for  # noqa: E402
from model_operator.api.hashing import spec_hash  # noqa: E402
from model_operator.api.validation import load_spec  # noqa: E402

GROUP, VERSION, PLURAL = "serving.model-operator.io", "v1alpha1", "modeldeployments"
NS = "scale"
MONITORING_CRDS = harness.REPO / "tests" / "e2e" / "fixtures" / "monitoring.coreos.com-crds.yaml"
# The kinds the operator reads or writes; writes/s and the restart's writes are counted on these.
RESOURCES = ("modeldeployments", "deployments", "services", "jobs", "pods", "poddisruptionbudgets", "events",
             "horizontalpodautoscalers", "servicemonitors", "secrets", "configmaps")
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
UNRELATED_POOL = NodePool("other", 1, {"node-pool": "other"}, capacity={"cpu": "1000", "memory": "4Ti", "pods": "1000"})
PODS_PER_NS = 1000


# ---------------------------------------------------------------- pure pieces (tests/unit/test_bench_scale_many.py)
def spec_for(i: int, device: bool) -> dict[str, Any]:
    """A user's spec: monitoring left at its defaults (golden probe every 60 s, ServiceMonitor),
    `autoscaling: {}` (the built-in engine with its defaults) on served objects."""
    spec: dict[str, Any] = {
        "model": {"uri": f"s3://models/m{i}.onnx", "format": "onnx"},
        "optimization": {"quantization": {"mode": "none"}},
    }
    if device:
        spec["target"] = "device"
    else:
        spec["serving"] = {"nodePool": "cpu"}
        spec["autoscaling"] = {}
    return spec


def parse_requests(text: str) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total of the API server's /metrics, summed by (verb, resource[/sub], code)."""
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        key = (labels.get("verb", ""), resource, labels.get("code", ""))
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[tuple[str, str, str], float], before: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def by_verb_resource(counts: dict[tuple[str, str, str], float], resources: Iterable[str] = RESOURCES,
                     verbs: Iterable[str] | None = None) -> dict[str, float]:
    """{"VERB resource": n} for those resources (and verbs), codes summed; watches left out
    (counted when opened, not per event)."""
    keep, verb_set = set(resources), set(verbs) if verbs is not None else None
    out: dict[str, float] = {}
    for (verb, resource, _code), n in counts.items():
        if verb == "WATCH" or resource.split("/")[0] not in keep or (verb_set is not None and verb not in verb_set):
            continue
        out[f"{verb} {resource}"] = out.get(f"{verb} {resource}", 0.0) + n
    return dict(sorted(out.items()))


def throttled(counts: dict[tuple[str, str, str], float]) -> float:
    """Requests the API server answered 429 (all clients, all resources)."""
    return sum(n for (_verb, _res, code), n in counts.items() if code == "429")


def created(counts: dict[tuple[str, str, str], float], resource: str) -> float:
    """Objects of a resource created (POST or a server-side APPLY answered 201)."""
    return sum(n for (verb, res, code), n in counts.items() if res == resource and verb in ("POST", "APPLY") and code == "201")


def operator_writes(writes: dict[str, float], op_counts: dict[str, float]) -> dict[str, float]:
    """The writes that are the operator's among all clients' ("VERB resource" -> n): every APPLY
    (only the operator applies server-side here), every write to modeldeployments (its status,
    finalizers and kopf's annotations), and the deletes it counted itself
    (model_operator_api_writes_total "<Kind> delete"); the rest (the Job controller, the
    scheduler, KWOK) is left out."""
    out = {k: v for k, v in writes.items() if k.startswith("APPLY ") or k.split(" ", 1)[1].startswith("modeldeployments")}
    for key, n in op_counts.items():
        kind, verb = key.rsplit(" ", 1)
        if verb == "delete" and n:
            out[f"DELETE {kind} (operator)"] = n
    return out


def metric_sum(text: str, name: str, exclude: Callable[[str], bool] = lambda _line: False) -> float:
    """The sum of a Prometheus text-format metric's samples (lines `exclude` rejects left out)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and not exclude(line))


def reconciled(metrics: str) -> float:
    """Reconciles an operator process has run, from its metrics text: the scaler's ticks and
    deletes left out, so a converged restart is one per object."""
    return metric_sum(metrics, "model_operator_reconcile_total",
                      exclude=lambda ln: 'handler="autoscale"' in ln or 'handler="delete"' in ln)


def polls(times: list[float], gap: float = 1.0) -> list[int]:
    """Queries per poll: the query times grouped into bursts (a poll sends its queries together;
    polls are seconds apart); the size of each burst."""
    sizes: list[int] = []
    last = None
    for t in sorted(times):
        if last is None or t - last > gap:
            sizes.append(0)
        sizes[-1] += 1
        last = t
    return sizes


def query_log_times(text: str, since: float, until: float) -> list[float]:
    """Times (epoch s) of the instant/range queries in Prometheus' query log within [since, until]."""
    out = []
    for line in text.splitlines():
        try:
            ts = datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if since <= ts <= until:
            out.append(ts)
    return out


def status_changes(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What changed in the objects' statuses ({name: status} before and after): how many objects
    had each top-level key change; a condition counts by type and the fields that changed."""
    out: dict[str, int] = {}

    def bump(key: str) -> None:
        out[key] = out.get(key, 0) + 1

    for name, new in after.items():
        old = before.get(name, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) == new.get(key):
                continue
            if key != "conditions":
                bump(key)
                continue
            was = {c.get("type"): c for c in old.get("conditions") or []}
            for cond in new.get("conditions") or []:
                prev = was.get(cond.get("type"), {})
                fields = sorted(f for f in set(cond) | set(prev) if cond.get(f) != prev.get(f))
                if fields:
                    bump(f"conditions[{cond.get('type')}].{'/'.join(fields)}")
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- measuring
class PhaseWatch(threading.Thread):
    """Each ModelDeployment's status.phase, from one LIST and then a WATCH (again from a LIST when
    the watch's version has expired). Counting Ready by listing every 20 s cost the API server a
    10,000-object LIST (about 54 MB of JSON, 10 s of its time) three times a minute: a load no user
    puts on it. A watch sends each change once."""

    def __init__(self, custom: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.custom, self.namespace = custom, namespace
        self.phases: dict[str, str] = {}
        self.stop_flag = threading.Event()
        self.error: str | None = None

    def ready(self) -> int:
        return sum(1 for phase in list(self.phases.values()) if phase == "Ready")

    def _list(self) -> str:
        phases, cont = {}, None
        while True:
            page = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, limit=500, _continue=cont)
            phases.update({m["metadata"]["name"]: (m.get("status") or {}).get("phase", "") for m in page["items"]})
            cont = page["metadata"].get("continue")
            if not cont:
                self.phases = phases
                return page["metadata"]["resourceVersion"]

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        version = ""
        while not self.stop_flag.is_set():
            try:
                version = version or self._list()
                stream = watch.Watch().stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                              resource_version=version, allow_watch_bookmarks=True, timeout_seconds=60)
                for event in stream:
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self.phases.pop(obj["metadata"]["name"], None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self.phases[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase", "")
                    if self.stop_flag.is_set():
                        return
            except ApiException as exc:
                if exc.status != 410:
                    self.error = str(exc)
                    self.stop_flag.wait(2)
                version = ""  # expired (410) or failed: list again
            except Exception as exc:  # noqa: BLE001 - a dropped connection: list again
                self.error = str(exc)
                version = ""
                self.stop_flag.wait(2)


class Sampler(threading.Thread):
    """Peak resident memory of a process (VmHWM) and its VmRSS samples, every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0, threading.Event()
        self.rss: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
                self.peak = max(self.peak, int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024)  # type: ignore[union-attr]
                self.rss.append((time.monotonic(), int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024))  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass
            self.stop_flag.wait(0.5)

    def mean_rss(self, since: float) -> float:
        values = [v for t, v in self.rss if t >= since]
        return sum(values) / len(values) if values else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,10000", help="fleet sizes, each in its own cluster (e.g. 100,1000 for a tenth first)")
    ap.add_argument("--device-share", type=float, default=0.3)
    ap.add_argument("--unrelated-pods", type=int, default=20000)
    ap.add_argument("--unrelated-deployments", type=int, default=5000)
    ap.add_argument("--steady-seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=8, help="client threads creating objects")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds to wait for Ready, converged or Running")
    ap.add_argument("--smoke", action="store_true", help="title the page as a smoke run")
    ap.add_argument("--reconcile-workers", default="",
                    help="comma-separated operator.reconcileWorkers values: cold starts only, side by side (e.g. 4,8,16)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the --reconcile-workers comparison")
    args = ap.parse_known_args()[0]
    harness.add_out(ap, "scale-workers" if args.reconcile_workers else "scale-defaults")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    machine = harness.machine_line(harness.load_average("before the run"))
    if args.reconcile_workers:
        workers = [int(w) for w in args.reconcile_workers.split(",")]
        rounds = [[run_size(args, n, w) for n in counts for w in workers] for r in range(args.repeats)]
        write_workers_page(args, machine, rounds)
        return 0
    results = [run_size(args, n) for n in counts]
    write_page(args, machine, results)
    return 0


def run_size(args: argparse.Namespace, count: int, workers: int | None = None) -> dict[str, Any]:
    """One size in a fresh cluster: every phase, or with `workers` (operator.reconcileWorkers) the cold start alone."""
    from kubernetes import client

    n_device = int(count * args.device_share)
    nodes = math.ceil((count - n_device) / 100) + 1
    other_nodes = max(1, math.ceil(args.unrelated_pods / 900))
    state = harness.new_state_dir("bench-scale-")
    cluster: Cluster = harness.start_kwok_cluster(state, (CPU_POOL.with_count(nodes), UNRELATED_POOL.with_count(other_nodes)))
    res: dict[str, Any] = {"count": count, "nodes": nodes, "other_nodes": other_nodes, "workers": workers}
    # Each phase's figures are kept as they come: a large run that dies late still leaves its earlier phases.
    partial = Path(args.out).with_suffix(f".{count}{f'-w{workers}' if workers else ''}.partial.json")

    def keep() -> None:
        partial.write_text(json.dumps(res, indent=1, default=str))
    prom_proc = None
    failed = True  # until the size's last phase is done: a failed run keeps its state folder
    try:
        kube = harness.connect(cluster, pool_maxsize=args.threads * 2)
        harness.install_crds(cluster)
        cluster.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(MONITORING_CRDS))
        harness.make_namespace(kube.core, NS)

        prom = Prometheus.for_cluster(cluster, scrape_interval="15s")
        prom_proc = prom.start()
        qlog = prom.directory / "queries.log"
        conf = prom.config_path.read_text().replace("global:\n", f"global:\n  query_log_file: {qlog}\n", 1)
        prom.config_path.write_text(conf)
        urllib.request.urlopen(urllib.request.Request(f"{prom.url}/-/reload", method="POST"), timeout=30).close()
        log(f"Prometheus at {prom.url}, query log {qlog}")

        metrics_port = harness.free_port()
        cfg = harness.write_config(state, {
            "artifact_store": {"type": "s3", "bucket": "models", "prefix": "mo"},
            "node_pools": {"cpu": {"node_selector": {"node-pool": "cpu"}, "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}},
            "default_node_pool": {"cloud": "cpu", "edge": "cpu"},
            "prometheus_url": prom.url,
            "metrics_port": metrics_port,
            **({"reconcile_workers": workers} if workers else {}),
        })
        # The chart's defaults (no MODEL_OPERATOR_* from this shell) and its Deployment's MALLOC_ARENA_MAX.
        # Placeholder S3 keys: the operator signs artifact URLs locally (no request reaches a store);
        # without keys every apply fails and retries, which is not a user's steady state.
        env = harness.operator_env(cluster.kubeconfig, {"MALLOC_ARENA_MAX": "2", "AWS_ACCESS_KEY_ID": "bench",
                                                        "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}, clean=True)

        def parallel(what: str, total: int, make: Callable[[int], None]) -> None:
            t0, done = time.monotonic(), 0
            with ThreadPoolExecutor(args.threads) as pool:
                for _ in pool.map(make, range(total)):
                    done += 1
                    if done % max(100, total // 20) == 0 or done == total:
                        log(f"created {done}/{total} {what} ({time.monotonic() - t0:.0f} s)")

        def make_md(i: int) -> None:
            device = int((i + 1) * args.device_share) > int(i * args.device_share)
            spec = spec_for(i, device)
            digest = spec_hash(load_spec(spec))
            name = f"md-{i:05d}"
            kube.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec})
            kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, {"status": {"artifact": {
                "uri": f"s3://models/mo/{NS}/{name}/{digest}", "sha256": "0" * 64, "specHash": digest, "format": "onnx"}}})

        def api_counts() -> dict[tuple[str, str, str], float]:
            return parse_requests(cluster.kubectl("get", "--raw", "/metrics", timeout=120).stdout)

        def op_metrics() -> str:
            return fetch(f"http://127.0.0.1:{metrics_port}/metrics")

        def reconciles() -> float:
            return reconciled(op_metrics())

        def steady(op: Any, sampler: Sampler, tag: str) -> None:
            time.sleep(20)  # the last status writes and Events settle
            o0 = _op_writes(op_metrics())
            w0, c0, q0, cpu0 = time.time(), api_counts(), metric_sum(op_metrics(), "model_operator_scaler_prometheus_queries_total"), cpu_seconds(op.pid)
            m0 = time.monotonic()
            time.sleep(args.steady_seconds)  # the steady window being measured
            w1, c1, q1, cpu1 = time.time(), api_counts(), metric_sum(op_metrics(), "model_operator_scaler_prometheus_queries_total"), cpu_seconds(op.pid)
            window = w1 - w0
            d = delta(c1, c0)
            o1 = _op_writes(op_metrics())
            mine = operator_writes(by_verb_resource(d, verbs=WRITE_VERBS), {k: v - o0.get(k, 0.0) for k, v in o1.items()})
            sizes = polls(query_log_times(qlog.read_text() if qlog.exists() else "", w0, w1))
            res[f"{tag}_steady"] = {
                "rss_mib": sampler.mean_rss(m0) / 2**20,
                "rps": {k: round(v / window, 3) for k, v in by_verb_resource(d).items()},
                "writes_ps": sum(by_verb_resource(d, verbs=WRITE_VERBS).values()) / window,
                "operator_writes_ps": sum(mine.values()) / window,
                "probe_jobs": created(d, "jobs"), "probe_pods": created(d, "pods"),
                "prom_queries": sum(sizes), "polls": len(sizes),
                "per_poll_max": max(sizes, default=0), "operator_queries": q1 - q0,
                "throttled": throttled(d), "cpu": (cpu1 - cpu0) / window, "window": window,
            }
            log(f"{tag} steady: {res[f'{tag}_steady']}")
            keep()

        def statuses() -> dict[str, dict[str, Any]]:
            out, cont = {}, None
            while True:
                page = kube.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, limit=500, _continue=cont)
                out.update({m["metadata"]["name"]: m.get("status") or {} for m in page["items"]})
                cont = page["metadata"].get("continue")
                if not cont:
                    return out

        def restart(tag: str) -> None:
            before = statuses()
            c0 = api_counts()
            with harness.run_operator(state, cfg, env, ("--namespace", NS), liveness_port=0, stop_timeout=120) as op:
                sampler = Sampler(op.pid)
                sampler.start()
                t0 = time.monotonic()
                wait_for(lambda: _up(op_metrics), timeout=600, interval=1, message="operator metrics endpoint")
                base = reconciles()  # 0 in a fresh process
                seen = [-1.0]

                def converged() -> bool:
                    n = reconciles() - base
                    if n // max(1, count // 20) != seen[0] // max(1, count // 20):
                        log(f"{tag} restart: {n:.0f}/{count} reconciled after {time.monotonic() - t0:.0f}s "
                            f"(operator RSS {sampler.rss[-1][1] / 2**20 if sampler.rss else 0:.0f} MiB)")
                    seen[0] = n
                    return n >= count

                wait_for(converged, timeout=args.timeout, interval=2, message=f"{count} objects reconciled after restart")
                converged = time.monotonic() - t0
                time.sleep(15)  # writes still in flight
                d = delta(api_counts(), c0)
                changed = status_changes(before, statuses())
                writes = by_verb_resource(d, verbs=WRITE_VERBS)
                ops = _op_writes(op_metrics())
                mine = operator_writes(writes, ops)
                res[f"{tag}_restart"] = {"converged_s": converged, "writes": writes, "writes_total": sum(writes.values()),
                                         "op_writes": ops, "mine": mine, "mine_total": sum(mine.values()), "throttled": throttled(d),
                                         "status_changed": changed}
                log(f"{tag} restart: {res[f'{tag}_restart']}")
                steady(op, sampler, tag)
                sampler.stop_flag.set()
                res[f"{tag}_restart"]["peak_mib"] = sampler.peak / 2**20
                keep()

        # 1. cold start
        parallel("ModelDeployments", count, make_md)
        phases = PhaseWatch(kube.custom, NS)
        phases.start()
        wait_for(lambda: len(phases.phases) >= count, timeout=600, interval=1, message="the benchmark's watch listed every object")
        c0 = api_counts()
        with harness.run_operator(state, cfg, env, ("--namespace", NS), liveness_port=0, stop_timeout=120) as op:
            sampler = Sampler(op.pid)
            sampler.start()
            t0, last = time.monotonic(), [-1]

            marks: dict[str, float] = {}

            def all_ready() -> bool:
                n = phases.ready()
                if n >= count:  # what the watch says, checked against a LIST
                    n = sum(1 for st in statuses().values() if st.get("phase") == "Ready")
                for share in (0.5, 0.9):
                    if n >= share * count:
                        marks.setdefault(f"{share:.0%}", time.monotonic() - t0)
                if n != last[0]:
                    rss = sampler.rss[-1][1] if sampler.rss else 0
                    log(f"{n}/{count} Ready after {time.monotonic() - t0:.0f}s (operator RSS {rss / 2**20:.0f} MiB, "
                        f"peak {sampler.peak / 2**20:.0f} MiB, CPU {cpu_seconds(op.pid):.0f} s)")
                    last[0] = n
                return n >= count

            wait_for(all_ready, timeout=args.timeout, interval=5 if count <= 1000 else 15, message=f"{count} ModelDeployments Ready")
            res["cold_ready_s"] = time.monotonic() - t0
            phases.stop_flag.set()
            res["cold_marks"] = marks
            res["cold_cpu_s"] = cpu_seconds(op.pid)
            d = delta(api_counts(), c0)
            res["cold_throttled"] = throttled(d)
            res["cold_requests"] = sum(by_verb_resource(d).values())
            if workers is None:
                steady(op, sampler, "cold")
            sampler.stop_flag.set()
            res["cold_peak_mib"] = sampler.peak / 2**20
            res["load_after"] = os.getloadavg()[0]
            keep()
            res["service_monitors"] = len(kube.custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", NS, "servicemonitors")["items"])
        if workers is not None:
            failed = False
            return res
        # 2. restart without unrelated objects
        restart("base")
        # 3. unrelated objects, then a restart with them
        apps = client.AppsV1Api(kube.api)
        namespaces = [f"unrelated-{k}" for k in range(max(1, math.ceil(max(args.unrelated_pods, args.unrelated_deployments) / PODS_PER_NS)))]
        for ns in namespaces:
            harness.make_namespace(kube.core, ns)

        def make_pod(i: int) -> None:
            kube.core.create_namespaced_pod(namespaces[i // PODS_PER_NS], {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{i:05d}", "labels": {"app": "unrelated"}},
                "spec": {"nodeName": f"other-{i % other_nodes}", "containers": [{"name": "c", "image": "busybox"}]}})

        def make_deployment(i: int) -> None:
            labels = {"app": f"unrelated-{i}"}
            apps.create_namespaced_deployment(namespaces[i // PODS_PER_NS], {
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d-{i:05d}", "labels": labels},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                    "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})

        parallel("unrelated Pods", args.unrelated_pods, make_pod)
        parallel("unrelated Deployments", args.unrelated_deployments, make_deployment)

        def unrelated_running() -> bool:
            n, cont = 0, None
            while True:
                page = kube.core.list_pod_for_all_namespaces(label_selector="app=unrelated", field_selector="status.phase=Running",
                                                             limit=1000, _continue=cont)
                n += len(page.items)
                cont = page.metadata._continue
                if not cont:
                    log(f"{n}/{args.unrelated_pods} unrelated Pods Running")
                    return n >= args.unrelated_pods

        # KWOK's and the Deployment controller's status writes for them settle before the restart is counted.
        wait_for(unrelated_running, timeout=args.timeout, interval=10, message="unrelated Pods Running")
        time.sleep(20)
        restart("unrelated")
        res["rss_ratio_peak"] = res["unrelated_restart"]["peak_mib"] / res["base_restart"]["peak_mib"]
        res["rss_ratio_steady"] = res["unrelated_steady"]["rss_mib"] / res["base_steady"]["rss_mib"]
        res["load_after"] = os.getloadavg()[0]
        failed = False
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(timeout=60)
        cluster.stop()
        if not failed:
            shutil.rmtree(state, ignore_errors=True)  # kept when the run failed, for its logs
            partial.unlink(missing_ok=True)  # the page holds it all now
    return res


def _up(op_metrics: Callable[[], str]) -> bool:
    try:
        op_metrics()
        return True
    except OSError:
        return False


def _op_writes(text: str) -> dict[str, float]:
    """model_operator_api_writes_total by "kind verb" (the operator's own count of its child writes)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("model_operator_api_writes_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[f"{labels['kind']} {labels['verb']}"] = float(line.rsplit(" ", 1)[1])
    return out


def _target(ok: bool, text: str) -> str:
    return f"{'met' if ok else 'MISSED'} ({text})"


def write_workers_page(args: argparse.Namespace, machine: str, rounds: list[list[dict[str, Any]]]) -> None:
    lines = harness.header("Cold start by operator.reconcileWorkers", machine, [
        "Cluster, Prometheus, operator and ModelDeployments as in scale_many's full run (KWOK pods, a real Prometheus, the "
        "chart's defaults but for operator.reconcileWorkers, the built-in autoscaler, golden probe and ServiceMonitor on; "
        f"{args.device_share:.0%} `target: device`). Differs from a user: optimization skipped (each status already holds "
        "an artifact), no unrelated objects, no restart. Each row is a fresh cluster: objects made while no operator runs, "
        "then the operator starts; all Ready = every ModelDeployment's phase Ready. Rows of one round ran one after the "
        "other on this machine, which also runs the API server, etcd, controller-manager, scheduler, KWOK and Prometheus; "
        "the ratio is to the round's first row of the same size.",
    ])
    lines += [
        "| round | MDs | reconcileWorkers | 50% Ready (s) | 90% Ready (s) | all Ready (s) | ratio | operator CPU (s) | API requests "
        "| 429s | peak RSS (MiB) | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, results in enumerate(rounds, 1):
        first: dict[int, float] = {}
        for r in results:
            base = first.setdefault(r["count"], r["cold_ready_s"])
            marks = r["cold_marks"]
            lines.append(
                f"| {i} | {r['count']} | {r['workers']} | {marks.get('50%', 0):.0f} | {marks.get('90%', 0):.0f} | "
                f"{r['cold_ready_s']:.0f} | {r['cold_ready_s'] / base:.2f} | {r['cold_cpu_s']:.0f} | {r['cold_requests']:.0f} | "
                f"{r['cold_throttled']:.0f} | {r['cold_peak_mib']:.0f} | {r['load_after']:.1f} |")
    harness.write_result(args.out, lines)


def write_page(args: argparse.Namespace, machine: str, results: list[dict[str, Any]]) -> None:
    title = "Fleet with the defaults on" + (" — SMOKE at tiny size, not the issue's benchmark" if args.smoke else "")
    lines = harness.header(title, machine, [
        "Cluster: kube-apiserver v1.34, controller-manager, scheduler and KWOK on loopback (Triton pods are KWOK pods: "
        "nothing runs, no real Triton, so Prometheus has no Triton series and the autoscaler sees no load); a real "
        "Prometheus (15 s scrape, kubernetes pod discovery) is the operator's prometheus_url; the ServiceMonitor CRD is "
        "installed, so the operator makes ServiceMonitors.",
        "Operator: a process with the chart's defaults (no MODEL_OPERATOR_* set, MALLOC_ARENA_MAX=2 as the chart), "
        "watching one namespace.",
        f"ModelDeployments: {args.device_share:.0%} `target: device`, the rest served (`serving.nodePool: cpu`, "
        "`autoscaling: {}` = the built-in engine with its defaults); monitoring at its defaults (golden probe every 60 s, "
        "ServiceMonitor on). The probe is a `probe` container in each Triton pod: on KWOK pods nothing runs, so there is "
        "no probe series and QualityDegraded stays Unknown (the operator still reads the fleet's quality with its one "
        "grouped query). Differs from a user: optimization skipped (each status already holds an artifact for the "
        "spec hash, so no optimization Job); placeholder S3 keys in the operator's environment (URLs are signed locally, "
        "no store is reached).",
        f"Unrelated objects (phase 3): {args.unrelated_pods} bare Pods bound by nodeName to their own KWOK nodes and "
        f"{args.unrelated_deployments} Deployments with replicas 0 (no pods), in namespaces unrelated-*, "
        f"created by {args.threads} client threads.",
        f"Phases per size, each size in a fresh cluster: (1) cold start: objects made while no operator runs, then the "
        f"operator starts (all Ready counted by one watch of the benchmark's, then checked by one LIST); "
        "(2) restart: the process stopped and started, converged = every object reconciled once; "
        f"(3) unrelated objects created, restart again. Steady windows: {args.steady_seconds:.0f} s, 20 s after "
        "Ready/converged. API requests from apiserver_request_total (all clients; watches excluded) on "
        f"{', '.join(RESOURCES)}; writes = {'/'.join(WRITE_VERBS)}. Prometheus queries from its query log, grouped into "
        "polls (bursts > 1 s apart). Probe Jobs/Pods = Jobs and Pods created (POST or APPLY answered 201) in the steady window. "
        "The operator's writes: every APPLY (only it applies server-side here), every write to modeldeployments, and the "
        "deletes it counted itself; all clients' writes add the controllers' and KWOK's (e.g. the Deployment controller's "
        "status PUTs for the unrelated Deployments).",
        "",
    ])
    lines += [
        "| MDs | cold: all Ready (s) | cold peak RSS (MiB) | steady RSS (MiB) | restart: converged (s) | restart: the operator's writes | "
        "restart peak RSS (MiB) | steady writes/s: the operator's (all clients') | Prom queries/poll (max; polls) | probe Jobs/Pods in window | 429s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for tag in ("base", "unrelated"):
            s, rs = r[f"{tag}_steady"], r[f"{tag}_restart"]
            label = f"{r['count']}" + (" + unrelated" if tag == "unrelated" else "")
            cold = (f"{r['cold_ready_s']:.0f}", f"{r['cold_peak_mib']:.0f}") if tag == "base" else ("–", "–")
            lines.append(
                f"| {label} | {cold[0]} | {cold[1]} | {s['rss_mib']:.0f} | {rs['converged_s']:.0f} | {rs['mine_total']:.0f} "
                f"{rs['mine']} | {rs['peak_mib']:.0f} | {s['operator_writes_ps']:.2f} ({s['writes_ps']:.2f}) | {s['per_poll_max']} ({s['polls']} polls, "
                f"{s['prom_queries']} queries; operator counted {s['operator_queries']:.0f}) | {s['probe_jobs']:.0f}/{s['probe_pods']:.0f} | "
                f"{s['throttled'] + rs['throttled'] + (r['cold_throttled'] if tag == 'base' else 0):.0f} |")
    lines.append("")
    for r in results:
        lines += [f"Steady API requests/s by verb and resource, {r['count']} MDs (without / with unrelated objects):", "",
                  f"- without: {r['base_steady']['rps']}", f"- with: {r['unrelated_steady']['rps']}",
                  f"- all clients' writes during the restarts (the Job controller, scheduler and KWOK too): "
                  f"{r['base_restart']['writes']} / {r['unrelated_restart']['writes']}",
                  f"- the operator's own child-write counter in the restarted process (model_operator_api_writes_total): "
                  f"{r['base_restart']['op_writes']} / {r['unrelated_restart']['op_writes']}",
                  f"- what the restarts changed in the statuses (objects per key): {r['base_restart']['status_changed']} / "
                  f"{r['unrelated_restart']['status_changed']}",
                  f"- cold start's steady window (before any restart): {r['cold_steady']}",
                  f"- operator CPU in the steady windows: {r['base_steady']['cpu']:.2f} / {r['unrelated_steady']['cpu']:.2f} cores; "
                  f"ServiceMonitors made: {r['service_monitors']}; KWOK nodes: {r['nodes']} cpu + {r['other_nodes']} other; "
                  f"load average after: {r['load_after']:.1f}",
                  f"- unrelated objects' effect on the operator's RSS: peak {r['rss_ratio_peak']:.2f}x, steady {r['rss_ratio_steady']:.2f}x "
                  "(restart with / restart without, same cluster, same MDs)", ""]
    big = max(results, key=lambda r: r["count"])
    s, rs = big["unrelated_steady"], big["unrelated_restart"]
    peak = max(big["cold_peak_mib"], big["base_restart"]["peak_mib"], rs["peak_mib"])
    lines += [f"Targets (issue #15, stated for 10,000 MDs; here {big['count']}):", "",
              "- peak RSS <= 512 MiB: " + _target(peak <= 512, f"{peak:.0f} MiB, {peak / 512:.2f}x the limit"),
              "- restart-to-converged <= 600 s: " + _target(rs["converged_s"] <= 600, f"{rs['converged_s']:.0f} s"),
              "- no writes for objects already right: " + _target(rs["mine_total"] == 0, f"{rs['mine_total']:.0f} writes by the operator: {rs['mine']}"),
              "- <= 20 API writes/s steady: " + _target(s["operator_writes_ps"] <= 20, f"the operator's {s['operator_writes_ps']:.2f}/s; "
                                                       f"all clients' {s['writes_ps']:.2f}/s"),
              "- <= 10 Prometheus queries per poll: " + _target(s["per_poll_max"] <= 10, f"at most {s['per_poll_max']}"),
              "- unrelated objects change RSS < 10 %: " + _target(abs(big["rss_ratio_steady"] - 1) < 0.1 and abs(big["rss_ratio_peak"] - 1) < 0.1,
                                                                  f"steady {big['rss_ratio_steady']:.2f}x, peak {big['rss_ratio_peak']:.2f}x")]
    harness.write_result(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
