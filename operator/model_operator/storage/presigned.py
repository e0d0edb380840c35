"""Artifacts moved with pre-signed URLs: the tenant's pods hold no store key at all.

The operator (which holds the store's keys in its own namespace) signs one URL per artifact
and verb; the worker PUTs its finished artifact as one archive (`ARCHIVE` under the artifact's
URI), the Triton `assemble` step and the golden probe GET it. A URL reaches a pod as a file
(a mounted Secret the operator refreshes before it expires), and the file is read when the URL
is needed, so a long run or a new replica always uses the current one.

An S3 PUT of one object is atomic: readers see the whole archive or none; `COMPLETE` inside it
still carries the digest. Extraction refuses absolute paths, `..`, links and devices.
An archive may be gzip-compressed (edge and device targets: what a device downloads is the
transfer size; extraction detects the compression).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Final

from .digest import MARKER, list_files
from .errors import AccessDeniedError, NotFoundError, StorageError, UnreachableError

ARCHIVE: Final = "artifact.tar"
_CHUNK: Final = 1 << 20
GZIP_LEVEL: Final = 6


def archive_key(prefix_key: str) -> str:
    """The object key of the archive of the artifact whose "directory" key is `prefix_key`."""
    return f"{prefix_key.strip('/')}/{ARCHIVE}"


def read_url(path: Path | str) -> str:
    """The URL in a mounted grant file (read each time: the operator refreshes it)."""
    try:
        url = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AccessDeniedError(str(path), f"no pre-signed URL here ({exc.strerror or exc}): the operator has not granted this access") from None
    if not url.startswith(("http://", "https://")):
        raise AccessDeniedError(str(path), "the grant file does not hold an http(s) URL")
    return url


def _raise_for(resp: object, uri: str, action: str) -> None:
    status = getattr(resp, "status_code", 0)
    if status < 400:
        return
    text = str(getattr(resp, "text", ""))[:2000]
    if status == 403 and "expired" in text.lower():
        raise AccessDeniedError(uri, f"cannot {action}: the pre-signed URL has expired")
    if status in (401, 403):
        raise AccessDeniedError(uri, f"cannot {action}: the store refused the pre-signed URL (HTTP {status})")
    if status == 404:
        raise NotFoundError(uri, f"cannot {action}: no such object")
    raise StorageError(uri, f"cannot {action}: HTTP {status}")


def write_archive(src: Path, archive: Path, *, compress: bool = False) -> int:
    """Write every file of `src` into the tar `archive` (COMPLETE last), gzip-compressed with
    `compress`; returns its size."""
    files = list_files(src)
    order = [f for f in files if f != MARKER] + ([MARKER] if MARKER in files else [])
    opener = tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=GZIP_LEVEL) if compress else \
        tarfile.open(archive, "w", format=tarfile.PAX_FORMAT)
    with opener as tar:
        for rel in order:
            tar.add(src / rel, arcname=rel, recursive=False)
    return archive.stat().st_size


def put_archive(src: Path | str, url_file: Path | str, uri: str, *, compress: bool = False) -> int:
    """Archive the artifact directory `src` (which must hold COMPLETE) and PUT it to the URL in
    `url_file`; returns the archive's size. `uri` names the artifact in errors."""
    import requests

    src = Path(src)
    if MARKER not in list_files(src):
        raise StorageError(str(src), f"refusing to publish an artifact without {MARKER}")
    url = read_url(url_file)
    with tempfile.TemporaryDirectory(prefix="mo-archive-") as tmp:
        archive = Path(tmp) / ARCHIVE
        size = write_archive(src, archive, compress=compress)
        try:
            with open(archive, "rb") as fh:
                resp = requests.put(url, data=fh, headers={"Content-Length": str(size)}, timeout=(10, 300))
        except requests.exceptions.ConnectionError:
            raise UnreachableError(uri, "cannot write: the store is unreachable") from None
        except requests.exceptions.RequestException as exc:
            raise StorageError(uri, f"cannot write: {type(exc).__name__}") from None
        _raise_for(resp, uri, "write")
    return size


def get_archive(url_file: Path | str, dest: Path | str, uri: str, *, max_bytes: int | None = None) -> Path:
    """GET the archive from the URL in `url_file` and unpack it into `dest` (a new directory)."""
    import requests

    url = read_url(url_file)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mo-archive-") as tmp:
        archive = Path(tmp) / ARCHIVE
        got = 0
        try:
            with requests.get(url, stream=True, timeout=(10, 300)) as resp:
                _raise_for(resp, uri, "read")
                with open(archive, "wb") as fh:
                    for chunk in resp.iter_content(_CHUNK):
                        got += len(chunk)
                        if max_bytes is not None and got > max_bytes:
                            raise StorageError(uri, f"cannot read: the archive is larger than {max_bytes} bytes")
                        fh.write(chunk)
        except requests.exceptions.ConnectionError:
            raise UnreachableError(uri, "cannot read: the store is unreachable") from None
        except requests.exceptions.RequestException as exc:
            raise StorageError(uri, f"cannot read: {type(exc).__name__}") from None
        _extract(archive, dest, uri)
    return dest


def _extract(archive: Path, dest: Path, uri: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                parts = m.name.split("/")
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise StorageError(uri, f"refusing the archive: member {m.name!r} is not a plain relative file")
            for m in members:
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(m)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
                os.chmod(target, 0o644)
    except tarfile.TarError as exc:
        raise StorageError(uri, f"cannot read: not a valid artifact archive ({exc})") from None
