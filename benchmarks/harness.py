"""What the cluster benchmarks (apply_to_ready, scale_reaction, scale_many) share: the machine
line, timestamped progress lines, starting the test cluster (with the real node, or KWOK only),
the CRDs and the bench namespace, the digits example's claims, the operator's config file and
the operator as a process, and the result file's header and writing.

Each script keeps what it measures and the conditions it states; this module only sets the
stage and writes the page.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def use_paths(*relative: str) -> None:
    """Put these folders of the repository first on the import path (hack/ for kubetest,
    tests/e2e/operator for the e2e helpers, operator/ for this checkout's package)."""
    for rel in relative:
        path = str(REPO / rel)
        if path not in sys.path:
            sys.path.insert(0, path)


use_paths("hack")

from kubetest.procs import free_port  # noqa: E402
from kubetest.wait import wait_for  # noqa: E402

__all__ = [
    "REPO", "Clients", "add_out", "connect", "cpu_model", "free_port", "header", "install_crds", "load_average", "log",
    "machine_line", "make_namespace", "new_state_dir", "operator_env", "put_digits_claims", "python_and_system", "run_operator",
    "start_kwok_cluster", "start_real_node_cluster", "use_paths", "write_config", "write_result",
]


# ---------------------------------------------------------------- progress and the machine
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, "?" where it has none."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")


def machine_line(*details: str) -> str:
    """ "<cpu>, <n> cores" followed by the details each script adds (", "-separated)."""
    return ", ".join([cpu_model(), f"{os.cpu_count()} cores", *details])


def python_and_system() -> tuple[str, str]:
    """("Python 3.x.y", "<system> <release>"), apply_to_ready's machine details."""
    return f"Python {platform.python_version()}", f"{platform.system()} {platform.release()}"


def load_average(when: str) -> str:
    """The one-minute load average now, as "load average 0.42 <when>"."""
    return f"load average {os.getloadavg()[0]:.2f} {when}"


# ---------------------------------------------------------------- arguments and the result file
def add_out(ap: argparse.ArgumentParser, stem: str) -> None:
    """--out, by default benchmarks/results/<stem>-<today>.md."""
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"{stem}-{time.strftime('%Y-%m-%d')}.md"))


def header(title: str, machine: str, conditions: Iterable[str]) -> list[str]:
    """The result page's opening: title, the machine and date, the conditions, a blank line."""
    return [f"# {title}", "", f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.", *conditions, ""]


def write_result(out: str | Path, lines: list[str]) -> None:
    """Write the page (creating its folder) and print it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---------------------------------------------------------------- the cluster
def new_state_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def start_real_node_cluster(state: Path, refs: dict[str, str] | None = None, drop: Iterable[str] = (),
                            **kwargs: Any) -> tuple[Any, dict[str, str]]:
    """The test cluster with the real node and the project's images (or `refs`) pulled onto it,
    the images `drop` names removed from it first: (cluster, {"operator", "worker", "triton"}
    -> image reference)."""
    from kubetest import imagebuild

    log(f"starting the test cluster in {state}")
    return imagebuild.real_node_cluster(state, refs, drop, **kwargs)


def start_kwok_cluster(state: Path, pools: tuple[Any, ...]) -> Any:
    """A cluster with only KWOK node pools: no real node (no kubelet, containerd or pods run), and
    a service range for 65,534 Services."""
    from kubetest.cluster import KWOK_SERVICE_CIDR, Cluster

    nodes = sum(p.count for p in pools)
    names = "/".join(p.name for p in pools)
    log(f"starting the test cluster ({nodes} KWOK {names} nodes, no local runner) in {state}")
    return Cluster(state, pools=pools, real_node=False, service_cidr=KWOK_SERVICE_CIDR).start()


@dataclass(frozen=True)
class Clients:
    api: Any  # kubernetes.client.ApiClient
    custom: Any  # CustomObjectsApi
    core: Any  # CoreV1Api


def connect(cluster: Any, pool_maxsize: int | None = None) -> Clients:
    """Python clients for the cluster; pool_maxsize widens the connection pool (many objects)."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    if pool_maxsize is not None:
        api.configuration.connection_pool_maxsize = pool_maxsize
    return Clients(api, client.CustomObjectsApi(api), client.CoreV1Api(api))


def install_crds(cluster: Any, timeout_s: int = 60, tree: Path = REPO) -> None:
    """Apply the CRDs of this repository (or of the checkout `tree`) and wait until the API
    server serves them (Established)."""
    crds = str(tree / "crds")
    deadline = time.monotonic() + timeout_s
    for args in (("apply", "--server-side", "-f", crds), ("wait", "--for", "condition=Established", "--timeout", f"{timeout_s}s", "-f", crds)):
        while True:
            done = cluster.kubectl(*args, check=False, timeout=timeout_s + 30)
            # A CRD read before the API server gave it any condition makes `kubectl wait` fail
            # at once ("status.conditions accessor error") instead of waiting: ask again.
            if done.returncode == 0 or "accessor error" not in done.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {args[0]} of {crds} exited {done.returncode}: {(done.stdout + done.stderr).strip()[-1000:]}")


def make_namespace(core: Any, name: str) -> None:
    """Create the namespace and wait for its default ServiceAccount (pods need it)."""
    from kubernetes import client

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout=30, ignore=(Exception,))


def put_digits_claims(core: Any, namespace: str, state: Path, store: bool = True) -> None:
    """The models claim with the digits example trained into it, and (store) the artifact
    store's claim."""
    use_paths("tests/e2e/operator")
    import md_helpers as h

    models = h.make_claim(core, namespace, h.MODELS_CLAIM)
    if store:
        h.make_claim(core, namespace, h.STORE_CLAIM)
    log("training the digits example")
    h.put_digits(models, state)


# ---------------------------------------------------------------- the operator as a process
def write_config(state: Path, conf: Mapping[str, Any]) -> Path:
    """The operator's config file, state/operator.yaml."""
    cfg = state / "operator.yaml"
    cfg.write_text(yaml.safe_dump(dict(conf)))
    return cfg


def operator_env(kubeconfig: Path, extra: Mapping[str, str], clean: bool = False) -> dict[str, str]:
    """This process's environment, KUBECONFIG and `extra`; clean drops every MODEL_OPERATOR_*
    variable first (the chart's defaults, whatever the caller's shell set)."""
    env = {k: v for k, v in os.environ.items() if not (clean and k.startswith("MODEL_OPERATOR_"))}
    return {**env, "KUBECONFIG": str(kubeconfig), **extra}


@contextmanager
def run_operator(state: Path, cfg: Path, env: Mapping[str, str], args: Iterable[str] = (), liveness_port: int | None = None,
                 stop_timeout: float = 30) -> Iterator[subprocess.Popen]:
    """`model-operator run --config cfg [args]` as a process, its output appended to
    state/operator.log; terminated (and waited for) when the block ends. liveness_port None:
    a free port; 0: the kernel's pick at bind time."""
    port = free_port() if liveness_port is None else liveness_port
    argv = [sys.executable, "-m", "model_operator.cli", "run", "--config", str(cfg), *args, "--liveness", f"http://127.0.0.1:{port}/healthz"]
    with open(state / "operator.log", "a") as op_log:
        op = subprocess.Popen(argv, env=dict(env), stdout=op_log, stderr=subprocess.STDOUT)
    try:
        yield op
    finally:
        op.terminate()
        op.wait(timeout=stop_timeout)
