"""A ModelDeployment's access to its own artifacts in an S3 store, without the store's keys.

The plan names grants: `put-<revision>` (the worker's one upload) and `get-<revision>` (the
artifact a Triton track serves or the probe reads). The operator signs one URL per grant
(storage/sign.py) and writes them into the per-MD Secret built here; pods mount that Secret
and read the file of their grant when they need the URL. Pure: URLs and expiry are passed in.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any, Final

from ..config import ArtifactStore
from . import common as c

MOUNT_PATH: Final = "/var/run/model-operator/artifact-access"
VOLUME: Final = "artifact-access"
ANNOTATION_EXPIRES: Final = f"{c.DOMAIN}/expires-at"


def uses_urls(store: ArtifactStore) -> bool:
    """Whether pods reach the store with pre-signed URLs (S3) rather than a mounted claim."""
    return store.type == "s3"


def secret_name(md_name: str) -> str:
    return c.truncate(md_name, "-artifact-access")


def revision_of(artifact_uri: str) -> str:
    """The revision (spec hash) an artifact URI ends with: `.../<namespace>/<name>/<revision>`."""
    return artifact_uri.rstrip("/").rsplit("/", 1)[-1]


def grant_name(verb: str, artifact_uri: str) -> str:
    if verb not in ("get", "put"):
        raise ValueError(f"unknown grant verb {verb!r}")
    return f"{verb}-{revision_of(artifact_uri)}"


def grant_path(verb: str, artifact_uri: str) -> str:
    """Where a pod finds the URL of a grant."""
    return f"{MOUNT_PATH}/{grant_name(verb, artifact_uri)}"


def volume(md_name: str) -> dict[str, Any]:
    # Not optional: a pod waits (ContainerCreating) until the operator has written its grants.
    return {"name": VOLUME, "secret": {"secretName": secret_name(md_name), "defaultMode": 0o440}}


def mount() -> dict[str, Any]:
    # No subPath: the kubelet updates the files when the operator refreshes the Secret.
    return {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}


def build_access_secret(name: str, namespace: str, urls: dict[str, str], expires_at: float) -> dict[str, Any]:
    """The per-MD Secret of pre-signed URLs (grant name -> URL), valid until `expires_at`
    (Unix seconds, also in an annotation for people: the operator keeps its own record)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(name),
            "namespace": namespace,
            "labels": c.base_labels(name, "artifact-access"),
            "annotations": {ANNOTATION_EXPIRES: str(int(expires_at))},
        },
        # `data`, not `stringData`: server-side apply then removes a grant that is no longer given.
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(urls.items())},
    }


def needs_refresh(signed: tuple[frozenset[str], float] | None, grants: frozenset[str], now: float, ttl: float,
                  spread: float = 0.0) -> bool:
    """Sign again when the grants changed, or when less than half of the URLs' lifetime is left,
    less up to a fifth more by the object's `spread` (0 to 1): URLs signed in one burst (a
    cold start, a restart) then come up for refresh over a fifth of their lifetime, not all in
    one reconcile pass (seen at 10,000 objects: the refreshes held the queue for minutes). At
    least 30% of the lifetime is left, ample for the kubelet to update a mounted Secret."""
    if signed is None:
        return True
    names, expires_at = signed
    return names != grants or expires_at - now < ttl * (0.5 - 0.2 * min(max(spread, 0.0), 1.0))


def refresh_spread(namespace: str, name: str) -> float:
    """The object's fixed place, 0 to 1, in the spread of refreshes: the same in every process."""
    return zlib.crc32(f"{namespace}/{name}".encode()) / 2**32


def signed_from_status(status: dict[str, Any]) -> tuple[frozenset[str], float] | None:
    """What `status.access` says the access Secret holds, for a process that hasn't written it
    yet (after a restart): the same record `needs_refresh` reads, or None when there is none."""
    access = status.get("access") or {}
    expires_at = access.get("expiresAt")
    if not isinstance(expires_at, (int, float)) or not isinstance(access.get("grants"), list):
        return None
    return frozenset(str(g) for g in access["grants"]), float(expires_at)


def access_status(signed: tuple[frozenset[str], float]) -> dict[str, Any]:
    names, expires_at = signed
    return {"grants": sorted(names), "expiresAt": int(expires_at)}


def read_access(
    name: str, namespace: str, store: ArtifactStore, artifact_uri: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Volumes, mounts and arguments that let a pod read this MD's artifact and nothing else:
    a pre-signed GET (S3: the access Secret, `--artifact-url-file`), or the store claim mounted
    read-only at this MD's own directory (PVC). A user's other claims are mounted whole."""
    if uses_urls(store):
        return [volume(name)], [mount()], ["--artifact-url-file", grant_path("get", artifact_uri)]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for claim in c.claims_in_uris([artifact_uri]):
        if claim == store.claim:
            v, m = c.own_subpath_volume(claim, namespace, name)
            volumes.append(v)
            mounts.append(m)
        else:
            vs, ms = c.claim_volumes([claim])
            volumes += vs
            mounts += ms
    return volumes, mounts, []
