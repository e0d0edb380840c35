"""The Triton Inference Server binary that the `nvidia-pytriton` wheel ships, run on this machine.

The wheel carries a real Triton 2.51 (`pytriton/tritonserver/bin/tritonserver`) with the Python
backend only, and one Python-backend stub per Python minor version
(`pytriton/tritonserver/python_backend_stubs/3.X/triton_python_backend_stub`). Triton looks for
the stub next to the backend library, so `prepare_triton()` copies the wheel's `tritonserver/`
tree once into

    ${MODEL_OPERATOR_CACHE:-~/.cache/model-operator}/tritonserver-<wheel version>-py<3.X>/

with the stub of the running interpreter copied into `backends/python/` (the copy is made in a
temporary directory and renamed into place under a file lock, so concurrent callers are safe).

Environment the server needs (`TritonInstall.env`, merged into the caller's by `server_env`):
- `LD_LIBRARY_PATH`: the running interpreter's `LIBDIR` (its `libpython3.X.so.1.0`) first, then
  `<site-packages>/nvidia_pytriton.libs` (libtritonserver and its bundled dependencies; the
  binary's RPATH points there relative to the wheel, which the copy no longer is). The stub links
  `libpython3.X.so.1.0` by soname: without our LIBDIR first it may pick a system libpython whose
  site-packages lack numpy and onnxruntime. The interpreter therefore has to be built with a
  shared libpython (pyenv: `PYTHON_CONFIGURE_OPTS=--enable-shared`); `prepare_triton` says so
  when it is not.
- `PYTHONPATH`: this interpreter's site-packages (and a virtualenv's), so the stub's embedded
  interpreter imports the same numpy/onnxruntime as we do.

Flags: this Triton accepts `--http-address`, `--grpc-address` and `--metrics-address` (checked
against `tritonserver --help` of 2.51), besides the ports, `--strict-readiness`,
`--model-control-mode none|poll|explicit`, `--load-model`, `--exit-timeout-secs`, `--log-file`,
`--backend-directory`.

`TritonServer` runs one server: free ports by default, strict readiness, logs to a file, a
readiness wait with a deadline that fails fast with the log tail when the process exits, and a
clean stop (SIGTERM, then SIGKILL of its process group).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

DISTRIBUTION: Final = "nvidia-pytriton"
CACHE_ENV: Final = "MODEL_OPERATOR_CACHE"
MODEL_CONTROL_MODES: Final = ("none", "poll", "explicit")


class TritonError(RuntimeError):
    """The local Triton server could not be prepared, started or reached."""


class TritonNotInstalled(TritonError):
    pass


class TritonStartError(TritonError):
    pass


def cache_dir() -> Path:
    """`$MODEL_OPERATOR_CACHE`, default `~/.cache/model-operator`."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "model-operator"


def _py_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_tree() -> tuple[Path, Path, str]:
    """(the wheel's `tritonserver/` tree, its `nvidia_pytriton.libs` dir, the wheel version)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled("the local Triton server comes from the nvidia-pytriton wheel: pip install 'model-operator[triton]'")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    tree = pkg / "tritonserver"
    libs = pkg.parent / "nvidia_pytriton.libs"
    if not (tree / "bin" / "tritonserver").is_file():
        raise TritonNotInstalled(f"{tree}/bin/tritonserver is missing: reinstall nvidia-pytriton")
    return tree, libs, importlib.metadata.version(DISTRIBUTION)


def python_libdir() -> Path | None:
    """The directory of this interpreter's shared libpython, or None when it is built static."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{_py_version()}.so.1.0"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not (Path(libdir) / soname).exists():
        return None
    return Path(libdir)


def python_paths() -> list[str]:
    """Site-packages the stub's embedded interpreter must see (ours, a virtualenv's, the user's)."""
    paths: list[str] = []
    for p in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        if p and ("site-packages" in p or "dist-packages" in p) and os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


@dataclass(frozen=True)
class TritonInstall:
    """A prepared Triton tree and the environment additions it needs."""

    root: Path
    version: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.root / "backends"

    def server_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: os.environ) with LD_LIBRARY_PATH and PYTHONPATH prepended."""
        env = dict(os.environ if base is None else base)
        for key, value in self.env.items():
            old = env.get(key)
            env[key] = f"{value}{os.pathsep}{old}" if old else value
        return env


def prepare_triton(root: Path | None = None) -> TritonInstall:
    """Copy the wheel's Triton tree into the cache once (stub included); return it with its env."""
    tree, libs, version = wheel_tree()
    py = _py_version()
    stub = tree / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonNotInstalled(f"nvidia-pytriton {version} has no Python backend stub for Python {py}")
    base = Path(root) if root is not None else cache_dir()
    dest = base / f"tritonserver-{version}-py{py}"
    if not (dest / "backends" / "python" / "triton_python_backend_stub").is_file():
        base.mkdir(parents=True, exist_ok=True)
        with open(base / f".tritonserver-{version}-py{py}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (dest / "backends" / "python" / "triton_python_backend_stub").is_file():
                tmp = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=base))
                try:
                    shutil.copytree(
                        tree, tmp / "t", ignore=shutil.ignore_patterns("__pycache__", "python_backend_stubs")
                    )
                    shutil.copy2(stub, tmp / "t" / "backends" / "python" / "triton_python_backend_stub")
                    if dest.exists():
                        shutil.rmtree(dest)
                    os.rename(tmp / "t", dest)
                    log.info("prepared Triton from nvidia-pytriton %s (Python %s stub) in %s", version, py, dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    libpython = python_libdir()
    if libpython is None:
        log.warning(
            "this Python (%s) has no shared libpython: the Triton Python backend stub will load another "
            "libpython%s and may not find numpy/onnxruntime; build Python with --enable-shared",
            sys.executable,
            py,
        )
    ld = [str(p) for p in (libpython, libs) if p is not None]
    env = {"LD_LIBRARY_PATH": os.pathsep.join(ld), "PYTHONPATH": os.pathsep.join(python_paths())}
    return TritonInstall(root=dest, version=version, env=env)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


class TritonServer:
    """One local Triton server process on a model repository.

    ```
    with TritonServer(repo) as server:      # starts and waits for readiness
        server.http_url                      # http://127.0.0.1:<port>
    ```
    Ports default to free ones. `model_control_mode` is none (load everything), poll, or
    explicit (load `load_models`). Logs go to `log_file` (default: a temporary file, removed
    after a clean stop). GPU metrics (DCGM) are off unless `gpu_metrics`."""

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        strict_readiness: bool = True,
        log_file: Path | None = None,
        log_verbose: int = 0,
        exit_timeout_s: int = 5,
        gpu_metrics: bool = False,
        extra_args: Sequence[str] = (),
        install: TritonInstall | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {MODEL_CONTROL_MODES}")
        self.repository = Path(repository).resolve()
        self.host = host
        self._ports_given = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = (p or 0 for p in self._ports_given)
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.strict_readiness = strict_readiness
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self.gpu_metrics = gpu_metrics
        self.extra_args = list(extra_args)
        self._install = install
        self._env = env
        self._own_log = log_file is None
        self.log_file = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="triton-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    # --- addresses ---------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.http_port}"

    @property
    def http_endpoint(self) -> str:
        """host:port, what tritonclient.http takes."""
        return f"{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # --- lifecycle ---------------------------------------------------------------------
    def command(self) -> list[str]:
        install = self._install or prepare_triton()
        self._install = install
        args = [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--strict-readiness={'true' if self.strict_readiness else 'false'}",
            f"--model-control-mode={self.model_control_mode}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--allow-gpu-metrics={'true' if self.gpu_metrics else 'false'}",
            f"--log-verbose={self.log_verbose}",
        ]
        args += [f"--load-model={m}" for m in self.load_models]
        return args + self.extra_args

    def start(self) -> TritonServer:
        """Start the process (does not wait for readiness)."""
        if self.process is not None and self.process.poll() is None:
            raise TritonError("already running")
        if not self.repository.is_dir():
            raise TritonStartError(f"model repository {self.repository} does not exist")
        self.http_port, self.grpc_port, self.metrics_port = (
            given or free_port(self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1")
            for given in self._ports_given
        )
        cmd = self.command()
        assert self._install is not None
        env = self._install.server_env(self._env)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        log.info(
            "started Triton (pid %d) on %s: http %d, grpc %d, metrics %d; log %s",
            self.process.pid, self.repository, self.http_port, self.grpc_port, self.metrics_port, self.log_file,
        )
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> bool:
        """Wait until /v2/health/ready answers 200 (with strict readiness: every model loaded).
        Returns True when ready, False when `cancel` was set first. Raises TritonStartError with
        the log tail when the process exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if self.process is None:
                raise TritonStartError("not started")
            code = self.process.poll()
            if code is not None:
                raise TritonStartError(f"Triton exited with code {code} before it was ready:\n{self.log_tail()}")
            if self.is_ready():
                return True
            if time.monotonic() > deadline:
                raise TritonStartError(f"Triton was not ready after {timeout:.0f} s:\n{self.log_tail()}")
            if cancel is not None:
                if cancel.wait(delay):
                    return False
            else:
                time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def start_and_wait(self, timeout: float = 120.0, attempts: int = 3) -> TritonServer:
        """Start and wait for readiness; when ports were picked here and one was taken in the
        meantime, retry on new ports."""
        for attempt in range(attempts):
            self.start()
            try:
                self.wait_ready(timeout)
                return self
            except TritonStartError:
                in_use = "address already in use" in self.log_tail().lower()
                self.stop()
                if not (in_use and None in self._ports_given and attempt + 1 < attempts):
                    raise
                log.warning("a port was taken before Triton bound it; retrying on new ports")
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the process group. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("Triton (pid %d) did not stop within %.0f s; killing it", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Python-backend stubs are children in the same session; none may outlive the server.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._own_log and proc.returncode == 0:
            self.log_file.unlink(missing_ok=True)
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [ln for ln in text.splitlines() if not ln.startswith(("+--", "|  "))]
        return "\n".join(kept[-lines:])

    def __enter__(self) -> TritonServer:
        return self.start_and_wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
