"""S3-compatible stores through boto3. Endpoint, region and credentials come from the standard
environment (`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`); boto3 is imported only when an
`s3://` URI is used. Errors are translated into StorageError subclasses that name the URI and
never carry a credential."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import AccessDeniedError, NotFoundError, StorageError, UnreachableError

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
    "401",
}
_MISSING = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}


# The user's credentials (spec.model.credentialsSecret) reach the worker under this prefix
# (MODEL_SOURCE_AWS_ACCESS_KEY_ID, ...): they read the model and data URIs and nothing else.
SOURCE_PREFIX = "MODEL_SOURCE_"


def client(*, source: bool = False, endpoint: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client. `source`: for reading the user's model and data, with the user's
    credentials when the MODEL_SOURCE_* variables hold them (else the standard chain: local runs).
    `endpoint`/`region` override the environment (the operator passes its configured store's)."""
    import boto3
    from botocore.config import Config

    env = os.environ
    if endpoint is None:
        endpoint = (env.get(f"{SOURCE_PREFIX}AWS_ENDPOINT_URL") if source else None) or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None
    config = Config(
        connect_timeout=float(env.get("MODEL_OPERATOR_S3_CONNECT_TIMEOUT", "5")),
        read_timeout=60,
        retries={"max_attempts": int(env.get("MODEL_OPERATOR_S3_ATTEMPTS", "3")), "mode": "standard"},
        signature_version="s3v4",
        # Checksum headers only where the API requires them: not every S3-compatible server
        # implements the newer optional ones.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Path-style addressing works with every S3-compatible server (MinIO, Ceph, S3Proxy).
        s3={"addressing_style": "path"} if endpoint else {},
    )
    region = region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    keys: dict[str, str] = {}
    if source and env.get(f"{SOURCE_PREFIX}AWS_ACCESS_KEY_ID"):
        keys = {"aws_access_key_id": env[f"{SOURCE_PREFIX}AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": env.get(f"{SOURCE_PREFIX}AWS_SECRET_ACCESS_KEY", "")}
        if env.get(f"{SOURCE_PREFIX}AWS_SESSION_TOKEN"):
            keys["aws_session_token"] = env[f"{SOURCE_PREFIX}AWS_SESSION_TOKEN"]
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config, **keys)


def translate(exc: BaseException, uri: str, action: str) -> StorageError:
    """A boto3/botocore exception -> the StorageError a user can act on."""
    from botocore import exceptions as bx

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AccessDeniedError(uri, f"cannot {action}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default S3 endpoint"
        return UnreachableError(uri, f"cannot {action}: S3 endpoint {endpoint} is unreachable")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _DENIED or status in ("401", "403"):
            detail = {
                "InvalidAccessKeyId": "the access key id is not known to the store",
                "SignatureDoesNotMatch": "the secret access key is wrong",
            }.get(code, "access denied")
            return AccessDeniedError(uri, f"cannot {action}: {detail} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        if code == "NoSuchBucket":
            return NotFoundError(uri, f"cannot {action}: the bucket does not exist")
        if code in _MISSING or status == "404":
            return NotFoundError(uri, f"cannot {action}: no such object")
        return StorageError(uri, f"cannot {action}: S3 error {code or status}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(uri, f"cannot {action}: {type(exc).__name__}")
    return StorageError(uri, f"cannot {action}: {type(exc).__name__}: {exc}")


def download(bucket: str, key: str, dest: Path, uri: str, *, max_bytes: int | None = None, source: bool = False) -> Path:
    """GET the object into `dest` (a GET, not HEAD + GET: a failed GET carries the error code
    that says which credential is wrong)."""
    from .errors import TooLargeError

    s3 = client(source=source)
    tmp = dest.with_name(dest.name + ".part")
    try:
        resp = s3.get_object(Bucket=bucket, Key=key)
        size = int(resp.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()
            raise TooLargeError(uri, f"object is {size} bytes, more than the {max_bytes}-byte limit")
        dest.parent.mkdir(parents=True, exist_ok=True)
        got = 0
        with open(tmp, "wb") as fh:
            for chunk in resp["Body"].iter_chunks(1 << 20):
                fh.write(chunk)
                got += len(chunk)
        if got != size:
            raise StorageError(uri, f"truncated download: got {got} of {size} bytes")
        os.replace(tmp, dest)
    except Exception as exc:  # noqa: BLE001 - translated into a StorageError naming the URI
        raise translate(exc, uri, "read") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def iter_keys(bucket: str, prefix: str, uri: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix` (a "directory": `prefix/`...)."""
    s3 = client()
    token: str | None = None
    try:
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = s3.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj.get("Size", 0))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
    except Exception as exc:  # noqa: BLE001 - boto3 raises many unrelated classes; translate() names the cause
        raise translate(exc, uri, "list") from None


def upload_file(s3: Any, path: Path, bucket: str, key: str, uri: str) -> None:
    try:
        s3.upload_file(str(path), bucket, key)
    except Exception as exc:  # noqa: BLE001 - boto3 raises many unrelated classes; translate() names the cause
        raise translate(exc, uri, "write") from None


def delete_keys(s3: Any, bucket: str, keys: list[str], uri: str) -> None:
    try:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                raise StorageError(uri, f"cannot delete {errors[0].get('Key')}: {errors[0].get('Code')}")
    except Exception as exc:  # noqa: BLE001 - boto3 raises many unrelated classes; translate() names the cause
        raise translate(exc, uri, "delete") from None


def dir_prefix(key: str) -> str:
    """The listing prefix of a "directory" key: `a/b` -> `a/b/`, `` -> ``."""
    key = key.strip("/")
    return f"{key}/" if key else ""
