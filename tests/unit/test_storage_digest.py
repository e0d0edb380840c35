"""The artifact digest as docs/contracts.md defines it, and its verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from model_operator.storage import IntegrityError, artifact_digest, file_digests, verify_dir
from model_operator.storage.digest import digest_of


def _artifact(root: Path) -> Path:
    (root / "repository/m/1").mkdir(parents=True)
    (root / "repository/m/config.pbtxt").write_text('name: "m"\n')
    (root / "repository/m/1/model.onnx").write_bytes(b"\x08\x07onnx")
    (root / "golden.npz").write_bytes(b"golden")
    (root / "report.json").write_text("{}")
    return root


def test_digest_matches_the_contract(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    lines = []
    for rel in ["golden.npz", "repository/m/1/model.onnx", "repository/m/config.pbtxt"]:
        lines.append(f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}\n")
    expected = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    assert artifact_digest(root) == expected
    assert set(file_digests(root)) == {"golden.npz", "repository/m/1/model.onnx", "repository/m/config.pbtxt"}


def test_report_and_marker_do_not_count(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    before = artifact_digest(root)
    (root / "report.json").write_text('{"changed": true}')
    (root / "COMPLETE").write_text("{}")
    assert artifact_digest(root) == before
    # ... but a nested file called report.json does.
    (root / "repository/report.json").write_text("x")
    assert artifact_digest(root) != before


def test_digest_of_is_order_independent() -> None:
    a = {"x": "1" * 64, "y": "2" * 64}
    assert digest_of(a) == digest_of(dict(reversed(list(a.items()))))


def test_verify(tmp_path: Path) -> None:
    root = _artifact(tmp_path)
    with pytest.raises(IntegrityError, match="no COMPLETE"):
        verify_dir(root)
    digest = artifact_digest(root)
    (root / "COMPLETE").write_text(json.dumps({"sha256": digest, "specHash": "abc"}))
    assert verify_dir(root) == digest
    assert verify_dir(root, digest) == digest
    with pytest.raises(IntegrityError, match="expected"):
        verify_dir(root, "0" * 64)
    (root / "golden.npz").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="digest mismatch"):
        verify_dir(root)
