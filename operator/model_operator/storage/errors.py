"""Storage errors. Every message names the URI it is about (with any credentials taken out)
and says what went wrong in words a user can act on."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(uri: str) -> str:
    """The URI without user info or query string (presigned URLs carry signatures there)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.scheme in ("http", "https", "s3") and ("@" in parts.netloc or parts.query or parts.fragment):
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return uri


class StorageError(Exception):
    """A URI that cannot be read, written or deleted. `str(err)` is `<uri>: <reason>`."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = redact(uri)
        self.reason = reason
        super().__init__(f"{self.uri}: {reason}")


class InvalidUriError(StorageError):
    """The URI itself is malformed or refused (unknown scheme, `..` segments, missing bucket)."""


class NotFoundError(StorageError):
    """Nothing at this URI (missing file, key, bucket or HTTP 404)."""


class AccessDeniedError(StorageError):
    """The store refused the credentials (wrong or missing keys, HTTP 401/403)."""


class UnreachableError(StorageError):
    """The host or endpoint could not be reached."""


class TooLargeError(StorageError):
    """The object is larger than the configured cap."""


class IntegrityError(StorageError):
    """An artifact without its completion marker, or whose digest does not match."""
