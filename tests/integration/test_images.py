"""The container images hack/build-images.sh builds, as a cluster pulls them from the registry.

- they are current (tagged with the hash of today's inputs) and in the local registry;
- each image's configured user is 1000:1000 and its entrypoint is the one the pods rely on;
- the operator image carries no torch, ONNX Runtime or NVIDIA packages; the worker image carries
  every package of the [worker] extra and `model-operator optimize --help` runs in it;
- the Triton image serves a Python-backend ONNX model the way a restricted pod runs it: read-only
  root filesystem, UID/GID 1000, no capabilities, no_new_privs, a tmpfs on /tmp (the pods'
  emptyDir) and the model repository mounted read-only on /models.

How the containers run: the image is pulled from the registry into buildah's storage
(`buildah from`, layers already there are reused) and its root filesystem mounted
(`buildah mount`). Package checks use `buildah run --network none` (as the image's user). The
Triton check builds an OCI bundle on that mounted root and starts it with `runc` directly, with a
config written here: that is the runtime containerd uses under a kubelet, and the bundle states
every restriction explicitly (`root.readonly`, `process.user`, empty capability sets,
`noNewPrivileges`), so the test proves the image works under them. It keeps the host's network
namespace so Triton's HTTP port on 127.0.0.1 is reachable from the test; runc state lives in a
temporary directory, so no containerd is involved.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kubetest import registry
from kubetest.binaries import unavailable
from kubetest.imagebuild import ImagesStale, buildah_argv, built_images, expected_refs
from kubetest.wait import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
ML_PACKAGES = re.compile(r"^(torch|onnxruntime.*|nvidia-.*|triton|onnx)$")


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    for tool in ("buildah", "runc", "docker-registry"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed: run hack/install.sh")
    try:
        refs = built_images()
    except ImagesStale as exc:
        unavailable(str(exc))
    registry.ensure_running()
    return refs


def _get(url: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def manifest(ref: str) -> dict:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return json.loads(_get(f"http://{host}/v2/{repo}/manifests/{tag}", MANIFEST_TYPES))


def image_config(ref: str) -> dict:
    host, _, rest = ref.partition("/")
    repo = rest.rpartition(":")[0]
    digest = manifest(ref)["config"]["digest"]
    return json.loads(_get(f"http://{host}/v2/{repo}/blobs/{digest}"))["config"]


def buildah(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*buildah_argv(), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def container(ref: str) -> Iterator[str]:
    """A working container of `ref` pulled from the registry (buildah from), removed afterwards."""
    name = f"mo-imagetest-{uuid.uuid4().hex[:8]}"
    buildah("from", "--tls-verify=false", "--quiet", "--name", name, f"docker://{ref}")
    try:
        yield name
    finally:
        buildah("rm", name, check=False)


def run_in(ctr: str, *argv: str) -> subprocess.CompletedProcess:
    return buildah("run", "--network", "none", ctr, "--", *argv, check=False, timeout=300)


DISTRIBUTIONS = "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))"


def test_images_are_current_and_in_the_registry(images: dict[str, str]) -> None:
    assert images == expected_refs(registry.address())
    sizes = {}
    for key, ref in images.items():
        m = manifest(ref)
        assert m["layers"], ref
        sizes[key] = sum(layer["size"] for layer in m["layers"])
    # The operator image is the small one: no torch, no CUDA libraries.
    assert sizes["operator"] < 700 * 2**20, sizes
    assert sizes["operator"] < sizes["triton"] < sizes["worker"], sizes


@pytest.mark.parametrize("key", ["operator", "worker", "triton"])
def test_every_image_runs_as_uid_1000(images: dict[str, str], key: str) -> None:
    config = image_config(images[key])
    assert config.get("User") == "1000:1000", config.get("User")
    env = dict(e.split("=", 1) for e in config.get("Env", []))
    assert env.get("HOME") == "/tmp"  # the pods' writable emptyDir


def test_entrypoints(images: dict[str, str]) -> None:
    operator = image_config(images["operator"])
    assert operator["Entrypoint"] == ["model-operator"]
    assert operator["Cmd"][0] == "run"
    assert "8080/tcp" in operator.get("ExposedPorts", {})
    worker = image_config(images["worker"])
    assert worker["Entrypoint"] == ["model-operator"]
    triton = image_config(images["triton"])
    assert triton["Entrypoint"] == ["/opt/tritonserver/bin/tritonserver"]
    # The pods' command is plain `tritonserver`: it must be on PATH, as in NVIDIA's image.
    path = dict(e.split("=", 1) for e in triton["Env"])["PATH"].split(":")
    assert "/opt/tritonserver/bin" in path


def test_operator_image_carries_no_ml_packages(images: dict[str, str]) -> None:
    with container(images["operator"]) as ctr:
        listed = run_in(ctr, "python", "-c", DISTRIBUTIONS)
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        assert "model-operator" in names and "kopf" in names
        assert not {n for n in names if ML_PACKAGES.match(n)}, sorted(names)
        who = run_in(ctr, "id", "-u")
        assert who.stdout.strip() == "1000", who
        helped = run_in(ctr, "model-operator", "run", "--help")
        assert helped.returncode == 0 and "usage" in helped.stdout.lower(), helped.stderr


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_worker_image_carries_the_worker_extra(images: dict[str, str]) -> None:
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", (REPO / "Dockerfile").read_text())
    assert pinned is not None, "the Dockerfile pins TORCH_VERSION"
    torch_pin = pinned.group(1)
    with container(images["worker"]) as ctr:
        listed = run_in(ctr, "python", "-c", DISTRIBUTIONS)
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        wanted = {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["worker"]}
        assert wanted <= names, sorted(wanted - names)
        torch = run_in(ctr, "python", "-c", "import torch, onnxruntime; print(torch.__version__)")
        assert torch.returncode == 0, torch.stderr
        assert torch.stdout.strip().split("+")[0] == torch_pin
        helped = run_in(ctr, "model-operator", "optimize", "--help")
        assert helped.returncode == 0, helped.stderr
        assert "--output" in helped.stdout


# --- Triton under runc --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _classifier(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def runc_config(rootfs: str, argv: list[str], env: list[str], models: Path, cgroup: str) -> dict:
    """An OCI runtime config with what a restricted pod gets: read-only root, UID/GID 1000, no
    capabilities, no_new_privs, /tmp as a tmpfs, the model repository read-only. The host's
    network namespace (the test reaches 127.0.0.1); its own PID, IPC, UTS and mount namespaces."""
    no_caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000]},
            "args": argv,
            "env": env,
            "cwd": "/tmp",
            "capabilities": no_caps,
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "tritonserver",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=256m"]},
            {"destination": "/models", "type": "bind", "source": str(models), "options": ["rbind", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": cgroup,
            "resources": {"memory": {"limit": 2 * 2**30}},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_triton_image_serves_read_only_as_uid_1000_without_capabilities(images: dict[str, str], tmp_path: Path) -> None:
    import onnxruntime as ort

    from model_operator.api.types import Serving, TensorSpec
    from model_operator.triton import client
    from model_operator.triton.repository import write_repository

    models = tmp_path / "models"
    onnx_file = _classifier(tmp_path / "clf.onnx")
    write_repository(models, "clf", onnx_file, artifact_format="onnx",
                     inputs=[TensorSpec(name="input", shape=[-1, 1, 8, 8])], outputs=[TensorSpec(name="logits", shape=[-1, 10])],
                     serving=Serving(max_batch_size=4, instance_count=1), target="edge", backend="python")
    os.chmod(tmp_path, 0o755)
    for p in models.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(models, 0o755)

    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    argv = ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--model-control-mode=none",
            "--exit-on-error=true", f"--http-port={http}", "--http-address=127.0.0.1", f"--grpc-port={grpc}",
            "--grpc-address=127.0.0.1", f"--metrics-port={metrics}", "--metrics-address=127.0.0.1", "--allow-metrics=true"]
    cid = f"mo-imagetest-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "runc"
    runc = ["runc", "--root", str(state)]
    with container(images["triton"]) as ctr:
        rootfs = buildah("mount", ctr).stdout.strip()
        env = image_config(images["triton"])["Env"]
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(runc_config(rootfs, argv, env, models, f"/{cid}"), indent=1))
        log = tmp_path / "triton.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*runc, "run", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            def up() -> bool:
                assert proc.poll() is None, f"runc exited {proc.returncode}: {log.read_text(errors='replace')[-3000:]}"
                return _ready(f"http://127.0.0.1:{http}/v2/health/ready")

            wait_for(up, timeout=180, interval=0.5, message="Triton in the image is ready on 127.0.0.1")

            # The server runs as 1000:1000 with no capabilities and no_new_privs.
            st = json.loads(subprocess.run([*runc, "state", cid], capture_output=True, text=True, check=True).stdout)
            status = Path(f"/proc/{st['pid']}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split() == ["1000"] * 4 and fields["Gid"].split() == ["1000"] * 4, status
            assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, status
            assert fields["NoNewPrivs"].strip() == "1"

            # The root filesystem is read-only; /tmp is writable.
            ro = subprocess.run([*runc, "exec", cid, "/bin/sh", "-c", "touch /opt/tritonserver/x"], capture_output=True, text=True)
            assert ro.returncode != 0 and "Read-only file system" in ro.stderr, ro
            rw = subprocess.run([*runc, "exec", cid, "/bin/sh", "-c", "touch /tmp/x && id -u"], capture_output=True, text=True)
            assert rw.returncode == 0 and rw.stdout.strip() == "1000", rw

            # It answers like ONNX Runtime on the host.
            x = np.random.default_rng(5).random((3, 1, 8, 8), dtype=np.float32)
            got = client.infer(f"127.0.0.1:{http}", "clf", {"input": x})["logits"]
            want = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        finally:
            subprocess.run([*runc, "kill", cid, "KILL"], capture_output=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            subprocess.run([*runc, "delete", "--force", cid], capture_output=True)
            buildah("umount", ctr, check=False)
