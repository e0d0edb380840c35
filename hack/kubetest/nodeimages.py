"""The two images the real node needs and no registry can give here: ``pause`` and ``busybox``.

No container registry is reachable from these machines, so the node's sandbox image and a
small image for tests are made locally and imported into containerd:

* ``pause``: a few lines of C (sleep until SIGTERM/SIGINT, reap children), compiled with the
  machine's gcc as a static binary; the image holds nothing else.
* ``busybox``: Debian's static busybox (``busybox-static``) with a link per applet in
  ``/bin``, and ``/etc/passwd``/``/etc/group`` naming root and user 1000.

Each is written as an OCI image-layout archive (``oci-layout``, ``index.json``,
``blobs/sha256/...``: one uncompressed layer, a config, a manifest) by ``oci_archive`` below,
with fixed timestamps, so the same inputs give the same digests. Archives are cached in
``$MODEL_OPERATOR_CACHE/node-images/``; ``ctr images import`` loads them (``import_image``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import binaries

PAUSE_REPO = "localhost/model-operator/pause"
BUSYBOX_REPO = "localhost/model-operator/busybox"

_PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


class ImageBuildError(RuntimeError):
    pass


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class FileEntry:
    """One entry of a layer: a regular file (``data``), a directory or a symlink (``link``)."""

    path: str
    mode: int = 0o755
    data: Optional[bytes] = None
    link: Optional[str] = None
    directory: bool = False


def _layer(entries: list[FileEntry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path.lstrip("/"))
            info.mtime = 0
            info.mode = e.mode
            if e.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                info.mode = 0o777
                tar.addfile(info)
            else:
                data = e.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def oci_archive(name: str, entries: list[FileEntry], config: dict, out: Path) -> str:
    """Write an OCI image-layout tar with one layer to ``out``; return the manifest digest.

    ``name`` (a full reference such as ``localhost/x/y:tag``) is recorded in the index as
    ``io.containerd.image.name`` (what ``ctr images import`` names the image by) and the tag
    as ``org.opencontainers.image.ref.name``.
    """
    layer = _layer(entries)
    layer_digest, layer_size = _blob(layer)
    cfg = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": _arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kubetest.nodeimages"}],
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    cfg_digest, cfg_size = _blob(cfg_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }
    man_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    man_digest, man_size = _blob(man_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest,
            "size": man_size,
            "platform": {"architecture": _arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
        }],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in ((layer_digest, layer), (cfg_digest, cfg_bytes), (man_digest, man_bytes)):
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return man_digest


def _cache() -> Path:
    return binaries.cache_dir() / "node-images"


def _tag(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]


def pause_image() -> tuple[str, Path]:
    """(reference, OCI archive) of the static pause image; built once per source."""
    tag = _tag(_PAUSE_C.encode(), _arch().encode())
    ref = f"{PAUSE_REPO}:{tag}"
    out = _cache() / f"pause-{tag}.tar"
    if out.exists():
        return ref, out
    gcc = shutil.which("gcc")
    if not gcc:
        raise ImageBuildError("gcc is needed to build the pause image (hack/install.sh installs it)")
    work = _cache() / f"pause-{tag}.build"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pause.c").write_text(_PAUSE_C)
    r = subprocess.run([gcc, "-static", "-Os", "-s", "-o", str(work / "pause"), str(work / "pause.c")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageBuildError(f"gcc -static pause.c failed (libc6-dev missing?): {r.stderr.strip()}")
    entries = [FileEntry("pause", 0o755, data=(work / "pause").read_bytes())]
    oci_archive(ref, entries, {"Entrypoint": ["/pause"], "User": "65535:65535"}, out)
    shutil.rmtree(work, ignore_errors=True)
    return ref, out


def _busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ImageBuildError("no static busybox (Debian package busybox-static; hack/install.sh installs it)")


def busybox_image() -> tuple[str, Path]:
    """(reference, OCI archive) of the busybox test image (Debian's static busybox)."""
    binary = _busybox_binary()
    data = binary.read_bytes()
    if b"ld-linux" in data[:4096] or b"/lib64/ld" in data[:4096]:
        raise ImageBuildError(f"{binary} is dynamically linked; install busybox-static")
    tag = _tag(data, b"v1")
    ref = f"{BUSYBOX_REPO}:{tag}"
    out = _cache() / f"busybox-{tag}.tar"
    if out.exists():
        return ref, out
    applets = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [FileEntry(d, 0o755, directory=True) for d in ("bin", "etc", "proc", "sys", "dev", "root", "home")]
    entries += [FileEntry("tmp", 0o1777, directory=True), FileEntry("bin/busybox", 0o755, data=data)]
    entries += [FileEntry(f"bin/{a}", link="busybox") for a in applets if a != "busybox" and "/" not in a]
    entries += [
        FileEntry("etc/passwd", 0o644, data=b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home:/bin/sh\n"
                                              b"nobody:x:65534:65534:nobody:/:/bin/false\n"),
        FileEntry("etc/group", 0o644, data=b"root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"),
    ]
    config = {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}
    oci_archive(ref, entries, config, out)
    return ref, out


def import_image(ctr: list[str], ref: str, archive: Path, snapshotter: str = "overlayfs") -> None:
    """Import ``archive`` into containerd's ``k8s.io`` namespace (the CRI's) unless an image
    named ``ref`` is there already. ``ctr`` is the ctr command with its ``--address``."""
    listed = subprocess.run([*ctr, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, timeout=60)
    if ref in listed.stdout.split():
        return
    r = subprocess.run([*ctr, "-n", "k8s.io", "images", "import", f"--snapshotter={snapshotter}", str(archive)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise ImageBuildError(f"ctr images import {archive} failed: {r.stderr.strip() or r.stdout.strip()}")
