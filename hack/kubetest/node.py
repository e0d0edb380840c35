"""A real node for the local cluster: containerd + runc, CNI, kubelet and kube-proxy.

``Cluster(real_node=True)`` uses this instead of the local pod runner. What runs:

* Debian's containerd 1.6 with runc, its own configuration, socket and state
  (``$MODEL_OPERATOR_CACHE/realnode/``); its root (content store, snapshots, metadata) is
  ``$MODEL_OPERATOR_CACHE/containerd``, kept between sessions so a pulled image is pulled
  once. ``restrict_oom_score_adj`` is on (these VMs lack CAP_SYS_RESOURCE: without it runc
  fails every container). Registries given as ``{"host:port": "http://host:port"}`` get a
  ``hosts.toml`` under ``realnode/certs.d`` (containerd's ``config_path``), so they are
  pulled from over plain HTTP.
* CNI (Debian's containernetworking-plugins): bridge ``mo-cni0``, pod range
  ``198.19.16.0/24`` (host-local IPAM), pods routed to 198.18.0.0/15 only (no default
  route, no masquerade: a pod cannot reach anything outside the test ranges), portmap;
  containerd adds loopback.
* The node's address ``198.19.32.1/32`` on ``lo`` (the ``dummy`` link type is missing
  here). The API server listens on it, so pods reach it through the ``kubernetes`` Service
  (198.19.0.1:443 -> 198.19.32.1:<port>).
* kubelet v1.34.4 (cgroupfs driver, cgroup v1 allowed, swap allowed, low eviction
  thresholds, image GC off, cgroup root ``/model-operator-node``), registered as the node
  ``local-0`` with the pod runner's labels and taint; serving certificate signed by the
  cluster CA; the API server reaches it with a kubelet client certificate (``kubectl
  logs/exec``).
* kube-proxy v1.34.4 in iptables mode: ClusterIPs work from the host and from pods.
* ``pause`` and ``busybox`` images built locally (``kubetest.nodeimages``).

Only one real node can run per machine (fixed addresses, one bridge): a lock on the
containerd root says who owns it. ``teardown`` undoes everything the node and its pods
added to the host (processes, mounts, network namespaces, cgroups, iptables chains, the
bridge, the address, sysctls); it also runs at the next start when a killed cluster left
things behind (``$MODEL_OPERATOR_CACHE/realnode/node.json`` records what to undo).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from . import binaries, nodeimages, pki, procs

NODE_IP = "198.19.32.1"
POD_CIDR = "198.19.16.0/24"
POD_ROUTES = "198.18.0.0/15"  # all a pod may reach: the project's test ranges
BRIDGE = "mo-cni0"
CNI_NETWORK = "mo-pods"
CGROUP_ROOT = "model-operator-node"
LOCAL_LABEL = "model-operator.io/local-runner"
LOCAL_TAINT = {"key": "model-operator.io/local", "value": "true", "effect": "NoSchedule"}
NODE_LABELS = {"node-pool": "local", LOCAL_LABEL: "true"}
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
GUARD_CHAIN = "MO-NODE-GUARD"
# Chains of kube-proxy and the kubelet (KUBE-), the portmap plugin (CNI-) and ours.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "MO-NODE-")
# Settings kubelet, kube-proxy and this module change; saved at start, restored at teardown.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
NODE_PROCESSES = ("kubelet", "kube-proxy", "provisioner", "containerd")
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # kubelet's, not configurable
NETNS_DIR = Path("/run/netns")

Spawn = Callable[..., None]


class NodeError(RuntimeError):
    pass


def node_dir() -> Path:
    """Machine-wide files of the one real node: config, socket, state, what to undo."""
    return binaries.cache_dir() / "realnode"


def containerd_root() -> Path:
    """Content store and snapshots, kept across sessions (pulled images survive)."""
    return binaries.cache_dir() / "containerd"


def _run(*argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check, timeout=timeout)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def _read_sysctl(name: str) -> Optional[str]:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    try:
        _sysctl_path(name).write_text(value)
    except OSError:
        pass


# ------------------------------------------------------------------------------ record
def _record_path() -> Path:
    return node_dir() / "node.json"


def read_record() -> dict[str, Any]:
    try:
        return json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_record(record: dict[str, Any]) -> None:
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


# ------------------------------------------------------------------------------ lock
def _lock_path() -> Path:
    return containerd_root() / "lock"


def try_lock() -> Optional[int]:
    """An fd holding the containerd-root lock, or None when someone else holds it."""
    path = _lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------------------ processes
def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _is_ours(pid: Optional[int], name: str) -> bool:
    """pid still runs the program it was recorded for (guards against pid reuse)."""
    if not pid or not procs.alive(pid):
        return False
    argv = _cmdline(pid)
    return any(name in part for part in argv[:3])


def _stop_recorded(pids: dict[str, int], names: tuple[str, ...], grace: float = 5.0) -> None:
    programs = {"provisioner": "kubetest.provisioner"}
    for name in names:
        pid = pids.get(name)
        if _is_ours(pid, programs.get(name, name)):
            procs.stop_group(int(pid), grace=grace)  # type: ignore[arg-type]


def _shim_pids(socket: str) -> list[int]:
    """containerd-shim processes serving our containerd (matched by their -address)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if argv and "containerd-shim" in argv[0] and socket in argv:
            out.append(int(entry.name))
    return out


# ------------------------------------------------------------------------------ cgroups
def _cgroup_mounts() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, named, and v2)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(_unescape(left.split()[4])))
    return out


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def make_cgroup_root() -> None:
    for mount in _cgroup_mounts():
        target = mount / CGROUP_ROOT
        target.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
            parent_value = mount / knob
            if parent_value.exists() and not (target / knob).read_text().strip():
                (target / knob).write_text(parent_value.read_text())


def _cgroup_dirs(root: Path) -> list[Path]:
    """``root`` and every cgroup below it, deepest first (they vanish as we go: no errors)."""
    found = [Path(d) for d, _, _ in os.walk(root, onerror=lambda e: None)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup_tree(root: Path) -> None:
    for d in _cgroup_dirs(root):
        try:
            pids = (d / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass


def remove_cgroups() -> None:
    roots = [m / CGROUP_ROOT for m in _cgroup_mounts() if (m / CGROUP_ROOT).exists()]
    for root in roots:
        _kill_cgroup_tree(root)
    deadline = time.monotonic() + 10
    for root in roots:
        while True:
            for d in _cgroup_dirs(root):
                try:
                    d.rmdir()
                except OSError:
                    pass
            if not root.exists() or time.monotonic() > deadline:
                break
            _kill_cgroup_tree(root)
            time.sleep(0.2)


# ------------------------------------------------------------------------------ mounts / netns
def _mount_points() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        out.append(_unescape(line.split()[4]))
    return out


def unmount_under(*roots: Path) -> None:
    """Unmount every mount at or below ``roots`` (the kubelet bind-mounts its root dir on itself)."""
    bases = [str(r).rstrip("/") for r in roots if str(r) not in ("", "/")]
    for _ in range(3):  # stacked mounts show up again after the top one goes
        points = [p for p in _mount_points() if any(p == b or p.startswith(b + "/") for b in bases)]
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            _run("umount", "-l", point)


def remove_dead_netns() -> None:
    """Network namespaces containerd's CNI created (``cni-*``) that no process uses any more.

    Reads only /proc and /run/netns (no ``ip netns``: that remounts /run/netns shared, which
    breaks containerd creating namespaces at the same time)."""
    if not NETNS_DIR.is_dir():
        return
    used = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                used.add(os.stat(entry / "ns" / "net").st_ino)
            except OSError:
                pass
    for ns in NETNS_DIR.glob("cni-*"):
        try:
            inode = os.stat(ns).st_ino
        except OSError:
            continue
        if inode in used:
            continue
        _run("umount", "-l", str(ns))
        try:
            ns.unlink()
        except OSError:
            pass


# ------------------------------------------------------------------------------ iptables
def _iptables_tools() -> list[tuple[str, str]]:
    out = []
    for save, cmd in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if shutil.which(save) and shutil.which(cmd):
            out.append((save, cmd))
    return out


def _ours(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIXES)


def remove_chains() -> None:
    """Delete every chain named KUBE-*, CNI-*, MO-NODE-* and the rules jumping to them."""
    for save, cmd in _iptables_tools():
        for table in ("filter", "nat", "mangle", "raw"):
            dump = _run(save, "-t", table)
            if dump.returncode != 0:
                continue
            chains = [line[1:].split()[0] for line in dump.stdout.splitlines() if line.startswith(":")]
            mine = [c for c in chains if _ours(c)]
            for line in dump.stdout.splitlines():
                if not line.startswith("-A "):
                    continue
                parts = shlex.split(line)
                chain = parts[1]
                if _ours(chain):
                    continue
                target = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("-j", "-g")), "")
                if _ours(target):
                    _run(cmd, "-w", "-t", table, "-D", chain, *parts[2:])
            for chain in mine:
                _run(cmd, "-w", "-t", table, "-F", chain)
            for chain in mine:
                _run(cmd, "-w", "-t", table, "-X", chain)


def add_guard_chain() -> None:
    """Pods may forward only to the test ranges (no default route either; belt and braces)."""
    _run("iptables", "-w", "-N", GUARD_CHAIN)
    _run("iptables", "-w", "-A", GUARD_CHAIN, "-s", POD_CIDR, "!", "-d", POD_ROUTES, "-j", "DROP")
    _run("iptables", "-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


# ------------------------------------------------------------------------------ teardown
def teardown(record: Optional[dict[str, Any]] = None) -> None:
    """Undo everything a real node (running or killed) added to this machine.

    Needs the containerd-root lock to be free or held by the caller: the processes of the
    recorded node are stopped first."""
    record = record if record is not None else read_record()
    pids = record.get("pids", {})
    sock = record.get("socket", "")
    # Stop the kubelet first, so it restarts nothing, then every process in the pods' cgroups.
    _stop_recorded(pids, ("kubelet",), grace=10.0)
    for mount in _cgroup_mounts():
        if (mount / CGROUP_ROOT).exists():
            _kill_cgroup_tree(mount / CGROUP_ROOT)
    if sock and Path(sock).exists() and _is_ours(pids.get("containerd"), "containerd"):
        _clear_containers(["ctr", "--address", sock], timeout=30)
    _stop_recorded(pids, ("kube-proxy", "provisioner", "containerd"))
    if sock:
        for pid in _shim_pids(sock):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    dirs = [Path(d) for d in (record.get("kubelet_dir"), record.get("containerd_state"), record.get("containerd_root")) if d]
    unmount_under(*dirs)
    remove_dead_netns()
    remove_cgroups()
    # Network: chains, bridge, address, addresses' conntrack entries, sysctls.
    remove_chains()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "del", BRIDGE)
    _run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo")
    for flag in ("-s", "-d"):
        for cidr in (POD_CIDR, f"{NODE_IP}/32"):
            _run("conntrack", "-D", flag, cidr)
    for name, value in (record.get("sysctls") or {}).items():
        if value is not None:
            _write_sysctl(name, value)
    pod_logs = record.get("pod_logs_dir")
    if pod_logs and CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.glob("*.log"):
            try:
                if link.is_symlink() and os.readlink(link).startswith(pod_logs):
                    link.unlink()
            except OSError:
                pass
    for sub in ("cni/ipam", "state", "run"):
        shutil.rmtree(node_dir() / sub, ignore_errors=True)
    # CRI's per-container directories in the root (the sandboxes' /dev/shm mounts are gone).
    for sub in ("sandboxes", "containers"):
        shutil.rmtree(containerd_root() / "root" / "io.containerd.grpc.v1.cri" / sub, ignore_errors=True)
    _record_path().unlink(missing_ok=True)


def _clear_containers(ctr: list[str], timeout: float = 60) -> None:
    """Kill and delete every task and container in the CRI's namespace (images stay)."""
    ns = [*ctr, "-n", "k8s.io"]
    try:
        tasks = _run(*ns, "tasks", "ls", "-q", timeout=timeout).stdout.split()
        for t in tasks:
            _run(*ns, "tasks", "kill", "-s", "SIGKILL", t, timeout=timeout)
        for t in tasks:
            _run(*ns, "tasks", "rm", "-f", t, timeout=timeout)
        containers = _run(*ns, "containers", "ls", "-q", timeout=timeout).stdout.split()
        if containers:
            _run(*ns, "containers", "rm", *containers, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


# ------------------------------------------------------------------------------ the node
class RealNode:
    """The real node of one cluster. ``prepare`` before the API server starts (the API
    server listens on the node address), ``start`` once the control plane serves."""

    def __init__(self, state_dir: Path, name: str = "local-0",
                 registries: Optional[dict[str, str]] = None) -> None:
        self.state_dir = state_dir
        self.name = name
        self.registries = dict(registries or {})
        self.dir = node_dir()
        self.root = containerd_root()
        self.socket = self.dir / "run" / "containerd.sock"
        self.kubelet_dir = state_dir / "kubelet"
        self.pod_logs_dir = state_dir / "pods"
        self.pvc_dir = state_dir / "pvc"
        self.images: dict[str, str] = {}
        self._lock_fd: Optional[int] = None
        self.record: dict[str, Any] = {}

    @property
    def ctr(self) -> list[str]:
        return ["ctr", "--address", str(self.socket)]

    # ---------------------------------------------------------------- before the API server
    def prepare(self) -> None:
        """Take the machine's node: lock, clear a killed node's leftovers, set up the host."""
        binaries.require_node_tools()
        if len(str(self.socket)) > 100:
            raise NodeError(f"containerd socket path too long for a unix socket: {self.socket}"
                            " (set MODEL_OPERATOR_CACHE to a shorter directory)")
        fd = try_lock()
        previous = read_record()
        if fd is None:
            owner = previous.get("state_dir", "?")
            apiserver = previous.get("apiserver_pid")
            if previous and (not Path(owner).exists() or not _is_ours(apiserver, "kube-apiserver")):
                # Its cluster is gone (state removed or API server dead): take the node over.
                teardown(previous)
                fd = try_lock()
            if fd is None:
                raise NodeError(
                    f"a real node already runs on this machine (cluster in {owner}); only one fits"
                    f" (fixed addresses and bridge). Stop it: hack/cluster down --state-dir {owner}")
        self._lock_fd = fd
        if previous or Path(f"/sys/class/net/{BRIDGE}").exists():
            teardown(previous)  # a killed cluster's leftovers
        saved = {name: _read_sysctl(name) for name in SYSCTLS}
        self.record = {
            "state_dir": str(self.state_dir),
            "socket": str(self.socket),
            "kubelet_dir": str(self.kubelet_dir),
            "pod_logs_dir": str(self.pod_logs_dir),
            "containerd_state": str(self.dir / "state"),
            "containerd_root": str(self.root / "root"),
            "sysctls": saved,
            "pids": {},
        }
        _write_record(self.record)
        r = _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise NodeError(f"cannot add {NODE_IP}/32 to lo: {r.stderr.strip()}")
        _write_sysctl("net/ipv4/ip_forward", "1")
        _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        add_guard_chain()
        make_cgroup_root()

    # ---------------------------------------------------------------- after the API server
    def start(self, ca: pki.CertificateAuthority, server: str, spawn: Spawn, ports: dict[str, int],
              deadline: float) -> None:
        bins = binaries.require(["kubelet", "kube-proxy"])
        self._write_containerd_config()
        self._write_cni_config()
        for host, endpoint in self.registries.items():
            self.add_registry(host, endpoint)
        self._start_containerd(spawn, deadline)
        pause_ref, pause_tar = nodeimages.pause_image()
        busybox_ref, busybox_tar = nodeimages.busybox_image()
        nodeimages.import_image(self.ctr, pause_ref, pause_tar)
        nodeimages.import_image(self.ctr, busybox_ref, busybox_tar)
        self.images = {"pause": pause_ref, "busybox": busybox_ref}
        self.record["images"] = self.images

        pki_dir = ca.directory
        kubelet_client = ca.issue("kubelet", f"system:node:{self.name}", orgs=("system:nodes",))
        kubelet_serving = ca.issue("kubelet-serving", f"system:node:{self.name}", dns=(self.name,),
                                   ips=(NODE_IP,), server=True, client=False)
        proxy_client = ca.issue("kube-proxy", "system:kube-proxy")
        kcfg = self.state_dir / "kubeconfigs"
        from .cluster import _write_kubeconfig  # one kubeconfig writer

        _write_kubeconfig(kcfg / "kubelet.kubeconfig", server, ca.pair.cert, kubelet_client, f"system:node:{self.name}")
        _write_kubeconfig(kcfg / "kube-proxy.kubeconfig", server, ca.pair.cert, proxy_client, "system:kube-proxy")

        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        self.pod_logs_dir.mkdir(parents=True, exist_ok=True)
        kubelet_cfg = self.state_dir / "kubelet.yaml"
        kubelet_cfg.write_text(yaml.safe_dump(self._kubelet_config(ca, kubelet_serving, ports), sort_keys=False))
        spawn("kubelet", [
            bins["kubelet"], f"--config={kubelet_cfg}", f"--kubeconfig={kcfg / 'kubelet.kubeconfig'}",
            f"--hostname-override={self.name}", f"--node-ip={NODE_IP}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in NODE_LABELS.items()),
            f"--root-dir={self.kubelet_dir}", f"--cert-dir={pki_dir / 'kubelet'}", "--v=1",
        ])
        proxy_cfg = self.state_dir / "kube-proxy.yaml"
        proxy_cfg.write_text(yaml.safe_dump(self._proxy_config(kcfg / "kube-proxy.kubeconfig", ports), sort_keys=False))
        spawn("kube-proxy", [bins["kube-proxy"], f"--config={proxy_cfg}", "--v=1"])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(binaries.HACK_DIR), env.get("PYTHONPATH")]))
        spawn("provisioner", [sys.executable, "-m", "kubetest.provisioner",
                              f"--kubeconfig={self.state_dir / 'kubeconfig'}", f"--pvc-dir={self.pvc_dir}"], env=env)

    def remember(self, pids: dict[str, int], apiserver_pid: Optional[int]) -> None:
        """Record the node's processes machine-wide (for teardown after a kill)."""
        self.record["pids"] = {k: v for k, v in pids.items() if k in NODE_PROCESSES}
        self.record["apiserver_pid"] = apiserver_pid
        _write_record(self.record)

    def release_lock(self) -> None:
        """Close the lock fd if containerd never took it over (a start that failed early)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def add_registry(self, host: str, endpoint: str) -> None:
        """Let containerd pull ``host/...`` from ``endpoint`` (e.g. ``http://127.0.0.1:5000``:
        plain HTTP). Read at every pull, so this works on a running node too."""
        d = self.dir / "certs.d" / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "{endpoint}"\n\n[host."{endpoint}"]\n  capabilities = ["pull", "resolve", "push"]\n'
            "  skip_verify = true\n")

    # ---------------------------------------------------------------- pieces
    def _write_containerd_config(self) -> None:
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "root").mkdir(parents=True, exist_ok=True)
        (self.dir / "certs.d").mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        toml = f"""version = 2
root = "{self.root / 'root'}"
state = "{self.dir / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir / 'opt'}"

[{cri}]
  sandbox_image = "{nodeimages.pause_image()[0]}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  enable_selinux = false
  max_concurrent_downloads = 3
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{binaries.CNI_PLUGIN_DIR}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
    max_conf_num = 1
  [{cri}.registry]
    config_path = "{self.dir / 'certs.d'}"
"""
        (self.dir / "containerd.toml").write_text(toml)

    def _write_cni_config(self) -> None:
        conf_dir = self.dir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": POD_ROUTES}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (conf_dir / "10-mo-pods.conflist").write_text(json.dumps(conf, indent=2))

    def _start_containerd(self, spawn: Spawn, deadline: float) -> None:
        containerd = shutil.which("containerd")
        assert containerd
        # containerd inherits the lock: it is held exactly as long as containerd runs.
        assert self._lock_fd is not None
        os.set_inheritable(self._lock_fd, True)
        spawn("containerd", [containerd, f"--config={self.dir / 'containerd.toml'}"], pass_fds=(self._lock_fd,))
        os.close(self._lock_fd)
        self._lock_fd = None

        def ready() -> bool:
            return self.socket.exists() and _run(*self.ctr, "version", timeout=5).returncode == 0

        from .wait import wait_for

        wait_for(ready, timeout=max(1.0, deadline - time.monotonic()), interval=0.2, message="containerd serving",
                 ignore=(subprocess.TimeoutExpired,))
        _clear_containers(self.ctr)  # containers a killed node left in the metadata

    def _kubelet_config(self, ca: pki.CertificateAuthority, serving: pki.CertPair, ports: dict[str, int]) -> dict:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["kubelet-healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca.pair.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "registerWithTaints": [LOCAL_TAINT],
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "runtimeRequestTimeout": "15m",
            "serializeImagePulls": False,
            "podLogsDir": str(self.pod_logs_dir),
            "maxPods": 110,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "protectKernelDefaults": False,
            "shutdownGracePeriod": "0s",
        }

    def _proxy_config(self, kubeconfig: Path, ports: dict[str, int]) -> dict:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
            "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                         "minSyncPeriod": "0s"},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
