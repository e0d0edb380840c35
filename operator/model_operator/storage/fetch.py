"""Read one object (a model file, a dataset) from a URI to a local file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from . import s3
from .errors import AccessDeniedError, NotFoundError, StorageError, TooLargeError, UnreachableError
from .uri import parse

HTTP_TOKEN_ENV: Final = "MODEL_OPERATOR_HTTP_TOKEN"
MAX_BYTES_ENV: Final = "MODEL_OPERATOR_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_BYTES: Final = 8 << 30  # 8 GiB
_CHUNK: Final = 1 << 20


def max_download_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_ENV)
    return int(raw) if raw else DEFAULT_MAX_BYTES


def _local_name(uri: str, fallback: str = "download") -> str:
    name = unquote(urlsplit(uri).path.rsplit("/", 1)[-1]) or fallback
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:128] or fallback


def fetch(uri: str, dest_dir: Path | str, *, base_dir: Path | str | None = None, max_bytes: int | None = None) -> Path:
    """A local path holding the object at `uri`. Local paths and pvc:// are used in place (no
    copy); s3:// and http(s):// are downloaded into `dest_dir`, with the user's credentials
    (MODEL_SOURCE_*, see s3.SOURCE_PREFIX) when given. Raises StorageError naming `uri`."""
    loc = parse(uri, base_dir=base_dir)
    cap = max_download_bytes() if max_bytes is None else max_bytes
    if loc.is_local:
        assert loc.path is not None
        if not loc.path.exists():
            raise NotFoundError(uri, "no such file")
        if not loc.path.is_file():
            raise StorageError(uri, "not a file")
        if not os.access(loc.path, os.R_OK):
            raise AccessDeniedError(uri, "file is not readable")
        return loc.path
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / _local_name(uri)
    if loc.kind == "s3":
        assert loc.bucket is not None and loc.key is not None
        if not loc.key:
            raise StorageError(uri, "expected s3://bucket/key naming an object")
        return s3.download(loc.bucket, loc.key, dest, uri, max_bytes=cap, source=True)
    return _http_get(uri, dest, cap)


def _http_get(uri: str, dest: Path, max_bytes: int) -> Path:
    import requests

    headers = {}
    token = os.environ.get(f"{s3.SOURCE_PREFIX}{HTTP_TOKEN_ENV}") or os.environ.get(HTTP_TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with requests.get(uri, headers=headers, stream=True, timeout=(10, 60), allow_redirects=True) as resp:
            if resp.status_code in (401, 403):
                hint = "" if token else f" (set {HTTP_TOKEN_ENV} for a bearer token)"
                raise AccessDeniedError(uri, f"HTTP {resp.status_code}: access denied{hint}")
            if resp.status_code == 404:
                raise NotFoundError(uri, "HTTP 404: not found")
            if resp.status_code >= 400:
                raise StorageError(uri, f"HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise TooLargeError(uri, f"object is {length} bytes, more than the {max_bytes}-byte limit")
            got = 0
            tmp = dest.with_name(dest.name + ".part")
            try:
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_content(_CHUNK):
                        got += len(chunk)
                        if got > max_bytes:
                            raise TooLargeError(uri, f"object is larger than the {max_bytes}-byte limit")
                        fh.write(chunk)
                if length and length.isdigit() and got != int(length):
                    raise StorageError(uri, f"truncated download: got {got} of {length} bytes")
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
    except StorageError:
        raise
    except requests.exceptions.ConnectionError:
        raise UnreachableError(uri, "host is unreachable (connection failed)") from None
    except requests.exceptions.Timeout:
        raise UnreachableError(uri, "timed out") from None
    except requests.exceptions.RequestException as exc:
        raise StorageError(uri, f"HTTP request failed: {type(exc).__name__}") from None
    return dest
