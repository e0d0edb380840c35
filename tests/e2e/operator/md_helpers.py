"""Small helpers the operator e2e tests share: PVC paths on the real node, the digits model,
reading ModelDeployments, finding ready Triton pods, the Service clients use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetest.wait import wait_for

REPO = Path(__file__).resolve().parents[3]
GROUP, VERSION, PLURAL = "serving.model-operator.io", "v1alpha1", "modeldeployments"
LOCAL_TOLERATION = {"key": "model-operator.io/local", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
STORE_CLAIM = "artifacts"
MODELS_CLAIM = "models"
# The digits example's ONNX file served as it is (no optimization): the quickest way to a Triton pod.
ONNX_MODEL = {
    "uri": "pvc://models/digits.onnx", "format": "onnx",
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}
AS_IS = {"quantization": {"mode": "none"}}
# Serving on the real node: one Triton replica with the python backend.
LOCAL = {"nodePool": "local", "replicas": 1, "backend": "python", "maxBatchSize": 16}


def make_claim(core_api: Any, namespace: str, name: str) -> Path:
    """A PVC bound by the test cluster's hostPath provisioner; returns its directory on this machine."""
    core_api.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})
            ),
        ),
    )
    pvc = wait_for(
        lambda: (p := core_api.read_namespaced_persistent_volume_claim(name, namespace)).status.phase == "Bound" and p,
        timeout=60,
        message=f"PVC {namespace}/{name} Bound",
    )
    pv = core_api.read_persistent_volume(pvc.spec.volume_name)
    path = Path(pv.spec.host_path.path)
    path.mkdir(parents=True, exist_ok=True)
    return path



def artifacts_left(store: Path, namespace: str, name: str) -> list[str]:
    """What is left of an MD's artifacts in a PVC store. The cleanup Job mounts only <ns>/<md>,
    a sub-path the kubelet made: it empties that directory and cannot remove it."""
    root = store / namespace / name
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def claim_mounts(core_api: Any, namespace: str, claim: str) -> dict[str, list[tuple[str | None, bool]]]:
    """Every pod in the namespace that mounts the claim, as the API server holds it: pod name ->
    (subPath, readOnly) of each container's mount of it."""
    out: dict[str, list[tuple[str | None, bool]]] = {}
    for pod in core_api.list_namespaced_pod(namespace).items:
        volumes = {v.name for v in pod.spec.volumes or [] if v.persistent_volume_claim and v.persistent_volume_claim.claim_name == claim}
        if volumes:
            out[pod.metadata.name] = [(m.sub_path, bool(m.read_only)) for c in [*(pod.spec.init_containers or []), *pod.spec.containers]
                                      for m in c.volume_mounts or [] if m.name in volumes]
    return out

def digits_files(cache: Path) -> Path:
    """Train the digits example once per session (seconds) and return its output directory."""
    out = cache / "digits"
    if not (out / "digits.pt").exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "digits" / "train.py"), "--out", str(out)], check=True, timeout=300)
    return out


def put_digits(models_dir: Path, cache: Path) -> None:
    src = digits_files(cache)
    for name in ("digits.pt", "digits.onnx", "calibration.npz", "validation.npz"):
        if (src / name).exists():
            shutil.copy(src / name, models_dir / name)


def agreement_with_original(endpoint: str, cache: Path, model: str = "digits", samples: int = 16) -> float:
    """Share of validation images on which the served model (through `endpoint`) picks the same
    class as the original TorchScript model run here."""
    import numpy as np
    import torch

    from model_operator.triton.client import infer

    data = np.load(digits_files(cache) / "validation.npz")
    key = next(k for k in data.files if k not in ("labels", "targets"))
    x = data[key][:samples].astype(np.float32)
    original = torch.jit.load(str(digits_files(cache) / "digits.pt")).eval()
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).argmax(1).numpy()
    answer = infer(endpoint, model, {"input": x}, ["logits"])
    return float((answer["logits"].argmax(1) == expected).mean())


def digits_md(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {
            "uri": "pvc://models/digits.pt",
            "format": "torchscript",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        },
        "data": {"validation": {"uri": "pvc://models/validation.npz", "samples": 200}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}, "qualityGate": {"maxTop1Drop": 0.02}},
        "conversion": {"format": "onnx"},
        "serving": {"nodePool": "local", "replicas": 1, "backend": "python", "maxBatchSize": 16},
        "monitoring": {"goldenProbe": {"enabled": False}},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def get_md(custom_api: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def create_md(custom_api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def wait_phase(custom_api: Any, namespace: str, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_md(custom_api, namespace, name)
        status = md.get("status") or {}
        if status.get("phase") == phase:
            return md
        if status.get("phase") == "Failed":
            raise AssertionError(f"{name} Failed while waiting for {phase}: {status.get('conditions')}")
        return None

    try:
        return wait_for(check, timeout=timeout, interval=1, message=f"{namespace}/{name} phase {phase}")
    except Exception:
        md = get_md(custom_api, namespace, name)
        raise AssertionError(f"{name} never reached {phase}; status: {md.get('status')}") from None


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def ready_triton_pods(core_api: Any, namespace: str, name: str, track: str | None = None) -> list[Any]:
    selector = f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=triton"
    if track:
        selector += f",serving.model-operator.io/track={track}"
    pods = core_api.list_namespaced_pod(namespace, label_selector=selector).items
    return [
        p for p in pods
        if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        and not p.metadata.deletion_timestamp
    ]


def stop(runner: Any) -> None:
    """Stop a KopfRunner as an operator restart would, and check it stopped cleanly."""
    runner.__exit__(None, None, None)
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0


def erroring_digits(src: Path, dst: Path, table: int = 20) -> None:
    """The digits ONNX model with a lookup that fails at run time for inputs above `table`:
    its answers on real images (values in [0, 1]) are the original's, so the worker packages
    it, but a request with larger values gets an error from ONNX Runtime inside Triton."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    g.initializer.append(numpy_helper.from_array(np.zeros(table, dtype=np.float32), "lookup_table"))
    g.node.extend([
        helper.make_node("ReduceMax", [g.input[0].name], ["input_max"], keepdims=0),
        helper.make_node("Floor", ["input_max"], ["input_floor"]),
        helper.make_node("Cast", ["input_floor"], ["input_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["lookup_table", "input_index"], ["lookup"]),
        helper.make_node("Add", [f"{out}_raw", "lookup"], [out]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def bloated_digits(src: Path, dst: Path, mib: int = 64) -> None:
    """The digits ONNX model carrying a `mib` MiB weight that changes no answer (it is added
    times zero): what the server must hold in memory grows, the answers don't. Triton's Python
    backend loads it into ONNX Runtime as anonymous memory, which a container's limit counts."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    rng = np.random.default_rng(0)
    g.initializer.append(numpy_helper.from_array(rng.random(mib * 2**18, dtype=np.float32), "ballast"))
    g.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"))
    g.node.extend([
        helper.make_node("ReduceMean", ["ballast"], ["ballast_mean"], keepdims=0),
        helper.make_node("Mul", ["ballast_mean", "zero"], ["nothing"]),
        helper.make_node("Add", [f"{out}_raw", "nothing"], [out]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def drifted_copy(path: Path, scale: float = -1.0) -> None:
    """Rewrite an ONNX model in place with its first weight tensor scaled: same signature,
    different answers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    arr = numpy_helper.to_array(init) * scale
    init.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(init).dtype), init.name))
    onnx.save(model, str(path))


# How long a load client waits after a connection it could not make, as the OpenAI client's
# first retry does.
CONNECT_BACKOFF = 0.5


def clock() -> str:
    """Wall-clock time to the tenth of a second, to line up a load's errors with a timeline."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 10) % 10}"


class Load:
    """A bounded request loop against Triton (a Service's ClusterIP, or pod IPs), counting
    answers and errors. `endpoints` is a list, or a function returning the current list (as a Service's
    endpoints change); requests go round-robin. Inputs are random images times `scale`. With
    `on_off=(on, off)` the load is a square wave: `on` seconds of requests, `off` seconds of none.
    With `per_second` the loop is paced: request k starts k / per_second after the start (late
    ones go at once), so the rate does not follow Triton's latency as a closed loop's does.
    A connection that fails (refused, reset) is counted in `failed` and in `refused`, and the loop
    waits CONNECT_BACKOFF before the next request as a client's retry would: a sub-second gap in
    the Service counts as a request or two, not as however many a tight loop fits into it."""

    def __init__(self, endpoints: Any, seconds: float, scale: float = 1.0, model: str = "digits", pause: float = 0.01,
                 on_off: tuple[float, float] | None = None, per_second: float | None = None) -> None:
        fixed = [endpoints] if isinstance(endpoints, str) else list(endpoints) if not callable(endpoints) else []
        self.endpoints = endpoints if callable(endpoints) else (lambda: fixed)
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.scale, self.model, self.pause, self.on_off, self.per_second = scale, model, pause, on_off, per_second
        self.stop_flag = threading.Event()
        self.sent = self.failed = self.refused = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import numpy as np
        import tritonclient.http as http

        from model_operator.triton.client import connect

        x = (np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32) * self.scale).astype(np.float32)
        inp = http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        i = 0
        while not self.stop_flag.is_set() and time.monotonic() < self.deadline:
            if self.on_off and (time.monotonic() - self.start) % sum(self.on_off) >= self.on_off[0]:
                self.stop_flag.wait(0.1)
                continue
            targets = self.endpoints()
            if not targets:
                time.sleep(0.1)
                continue
            endpoint = targets[i % len(targets)]
            i += 1
            # A new connection per request: kube-proxy balances a Service per connection, so one
            # kept-alive connection would pin every request to one pod, unlike many users.
            client = connect(endpoint)
            backoff = 0.0
            try:
                client.infer(self.model, [inp])
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - counted, the tests assert on it
                self.failed += 1
                if isinstance(exc, ConnectionError):
                    self.refused += 1
                    backoff = CONNECT_BACKOFF
                self.errors = [*self.errors[-9:], f"{clock()} {endpoint}: {str(exc)[:200]}"]
            finally:
                client.close()
            if backoff:
                self.stop_flag.wait(backoff)
            elif self.per_second:
                self.stop_flag.wait(max(0.0, self.start + i / self.per_second - time.monotonic()))
            else:
                time.sleep(self.pause)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=30)


def service_endpoint(core_api: Any, namespace: str, name: str, port: int = 8000) -> str:
    """The ModelDeployment's Service as users reach it: its ClusterIP, routed by kube-proxy to the
    ready Triton pods of every track. Given once kube-proxy routes to each endpoint the
    EndpointSlices call ready: it rewrites its rules some time after they change, and a request
    in that gap is refused (a CI run saw one right after the ModelDeployment turned Ready)."""
    svc = core_api.read_namespaced_service(name, namespace)
    assert svc.spec.cluster_ip and svc.spec.cluster_ip != "None", f"Service {namespace}/{name} has no ClusterIP"
    wait_for(lambda: all(kube_proxy_routes_to(ip) for ip in service_pod_ips(core_api, namespace, name)), timeout=60, interval=0.5,
             message=f"kube-proxy's rules for the ready endpoints of Service {namespace}/{name}")
    return f"{svc.spec.cluster_ip}:{port}"


def service_pod_ips(core_api: Any, namespace: str, service: str) -> set[str]:
    """The ready endpoints the Service's EndpointSlices list."""
    slices = client.DiscoveryV1Api(core_api.api_client).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}").items
    return {a for sl in slices for ep in sl.endpoints or [] if ep.conditions and ep.conditions.ready for a in ep.addresses}


def pod_endpoints(core_api: Any, namespace: str, name: str, track: str | None = None) -> list[str]:
    return sorted(f"{p.status.pod_ip}:8000" for p in ready_triton_pods(core_api, namespace, name, track))


def kube_proxy_routes_to(ip: str) -> bool:
    """Whether the real node's kube-proxy still has a rule sending a Service's new connections to
    this pod IP: it rewrites its iptables rules some time after the EndpointSlice changed, and on a
    loaded host that can be longer than a removed pod's drain."""
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    return f"--to-destination {ip}:" in nat


class OperatorProcess:
    """`model-operator run` as a real process watching one namespace, so a test can kill it
    (SIGKILL, no goodbye) and start it again. Every start appends to the same log file."""

    def __init__(self, config: Path, kubeconfig: Path, namespace: str, log: Path, env: dict[str, str] | None = None) -> None:
        import os

        self.config, self.log = config, log
        # Only the config file configures it: MODEL_OPERATOR_* in this process' environment would win over the file.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_OPERATOR_")}
        self.env = {**inherited, "KUBECONFIG": str(kubeconfig), "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1",
                    "MODEL_OPERATOR_SCALER_TICK_SECONDS": "1", "MODEL_OPERATOR_SCALER_HEARTBEAT_SECONDS": "5", **(env or {})}
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "model_operator.cli", "run", "--config", str(self.config), "--namespace", self.namespace,
                 "--liveness", f"http://127.0.0.1:{port}/healthz"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ServiceTimeline:
    """A record of what a Service's clients depended on while a test's load ran: every change of
    its EndpointSlices' endpoints (ready, serving, terminating) and of its pods' containers'
    readiness, and the namespace's Warning Events (a failed probe), each with the wall-clock time.
    A failed load check prints it beside the errors' times, so a refused request can be matched
    with an empty Service or a pod that left it."""

    def __init__(self, core_api: Any, namespace: str, service: str, selector: str, interval: float = 0.5) -> None:
        self.core_api, self.namespace, self.service, self.selector, self.interval = core_api, namespace, service, selector, interval
        self.start = time.monotonic()
        self.changes: list[str] = []
        self.seen_events: set[tuple[str, int]] = set()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def snapshot(self) -> tuple[str, str]:
        slices = client.DiscoveryV1Api(self.core_api.api_client).list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}").items
        eps = sorted(
            f"{a}[{'R' if ep.conditions.ready else '-'}{'S' if ep.conditions.serving else '-'}{'T' if ep.conditions.terminating else '-'}]"
            for sl in slices for ep in sl.endpoints or [] for a in ep.addresses)
        pods = sorted(
            f"{p.metadata.name}({p.status.pod_ip}):"
            + ",".join(f"{cs.name}={'R' if cs.ready else '-'}{cs.restart_count}" for cs in p.status.container_statuses or [])
            + (" deleting" if p.metadata.deletion_timestamp else "")
            for p in self.core_api.list_namespaced_pod(self.namespace, label_selector=self.selector).items)
        return " ".join(eps) or "(no endpoints)", " ".join(pods) or "(no pods)"

    def warnings(self) -> None:
        for ev in self.core_api.list_namespaced_event(self.namespace, field_selector="type=Warning").items:
            key = (ev.metadata.uid, ev.count or 1)
            # The test node runs no cluster DNS; the kubelet says so for every pod.
            if key not in self.seen_events and ev.reason != "MissingClusterDNS":
                self.seen_events.add(key)
                obj = ev.involved_object
                self.changes.append(f"{clock()} event {ev.reason} {obj.kind}/{obj.name} x{ev.count or 1}: {(ev.message or '')[:160]}")

    def run(self) -> None:
        last: tuple[str, str] = ("", "")
        while not self.stop_flag.is_set():
            try:
                now = self.snapshot()
            except Exception as exc:  # noqa: BLE001 - a diagnostic: the API server may be busy
                now = (f"(list failed: {str(exc)[:80]})", last[1])
            if now != last:
                self.changes.append(f"{clock()} endpoints {now[0]} | pods {now[1]}")
                last = now
            try:
                self.warnings()
            except Exception:  # noqa: BLE001, S110 - a diagnostic: the next pass reads them again
                pass
            self.stop_flag.wait(self.interval)

    def __enter__(self) -> "ServiceTimeline":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def __str__(self) -> str:
        return "\n".join(self.changes[-60:])
