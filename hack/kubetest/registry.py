"""The local OCI registry the built images are pushed to and pulled from.

Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, plain HTTP, no auth, port
$MODEL_OPERATOR_REGISTRY_PORT (default 5000), storage under $MODEL_OPERATOR_CACHE/registry
(kept between runs: that is the image cache). State in $MODEL_OPERATOR_CACHE/registry-run/
(config.yml, registry.pid, registry.log).

    ensure_running() -> "127.0.0.1:5000"   start it unless it already answers; idempotent
    stop()                                 stop the registry this module started
    has(ref) -> bool                       is this tag in the registry

Usable from the shell: `python3 hack/kubetest/registry.py start|stop|address|has REF...`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
PORT_ENV = "MODEL_OPERATOR_REGISTRY_PORT"
BINARY = "docker-registry"
START_TIMEOUT_S = 30.0


class RegistryError(RuntimeError):
    pass


def _cache() -> Path:
    value = os.environ.get("MODEL_OPERATOR_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "model-operator"


def port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def address() -> str:
    return f"{HOST}:{port()}"


def storage_dir() -> Path:
    return _cache() / "registry"


def run_dir() -> Path:
    return _cache() / "registry-run"


def pid_file() -> Path:
    return run_dir() / "registry.pid"


def answers(timeout: float = 2.0) -> bool:
    """True when a registry answers the v2 API on address()."""
    try:
        with urllib.request.urlopen(f"http://{address()}/v2/", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def has(ref: str) -> bool:
    """True when the registry in `ref` (host:port/repo:tag) has that tag."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _config() -> str:
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage_dir()}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {address()}
"""


def _pid() -> int | None:
    try:
        pid = int(pid_file().read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def ensure_running() -> str:
    """Start the registry unless one answers on address(); return address()."""
    if answers():
        return address()
    binary = shutil.which(BINARY)
    if binary is None:
        raise RegistryError(f"{BINARY} is not installed (Debian package docker-registry; hack/install.sh installs it)")
    pid = _pid()
    if pid is not None:  # ours, but not answering: restart it
        stop()
    run_dir().mkdir(parents=True, exist_ok=True)
    storage_dir().mkdir(parents=True, exist_ok=True)
    config = run_dir() / "config.yml"
    config.write_text(_config())
    with open(run_dir() / "registry.log", "ab") as logf:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the caller (pytest, the build script)
        )
    pid_file().write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (run_dir() / "registry.log").read_text(errors="replace")[-2000:]
            raise RegistryError(f"{BINARY} exited with {proc.returncode}: {log}")
        if answers(timeout=0.5):
            return address()
        time.sleep(0.1)
    raise RegistryError(f"{BINARY} did not answer on {address()} within {START_TIMEOUT_S:.0f} s")


def stop() -> None:
    """Stop the registry started by ensure_running() (its pid file); the storage stays."""
    pid = _pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    pid_file().unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        print(ensure_running())
    elif argv[:1] == ["stop"]:
        stop()
    elif argv[:1] == ["address"]:
        print(address())
    elif argv[:1] == ["has"] and len(argv) >= 2:
        return 0 if all(has(ref) for ref in argv[1:]) else 1
    else:
        print("usage: registry.py start|stop|address|has REF...", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
