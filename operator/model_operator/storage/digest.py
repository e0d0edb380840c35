"""The artifact digest (docs/contracts.md): sha256 of the sorted lines
`"<sha256-of-file>  <relative-path>\\n"` over every file under the artifact root except the
top-level `report.json` and `COMPLETE`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .errors import IntegrityError

MARKER: Final = "COMPLETE"
REPORT: Final = "report.json"
EXCLUDED: Final = frozenset({MARKER, REPORT})


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_files(root: Path | str) -> list[str]:
    """Relative POSIX paths of every regular file under `root`, sorted."""
    root = Path(root)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(out)


def file_digests(root: Path | str) -> dict[str, str]:
    """{relative path: sha256} of the files the digest covers."""
    root = Path(root)
    return {rel: file_sha256(root / rel) for rel in list_files(root) if rel not in EXCLUDED}


def digest_of(digests: Mapping[str, str]) -> str:
    """The artifact digest from {relative path: file sha256} (entries in EXCLUDED are ignored)."""
    lines = sorted(f"{sha}  {rel}\n" for rel, sha in digests.items() if rel not in EXCLUDED)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def artifact_digest(root: Path | str) -> str:
    return digest_of(file_digests(root))


def read_marker(root: Path | str) -> dict:
    path = Path(root) / MARKER
    if not path.is_file():
        raise IntegrityError(str(root), f"no {MARKER} marker: the artifact is incomplete")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(str(root), f"{MARKER} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        raise IntegrityError(str(root), f"{MARKER} has no sha256")
    return data


def verify_dir(root: Path | str, expected: str | None = None, *, uri: str | None = None) -> str:
    """Check a local artifact: COMPLETE present, its digest equal to the files' digest and to
    `expected` when given. Returns the digest; raises IntegrityError naming `uri` (or root)."""
    where = uri or str(root)
    marker = read_marker(root)
    actual = artifact_digest(root)
    if marker["sha256"] != actual:
        raise IntegrityError(where, f"digest mismatch: files hash to {actual}, {MARKER} says {marker['sha256']}")
    if expected is not None and expected != actual:
        raise IntegrityError(where, f"digest mismatch: files hash to {actual}, expected {expected}")
    return actual


def verify(uri: str, expected: str | None = None, *, base_dir: Path | str | None = None) -> str:
    """verify_dir for any URI (an s3:// prefix is downloaded to a temporary directory first)."""
    import tempfile

    from .ops import download_dir
    from .uri import parse

    loc = parse(uri, base_dir=base_dir)
    if loc.is_local:
        assert loc.path is not None
        if not loc.path.is_dir():
            raise IntegrityError(uri, "no artifact directory here")
        return verify_dir(loc.path, expected, uri=uri)
    with tempfile.TemporaryDirectory(prefix="mo-verify-") as tmp:
        local = download_dir(uri, Path(tmp) / "artifact")
        return verify_dir(local, expected, uri=uri)
