"""Whole-artifact operations: list, download, delete (the operator's finalizer cleanup)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import s3
from .errors import InvalidUriError, NotFoundError, StorageError
from .uri import parse, pvc_root


def list_artifact(uri: str, *, base_dir: Path | str | None = None) -> list[str]:
    """Relative paths of the files under an artifact URI (a directory or an s3:// prefix), sorted.
    A destination with nothing there gives []."""
    loc = parse(uri, base_dir=base_dir)
    if loc.is_local:
        assert loc.path is not None
        if not loc.path.exists():
            return []
        if not loc.path.is_dir():
            raise StorageError(uri, "not a directory")
        from .digest import list_files

        return list_files(loc.path)
    if loc.kind == "s3":
        assert loc.bucket is not None and loc.key is not None
        prefix = s3.dir_prefix(loc.key)
        return sorted(k[len(prefix) :] for k, _ in s3.iter_keys(loc.bucket, prefix, uri))
    raise StorageError(uri, "cannot list an http(s) URI")


def download_dir(uri: str, dest: Path | str, *, base_dir: Path | str | None = None) -> Path:
    """A local directory with the artifact's files: a local URI is returned as is, an s3://
    prefix is downloaded to `dest`. Raises NotFoundError when there is nothing there."""
    loc = parse(uri, base_dir=base_dir)
    if loc.is_local:
        assert loc.path is not None
        if not loc.path.is_dir():
            raise NotFoundError(uri, "no such directory")
        return loc.path
    if loc.kind != "s3":
        raise StorageError(uri, "cannot download a directory over http(s)")
    assert loc.bucket is not None and loc.key is not None
    prefix = s3.dir_prefix(loc.key)
    keys = list(s3.iter_keys(loc.bucket, prefix, uri))
    if not keys:
        raise NotFoundError(uri, "no objects under this prefix")
    dest = Path(dest)
    for key, _size in keys:
        rel = key[len(prefix) :]
        if not rel or any(seg in ("", ".", "..") for seg in rel.split("/")):
            continue
        s3.download(loc.bucket, key, dest / rel, uri)
    return dest


def delete_prefix(uri: str, *, base_dir: Path | str | None = None, keep_root: bool = False) -> int:
    """Delete everything under an artifact URI; returns how many files went. Deleting what is
    not there is not an error (the finalizer may run twice). Refuses a bucket root, the PVC
    root, a claim root and filesystem roots. `keep_root` (local paths) empties the directory and
    leaves it: a pod that mounts only that directory (a sub-path) cannot remove its mount point."""
    loc = parse(uri, base_dir=base_dir)
    if loc.is_local:
        assert loc.path is not None
        path = Path(os.path.abspath(loc.path))
        root = Path(os.path.abspath(pvc_root()))
        if path == Path(path.anchor) or path == root or path.parent == root or path == Path.home():
            raise InvalidUriError(uri, "refusing to delete a root directory")
        if not path.exists() and not path.is_symlink():
            return 0
        if path.is_symlink() or path.is_file():
            path.unlink()
            return 1
        count = sum(len(files) for _d, _s, files in os.walk(path))
        try:
            if keep_root:
                for child in path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                shutil.rmtree(path)
        except OSError as exc:
            raise StorageError(uri, f"cannot delete: {exc.strerror or exc}") from None
        return count
    if loc.kind == "s3":
        assert loc.bucket is not None and loc.key is not None
        prefix = s3.dir_prefix(loc.key)
        if not prefix:
            raise InvalidUriError(uri, "refusing to delete a whole bucket: name a prefix")
        keys = [k for k, _ in s3.iter_keys(loc.bucket, prefix, uri)]
        # The marker first: a half-deleted artifact must not look complete.
        keys.sort(key=lambda k: (not k.endswith("/COMPLETE"), k))
        if keys:
            s3.delete_keys(s3.client(), loc.bucket, keys, uri)
        return len(keys)
    raise StorageError(uri, "cannot delete over http(s)")
