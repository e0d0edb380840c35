"""The container images hack/build-images.sh builds, named by a content hash of their inputs.

Three images, all running as UID 1000, pushed to the local registry (kubetest.registry):

    <registry>/model-operator:<app hash>          the Dockerfile's `operator` target
    <registry>/model-operator-worker:<app hash>   the Dockerfile's `worker` target
    <registry>/tritonserver-test:<triton hash>    hack/images/triton/ (Triton from nvidia-pytriton)

All three are built on a Debian base made by mmdebstrap from hack/images/base/packages; it is
tagged `localhost/model-operator-base:<base hash>` in buildah's storage only (never pushed).

Hashes (first 16 hex digits of a SHA-256 over file names and contents):
- base: hack/images/base/
- app: the base hash, Dockerfile, .dockerignore, pyproject.toml, README.md and operator/
  (what the build context holds, without __pycache__/*.pyc/*.egg-info)
- triton: the base hash and hack/images/triton/

hack/build-images.sh asks this module for the hashes (`python3 hack/kubetest/imagebuild.py plan`)
and records what it pushed in $MODEL_OPERATOR_CACHE/images/images.json; tests call
`built_images()`, which fails with a message naming the script when that file is missing or
was written for other inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = "hack/build-images.sh"
NAMES = {"operator": "model-operator", "worker": "model-operator-worker", "triton": "tritonserver-test"}
BASE_NAME = "localhost/model-operator-base"
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


class ImagesStale(RuntimeError):
    """images.json is missing or names images built from other inputs."""


def cache_dir() -> Path:
    value = os.environ.get("MODEL_OPERATOR_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "model-operator"


def images_file() -> Path:
    return cache_dir() / "images" / "images.json"


def buildah_argv() -> list[str]:
    """`buildah` with the storage the build script uses ($MODEL_OPERATOR_CACHE/containers)."""
    root = cache_dir() / "containers"
    return ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "overlay"]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.endswith(_SKIP_SUFFIXES)]
    return out


def _digest(parts: list[str], paths: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(f"{part}\n".encode())
    for rel in paths:
        for f in _files(REPO / rel):
            h.update(f"{f.relative_to(REPO)}\n".encode())
            h.update(hashlib.sha256(f.read_bytes()).hexdigest().encode())
    return h.hexdigest()[:16]


def input_hashes() -> dict[str, str]:
    """{"base", "app", "triton"}: the content hash of each image's inputs."""
    base = _digest([], ["hack/images/base"])
    app = _digest([base], ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "operator"])
    triton = _digest([base], ["hack/images/triton"])
    return {"base": base, "app": app, "triton": triton}


def expected_refs(registry: str) -> dict[str, str]:
    """{"operator", "worker", "triton"}: the references the current inputs give in `registry`."""
    h = input_hashes()
    return {
        "operator": f"{registry}/{NAMES['operator']}:{h['app']}",
        "worker": f"{registry}/{NAMES['worker']}:{h['app']}",
        "triton": f"{registry}/{NAMES['triton']}:{h['triton']}",
    }


def _by_inputs_file() -> Path:
    """Where the images built from the current inputs are recorded besides images.json, so
    checkouts with different sources on one machine (git worktrees) don't overwrite each other."""
    h = input_hashes()
    return images_file().parent / "by-inputs" / f"{h['app']}-{h['triton']}.json"


def recorded() -> dict[str, str] | None:
    """What was built from the current inputs, else the content of images.json (None when
    neither exists)."""
    for path in (_by_inputs_file(), images_file()):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            continue
    return None


def built_images() -> dict[str, str]:
    """The pushed images ({"operator", "worker", "triton"} -> reference), checked current.

    Raises ImagesStale, naming hack/build-images.sh, when they were never built or were built
    from other inputs than the working tree's."""
    data = recorded()
    if data is None:
        raise ImagesStale(f"no images built yet ({images_file()} is missing): run {BUILD_SCRIPT}")
    registry = data.get("operator", "").split("/", 1)[0]
    want = expected_refs(registry)
    stale = sorted(k for k in want if data.get(k) != want[k])
    if stale:
        detail = ", ".join(f"{k}: built {data.get(k)}, inputs give {want[k]}" for k in stale)
        raise ImagesStale(f"the images are stale ({detail}): run {BUILD_SCRIPT}")
    return {k: data[k] for k in want}


def write(refs: dict[str, str]) -> Path:
    text = json.dumps(refs, indent=2, sort_keys=True) + "\n"
    for path in (_by_inputs_file(), images_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return images_file()


_PIP_KEYS = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries", "proxy", "cert"}
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pip_build_config() -> tuple[str, Path]:
    """(a pip.conf for pip inside the builds, the host's CA bundle).

    Made from this machine's pip configuration (`pip config list`: files and PIP_* variables),
    so pip in a build reaches the package index as the host's does. Only the keys that say how to
    reach an index are kept (host paths such as find-links are not); `cert` is rewritten to
    /etc/ssl/certs/ca-certificates.crt, where the build mounts the host's bundle. Both files
    are mounted read-only into the build's RUN steps, never copied into a layer."""
    import ast
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    ca = None
    for line in out.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        section, _, name = key.rpartition(".")
        section = "global" if section in (":env:", "") else section
        value = str(ast.literal_eval(raw))
        if name not in _PIP_KEYS:
            continue
        if name == "cert":
            ca = ca or value
            value = IMAGE_CA_BUNDLE
        sections.setdefault(section, {})[name] = value
    ca = ca or os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE") or IMAGE_CA_BUNDLE
    sections.setdefault("global", {})["cert"] = IMAGE_CA_BUNDLE
    text = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for sec, kv in sections.items())
    return text, Path(ca)


def main(argv: list[str]) -> int:
    """`plan`: shell assignments for the build script; `pipconf FILE`: write the builds' pip.conf
    and print the host CA bundle; `write k=v...`: record images.json."""
    if argv[:1] == ["pipconf"] and len(argv) == 2:
        text, ca = pip_build_config()
        Path(argv[1]).write_text(text)
        print(ca)
        return 0
    if argv[:1] == ["plan"]:
        for key, value in input_hashes().items():
            print(f"{key.upper()}_HASH={value}")
        return 0
    if argv[:1] == ["write"]:
        print(write(dict(a.split("=", 1) for a in argv[1:])))
        return 0
    print("usage: imagebuild.py plan | write operator=REF worker=REF triton=REF", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def real_node_cluster(state_dir: Path, refs: dict[str, str] | None = None, drop: Iterable[str] = (),
                      **kwargs: Any) -> tuple[Any, dict[str, str]]:
    """A started cluster whose real node pulls from the local registry, with the project's
    current images (or `refs`, e.g. another checkout's) pulled onto it, after removing the
    images `drop` names from the node (disk): (cluster, {"operator", "worker", "triton"} ->
    reference). Stopped again when a pull fails. For benchmarks and scripts; the pytest
    fixtures do the same in steps."""
    from . import registry
    from .cluster import Cluster

    refs = refs or built_images()
    host = registry.ensure_running()
    cluster = Cluster(state_dir, real_node=True, registries={host: f"http://{host}"}, startup_timeout=180, **kwargs).start()
    try:
        for ref in set(drop) - set(refs.values()):
            cluster.remove_image(ref)
        for ref in refs.values():
            cluster.pull(ref)
    except BaseException:
        cluster.stop()
        raise
    return cluster, refs
