"""Preparing the wheel's Triton tree and mapping image commands to it (no server started)."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

from model_operator.triton.server import (
    TritonInstall,
    TritonServer,
    prepare_triton,
    python_libdir,
)


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> TritonInstall:
    return prepare_triton(tmp_path_factory.mktemp("cache"))


def test_prepared_tree_has_binary_and_stub(install: TritonInstall) -> None:
    assert install.binary.is_file() and os.access(install.binary, os.X_OK)
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert (install.backend_dir / "python" / "libtriton_python.so").is_file()
    assert install.root.name.startswith("tritonserver-") and install.root.name.endswith(
        f"-py{sysconfig.get_python_version()}"
    )


def test_prepare_is_idempotent(install: TritonInstall) -> None:
    marker = install.root / "marker"
    marker.write_text("kept")
    again = prepare_triton(install.root.parent)
    assert again.root == install.root and marker.exists()
    marker.unlink()


def test_env_puts_our_libpython_first(install: TritonInstall) -> None:
    ld = install.env["LD_LIBRARY_PATH"].split(os.pathsep)
    libdir = python_libdir()
    assert libdir is not None, "tests need a Python built with a shared libpython"
    assert ld[0] == str(libdir)
    assert any(p.endswith("nvidia_pytriton.libs") for p in ld)
    assert any("site-packages" in p for p in install.env["PYTHONPATH"].split(os.pathsep))
    merged = install.server_env({"LD_LIBRARY_PATH": "/x", "PATH": "/bin"})
    assert merged["LD_LIBRARY_PATH"].endswith(":/x") and merged["PATH"] == "/bin"


def test_server_command_flags(install: TritonInstall, tmp_path: Path) -> None:
    server = TritonServer(tmp_path, host="127.0.0.1", http_port=1, grpc_port=2, metrics_port=3,
                          model_control_mode="explicit", load_models=["a"], install=install)
    cmd = server.command()
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--http-port=1", "--grpc-port=2", "--metrics-port=3", "--strict-readiness=true",
                 "--model-control-mode=explicit", "--load-model=a", f"--model-repository={tmp_path.resolve()}"):
        assert flag in cmd
    assert server.http_url == "http://127.0.0.1:1" and server.grpc_endpoint == "127.0.0.1:2"
    assert server.metrics_url == "http://127.0.0.1:3/metrics"
    with pytest.raises(ValueError):
        TritonServer(tmp_path, model_control_mode="sometimes")
