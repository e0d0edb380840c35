"""URI parsing: where a `s3://`, `http(s)://`, `pvc://claim/path`, `file://` or plain path points.

`pvc://claim/path` resolves to `<MODEL_OPERATOR_PVC_ROOT>/<claim>/<path>` (root default
`/mnt/pvc`, where the operator's Jobs mount claims); `..` segments are refused so a URI cannot
leave its claim. Plain paths and `file://` are for local runs; a relative path resolves against
`base_dir` when given (the directory of the ModelDeployment file), else the working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from .errors import InvalidUriError

PVC_ROOT_ENV: Final = "MODEL_OPERATOR_PVC_ROOT"
DEFAULT_PVC_ROOT: Final = "/mnt/pvc"
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,62}$")


@dataclass(frozen=True)
class Location:
    """A parsed URI. `kind` is `local` (with `path`), `s3` (with `bucket`, `key`) or `http`."""

    uri: str
    kind: str
    path: Path | None = None
    bucket: str | None = None
    key: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def _refuse_dotdot(uri: str, path: str) -> None:
    if any(seg == ".." for seg in re.split(r"[/\\]", path)):
        raise InvalidUriError(uri, "'..' path segments are not allowed")


def parse(uri: str, *, base_dir: Path | str | None = None) -> Location:
    """Parse a URI; raises InvalidUriError naming it when it cannot be used."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidUriError(str(uri), "empty URI")
    uri = uri.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "s3":
            bucket = parts.netloc
            if not bucket or not _BUCKET.match(bucket):
                raise InvalidUriError(uri, "expected s3://bucket/key with a valid bucket name")
            key = unquote(parts.path.lstrip("/"))
            _refuse_dotdot(uri, key)
            return Location(uri=uri, kind="s3", bucket=bucket, key=key)
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise InvalidUriError(uri, "expected http(s)://host/path")
            return Location(uri=uri, kind="http")
        if scheme == "pvc":
            claim = parts.netloc
            if not claim or not _CLAIM.match(claim):
                raise InvalidUriError(uri, "expected pvc://claim/path with a valid claim name")
            rel = unquote(parts.path.lstrip("/"))
            _refuse_dotdot(uri, rel)
            root = pvc_root()
            path = root / claim / rel if rel else root / claim
            # Belt and braces: the normalized path must stay under the claim.
            if not os.path.normpath(path).startswith(os.path.normpath(root / claim)):
                raise InvalidUriError(uri, "the path leaves its claim")
            return Location(uri=uri, kind="local", path=Path(os.path.normpath(path)))
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InvalidUriError(uri, "file:// URIs must not name a host")
            return Location(uri=uri, kind="local", path=Path(unquote(parts.path)))
        raise InvalidUriError(uri, f"unsupported scheme {scheme!r} (use s3://, http(s)://, pvc:// or a path)")
    path = Path(uri).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return Location(uri=uri, kind="local", path=path)


def join(uri: str, *parts: str) -> str:
    """`uri` with path segments appended (`s3://b/p` + `a` -> `s3://b/p/a`)."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out
