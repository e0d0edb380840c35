"""Publish a finished local artifact directory to its destination, all or nothing.

- A directory (plain path, file://, pvc://): everything is copied into a hidden temporary
  sibling of the destination, `COMPLETE` is written there last, files are synced, and the
  sibling is renamed into place. A previous artifact at the destination is moved aside first
  and removed after the rename. On any failure the temporary sibling is removed and the
  previous artifact (if any) put back.
- `s3://bucket/prefix`: objects already under the prefix are deleted (`COMPLETE` first, so a
  reader never sees a marker over mixed files), every file is uploaded, `COMPLETE` last. On
  failure, whatever was uploaded is deleted (best effort).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

from . import s3
from .digest import MARKER, list_files
from .errors import StorageError
from .uri import parse

log = logging.getLogger(__name__)


def publish_dir(src: Path | str, dest_uri: str, *, base_dir: Path | str | None = None) -> str:
    """Copy the artifact in `src` to `dest_uri` (see the module docstring); returns `dest_uri`.
    `src` must contain `COMPLETE`. Raises StorageError naming the destination."""
    src = Path(src)
    files = list_files(src)
    if MARKER not in files:
        raise StorageError(str(src), f"refusing to publish an artifact without {MARKER}")
    ordered = [f for f in files if f != MARKER] + [MARKER]
    loc = parse(dest_uri, base_dir=base_dir)
    if loc.is_local:
        assert loc.path is not None
        _publish_local(src, ordered, loc.path, dest_uri)
    elif loc.kind == "s3":
        assert loc.bucket is not None and loc.key is not None
        _publish_s3(src, ordered, loc.bucket, s3.dir_prefix(loc.key), dest_uri)
    else:
        raise StorageError(dest_uri, "cannot publish to an http(s) URI: use a directory, pvc:// or s3://")
    return dest_uri


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish_local(src: Path, ordered: list[str], dest: Path, uri: str) -> None:
    dest = Path(os.path.abspath(dest))
    token = secrets.token_hex(4)
    tmp = dest.parent / f".{dest.name}.partial-{token}"
    old = dest.parent / f".{dest.name}.old-{token}"
    moved_old = False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for rel in ordered:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
        for dirpath, _dirs, _files in os.walk(tmp):
            _fsync_dir(Path(dirpath))
        if dest.exists() or dest.is_symlink():
            if not dest.is_dir() or dest.is_symlink():
                raise StorageError(uri, "destination exists and is not a directory")
            os.rename(dest, old)
            moved_old = True
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except StorageError:
        _cleanup_local(tmp, old if moved_old else None, dest)
        raise
    except OSError as exc:
        _cleanup_local(tmp, old if moved_old else None, dest)
        raise StorageError(uri, f"cannot write: {exc.strerror or exc}") from None
    if moved_old:
        shutil.rmtree(old, ignore_errors=True)


def _cleanup_local(tmp: Path, old: Path | None, dest: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and old.exists() and not dest.exists():
        try:
            os.rename(old, dest)
        except OSError:
            log.warning("could not restore the previous artifact at %s (left at %s)", dest, old)


def _publish_s3(src: Path, ordered: list[str], bucket: str, prefix: str, uri: str) -> None:
    if not prefix:
        raise StorageError(uri, "refusing to publish at the root of a bucket: use s3://bucket/prefix")
    client = s3.client()
    existing = [k for k, _ in s3.iter_keys(bucket, prefix, uri)]
    if existing:
        marker = prefix + MARKER
        if marker in existing:
            s3.delete_keys(client, bucket, [marker], uri)
        s3.delete_keys(client, bucket, [k for k in existing if k != marker], uri)
    uploaded: list[str] = []
    try:
        for rel in ordered:
            key = prefix + rel
            s3.upload_file(client, src / rel, bucket, key, uri)
            uploaded.append(key)
    except StorageError:
        try:
            if uploaded:
                s3.delete_keys(client, bucket, uploaded, uri)
        except StorageError:
            log.warning("could not remove the partial upload under %s", uri)
        raise
