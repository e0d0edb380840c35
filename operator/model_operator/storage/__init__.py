"""Artifact stores: read a model or dataset from a URI, publish a finished artifact directory
(all or nothing, `COMPLETE` last), verify, list and delete artifacts.

URIs: plain paths and `file://` (local runs), `pvc://claim/path` (under
`MODEL_OPERATOR_PVC_ROOT`), `s3://bucket/key` (boto3, `AWS_*` environment), `http(s)://`
(read only; bearer token from `MODEL_OPERATOR_HTTP_TOKEN`). See docs/contracts.md.
"""

from .digest import MARKER, REPORT, artifact_digest, file_digests, file_sha256, verify, verify_dir
from .errors import (
    AccessDeniedError,
    IntegrityError,
    InvalidUriError,
    NotFoundError,
    StorageError,
    TooLargeError,
    UnreachableError,
)
from .fetch import fetch
from .ops import delete_prefix, download_dir, list_artifact
from .publish import publish_dir
from .uri import Location, join, parse

__all__ = [
    "MARKER",
    "REPORT",
    "AccessDeniedError",
    "IntegrityError",
    "InvalidUriError",
    "Location",
    "NotFoundError",
    "StorageError",
    "TooLargeError",
    "UnreachableError",
    "artifact_digest",
    "delete_prefix",
    "download_dir",
    "fetch",
    "file_digests",
    "file_sha256",
    "join",
    "list_artifact",
    "parse",
    "publish_dir",
    "verify",
    "verify_dir",
]
