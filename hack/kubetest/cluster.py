"""A real Kubernetes control plane on loopback, for tests and for developers.

etcd, kube-apiserver (TLS, Node+RBAC authorization, default admission plugins,
service-account token signing), kube-controller-manager and kube-scheduler run
as local processes from the binaries hack/build-binaries.sh builds; the KWOK
controller simulates the node pools in ``nodepools``; with ``real_node=True``, a
real kubelet with containerd, CNI and kube-proxy (``kubetest.node``) runs the pods
bound to the node ``local-0`` as containers; Prometheus (``prometheus``) is optional. Ports are picked at random, so a test cluster can
run next to a developer's cluster.

State directory layout (``Cluster.state_dir``)::

    cluster.json      what ``Cluster.attach`` needs: ports, pids, paths
    kubeconfig        admin kubeconfig (user kubernetes-admin, group system:masters)
    pki/              CA, serving and client certificates, service-account keys
    kubeconfigs/      one kubeconfig per component
    etcd/             etcd data
    logs/<component>.log
    pvc/<ns>/<claim>/ data of PersistentVolumeClaims (the hostPath provisioner's)
    kubelet/          real node: the kubelet's root directory (pod volumes)
    pods/<ns>_<pod>_<uid>/  real node: container logs (kubelet's podLogsDir)
    kubelet.yaml, kube-proxy.yaml   real node: their configurations
    prometheus/       Prometheus configuration and data

``stop`` kills everything and removes the state, keeping ``logs/`` and ``pods/``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from . import binaries, node, pki, procs
from .nodepools import DEFAULT_POOLS, KWOK_SELECTOR, NodePool, node_manifests
from .rest import ApiError, Kube
from .wait import wait_for

if TYPE_CHECKING:
    from .prometheus import PrometheusHandle

# Every address of the cluster lies in 198.18.0.0/15 (set aside for benchmarks, routed
# nowhere): these machines must never send traffic to private ranges.
SERVICE_CIDR = "198.19.0.0/20"
# Room for 65,534 Services, for clusters with KWOK nodes only (fleet benchmarks: 7,000 served
# ModelDeployments need 7,000 Services, and /20 holds 4,094). Only a real node needs the
# kubernetes Service at SERVICE_IP, where its proxy rules send it to the API server.
KWOK_SERVICE_CIDR = "198.18.0.0/16"
SERVICE_IP = "198.19.0.1"
KWOK_POD_CIDR = "198.19.64.0/18"
KWOK_NODE_IP = "198.19.48.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
LOCAL_NODE = "local-0"
# Components stopped in this order, the reverse of start.
_STOP_ORDER = ("prometheus", *node.NODE_PROCESSES, "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
_KEEP_ON_STOP = {"logs", "pods"}


def default_state_dir() -> Path:
    return binaries.cache_dir() / "cluster"


class KubectlError(subprocess.CalledProcessError):
    """A kubectl run that failed, with what kubectl said: a test's failure shows why, not only
    the exit status."""

    def __str__(self) -> str:
        said = (self.stderr or self.output or "").strip()
        return f"{super().__str__()} kubectl said: {said[-800:] or '(nothing)'}"


class ClusterError(RuntimeError):
    pass


class Cluster:
    """One local cluster rooted at ``state_dir``.

    Parameters:
        state_dir: where everything lives (default ``$MODEL_OPERATOR_CACHE/cluster``).
        pools: KWOK node pools to create (default: gpu, edge, cpu; 2 nodes each).
        prometheus: also start Prometheus (see ``kubetest.prometheus``).
        scrape_interval: Prometheus scrape and evaluation interval.
        real_node: run a real kubelet node (``kubetest.node``) as ``local_node``. Needs root,
            Debian's containerd, runc and CNI plugins, and the kubelet and kube-proxy binaries.
            Without it the cluster has only the KWOK pools (scale runs).
        registries: real node: ``{"host:port": "http://host:port"}``, registries containerd
            pulls from over plain HTTP (more with ``add_registry``).
        startup_timeout: seconds ``start`` may take before it gives up.
    """

    def __init__(
        self,
        state_dir: Optional[Path | str] = None,
        *,
        pools: tuple[NodePool, ...] = DEFAULT_POOLS,
        local_node: str = LOCAL_NODE,
        prometheus: bool = False,
        scrape_interval: str = "2s",
        startup_timeout: float = 90.0,
        real_node: bool = False,
        registries: Optional[dict[str, str]] = None,
        service_cidr: str = SERVICE_CIDR,
    ) -> None:
        if real_node and service_cidr != SERVICE_CIDR:
            raise ValueError(f"a real node reaches the API server at {SERVICE_IP}: keep the service range {SERVICE_CIDR}")
        self.service_cidr = service_cidr
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.pools = pools
        self.local_node = local_node
        self.with_prometheus = prometheus
        self.scrape_interval = scrape_interval
        self.startup_timeout = startup_timeout
        self.real_node = real_node
        self.registries = dict(registries or {})
        self._node: Optional[node.RealNode] = None
        self.info: dict[str, Any] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._kube: Optional[Kube] = None

    # ---------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return str(self.info["server"])

    @property
    def prometheus_url(self) -> Optional[str]:
        return self.info.get("prometheus_url")

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube.from_kubeconfig(self.kubeconfig)
        return self._kube

    def env(self) -> dict[str, str]:
        """Environment for tools pointed at this cluster (kubectl, helm, the operator)."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: Optional[str] = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the pinned kubectl against this cluster; output is text. With ``check``, a failure
        raises KubectlError carrying kubectl's own message."""
        argv = [str(binaries.path_of("kubectl")), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, argv, output=done.stdout, stderr=done.stderr)
        return done

    # ---------------------------------------------------------------- lifecycle
    def is_running(self) -> bool:
        info = self._read_info()
        return bool(info) and any(procs.alive(pid) for pid in info.get("pids", {}).values())

    @classmethod
    def attach(cls, state_dir: Optional[Path | str] = None) -> "Cluster":
        """A handle on a cluster some other process started (``hack/cluster up``)."""
        c = cls(state_dir)
        info = c._read_info()
        if not info:
            raise ClusterError(f"no cluster in {c.state_dir}; start one with hack/cluster up")
        c.info = info
        c.local_node = info.get("local_node", c.local_node)
        c.real_node = bool(info.get("real_node"))
        return c

    @property
    def images(self) -> dict[str, str]:
        """Real node: the locally built images, ``{"pause": ref, "busybox": ref}``."""
        return dict(self.info.get("images") or {})

    def add_registry(self, host: str, endpoint: str) -> None:
        """Real node: pull images named ``host/...`` from ``endpoint`` (plain HTTP allowed)."""
        if not self.real_node:
            raise ClusterError("registries apply to the real node only")
        node.RealNode(self.state_dir, self.local_node).add_registry(host, endpoint)
        self.info.setdefault("registries", {})[host] = endpoint
        self._write_info()

    def pull(self, ref: str, timeout: float = 1200) -> None:
        """Real node: pull ``ref`` into the node's containerd (namespace k8s.io) now, as the
        kubelet would on first use; a no-op when it is already there."""
        if not self.real_node:
            raise ClusterError("pull applies to the real node only")
        ctr = node.RealNode(self.state_dir, self.local_node).ctr
        have = subprocess.run([*ctr, "-n", "k8s.io", "images", "ls", "-q", f"name=={ref}"], capture_output=True, text=True, timeout=60)
        if have.returncode == 0 and ref in have.stdout.split():
            return
        host = ref.split("/", 1)[0]
        plain = (self.info.get("registries") or {}).get(host, "").startswith("http://")
        argv = [*ctr, "-n", "k8s.io", "images", "pull", *(["--plain-http"] if plain else []), ref]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"pulling {ref} onto {self.local_node} failed: {done.stderr.strip()[-2000:]}")

    def remove_image(self, ref: str, timeout: float = 300) -> None:
        """Real node: remove ``ref`` from the node's containerd, and the layers only it used
        (a no-op when it is not there)."""
        if not self.real_node:
            raise ClusterError("remove_image applies to the real node only")
        ctr = node.RealNode(self.state_dir, self.local_node).ctr
        have = subprocess.run([*ctr, "-n", "k8s.io", "images", "ls", "-q", f"name=={ref}"], capture_output=True, text=True, timeout=60)
        if have.returncode != 0 or ref not in have.stdout.split():
            return
        done = subprocess.run([*ctr, "-n", "k8s.io", "images", "rm", "--sync", ref], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"removing {ref} from {self.local_node} failed: {done.stderr.strip()[-2000:]}")

    def container_pid(self, container_id: str) -> int:
        """Real node: the host PID of a container's main process, from the pod status's
        ``containerID`` (``containerd://<id>``) — to kill it from outside, as the kernel would."""
        if not self.real_node:
            raise ClusterError("container_pid applies to the real node only")
        cid = container_id.split("://", 1)[-1]
        ctr = node.RealNode(self.state_dir, self.local_node).ctr
        done = subprocess.run([*ctr, "-n", "k8s.io", "tasks", "ls"], capture_output=True, text=True, timeout=60)
        for line in done.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == cid:
                return int(fields[1])
        raise ClusterError(f"no running task for container {cid} on {self.local_node}")

    def pod_volume_dir(self, pod_uid: str, volume: str, kind: str = "empty-dir") -> Path:
        """Real node: where the kubelet keeps a pod's volume on this machine."""
        return self.state_dir / "kubelet" / "pods" / pod_uid / "volumes" / f"kubernetes.io~{kind}" / volume

    def start(self) -> "Cluster":
        bins = binaries.require()
        if self.real_node:
            binaries.require([*binaries.NODE_BINARIES])
            binaries.require_node_tools()
        if self.is_running():
            raise ClusterError(f"a cluster is already running in {self.state_dir}; stop it first (hack/cluster down)")
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        self._reset_state_dir()
        try:
            self._start(bins, deadline)
        except BaseException:
            self._write_info()
            self.stop(keep_state=True)
            raise
        self.info["startup_seconds"] = round(time.monotonic() - t0, 1)
        self._write_info()
        return self

    def stop(self, keep_state: bool = False) -> None:
        """Stop every component (process groups), then remove the state (not logs)."""
        info = self._read_info() or self.info
        pids: dict[str, int] = dict(info.get("pids", {}))
        if info.get("real_node"):
            # The node first (kubelet, pods, containerd, network), while it is still ours;
            # the record names this cluster unless another cluster took the node over.
            if pids.get("prometheus"):
                procs.stop_group(pids.pop("prometheus"), grace=5.0, proc=self._procs.get("prometheus"))
            record = node.read_record()
            if record.get("state_dir") == str(self.state_dir):
                record["pids"] = {k: pids[k] for k in node.NODE_PROCESSES if k in pids} | record.get("pids", {})
                node.teardown(record)
            if self._node is not None:
                self._node.release_lock()
            for name in node.NODE_PROCESSES:
                pids.pop(name, None)
        # Components added with spawn_component (a metrics adapter) first, then the rest in order.
        for name in (*[n for n in pids if n not in _STOP_ORDER], *_STOP_ORDER):
            pid = pids.get(name)
            if pid:
                procs.stop_group(pid, grace=5.0, proc=self._procs.get(name))
        self._procs.clear()
        if not keep_state and self.state_dir.exists():
            for child in self.state_dir.iterdir():
                if child.name in _KEEP_ON_STOP:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    # ---------------------------------------------------------------- internals
    def _read_info(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_info(self) -> None:
        self.info["pids"] = {name: p.pid for name, p in self._procs.items()} | {
            k: v for k, v in self.info.get("pids", {}).items() if k not in self._procs
        }
        path = self.state_dir / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=2))
        tmp.replace(path)

    def _reset_state_dir(self) -> None:
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        if self.state_dir.exists():
            node.unmount_under(self.state_dir)  # a killed real node's pod volumes
        for sub in ("pki", "kubeconfigs", "etcd", "logs", "pods", "pvc"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)

    def _spawn(self, name: str, argv: list[Any], **kw: Any) -> None:
        self._procs[name] = procs.spawn([str(a) for a in argv], self.log_path(name), **kw)
        if not kw:  # restartable as it was started (restart_component)
            self.info.setdefault("argv", {})[name] = [str(a) for a in argv]
        self._write_info()

    def spawn_component(self, name: str, argv: list[Any]) -> subprocess.Popen:
        """Run a long-lived process as part of this cluster (its own process group, log in
        logs/<name>.log, pid in cluster.json): ``stop`` and ``hack/cluster down`` stop it too."""
        self._spawn(name, argv)
        return self._procs[name]

    def stop_component(self, name: str) -> None:
        """Stop a process ``spawn_component`` started (no error if it is not running)."""
        info = self._read_info() or self.info
        self.info = info
        pid = (info.get("pids") or {}).pop(name, None)
        (info.get("argv") or {}).pop(name, None)
        if pid:
            procs.stop_group(pid, grace=5.0, proc=self._procs.get(name))
        self._procs.pop(name, None)
        self._write_info()

    def restart_component(self, name: str, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """Stop one control-plane process and start it again with the same arguments (fault
        injection: an API server restart under the operator). Waits until it serves again."""
        info = self._read_info() or self.info
        self.info = info
        argv = (info.get("argv") or {}).get(name)
        pid = (info.get("pids") or {}).get(name)
        if not argv or not pid:
            raise ClusterError(f"{name} was not started by this cluster, or its arguments were not recorded")
        procs.stop_group(pid, grace=5.0, proc=self._procs.get(name))
        self._procs.pop(name, None)
        if down_seconds:
            time.sleep(down_seconds)  # the outage itself is the fault being injected
        self._spawn(name, argv)
        if name == "kube-apiserver":
            deadline = time.monotonic() + timeout
            self._wait(name, lambda: self.kubectl("get", "--raw", "/readyz", check=False, timeout=5).stdout.strip() == "ok",
                       deadline, "kube-apiserver /readyz after a restart")

    def _check_alive(self, name: str) -> None:
        p = self._procs[name]
        if p.poll() is not None:
            tail = self.log_path(name).read_text(errors="replace")[-3000:]
            raise ClusterError(f"{name} exited with {p.returncode}; last log lines:\n{tail}")

    def _wait(self, name: str, check: Any, deadline: float, what: str) -> None:
        def probe() -> bool:
            self._check_alive(name)
            try:
                return bool(check())
            except Exception:
                return False

        wait_for(probe, timeout=max(1.0, deadline - time.monotonic()), interval=0.2, message=what)

    def _start(self, bins: dict[str, Path], deadline: float) -> None:
        sd = self.state_dir
        host = "127.0.0.1"
        if self.real_node:
            self._node = node.RealNode(sd, self.local_node, self.registries)
            self._node.prepare()  # the node address must exist before the API server binds it
            host = node.NODE_IP
        ports = {name: procs.free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")}
        if self.real_node:
            ports |= {name: procs.free_port() for name in
                      ("kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics")}
        server = f"https://{host}:{ports['apiserver']}"
        self.info = {
            "server": server,
            "kubeconfig": str(self.kubeconfig),
            "state_dir": str(sd),
            "ports": ports,
            "local_node": self.local_node if self.real_node else None,
            "real_node": self.real_node,
            "registries": self.registries,
            "versions": binaries.versions(),
            "pids": {},
        }

        ca = pki.CertificateAuthority(self.pki_dir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"),
            ips=("127.0.0.1", SERVICE_IP, node.NODE_IP),
            server=True,
            client=False,
        )
        sa = pki.service_account_keys(self.pki_dir)
        users = {
            "admin": ca.issue("admin", "kubernetes-admin", orgs=("system:masters",)),
            "kube-controller-manager": ca.issue("kube-controller-manager", "system:kube-controller-manager"),
            "kube-scheduler": ca.issue("kube-scheduler", "system:kube-scheduler"),
        }
        front_proxy = ca.issue("front-proxy-client", "front-proxy-client")
        kubelet_client = ca.issue(node.KUBELET_CLIENT_USER, node.KUBELET_CLIENT_USER)
        for user, pair in users.items():
            path = self.kubeconfig if user == "admin" else sd / "kubeconfigs" / f"{user}.kubeconfig"
            _write_kubeconfig(path, server, ca.pair.cert, pair, user)

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn("etcd", [
            bins["etcd"], "--name=default", f"--data-dir={sd / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # Test data is disposable; fsync dominates etcd latency on CI disks.
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait("etcd", lambda: _http_get(f"{etcd_url}/health").get("health") == "true", deadline, "etcd /health")

        self._spawn("kube-apiserver", [
            bins["kube-apiserver"],
            f"--etcd-servers={etcd_url}",
            f"--bind-address={host}", f"--advertise-address={host}", f"--secure-port={ports['apiserver']}",
            f"--cert-dir={sd / 'pki'}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.pair.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--allow-privileged=true",
            # Request-header authentication, as kubeadm configures it: the
            # aggregation layer works, and controllers reading the
            # extension-apiserver-authentication ConfigMap find a CA in it.
            f"--requestheader-client-ca-file={ca.pair.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={front_proxy.cert}", f"--proxy-client-key-file={front_proxy.key}",
            # The aggregator dials an extension API server's endpoint (from its EndpointSlices),
            # not its Service's ClusterIP: this host's routes send a ClusterIP that kube-proxy
            # has no rule for yet out of the default route, where something answers 404.
            "--enable-aggregator-routing=true",
            "--profiling=false",
            # kubectl logs/exec: the API server calls the kubelet at its InternalIP.
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.pair.cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP",
            # Without a real node no kubelet answers on a node address and the "kubernetes"
            # Service's endpoint would be a loopback address, which Endpoints validation
            # rejects (the API server would log that forever). With one, the endpoint is the
            # node address pods reach the API server at.
            *([] if self.real_node else ["--endpoint-reconciler-type=none"]),
        ])
        admin = users["admin"]
        readyz = f"{server}/readyz"
        self._wait("kube-apiserver", lambda: _https_get_text(readyz, ca.pair.cert, admin) == "ok", deadline,
                   "kube-apiserver /readyz")

        kcm_cfg = sd / "kubeconfigs" / "kube-controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            bins["kube-controller-manager"],
            f"--kubeconfig={kcm_cfg}", f"--authentication-kubeconfig={kcm_cfg}", f"--authorization-kubeconfig={kcm_cfg}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kcm']}", f"--cert-dir={sd / 'pki' / 'kcm'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.pair.cert}",
            f"--cluster-signing-cert-file={ca.pair.cert}", f"--cluster-signing-key-file={ca.pair.key}",
            "--cluster-name=model-operator-local",
            # The default set: garbage collector, deployment, replicaset, job,
            # cronjob, HPA, disruption, namespace, serviceaccount(-token),
            # endpoints and endpointslice, node lifecycle, PV binder, ...
            "--controllers=*",
        ])
        sched_cfg = sd / "kubeconfigs" / "kube-scheduler.kubeconfig"
        self._spawn("kube-scheduler", [
            bins["kube-scheduler"],
            f"--kubeconfig={sched_cfg}", f"--authentication-kubeconfig={sched_cfg}", f"--authorization-kubeconfig={sched_cfg}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", f"--cert-dir={sd / 'pki' / 'scheduler'}",
            "--leader-elect=false",
        ])

        kwok_cfg = sd / "kwok.yaml"
        # An explicit (empty) configuration, so a developer's ~/.kwok/kwok.yaml
        # can't change the behaviour; KWOK then uses its built-in node and pod
        # stages (node heartbeat with lease, pod ready, job pod complete, delete).
        kwok_cfg.write_text("apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n")
        self._spawn("kwok", [
            bins["kwok"], f"--config={kwok_cfg}", f"--kubeconfig={self.kubeconfig}",
            f"--manage-nodes-with-annotation-selector={KWOK_SELECTOR}",
            f"--cidr={KWOK_POD_CIDR}", f"--node-ip={KWOK_NODE_IP}",
            "--node-lease-duration-seconds=40",
        ])

        if self.real_node:
            assert self._node is not None
            self._grant_kubelet_api()
            def spawn(name: str, argv: list[Any], **kw: Any) -> None:
                self._spawn(name, argv, **kw)
                assert self._node is not None
                self._node.remember(self.info["pids"], self.info["pids"].get("kube-apiserver"))

            self._node.start(ca, server, spawn, ports, deadline)
            self.info["images"] = self._node.images
            self._node.remember(self.info["pids"], self.info["pids"].get("kube-apiserver"))

        kcm_health = f"https://127.0.0.1:{ports['kcm']}/healthz"
        sched_health = f"https://127.0.0.1:{ports['scheduler']}/healthz"
        self._wait("kube-controller-manager", lambda: _https_get_text(kcm_health, None, None) == "ok", deadline,
                   "kube-controller-manager /healthz")
        self._wait("kube-scheduler", lambda: _https_get_text(sched_health, None, None) == "ok", deadline,
                   "kube-scheduler /healthz")

        kube = self.kube
        for pool in self.pools:
            for manifest in node_manifests(pool):
                try:
                    kube.create("/api/v1/nodes", manifest)
                except ApiError as e:
                    if e.status != 409:
                        raise
        names = [f"{p.name}-{i}" for p in self.pools for i in range(p.count)]
        if self.real_node:
            names.append(self.local_node)
        watched = ["kwok"] + (list(node.NODE_PROCESSES) if self.real_node else [])

        def all_ready() -> bool:
            for name in watched:
                self._check_alive(name)
            nodes = {n["metadata"]["name"]: n for n in kube.get("/api/v1/nodes")["items"]}
            return all(_node_ready(nodes.get(n)) for n in names)

        wait_for(all_ready, timeout=max(1.0, deadline - time.monotonic()), interval=0.3,
                 message=f"nodes {', '.join(names)} Ready", ignore=(ApiError, OSError))
        # Pods are rejected until the namespace's default ServiceAccount exists;
        # waiting for it here also proves the controller-manager works.
        wait_for(lambda: kube.get("/api/v1/namespaces/default/serviceaccounts/default"),
                 timeout=max(1.0, deadline - time.monotonic()), interval=0.2,
                 message="ServiceAccount default/default", ignore=(ApiError,))

        if self.with_prometheus:
            self.start_prometheus(self.scrape_interval, deadline)

    def _grant_kubelet_api(self) -> None:
        """Bind the API server's kubelet client to the kubelet API (logs, exec, port-forward)."""
        try:
            self.kube.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "model-operator:kube-apiserver-kubelet-api"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:kubelet-api-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": node.KUBELET_CLIENT_USER}],
            })
        except ApiError as e:
            if e.status != 409:
                raise

    def start_prometheus(self, scrape_interval: str = "2s", deadline: Optional[float] = None) -> "PrometheusHandle":
        """Start Prometheus for this cluster (once); return a handle to query it."""
        from .prometheus import Prometheus, PrometheusHandle

        url = self.prometheus_url
        pid = self.info.get("pids", {}).get("prometheus")
        if url and pid and procs.alive(pid):
            return PrometheusHandle(url)
        prom = Prometheus.for_cluster(self, scrape_interval=scrape_interval)
        self._procs["prometheus"] = prom.start(deadline, log=self.log_path("prometheus"))
        self.info["prometheus_url"] = prom.url
        self.info["scrape_interval"] = scrape_interval
        self._write_info()
        return PrometheusHandle(prom.url)


def _node_ready(node: Optional[dict[str, Any]]) -> bool:
    if not node:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", []))


def _write_kubeconfig(path: Path, server: str, ca: Path, pair: pki.CertPair, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "model-operator-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
        "contexts": [{"name": "model-operator-local", "context": {"cluster": "model-operator-local", "user": user}}],
        "current-context": "model-operator-local",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)


def _http_get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def _https_get_text(url: str, ca: Optional[Path], client: Optional[pki.CertPair]) -> str:
    if ca is None:
        # Controller-manager and scheduler serve with a self-signed certificate
        # they generate at start; their /healthz is only a liveness signal here.
        ctx = ssl._create_unverified_context()
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
        return resp.read().decode().strip()
