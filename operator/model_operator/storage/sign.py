"""The operator's side of the S3 store: it alone holds the store's keys (in its own namespace,
from its environment), signs short-lived URLs for one object and one verb, and deletes a
ModelDeployment's artifacts itself. Signing is a local computation: no request is made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from . import s3
from .errors import InvalidUriError
from .presigned import archive_key
from .uri import parse

# Grant verbs -> the S3 operation a URL allows.
OPERATIONS: Final = {"get": "get_object", "put": "put_object"}


def store_client(endpoint: str | None, region: str) -> Any:
    return s3.client(endpoint=endpoint or None, region=region)


def presign(client: Any, grants: Mapping[str, tuple[str, str]], expires_in: int) -> dict[str, str]:
    """{grant name: URL} for {grant name: (verb, artifact URI)}: each URL allows one verb on
    the archive of one artifact for `expires_in` seconds."""
    out: dict[str, str] = {}
    for name, (verb, uri) in sorted(grants.items()):
        loc = parse(uri)
        if loc.kind != "s3" or not loc.key:
            raise InvalidUriError(uri, "pre-signed URLs are for s3:// artifacts")
        assert loc.bucket is not None
        out[name] = client.generate_presigned_url(
            OPERATIONS[verb], Params={"Bucket": loc.bucket, "Key": archive_key(loc.key)}, ExpiresIn=int(expires_in)
        )
    return out


def delete_artifacts(client: Any, root_uri: str) -> int:
    """Delete every object under a ModelDeployment's prefix with the operator's own keys;
    returns how many went. Nothing there is not an error (the finalizer may run twice)."""
    loc = parse(root_uri)
    if loc.kind != "s3" or not loc.key or not s3.dir_prefix(loc.key):
        raise InvalidUriError(root_uri, "refusing to delete: name an s3:// prefix below the bucket")
    assert loc.bucket is not None
    prefix = s3.dir_prefix(loc.key)
    keys: list[str] = []
    token: str | None = None
    try:
        while True:
            kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = client.list_objects_v2(**kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        # One DeleteObject per key: every S3-compatible server has it (not all have DeleteObjects).
        for key in keys:
            client.delete_object(Bucket=loc.bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - translated into a StorageError naming the prefix
        raise s3.translate(exc, root_uri, "delete") from None
    return len(keys)
