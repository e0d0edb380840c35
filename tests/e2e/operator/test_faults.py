"""Faults, injected into the real stack; each test asserts the end state, not only "no crash".

The operator runs as a real process (`model-operator run --namespace <test namespace>`), so it
can be killed with SIGKILL. Serving pods that only need to exist land on the KWOK gpu pool;
the worker Jobs and the Triton pods that must answer run as containers on the real node, and
clients reach them through the Service, as users do.
"""

from __future__ import annotations

import http.server
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from md_helpers import (
    AS_IS,
    GROUP,
    MODELS_CLAIM,
    ONNX_MODEL,
    PLURAL,
    STORE_CLAIM,
    VERSION,
    Load,
    OperatorProcess,
    artifacts_left,
    condition,
    create_md,
    digits_md,
    get_md,
    make_claim,
    put_digits,
    service_endpoint,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GPU = {"nodePool": "gpu", "replicas": 1, "gpus": 1, "backend": "python", "maxBatchSize": 16}


@pytest.fixture
def store(core_api: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models claim (digits example) and the artifact store claim; returns the store's directory."""
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())
    return make_claim(core_api, namespace, STORE_CLAIM)


@pytest.fixture
def operator(operator_env: dict[str, str], cluster: Any, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """make(**config_overrides) -> an OperatorProcess (not started) for this namespace."""
    made: list[OperatorProcess] = []
    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())

    def make(env: dict[str, str] | None = None, **overrides: Any) -> OperatorProcess:
        cfg = tmp_path / f"operator-{len(made)}.yaml"
        cfg.write_text(yaml.safe_dump({**base, **overrides, "metrics_port": 0}))
        op = OperatorProcess(cfg, cluster.kubeconfig, namespace, tmp_path / f"operator-{len(made)}.log", env=env)
        made.append(op)
        return op

    yield make
    for op in made:
        op.stop()


def jobs_of(batch_api: Any, namespace: str, name: str, component: str = "optimizer") -> list[Any]:
    return batch_api.list_namespaced_job(
        namespace, label_selector=f"serving.model-operator.io/deployment={name},app.kubernetes.io/component={component}").items


def patch_spec(custom_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def gone(custom_api: Any, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        get_md(custom_api, namespace, name)
        return False
    except ApiException as e:
        if e.status == 404:
            return True
        raise


def test_operator_killed_twenty_times_converges_with_one_job_per_spec(
    store: Path, operator: Any, namespace: str, custom_api: Any, batch_api: Any, apps_api: Any,
) -> None:
    """SIGKILL at random points of three ModelDeployments' lives (Job creation, report reading,
    rollout, status writes), 20 times; then one clean start. Every one ends Ready, with one Job
    per spec hash and exactly its own artifact in the store."""
    specs = {
        "served": digits_md("served", model=ONNX_MODEL, optimization=AS_IS, serving=GPU),
        "tuned": digits_md("tuned", serving=GPU),  # dynamic int8 + gate: a longer Job
        "device": {**digits_md("device", model=ONNX_MODEL, optimization=AS_IS), "spec": {
            **{k: v for k, v in digits_md("device", model=ONNX_MODEL, optimization=AS_IS)["spec"].items() if k != "serving"},
            "target": "device"}},
    }
    for body in specs.values():
        create_md(custom_api, namespace, body)
    op = operator()
    rng = random.Random(7)
    for _ in range(20):
        op.start()
        time.sleep(rng.uniform(1.0, 6.0))  # the fault's timing: a random point of the work in flight
        op.kill()
    op.start()
    for name in specs:
        wait_phase(custom_api, namespace, name, "Ready", timeout=300)
    assert op.starts == 21

    for name in specs:
        md = get_md(custom_api, namespace, name)
        digest = md["status"]["artifact"]["specHash"]
        jobs = jobs_of(batch_api, namespace, name)
        assert [j.metadata.name for j in jobs] == [f"{name}-opt-{digest}"], [j.metadata.name for j in jobs]
        assert jobs[0].status.succeeded == 1
        assert sorted(p.name for p in (store / namespace / name).iterdir()) == [digest], list((store / namespace / name).iterdir())
        assert (store / namespace / name / digest / "COMPLETE").exists()
        assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert sorted(p.name for p in (store / namespace).iterdir()) == sorted(specs)
    deployments = sorted(d.metadata.name for d in apps_api.list_namespaced_deployment(namespace).items)
    assert deployments == ["served-triton", "tuned-triton"], deployments


def test_worker_killed_mid_run_is_retried_and_no_partial_artifact_is_used(
    store: Path, operator: Any, cluster: Any, kubectl: Any, namespace: str, custom_api: Any, core_api: Any, batch_api: Any,
) -> None:
    op = operator().start()
    # A search over several recipes keeps the worker busy for a few seconds.
    create_md(custom_api, namespace, digits_md("retry", serving=GPU, optimization={
        "quantization": {"mode": "dynamic-int8"}, "qualityGate": {"maxTop1Drop": 0.05},
        "search": {"enabled": True, "maxCandidates": 6},
    }, data={"validation": {"uri": "pvc://models/validation.npz", "samples": 200},
             "calibration": {"uri": "pvc://models/calibration.npz", "samples": 64}}))

    def running_worker() -> tuple[str, str] | None:
        pods = core_api.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=optimizer").items
        for pod in pods:
            for c in pod.status.container_statuses or []:
                if c.state.running and c.container_id:
                    return pod.metadata.name, c.container_id
        return None

    pod, container_id = wait_for(running_worker, timeout=300, interval=0.2, message="the worker running")
    # Kill it in the middle of the candidate search: after loading, before anything is published.
    wait_for(lambda: "step 5/8" in kubectl("logs", pod, "-n", namespace, check=False).stdout, timeout=120, interval=0.2,
             message="the worker's candidate step")
    os.kill(cluster.container_pid(container_id), signal.SIGKILL)

    md = wait_phase(custom_api, namespace, "retry", "Ready", timeout=400)
    digest = md["status"]["artifact"]["specHash"]
    (job,) = jobs_of(batch_api, namespace, "retry")
    assert job.status.failed == 1 and job.status.succeeded == 1, job.status
    entries = sorted(p.name for p in (store / namespace / "retry").iterdir())
    assert entries == [digest], f"partial output left beside the artifact: {entries}"
    assert (store / namespace / "retry" / digest / "COMPLETE").exists()
    assert op.alive()


def test_artifact_altered_in_the_store_is_refused(
    store: Path, operator: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    operator().start()
    create_md(custom_api, namespace, digits_md("tamper", model=ONNX_MODEL, optimization=AS_IS))
    md = wait_phase(custom_api, namespace, "tamper", "Ready", timeout=300)
    served = service_endpoint(core_api, namespace, "tamper-triton")
    digest = md["status"]["artifact"]["specHash"]
    (model_file,) = [p for p in (store / namespace / "tamper" / digest).rglob("*.onnx")]
    with open(model_file, "ab") as fh:
        fh.write(b"\0tampered")

    patch_spec(custom_api, namespace, "tamper", {"serving": {"replicas": 2}})
    md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "tamper"), "Degraded").get("status") == "True" and m,
                  timeout=120, interval=1, message="Degraded=True")
    degraded = condition(md, "Degraded")
    assert degraded["reason"] == "ArtifactRejected" and "refusing to serve" in degraded["message"], degraded
    assert md["status"]["phase"] == "Degraded" and md["status"]["readyReplicas"] == 1
    # The pod that verified the artifact before it was altered keeps serving: the Service sends
    # nothing to the refused one, which never becomes ready.
    with Load(served, seconds=5, model="tamper") as load:
        load.thread.join(timeout=20)
    assert load.sent > 0 and load.failed == 0


def test_api_server_restart_under_the_operator(
    store: Path, operator: Any, cluster: Any, namespace: str, custom_api: Any, batch_api: Any, apps_api: Any,
) -> None:
    op = operator().start()
    create_md(custom_api, namespace, digits_md("before", model=ONNX_MODEL, optimization=AS_IS, serving=GPU))
    wait_phase(custom_api, namespace, "before", "Ready", timeout=300)

    cluster.restart_component("kube-apiserver", down_seconds=5)

    # Watches resumed: a new object and an edit of an old one are both handled, once each.
    create_md(custom_api, namespace, digits_md("after", model=ONNX_MODEL, optimization=AS_IS, serving=GPU))
    patch_spec(custom_api, namespace, "before", {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
    after = wait_phase(custom_api, namespace, "after", "Ready", timeout=300)
    before = wait_for(lambda: (m := get_md(custom_api, namespace, "before"))["status"].get("observedGeneration") == m["metadata"]["generation"]
                      and m["status"].get("phase") == "Ready" and m["status"]["optimization"].get("recipe") == "dynamic-int8" and m,
                      timeout=300, interval=1, message="the edit of `before` rolled out")
    assert len(jobs_of(batch_api, namespace, "after")) == 1
    names = sorted(j.metadata.name for j in jobs_of(batch_api, namespace, "before"))
    assert len(names) == 2 and f"before-opt-{before['status']['artifact']['specHash']}" in names, names
    assert sorted(d.metadata.name for d in apps_api.list_namespaced_deployment(namespace).items) == ["after-triton", "before-triton"]
    assert after["status"]["observedGeneration"] == 1
    assert op.alive(), op.text()[-3000:]


class FakePrometheus:
    """A Prometheus that answers slowly or with garbage: the faults a real one can have."""

    def __init__(self, mode: str) -> None:
        mode_ = mode

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if mode_ == "slow":
                    time.sleep(3)
                body = b"<html>502 Bad Gateway</html>" if mode_ == "garbage" else b'{"status":"success","data":{"resultType":"vector","result":[]}}'
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if mode_ == "garbage" else "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(("mode", "reason"), [("slow", "PrometheusTimeout"), ("garbage", "PrometheusGarbage")])
def test_prometheus_slow_or_garbage_holds_replicas(
    mode: str, reason: str, store: Path, operator: Any, namespace: str, custom_api: Any,
) -> None:
    fake = FakePrometheus(mode)
    try:
        operator(prometheus_url=fake.url, prometheus_timeout_seconds=1.0).start()
        auto = {"minReplicas": 1, "maxReplicas": 3, "pollSeconds": 1, "metrics": [{"type": "queueTime", "target": 5}]}
        create_md(custom_api, namespace, digits_md("held", model=ONNX_MODEL, optimization=AS_IS,
                                                   serving={**GPU, "replicas": 2}, autoscaling=auto))
        md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "held"), "MetricsAvailable").get("status") == "False" and m,
                      timeout=300, interval=1, message="MetricsAvailable=False")
        assert condition(md, "MetricsAvailable")["reason"] == reason
        first = float(md["status"]["scaling"]["lastPoll"])
        md = wait_for(lambda: float((m := get_md(custom_api, namespace, "held"))["status"]["scaling"]["lastPoll"]) > first + 5 and m,
                      timeout=120, interval=1, message="more polls")
        assert md["spec"]["serving"]["replicas"] == 2 and not md["status"]["scaling"].get("history")
        assert "holding 2 replicas" in md["status"]["scaling"]["reason"]
    finally:
        fake.close()


def test_update_whose_pods_never_become_ready_is_rolled_back_and_clients_see_no_failure(
    store: Path, operator: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    """A rolling update to a new artifact that goes bad in the store right after it is published:
    the new pod's `assemble` container refuses it and crash-loops, the operator rolls back to the
    last good artifact, and a client using the ready pods throughout sees no failed request."""
    operator().start()
    create_md(custom_api, namespace, digits_md("crash", model=ONNX_MODEL, optimization=AS_IS))
    md = wait_phase(custom_api, namespace, "crash", "Ready", timeout=300)
    good = md["status"]["rollout"]["stable"]["revision"]
    root = store / namespace / "crash"
    with Load(service_endpoint(core_api, namespace, "crash-triton"), seconds=400, pause=0.05, model="crash") as load:
        patch_spec(custom_api, namespace, "crash", {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
        new = wait_for(lambda: next((d for d in root.iterdir() if d.name != good and (d / "COMPLETE").exists()), None),
                       timeout=300, interval=0.02, message="the new artifact published")
        (model_file,) = list(new.rglob("*.onnx"))
        with open(model_file, "ab") as fh:
            fh.write(b"\0bit rot")
        md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "crash"), "RolledBack").get("status") == "True" and m,
                      timeout=300, interval=1, message="RolledBack=True")
        rolled = condition(md, "RolledBack")
        assert rolled["reason"] == "PodsBreached" and good in rolled["message"] and "ArtifactRejected" in rolled["message"], rolled
        assert md["status"]["rollout"]["stable"]["revision"] == good and new.name in md["status"]["rollout"]["failedRevisions"]
        # Back on the good artifact everywhere, and still answering.
        wait_for(lambda: all(p.metadata.labels.get("serving.model-operator.io/revision") == good
                             for p in core_api.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=triton").items
                             if not p.metadata.deletion_timestamp),
                 timeout=180, interval=1, message="only pods of the good artifact left")
        sent = load.sent
        wait_for(lambda: load.sent > sent + 20, timeout=60, message="more answers after the rollback")
    assert load.failed == 0 and load.sent > 50, (load.sent, load.errors)
    md = wait_phase(custom_api, namespace, "crash", "Ready", timeout=120)
    assert md["status"]["readyReplicas"] == 1


def test_spec_edits_racing_status_writes_lose_nothing(
    store: Path, operator: Any, namespace: str, custom_api: Any, apps_api: Any, batch_api: Any,
) -> None:
    operator().start()
    create_md(custom_api, namespace, digits_md("race", model=ONNX_MODEL, optimization=AS_IS, serving=GPU))
    wait_phase(custom_api, namespace, "race", "Ready", timeout=300)
    # Twenty edits as fast as the API server takes them, while the operator writes status every second.
    for i in range(20):
        patch_spec(custom_api, namespace, "race", {"serving": {"maxBatchSize": 8 + i}, "monitoring": {"maxErrorRatio": 0.01 * (i + 1)}})
    md = wait_for(lambda: (m := get_md(custom_api, namespace, "race"))["status"].get("observedGeneration") == m["metadata"]["generation"]
                  and m["status"].get("phase") == "Ready" and m, timeout=120, interval=1, message="status caught up with the last edit")
    assert md["spec"]["serving"]["maxBatchSize"] == 27 and md["spec"]["monitoring"]["maxErrorRatio"] == pytest.approx(0.2)
    dep = apps_api.read_namespaced_deployment("race-triton", namespace)
    assemble = next(c for c in dep.spec.template.spec.init_containers if c.name == "assemble")
    assert '"maxBatchSize": 27' in " ".join(assemble.args) or '"maxBatchSize":27' in " ".join(assemble.args), assemble.args
    assert len(jobs_of(batch_api, namespace, "race")) == 1  # serving edits never re-optimize


def test_delete_while_the_job_runs_removes_job_pods_and_artifacts(
    store: Path, operator: Any, namespace: str, custom_api: Any, core_api: Any, batch_api: Any,
) -> None:
    operator().start()
    create_md(custom_api, namespace, digits_md("doomed", serving=GPU, optimization={
        "quantization": {"mode": "dynamic-int8"}, "search": {"enabled": True, "maxCandidates": 6}}))
    wait_for(lambda: [p for p in core_api.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=optimizer").items
                      if p.status.phase == "Running"], timeout=120, interval=0.2, message="the worker running")
    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")
    wait_for(lambda: gone(custom_api, namespace, "doomed"), timeout=180, interval=1, message="the ModelDeployment gone")
    wait_for(lambda: not jobs_of(batch_api, namespace, "doomed") and not core_api.list_namespaced_pod(
        namespace, label_selector="serving.model-operator.io/deployment=doomed").items, timeout=120, interval=1, message="Jobs and pods gone")
    assert not artifacts_left(store, namespace, "doomed")


def test_finalizer_gives_up_on_an_unreachable_store_and_says_so(
    store: Path, operator: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    unreachable = {"type": "s3", "bucket": "models", "endpoint": "http://127.0.0.1:9", "prefix": "mo"}
    # Keys the operator signs with (the store is never reached, so any will do).
    keys = {"AWS_ACCESS_KEY_ID": "AKIAUNREACHABLE00000", "AWS_SECRET_ACCESS_KEY": "unused-secret"}
    operator(env=keys, artifact_store=unreachable, finalizer_timeout_seconds=40).start()
    create_md(custom_api, namespace, digits_md("stuck", model=ONNX_MODEL, optimization=AS_IS, serving=GPU))
    wait_phase_failed = wait_for(lambda: (get_md(custom_api, namespace, "stuck").get("status") or {}).get("phase") == "Failed",
                                 timeout=300, interval=1, message="Failed: the worker cannot publish")
    assert wait_phase_failed
    started = time.monotonic()
    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stuck")
    wait_for(lambda: gone(custom_api, namespace, "stuck"), timeout=240, interval=1, message="the finalizer giving up")
    assert time.monotonic() - started >= 30  # it did try for the configured time
    events = [e for e in core_api.list_namespaced_event(namespace).items if e.involved_object.name == "stuck"]
    abandoned = [e for e in events if e.reason == "CleanupAbandoned" and e.type == "Warning"]
    assert abandoned and "s3://models/mo/" in abandoned[0].message and "by hand" in abandoned[0].message, [(e.reason, e.message) for e in events]


def _connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to `port` on loopback (from /proc: the
    process' socket inodes, matched against the kernel's TCP tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


def test_large_resume_on_a_small_connection_pool(
    store: Path, operator: Any, operator_env: dict[str, str], namespace: str, custom_api: Any, cluster: Any,
) -> None:
    """60 ModelDeployments (device targets and served ones) resumed at once by an operator allowed
    2 request connections: all become Ready (the watches are not starved) and the operator never
    holds more connections to the API server than its pool allows plus the synchronous client's
    and one per informer stream."""
    from urllib.parse import urlparse

    import kubernetes

    from model_operator.api.hashing import spec_hash
    from model_operator.api.validation import load_spec
    from model_operator.controller.handlers import CHILD_STREAMS, WATCHED_KINDS
    from model_operator.kube.session import connection_limit

    names = []
    for i in range(60):
        body = digits_md(f"fleet-{i:02d}", model=ONNX_MODEL, optimization=AS_IS,
                         serving={"nodePool": "cpu", "replicas": 1, "backend": "python", "maxBatchSize": 16})
        if i % 3 == 0:
            body["spec"].pop("serving")
            body["spec"]["target"] = "device"
        create_md(custom_api, namespace, body)
        digest = spec_hash(load_spec(body["spec"]))
        # As after an earlier run: the artifact for this spec is already in status, so no Job is made.
        custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"], {"status": {
            "artifact": {"uri": f"pvc://{STORE_CLAIM}/{namespace}/{body['metadata']['name']}/{digest}", "sha256": "0" * 64,
                         "specHash": digest, "format": "onnx"}}})
        names.append(body["metadata"]["name"])

    port = urlparse(cluster.server).port
    pool = connection_limit(WATCHED_KINDS, 1, 2)
    sync_pool = kubernetes.client.Configuration().connection_pool_maxsize  # the reconciler's client
    informers = len(CHILD_STREAMS)  # cluster-wide: one list-and-watch per child kind
    pools = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())["node_pools"]
    op = operator(api_request_connections=2, node_pools={**pools, "cpu": {"node_selector": {"node-pool": "cpu"}}}).start()
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            if op.alive():
                try:
                    peak = max(peak, _connections_to(op.proc.pid, port))
                except OSError:
                    pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        phases: dict[str, int] = {}

        def all_ready() -> bool:
            phases.clear()
            for m in custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
                phase = (m.get("status") or {}).get("phase") or "none"
                phases[phase] = phases.get(phase, 0) + 1
            return phases.get("Ready", 0) == len(names)

        try:
            wait_for(all_ready, timeout=300, interval=2, message="60 ModelDeployments Ready on a 2-connection pool")
        except Exception as e:
            raise AssertionError(f"phases {phases}; operator log: {op.text()[-4000:]}") from e
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert 0 < peak <= pool + sync_pool + informers, (peak, pool, sync_pool, informers, op.text()[-3000:])
