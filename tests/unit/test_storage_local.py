"""Local/PVC stores: fetch in place, publish all-or-nothing with COMPLETE last, delete, list."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from model_operator.storage import (
    InvalidUriError,
    NotFoundError,
    StorageError,
    artifact_digest,
    delete_prefix,
    fetch,
    list_artifact,
    publish_dir,
    verify,
)
from model_operator.storage import publish as publish_mod


def _staged(root: Path, payload: bytes = b"model") -> Path:
    (root / "repository/m/1").mkdir(parents=True)
    (root / "repository/m/1/model.onnx").write_bytes(payload)
    (root / "repository/m/config.pbtxt").write_text('name: "m"\n')
    (root / "report.json").write_text("{}")
    (root / "COMPLETE").write_text(json.dumps({"sha256": artifact_digest(root)}))
    return root


def test_fetch_local_in_place(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    assert fetch(str(f), tmp_path / "dl") == f
    assert fetch("m.onnx", tmp_path / "dl", base_dir=tmp_path) == f
    assert fetch(f"file://{f}", tmp_path / "dl") == f


def test_fetch_missing_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as exc:
        fetch(str(tmp_path / "nope.onnx"), tmp_path)
    assert str(exc.value) == f"{tmp_path / 'nope.onnx'}: no such file"


def test_fetch_pvc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_OPERATOR_PVC_ROOT", str(tmp_path))
    (tmp_path / "claim/d").mkdir(parents=True)
    (tmp_path / "claim/d/m.pt").write_bytes(b"x")
    assert fetch("pvc://claim/d/m.pt", tmp_path / "dl") == tmp_path / "claim/d/m.pt"
    with pytest.raises(InvalidUriError, match="'..'"):
        fetch("pvc://claim/../claim/d/m.pt", tmp_path / "dl")


def test_publish_local(tmp_path: Path) -> None:
    src = _staged(tmp_path / "src")
    dest = tmp_path / "store/ns/m/abc"
    assert publish_dir(src, str(dest)) == str(dest)
    assert list_artifact(str(dest)) == ["COMPLETE", "report.json", "repository/m/1/model.onnx", "repository/m/config.pbtxt"]
    # COMPLETE is the last file written.
    mtimes = {p: (dest / p).stat().st_mtime_ns for p in list_artifact(str(dest))}
    assert mtimes["COMPLETE"] == max(mtimes.values())
    assert verify(str(dest)) == artifact_digest(src)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no temporary siblings left"


def test_publish_replaces_a_previous_artifact(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    publish_dir(_staged(tmp_path / "a", b"first"), str(dest))
    (dest / "stale.txt").write_text("old")
    publish_dir(_staged(tmp_path / "b", b"second"), str(dest))
    assert (dest / "repository/m/1/model.onnx").read_bytes() == b"second"
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_publish_refuses_without_marker(tmp_path: Path) -> None:
    src = _staged(tmp_path / "src")
    (src / "COMPLETE").unlink()
    with pytest.raises(StorageError, match="without COMPLETE"):
        publish_dir(src, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_publish_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _staged(tmp_path / "src")
    dest = tmp_path / "out"
    publish_dir(_staged(tmp_path / "prev", b"previous"), str(dest))

    def boom(a: os.PathLike, b: os.PathLike) -> None:
        if ".partial-" in str(a):
            raise OSError(28, "No space left on device")
        os.replace(a, b)

    monkeypatch.setattr(publish_mod.os, "rename", boom)
    with pytest.raises(StorageError) as exc:
        publish_dir(src, str(dest))
    assert str(exc.value).startswith(f"{dest}: cannot write")
    # The previous artifact is back in place and no temporary sibling remains.
    assert (dest / "repository/m/1/model.onnx").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "prev", "src"]


def test_delete_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_OPERATOR_PVC_ROOT", str(tmp_path))
    publish_dir(_staged(tmp_path / "src"), "pvc://store/ns/m/abc")
    assert delete_prefix("pvc://store/ns/m") == 4
    assert not (tmp_path / "store/ns/m").exists()
    assert delete_prefix("pvc://store/ns/m") == 0, "deleting twice is fine"
    with pytest.raises(InvalidUriError, match="root"):
        delete_prefix("pvc://store")
    with pytest.raises(InvalidUriError, match="root"):
        delete_prefix("/")


def test_delete_prefix_keeping_the_root_empties_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleanup Job mounts only <ns>/<md> (a sub-path): it empties the directory and leaves it."""
    monkeypatch.setenv("MODEL_OPERATOR_PVC_ROOT", str(tmp_path))
    publish_dir(_staged(tmp_path / "src"), "pvc://store/ns/m/abc")
    publish_dir(_staged(tmp_path / "src2"), "pvc://store/ns/m/def")
    (tmp_path / "store/ns/m/stray.txt").write_text("x")
    (tmp_path / "store/ns/m/link").symlink_to(tmp_path / "src")
    (tmp_path / "store/ns/other").mkdir()
    assert delete_prefix("pvc://store/ns/m", keep_root=True) == 9  # 4 + 4 + the stray file; the link is not a file
    assert (tmp_path / "store/ns/m").is_dir() and not list((tmp_path / "store/ns/m").iterdir())
    assert (tmp_path / "src").is_dir() and list((tmp_path / "src").iterdir()), "a symlink is removed, not followed"
    assert (tmp_path / "store/ns/other").is_dir()
    assert delete_prefix("pvc://store/ns/m", keep_root=True) == 0
