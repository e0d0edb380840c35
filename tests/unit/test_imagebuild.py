"""kubetest.imagebuild: the image tags follow their inputs, and a missing or stale images.json
fails with a message naming hack/build-images.sh."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubetest import imagebuild

REPO = Path(__file__).resolve().parents[2]


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


@pytest.fixture()
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "operator", root / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "hack" / "images", root / "hack" / "images")
    monkeypatch.setattr(imagebuild, "REPO", root)
    monkeypatch.setenv("MODEL_OPERATOR_CACHE", str(tmp_path / "cache"))
    return root


def test_hashes_follow_their_inputs(tree: Path) -> None:
    before = imagebuild.input_hashes()
    assert before == imagebuild.input_hashes()

    (tree / "operator" / "model_operator" / "__pycache__").mkdir(exist_ok=True)
    (tree / "operator" / "model_operator" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"noise")
    assert imagebuild.input_hashes() == before, "bytecode is not an input"

    _append(tree / "operator" / "model_operator" / "__init__.py", "# changed\n")
    source = imagebuild.input_hashes()
    assert source["app"] != before["app"] and source["triton"] == before["triton"] and source["base"] == before["base"]

    _append(tree / "hack" / "images" / "triton" / "Containerfile", "# changed\n")
    triton = imagebuild.input_hashes()
    assert triton["triton"] != source["triton"] and triton["app"] == source["app"]

    _append(tree / "hack" / "images" / "base" / "packages", "curl\n")
    base = imagebuild.input_hashes()
    assert all(base[k] != triton[k] for k in ("base", "app", "triton")), "every image is built on the base"


def test_built_images_is_checked_against_the_inputs(tree: Path) -> None:
    with pytest.raises(imagebuild.ImagesStale, match="hack/build-images.sh"):
        imagebuild.built_images()
    refs = imagebuild.expected_refs("127.0.0.1:5000")
    assert refs["operator"].startswith("127.0.0.1:5000/model-operator:")
    assert refs["worker"].startswith("127.0.0.1:5000/model-operator-worker:")
    assert refs["triton"].startswith("127.0.0.1:5000/tritonserver-test:")
    imagebuild.write(refs)
    assert imagebuild.built_images() == refs

    _append(tree / "pyproject.toml", "# changed\n")
    with pytest.raises(imagebuild.ImagesStale, match=r"operator: built .* inputs give .*hack/build-images.sh"):
        imagebuild.built_images()
