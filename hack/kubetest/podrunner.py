"""The local pod runner: a node whose pods really run, as local processes.

No container runtime runs here, yet some pods must really execute in the
end-to-end tests (the optimizer Job, a Triton server). The runner plays the
kubelet for one node (default ``local-0``):

* registers the Node (labels ``node-pool=local``,
  ``model-operator.io/local-runner=true``; taint
  ``model-operator.io/local=true:NoSchedule`` so only pods that ask for real
  execution land here, the others go to the simulated KWOK pools) and keeps it
  Ready: Lease renewal in ``kube-node-lease`` and status heartbeats;
* watches the pods bound to the node and runs each container's command and
  args as a local process, the image mapped to a local program by
  ``kubetest.images`` (Triton image -> the nvidia-pytriton wheel's server);
* gives each pod its own loopback address from ``--pod-cidr`` as pod IP, and
  preloads a bind() shim (``bindshim.c``) so that listening on 0.0.0.0 or [::]
  means listening on the pod IP: several pods can use the same port;
* honours env (value, $(VAR) expansion, fieldRef, resourceFieldRef,
  configMapKeyRef, secretKeyRef, envFrom), workingDir and volumes (emptyDir,
  hostPath, configMap, secret, downwardAPI, projected incl. service-account
  tokens, persistentVolumeClaim), bind-mounted at their mountPath (subPath,
  readOnly) in a private mount namespace per container; each container gets
  its own termination-message file mounted at terminationMessagePath;
* runs init containers in order, then the containers; runs startup, liveness
  and readiness probes (httpGet, tcpSocket, exec; grpc as a TCP connect)
  against the pod IP with the probe's timings;
* writes pod status through the API server: phase, conditions (Initialized,
  ContainersReady, Ready, PodReadyToStartContainers), container statuses
  (waiting/running/terminated with exit code, reason Completed/Error/
  StartError, termination message, FallbackToLogsOnError), restart counts with
  restartPolicy Always/OnFailure/Never and the kubelet's back-off (first
  restart at once, then base*2^n up to a cap), and a few events (Started,
  Killing, Unhealthy, BackOff, Failed);
* on deletion (deletionTimestamp) stops the containers (SIGTERM to the process
  group, SIGKILL after the grace period) and deletes the pod with grace 0;
* provisions PersistentVolumeClaims: a default StorageClass ``local`` whose
  claims get a hostPath PersistentVolume at ``<state>/pvc/<ns>/<claim>``
  (reclaim policy Delete: the directory goes when the claim does).

What it does NOT do:

* no images: nothing is pulled or unpacked; the process sees the host's
  filesystem, Python and tools (plus its volumes); imagePullPolicy, image
  ENV/WORKDIR/USER are ignored (rules in ``kubetest.images`` stand in for
  ENTRYPOINT/CMD and ENV);
* no cgroups: resource requests and limits are not enforced, OOMKilled is
  never reported (a process the kernel kills shows as Error, exit 137);
* no network isolation: pods share the host's network namespace; only
  wildcard binds are moved to the pod IP (not an explicit 127.0.0.1, and not
  in statically linked programs such as Go binaries, which ignore
  LD_PRELOAD); Services get no proxying (use the pod IP or the
  EndpointSlices); no DNS for cluster names;
* no securityContext (runAsUser, capabilities, readOnlyRootFilesystem ...),
  no lifecycle hooks (postStart/preStop), no sidecar init containers
  (restartPolicy: Always on an init container), no ephemeral containers, no
  activeDeadlineSeconds, no service-link environment variables except
  KUBERNETES_SERVICE_HOST/PORT;
* configMap/secret/projected volume contents are written once at start, not
  refreshed; projected tokens are not rotated;
* no ``kubectl logs``/``exec``/``port-forward`` (no kubelet API); container
  output is in ``<state>/pods/<namespace>_<pod>_<container>.log``;
* processes run as the runner's user; mounts need root (or unprivileged user
  namespaces, which make the process see itself as root).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .images import ImageMap
from .podenv import ConfigError, container_env, expand, field_value
from .probes import ProbeTiming, run_probe
from .rest import ApiError, Kube
from .shim import ShimUnavailable, build_shim

log = logging.getLogger("podrunner")

LOCAL_LABEL = "model-operator.io/local-runner"
LOCAL_TAINT = {"key": "model-operator.io/local", "value": "true", "effect": "NoSchedule"}
STORAGE_CLASS = "local"
PROVISIONER = "model-operator.io/local-runner"
HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_TERMINATION_MESSAGE = 4096
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR")
HELPER = Path(__file__).with_name("_podexec.py")


def image_paths() -> list[str]:
    """Host paths that stand for the image's own content: this Python's packages (including an
    editable checkout of the project) and the prepared Triton tree. A pod volume mounted over
    one of their parents (an emptyDir at /tmp, with the checkout under /tmp) would hide them;
    the exec helper binds them back, as an image's files would still be there."""
    import importlib.util
    import site

    paths = {sys.prefix, *site.getsitepackages()}
    spec = importlib.util.find_spec("model_operator")
    if spec and spec.submodule_search_locations:
        paths.add(str(Path(list(spec.submodule_search_locations)[0]).parent))
    cache = os.environ.get("MODEL_OPERATOR_CACHE")
    if cache:
        paths.add(cache)
    return sorted(p for p in paths if os.path.isdir(p))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IpPool:
    """Pod IPs from the pod CIDR (see ``kubetest.podnet``), not reused until the range wraps.

    Not reusing at once keeps a new pod clear of a finished pod's sockets in
    TIME_WAIT on the same address and port.
    """

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        self._hosts = [str(h) for h in net.hosts() if not str(h).endswith((".0", ".255", ".1"))]
        self._next = 0
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            for _ in range(len(self._hosts)):
                ip = self._hosts[self._next]
                self._next = (self._next + 1) % len(self._hosts)
                if ip not in self._used:
                    self._used.add(ip)
                    return ip
        raise RuntimeError("pod IP range exhausted")

    def release(self, ip: str) -> None:
        with self._lock:
            self._used.discard(ip)


class MountTargets:
    """Mount points the runner had to create on the host, removed when unused.

    A mountPath such as /models or /dev/termination-log usually doesn't exist
    on the host; the bind mount needs something to mount over. Those paths are
    created on demand, counted, and removed again (files, then empty
    directories) once no running container uses them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, int] = {}
        self._created: dict[str, list[str]] = {}

    def acquire(self, target: str, is_file: bool) -> None:
        with self._lock:
            self._refs[target] = self._refs.get(target, 0) + 1
            if target in self._created or os.path.lexists(target):
                return
            created: list[str] = []
            parent = os.path.dirname(target)
            missing = []
            while parent and not os.path.exists(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(missing):
                os.mkdir(d)
                created.append(d)
            if is_file:
                open(target, "a").close()
            else:
                os.mkdir(target)
            created.append(target)
            self._created[target] = created

    def release(self, target: str) -> None:
        with self._lock:
            self._refs[target] = self._refs.get(target, 1) - 1
            if self._refs[target] > 0:
                return
            del self._refs[target]
            for path in reversed(self._created.pop(target, [])):
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    else:
                        os.unlink(path)
                except OSError:
                    break  # not empty or in use by someone else: leave it


class Runner:
    def __init__(
        self,
        kube: Kube,
        state_dir: Path,
        node_name: str,
        pod_cidr: str,
        images: ImageMap,
        backoff_base: float = 10.0,
        backoff_max: float = 300.0,
        capacity: Optional[dict[str, str]] = None,
        taint: bool = True,
    ) -> None:
        self.kube = kube
        self.state_dir = state_dir
        self.node_name = node_name
        self.ips = IpPool(pod_cidr)
        self.images = images
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.capacity = capacity or {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        self.taint = taint
        self.mounts = MountTargets()
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stopping = threading.Event()
        self.pods_log_dir = state_dir / "pods"
        self.runner_dir = state_dir / "runner"
        self.pvc_dir = state_dir / "pvc"
        for d in (self.pods_log_dir, self.runner_dir, self.pvc_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self.shim: Optional[Path] = build_shim()
        except ShimUnavailable as e:
            log.warning("no bind shim, pods binding 0.0.0.0 share the host's ports: %s", e)
            self.shim = None
        port = kube.server.rsplit(":", 1)[1]
        self.apiserver_port = port

    # ------------------------------------------------------------------ node
    def node_object(self) -> dict[str, Any]:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        conditions = self._conditions()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "node-pool": "local",
                    LOCAL_LABEL: "true",
                },
            },
            "spec": {"taints": [LOCAL_TAINT] if self.taint else []},
            "status": {
                "capacity": dict(self.capacity),
                "allocatable": dict(self.capacity),
                "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {
                    "architecture": arch,
                    "operatingSystem": "linux",
                    "kernelVersion": platform.release(),
                    "osImage": "model-operator local pod runner",
                    "containerRuntimeVersion": "local://processes",
                    "kubeletVersion": "local-runner",
                    "kubeProxyVersion": "",
                    "bootID": "", "machineID": "", "systemUUID": "",
                },
            },
        }

    def _conditions(self) -> list[dict[str, str]]:
        t = now()
        out = []
        for ctype, status, reason, message in (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "local runner does not track memory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "local runner does not track disk"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "local runner does not track PIDs"),
            ("Ready", "True", "KubeletReady", "local pod runner is posting ready status"),
        ):
            out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": t, "lastTransitionTime": t})
        return out

    def register_node(self) -> None:
        node = self.node_object()
        try:
            created = self.kube.create("/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
            self.kube.patch(f"/api/v1/nodes/{self.node_name}",
                            {"metadata": {"labels": node["metadata"]["labels"]}, "spec": node["spec"]})
            created = self.kube.get(f"/api/v1/nodes/{self.node_name}")
        self.node_uid = created["metadata"]["uid"]
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": node["status"]}, kind="strategic")
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            self.kube.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                  "uid": self.node_uid}]},
                "spec": spec,
            })

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(10):
            try:
                self._renew_lease()
                if time.monotonic() - last_status > 30:
                    # Keep the Ready condition's heartbeat fresh; the lease
                    # is what the node lifecycle controller watches.
                    self.kube.patch(f"/api/v1/nodes/{self.node_name}/status",
                                    {"status": {"conditions": self._conditions()}}, kind="strategic")
                    last_status = time.monotonic()
            except Exception as e:  # keep beating whatever happens
                log.warning("node heartbeat failed: %s", e)

    # ------------------------------------------------------------------ PVCs
    def ensure_storage_class(self) -> None:
        try:
            self.kube.create("/apis/storage.k8s.io/v1/storageclasses", {
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS,
                             "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            })
        except ApiError as e:
            if e.status != 409:
                raise

    def provisioner_loop(self) -> None:
        while not self.stopping.wait(1):
            try:
                self._provision_once()
            except Exception as e:
                log.warning("provisioner: %s", e)

    def _provision_once(self) -> None:
        for pvc in self.kube.get("/api/v1/persistentvolumeclaims")["items"]:
            spec, meta = pvc["spec"], pvc["metadata"]
            if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName") or meta.get("deletionTimestamp"):
                continue
            if pvc.get("status", {}).get("phase") != "Pending":
                continue
            path = self.pvc_dir / meta["namespace"] / meta["name"]
            path.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta['uid']}",
                             "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": STORAGE_CLASS,
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                self.kube.create("/api/v1/persistentvolumes", pv)
                log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], meta["namespace"], meta["name"], path)
            except ApiError as e:
                if e.status != 409:
                    raise
        for pv in self.kube.get("/api/v1/persistentvolumes")["items"]:
            if pv["spec"].get("storageClassName") != STORAGE_CLASS or pv.get("status", {}).get("phase") not in ("Released", "Failed"):
                continue
            if pv["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
            if path.is_relative_to(self.pvc_dir):
                subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
            try:
                self.kube.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
            except ApiError as e:
                if e.status != 404:
                    raise

    def pvc_path(self, namespace: str, claim: str) -> Path:
        try:
            pvc = self.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
            volume = pvc["spec"].get("volumeName")
            if volume:
                pv = self.kube.get(f"/api/v1/persistentvolumes/{volume}")
                host = pv["spec"].get("hostPath", {}).get("path")
                if host:
                    return Path(host)
        except ApiError as e:
            if e.status != 404:
                raise
        return self.pvc_dir / namespace / claim

    # ------------------------------------------------------------------ pods
    def watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                with self.workers_lock:
                    gone = [w for uid, w in self.workers.items() if uid not in seen]
                for w in gone:
                    w.vanished()
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.kube.watch("/api/v1/pods", rv, timeout_seconds=60, fieldSelector=selector):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        if event["type"] == "DELETED":
                            with self.workers_lock:
                                w = self.workers.get(obj["metadata"]["uid"])
                            if w:
                                w.vanished()
                        else:
                            self.on_pod(obj)
            except Exception as e:
                if not self.stopping.is_set():
                    log.info("pod watch restarting: %s", e)
                    self.stopping.wait(1)

    def on_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            worker = self.workers.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
                    return  # finished before this runner started; nothing to run
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.update(pod)
                worker.start()
                return
        worker.update(pod)

    def forget(self, uid: str) -> None:
        with self.workers_lock:
            self.workers.pop(uid, None)

    def shutdown(self) -> None:
        self.stopping.set()
        with self.workers_lock:
            workers = list(self.workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=15)

    def event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal",
              field_path: Optional[str] = None) -> None:
        meta = pod["metadata"]
        ev = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"], **({"fieldPath": field_path} if field_path else {})},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", ev)
        except Exception as e:  # events are best effort, as in the kubelet
            log.debug("event %s for %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], e)


class PodWorker(threading.Thread):
    """Runs one pod: volumes, init containers, containers, status, deletion."""

    def __init__(self, runner: Runner, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.kube = runner.kube
        self.pod = pod
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = runner.runner_dir / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.pod_ip = ""
        self.start_time = now()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.delete_grace: Optional[float] = None
        self.gone = False
        self.initialized = False
        self.init_failed = False
        self.init_statuses: list[ContainerState] = []
        self.statuses: list[ContainerState] = []
        self.conditions: dict[str, dict[str, str]] = {}
        self.last_published: Optional[str] = None
        self.dirty = threading.Event()
        self.wake = threading.Event()
        self.volume_paths: dict[str, Path] = {}
        self.volume_files: dict[str, bool] = {}
        self.base_env: dict[str, str] = {}

    # --------------------------------------------------------- called by the runner
    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.pod = pod
            if pod["metadata"].get("deletionTimestamp") and self.delete_grace is None:
                self.delete_grace = float(pod["metadata"].get("deletionGracePeriodSeconds")
                                          or pod["spec"].get("terminationGracePeriodSeconds", 30))
                self.stop_event.set()
        self.wake.set()

    def vanished(self) -> None:
        """The pod object is gone (deleted with grace 0 by someone, or namespace wiped)."""
        with self.lock:
            self.gone = True
            if self.delete_grace is None:
                self.delete_grace = 0.0
            self.stop_event.set()
        self.wake.set()

    def shutdown(self) -> None:
        """The runner is exiting: stop processes quickly, leave the API objects alone."""
        with self.lock:
            self.gone = True
            self.delete_grace = min(self.delete_grace if self.delete_grace is not None else 2.0, 2.0)
            self.stop_event.set()
        self.wake.set()

    # --------------------------------------------------------- lifecycle
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: worker crashed", self.ns, self.name)
            self.stop_event.set()
        finally:
            self._finish()

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.pod_ip = self.runner.ips.allocate()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.init_statuses = [ContainerState(self, c, init=True) for c in spec.get("initContainers", []) or []]
        self.statuses = [ContainerState(self, c, init=False) for c in spec.get("containers", [])]
        self._condition("PodReadyToStartContainers", "True")
        self._condition("Initialized", "False" if self.init_statuses else "True",
                        "ContainersNotInitialized" if self.init_statuses else "")
        self._condition("ContainersReady", "False", "ContainersNotReady")
        self._condition("Ready", "False", "ContainersNotReady")
        self.publish()
        log.info("pod %s/%s: starting with IP %s", self.ns, self.name, self.pod_ip)

        # Volumes can wait for a ConfigMap/Secret that isn't there yet, like the kubelet's mount retries.
        while not self.stop_event.is_set():
            try:
                self._prepare_volumes()
                self._prepare_env()
                break
            except (ConfigError, ApiError) as e:
                for cs in self.init_statuses + self.statuses:
                    cs.set_waiting("ContainerCreating" if isinstance(e, ApiError) else "CreateContainerConfigError", str(e))
                self.publish()
                self.stop_event.wait(2)

        for cs in self.init_statuses:
            if self.stop_event.is_set():
                break
            # One after the other; a thread so that a deletion can stop it.
            t = threading.Thread(target=cs.run_loop, name=f"{self.name}/{cs.name}", daemon=True)
            t.start()
            while t.is_alive():
                if self.stop_event.wait(0.5):
                    cs.kill(self.delete_grace if self.delete_grace is not None else 30.0, "Killing", "Stopping container")
                    t.join()
            if not cs.succeeded:
                self.init_failed = not self.stop_event.is_set()
                break
        if self.stop_event.is_set() or self.init_failed:
            self.publish()
            self._wait_for_deletion()
            return
        self.initialized = True
        self._condition("Initialized", "True")
        self.publish()

        threads = [threading.Thread(target=cs.run_loop, name=f"{self.name}/{cs.name}", daemon=True) for cs in self.statuses]
        for t in threads:
            t.start()
        self._wait_for_deletion()
        for t in threads:
            t.join()

    def _wait_for_deletion(self) -> None:
        while not self.stop_event.is_set():
            self.wake.wait(5)
            self.wake.clear()
            if self.dirty.is_set():
                self.publish()
        grace = self.delete_grace if self.delete_grace is not None else 30.0
        for cs in self.init_statuses + self.statuses:
            cs.kill(grace, reason="Killing", message="Stopping container")

    def _finish(self) -> None:
        for cs in self.init_statuses + self.statuses:
            cs.wait_stopped()
        if not self.gone:
            try:
                self.kube.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
            except ApiError as e:
                if e.status not in (404, 409):
                    log.warning("pod %s/%s: final delete failed: %s", self.ns, self.name, e)
        if self.pod_ip:
            self.runner.ips.release(self.pod_ip)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], check=False)
        self.runner.forget(self.uid)
        log.info("pod %s/%s: done", self.ns, self.name)

    # --------------------------------------------------------- status
    def _condition(self, ctype: str, status: str, reason: str = "", message: str = "") -> None:
        with self.lock:
            old = self.conditions.get(ctype)
            if old and old["status"] == status and old.get("reason", "") == reason:
                return
            cond = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now()}
            if reason:
                cond["reason"] = reason
            if message:
                cond["message"] = message
            if old and old["status"] == status:
                cond["lastTransitionTime"] = old["lastTransitionTime"]
            self.conditions[ctype] = cond

    def phase(self) -> str:
        if self.init_failed:
            return "Failed"
        if not self.initialized:
            return "Pending"
        # A container that failed to start has a terminated state too, as in
        # the kubelet, so it counts as having run.
        if not any(cs.ever_started or cs.exit_code is not None for cs in self.statuses):
            return "Pending"
        if all(cs.final for cs in self.statuses):
            return "Succeeded" if all(cs.exit_code == 0 for cs in self.statuses) else "Failed"
        return "Running"

    def publish(self) -> None:
        """Write the pod's status if it changed (strategic merge: conditions merge by type)."""
        with self.lock:
            all_ready = self.initialized and all(cs.ready for cs in self.statuses)
            if all_ready:
                self._condition("ContainersReady", "True")
            else:
                not_ready = [cs.name for cs in self.statuses if not cs.ready]
                self._condition("ContainersReady", "False", "ContainersNotReady",
                                f"containers with unready status: [{' '.join(not_ready)}]")
            gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates", []) or []]
            existing = {c["type"]: c for c in self.pod.get("status", {}).get("conditions", []) or []}
            gates_ok = all(existing.get(g, {}).get("status") == "True" for g in gates)
            if all_ready and gates_ok:
                self._condition("Ready", "True")
            else:
                self._condition("Ready", "False", "ContainersNotReady" if not all_ready else "ReadinessGatesNotReady")
            phase = self.phase()
            if phase in ("Succeeded", "Failed"):
                # As the kubelet: a finished pod is no longer ready.
                self._condition("Ready", "False", "PodCompleted")
                self._condition("ContainersReady", "False", "PodCompleted")
            status: dict[str, Any] = {
                "phase": phase,
                "hostIP": HOST_IP,
                "hostIPs": [{"ip": HOST_IP}],
                "startTime": self.start_time,
                "conditions": list(self.conditions.values()),
                "containerStatuses": [cs.status() for cs in self.statuses],
            }
            if self.pod_ip:
                status["podIP"] = self.pod_ip
                status["podIPs"] = [{"ip": self.pod_ip}]
            if self.init_statuses:
                status["initContainerStatuses"] = [cs.status() for cs in self.init_statuses]
            body = json.dumps(status, sort_keys=True)
            if body == self.last_published:
                self.dirty.clear()
                return
            try:
                self.kube.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", {"status": status},
                                kind="strategic")
                self.last_published = body
                self.dirty.clear()
            except ApiError as e:
                if e.status == 404:
                    self.dirty.clear()
                    return
                log.warning("pod %s/%s: status update failed (will retry): %s", self.ns, self.name, e)
                self.dirty.set()
                self.wake.set()
            except OSError as e:
                log.warning("pod %s/%s: status update failed (will retry): %s", self.ns, self.name, e)
                self.dirty.set()

    def changed(self) -> None:
        self.publish()

    # --------------------------------------------------------- volumes and env
    def _get_configmap(self, name: str) -> Optional[dict[str, str]]:
        try:
            cm = self.kube.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        data = dict(cm.get("data") or {})
        for k, v in (cm.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v).decode("latin-1")
        return data

    def _get_secret_bytes(self, name: str) -> Optional[dict[str, bytes]]:
        try:
            s = self.kube.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}

    def _get_secret(self, name: str) -> Optional[dict[str, str]]:
        data = self._get_secret_bytes(name)
        return None if data is None else {k: v.decode("utf-8", "replace") for k, v in data.items()}

    def _write_items(self, target: Path, data: dict[str, bytes], items: Optional[list[dict[str, Any]]],
                     default_mode: int) -> None:
        target.mkdir(parents=True, exist_ok=True)
        pairs = [(it["key"], it["path"], it.get("mode")) for it in items] if items else [(k, k, None) for k in data]
        for key, rel, mode in pairs:
            if key not in data:
                raise ConfigError(f"configmap/secret key {key} not found")
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
            path.chmod(mode if mode is not None else default_mode)

    def _source_bytes(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        if kind == "configMap":
            cm = self._get_configmap(name)
            data = None if cm is None else {k: v.encode("utf-8") for k, v in cm.items()}
        else:
            data = self._get_secret_bytes(name)
        if data is None:
            if optional:
                return {}
            raise ConfigError(f'{kind} "{name}" not found')
        return data

    def _token(self, audience: Optional[str], expiration: int) -> bytes:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience] if audience else [], "expirationSeconds": expiration,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}},
        }
        resp = self.kube.create(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        return resp["status"]["token"].encode()

    def _downward(self, items: list[dict[str, Any]], target: Path, default_mode: int) -> None:
        data: dict[str, bytes] = {}
        for it in items:
            if "fieldRef" in it:
                value = field_value(self.pod, it["fieldRef"]["fieldPath"], self.pod_ip, HOST_IP)
            else:
                from .podenv import resource_value

                ref = it["resourceFieldRef"]
                cname = ref.get("containerName")
                container = next((c for c in self.pod["spec"]["containers"] if c["name"] == cname),
                                 self.pod["spec"]["containers"][0])
                value = resource_value(container, ref, self.runner.capacity)
            data[it["path"]] = value.encode()
        self._write_items(target, data, [{"key": k, "path": k, "mode": it.get("mode")}
                                         for k, it in zip(data, items)], default_mode)

    def _prepare_volumes(self) -> None:
        vols_dir = self.dir / "volumes"
        for vol in self.pod["spec"].get("volumes", []) or []:
            name = vol["name"]
            target = vols_dir / name
            if "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                hp = vol["hostPath"]
                target = Path(hp["path"])
                kind = hp.get("type", "")
                if kind == "DirectoryOrCreate":
                    target.mkdir(parents=True, exist_ok=True)
                elif kind == "FileOrCreate":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch(exist_ok=True)
                elif kind and not target.exists():
                    raise ConfigError(f"hostPath {target} does not exist (type {kind})")
            elif "configMap" in vol or "secret" in vol:
                kind = "configMap" if "configMap" in vol else "secret"
                src = vol[kind]
                ref = src.get("name") if kind == "configMap" else src.get("secretName")
                data = self._source_bytes(kind, ref, bool(src.get("optional")))
                self._write_items(target, data, src.get("items"), src.get("defaultMode", 0o644))
            elif "downwardAPI" in vol:
                self._downward(vol["downwardAPI"].get("items", []), target, vol["downwardAPI"].get("defaultMode", 0o644))
            elif "projected" in vol:
                mode = vol["projected"].get("defaultMode", 0o644)
                target.mkdir(parents=True, exist_ok=True)
                for source in vol["projected"].get("sources", []) or []:
                    if "serviceAccountToken" in source:
                        t = source["serviceAccountToken"]
                        data = {"token": self._token(t.get("audience"), int(t.get("expirationSeconds", 3600)))}
                        self._write_items(target, data, [{"key": "token", "path": t["path"]}], mode)
                    elif "downwardAPI" in source:
                        self._downward(source["downwardAPI"].get("items", []), target, mode)
                    elif "configMap" in source or "secret" in source:
                        kind = "configMap" if "configMap" in source else "secret"
                        src = source[kind]
                        data = self._source_bytes(kind, src["name"], bool(src.get("optional")))
                        self._write_items(target, data, src.get("items"), mode)
            elif "persistentVolumeClaim" in vol:
                target = self.runner.pvc_path(self.ns, vol["persistentVolumeClaim"]["claimName"])
                target.mkdir(parents=True, exist_ok=True)
            else:
                raise ConfigError(f"volume {name}: type not supported by the local pod runner")
            self.volume_paths[name] = target

    def _prepare_env(self) -> None:
        base = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        for k in os.environ.get("MODEL_OPERATOR_PODRUNNER_PASS_ENV", "").split(","):
            if k and k in os.environ:
                base[k] = os.environ[k]
        base.update({
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": HOST_IP,
            "KUBERNETES_SERVICE_PORT": self.runner.apiserver_port,
            "KUBERNETES_SERVICE_PORT_HTTPS": self.runner.apiserver_port,
            "KUBERNETES_PORT": f"tcp://{HOST_IP}:{self.runner.apiserver_port}",
            # Container output goes to log files; without this Python would
            # hold it back in its buffer until exit.
            "PYTHONUNBUFFERED": "1",
        })
        self.base_env = base


class ContainerState:
    """One container (or init container): its process, probes, restarts and status."""

    def __init__(self, worker: PodWorker, spec: dict[str, Any], init: bool) -> None:
        self.worker = worker
        self.runner = worker.runner
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.lock = threading.RLock()
        self.proc: Optional[subprocess.Popen] = None
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.ever_started = False
        self.final = False
        self.succeeded = False
        self.exit_code: Optional[int] = None
        self.kill_reason: Optional[str] = None
        self.stopped = threading.Event()
        self.container_id = ""
        self.env: dict[str, str] = {}
        safe = f"{worker.ns}_{worker.name}_{self.name}"
        self.log_path = self.runner.pods_log_dir / f"{safe}.log"
        self.term_file = worker.dir / "termination" / self.name
        self.field_path = f"spec.{'initContainers' if init else 'containers'}{{{self.name}}}"

    # ------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        with self.lock:
            s: dict[str, Any] = {
                "name": self.name,
                "image": self.spec.get("image", ""),
                "imageID": f"local://{self.spec.get('image', '')}",
                "ready": self.ready,
                "restartCount": self.restart_count,
                "started": self.started,
                "state": self.state,
                "lastState": self.last_state,
            }
            if self.container_id:
                s["containerID"] = self.container_id
            return s

    def set_waiting(self, reason: str, message: str = "") -> None:
        with self.lock:
            self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    # ------------------------------------------------------------- process
    def _argv_env(self) -> tuple[list[str], dict[str, str]]:
        w = self.worker
        env = container_env(w.pod, self.spec, w.base_env, w._get_configmap, w._get_secret, w.pod_ip, HOST_IP,
                            self.runner.capacity)
        lookup = env.get
        command = [expand(a, lookup) for a in self.spec.get("command", []) or []]
        args = [expand(a, lookup) for a in self.spec.get("args", []) or []]
        argv, extra = self.runner.images.resolve(self.spec.get("image", ""), command, args, env)
        # The image's environment is a default the pod spec overrides, except
        # the library path, which resolve() already merged with the pod's.
        for k, v in extra.items():
            if k == "LD_LIBRARY_PATH":
                env[k] = v
            else:
                env.setdefault(k, v)
        if self.runner.shim:
            env["LD_PRELOAD"] = os.pathsep.join(filter(None, [str(self.runner.shim), env.get("LD_PRELOAD")]))
            env["MODEL_OPERATOR_POD_IP"] = w.pod_ip
        return argv, env

    def _mounts(self) -> list[dict[str, Any]]:
        w = self.worker
        mounts: list[dict[str, Any]] = []
        for vm in self.spec.get("volumeMounts", []) or []:
            source = w.volume_paths.get(vm["name"])
            if source is None:
                raise ConfigError(f"volumeMount {vm['name']}: no such volume")
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], self.env.get) if vm.get("subPathExpr") else "")
            if sub:
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append({"source": str(source), "target": os.path.normpath(vm["mountPath"]),
                           "readOnly": bool(vm.get("readOnly")), "file": source.is_file()})
        tpath = self.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts.append({"source": str(self.term_file), "target": tpath, "readOnly": False, "file": True})
        # Parents before children, as nested mountPaths need.
        mounts.sort(key=lambda m: m["target"].count("/"))
        return mounts

    def _start(self) -> None:
        w = self.worker
        argv, env = self._argv_env()
        self.env = env
        mounts = self._mounts()
        self.term_file.parent.mkdir(parents=True, exist_ok=True)
        self.term_file.write_bytes(b"")
        workdir = self.spec.get("workingDir")
        if not workdir:
            # No image WORKDIR here; a private scratch directory keeps relative
            # writes out of the runner's own directory.
            scratch = w.dir / "cwd" / self.name
            scratch.mkdir(parents=True, exist_ok=True)
            workdir = str(scratch)
        spec_file = w.dir / f"exec-{self.name}.json"
        spec_file.write_text(json.dumps({"argv": argv, "env": env, "mounts": mounts, "workingDir": workdir,
                                         "hostname": w.name[:63], "keep": image_paths()}))
        acquired = []
        try:
            for m in mounts:
                self.runner.mounts.acquire(m["target"], m["file"])
                acquired.append(m["target"])
            with open(self.log_path, "ab") as out:
                out.write(f"--- {now()} starting {argv!r}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(HELPER), str(spec_file)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
        except BaseException:
            for t in acquired:
                self.runner.mounts.release(t)
            raise
        self._acquired = acquired

    def _release_mounts(self) -> None:
        for t in getattr(self, "_acquired", []):
            self.runner.mounts.release(t)
        self._acquired = []

    def _termination_message(self, exit_code: int) -> str:
        try:
            with open(self.term_file, "rb") as f:
                msg = f.read(MAX_TERMINATION_MESSAGE).decode("utf-8", "replace")
        except OSError:
            msg = ""
        if not msg and exit_code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 2048))
                    lines = f.read().decode("utf-8", "replace").splitlines()[-80:]
                msg = "\n".join(lines)[-2048:]
            except OSError:
                pass
        return msg

    def run_loop(self) -> None:
        """Start, watch and restart the container until it is final or the pod stops."""
        w = self.worker
        policy = w.pod["spec"].get("restartPolicy", "Always")
        if self.init and policy == "Always":
            policy = "OnFailure"  # init containers are retried, never restarted after success
        consecutive = 0
        try:
            while not w.stop_event.is_set():
                started_at = now()
                t0 = time.monotonic()
                message = ""
                try:
                    self._start()
                except ConfigError as e:
                    # As the kubelet: a missing Secret or ConfigMap key keeps the container waiting
                    # (CreateContainerConfigError), retried, never counted as a failed start.
                    self.set_waiting("CreateContainerConfigError", str(e))
                    self.runner.event(w.pod, "Failed", f"Error: {e}", "Warning", self.field_path)
                    w.changed()
                    w.stop_event.wait(2)
                    continue
                except Exception as e:  # noqa: BLE001 - any failure to start is the container's StartError, never a dead thread
                    exit_code, reason, message = 128, "StartError", str(e)
                    self.runner.event(w.pod, "Failed", f"Error: {e}", "Warning", self.field_path)
                    log.warning("pod %s/%s container %s: cannot start: %s", w.ns, w.name, self.name, e)
                else:
                    assert self.proc is not None
                    with self.lock:
                        self.container_id = f"local://{self.proc.pid}"
                        self.state = {"running": {"startedAt": started_at}}
                        self.ever_started = True
                        self.kill_reason = None
                        self.started = "startupProbe" not in self.spec
                        self.ready = self.started and "readinessProbe" not in self.spec and not self.init
                    self.runner.event(w.pod, "Started", f"Started container {self.name}", field_path=self.field_path)
                    w.changed()
                    probes_done = threading.Event()
                    probe_threads = [threading.Thread(target=self._probe_loop, args=(kind, probes_done), daemon=True)
                                     for kind in ("startupProbe", "livenessProbe", "readinessProbe")
                                     if kind in self.spec and not self.init]
                    for t in probe_threads:
                        t.start()
                    rc = self.proc.wait()
                    probes_done.set()
                    for t in probe_threads:
                        t.join(timeout=5)
                    self._release_mounts()
                    exit_code = rc if rc >= 0 else 128 - rc
                    if rc in (126, 127):
                        # The helper could not set up or exec the container.
                        reason = "StartError"
                        try:
                            message = self.log_path.read_text(errors="replace").splitlines()[-1]
                        except (OSError, IndexError):
                            message = ""
                    else:
                        reason = "Completed" if exit_code == 0 else "Error"
                        message = self._termination_message(exit_code)
                terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": now(),
                              "containerID": self.container_id or f"local://{w.uid}/{self.name}"}
                if message:
                    terminated["message"] = message
                restart = (not w.stop_event.is_set() and
                           (policy == "Always" or (policy == "OnFailure" and exit_code != 0)))
                with self.lock:
                    self.ready = False
                    self.started = False
                    self.exit_code = exit_code
                    self.state = {"terminated": terminated}
                    if not restart:
                        self.final = True
                        self.succeeded = exit_code == 0
                log.info("pod %s/%s container %s exited %d (%s)%s", w.ns, w.name, self.name, exit_code, reason,
                         ", restarting" if restart else "")
                if not restart:
                    w.changed()
                    return
                # The kubelet's back-off: the first restart is immediate, then
                # base, 2*base, ... up to the cap; a long healthy run resets it.
                if time.monotonic() - t0 > 2 * self.runner.backoff_max:
                    consecutive = 0
                delay = 0.0 if consecutive == 0 else min(self.runner.backoff_base * 2 ** (consecutive - 1),
                                                          self.runner.backoff_max)
                consecutive += 1
                with self.lock:
                    self.last_state = {"terminated": terminated}
                    self.restart_count += 1
                    if delay > 0:
                        self.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                      f"back-off {delay:g}s restarting failed container={self.name} pod={w.name}_{w.ns}({w.uid})"}}
                if delay > 0:
                    self.runner.event(w.pod, "BackOff", "Back-off restarting failed container", "Warning",
                                      self.field_path)
                w.changed()
                if w.stop_event.wait(delay):
                    return
        finally:
            self._release_mounts()
            self.stopped.set()

    def _probe_loop(self, kind: str, done: threading.Event) -> None:
        probe = self.spec[kind]
        timing = ProbeTiming.of(probe)
        w = self.worker
        proc = self.proc
        if kind != "startupProbe":
            # Liveness and readiness wait for the startup probe to succeed.
            while not self.started:
                if done.wait(0.2):
                    return
        if done.wait(timing.initial_delay):
            return
        successes = failures = 0
        while not done.is_set():
            t0 = time.monotonic()
            ok, message = run_probe(probe, self.spec, w.pod_ip, proc.pid if proc else None, self.env)
            if done.is_set():
                return
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                name = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}[kind]
                self.runner.event(w.pod, "Unhealthy", f"{name} probe failed: {message}", "Warning", self.field_path)
            if kind == "readinessProbe":
                if ok and successes >= timing.success_threshold and not self.ready:
                    with self.lock:
                        self.ready = True
                    w.changed()
                elif not ok and failures >= timing.failure_threshold and self.ready:
                    with self.lock:
                        self.ready = False
                    w.changed()
            elif kind == "startupProbe":
                if ok:
                    with self.lock:
                        self.started = True
                        if "readinessProbe" not in self.spec:
                            self.ready = True
                    w.changed()
                    return
                if failures >= timing.failure_threshold:
                    self.kill(self._probe_grace(probe), "Killing", f"Container {self.name} failed startup probe, will be restarted")
                    return
            elif not ok and failures >= timing.failure_threshold:
                self.kill(self._probe_grace(probe), "Killing", f"Container {self.name} failed liveness probe, will be restarted")
                return
            if done.wait(max(0.0, timing.period - (time.monotonic() - t0))):
                return

    def _probe_grace(self, probe: dict[str, Any]) -> float:
        return float(probe.get("terminationGracePeriodSeconds")
                     or self.worker.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def kill(self, grace: float, reason: str, message: str) -> None:
        """SIGTERM the container's process group, SIGKILL after ``grace`` seconds (in the background)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.runner.event(self.worker.pod, reason, message, "Normal", self.field_path)
        pid = proc.pid

        def signal_group(sig: int) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass

        signal_group(signal.SIGTERM)

        def reaper() -> None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # Also catch children that outlived the main process.
            signal_group(signal.SIGKILL)

        threading.Thread(target=reaper, daemon=True).start()

    def wait_stopped(self) -> None:
        if self.proc is not None or self.ever_started:
            self.stopped.wait(timeout=600)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubetest.podrunner", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--node-name", default="local-0")
    p.add_argument("--pod-cidr", required=True, help="local range for pod IPs (kubetest.podnet), e.g. 198.18.4.0/22")
    p.add_argument("--images", default=None, help="extra image rules (YAML/JSON), see kubetest.images")
    p.add_argument("--backoff-base", type=float,
                   default=float(os.environ.get("MODEL_OPERATOR_PODRUNNER_BACKOFF_SECONDS", "10")))
    p.add_argument("--backoff-max", type=float, default=300.0)
    p.add_argument("--no-taint", action="store_true", help="let any pod land on the node")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    runner = Runner(Kube.from_kubeconfig(args.kubeconfig), args.state_dir, args.node_name, args.pod_cidr,
                    ImageMap.load(args.images), args.backoff_base, args.backoff_max, taint=not args.no_taint)

    def on_signal(signum: int, _frame: Any) -> None:
        runner.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.register_node()
    runner.ensure_storage_class()
    for target in (runner.heartbeat_loop, runner.provisioner_loop, runner.watch_loop):
        threading.Thread(target=target, name=target.__name__, daemon=True).start()
    log.info("node %s ready; pod IPs from %s; bind shim %s", args.node_name, args.pod_cidr, runner.shim)
    runner.stopping.wait()
    log.info("stopping: killing pod processes")
    runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
