"""Deletion: owner references remove every child, but not the artifacts in the store. The
finalizer stops the optimization Jobs first (so no worker writes after the cleanup), then
deletes this ModelDeployment's prefix, and only its own: an S3 store with the operator's own
keys (no pod in the tenant's namespace gets them), a claim through a cleanup Job (the operator
mounts no claim). It gives up after the configured timeout with a Warning naming what was
left, so it can never block forever."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import kopf

from ..config import OperatorConfig
from ..kube.api import Kube
from ..plan import status as st
from ..resources import access
from ..resources import common as names
from ..resources import store_jobs as cleanup_builder


def finalize(body: dict[str, Any], kube: Kube, config: OperatorConfig, logger: Any, *, retry: int, started: Any) -> None:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    root = config.artifact_store.root_uri(namespace, name)
    elapsed = (dt.datetime.now(dt.timezone.utc) - _aware(started)).total_seconds() if started else 0.0
    if elapsed > config.finalizer_timeout_seconds:
        kopf.warn(kopf.Body(cast(kopf.RawBody, body)), reason="CleanupAbandoned",
                  message=f"gave up deleting artifacts under {root} after {elapsed:.0f}s; remove them by hand")
        logger.warning("gave up deleting artifacts under %s after %.0fs", root, elapsed)
        return

    selector = names.selector_string({names.LABEL_DEPLOYMENT: name[: names.MAX_NAME], names.LABEL_COMPONENT: "optimizer"})
    # Labels can be copied; only Jobs this MD controls are stopped, each by its uid.
    jobs = [j for j in kube.list("batch/v1", "Job", namespace, selector) if st.ownership(j["metadata"])["owner"] == meta.get("uid")]
    for job in jobs:
        kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace, propagation="Foreground", uid=job["metadata"]["uid"])
    workers = kube.list("v1", "Pod", namespace, selector)
    if jobs or workers:
        raise kopf.TemporaryError(f"waiting for {len(workers)} worker pod(s) of {name} to stop before deleting artifacts", delay=2)

    if access.uses_urls(config.artifact_store):
        _delete_s3(body, config, root, logger, retry)
        return
    job = cleanup_builder.build_cleanup_job(name, namespace, config)
    kopf.adopt(job, owner=kopf.Body(cast(kopf.RawBody, body)))
    current = kube.get("batch/v1", "Job", job["metadata"]["name"], namespace)
    if current is None:
        kube.apply(job)  # create-only: refused if a Job of that name appeared meanwhile
        raise kopf.TemporaryError(f"deleting artifacts under {root}", delay=2)
    if st.ownership(current["metadata"])["owner"] != meta.get("uid"):
        message = st.conflict_message("Job", job["metadata"]["name"], st.ownership(current["metadata"]))
        kopf.warn(kopf.Body(cast(kopf.RawBody, body)), reason="ChildConflict", message=message)
        raise kopf.TemporaryError(message, delay=30)
    status = current.get("status") or {}
    if status.get("succeeded"):
        logger.info("deleted artifacts under %s", root)
        return
    failed = any(c.get("type") == "Failed" and c.get("status") == "True" for c in status.get("conditions") or [])
    if failed:
        # Start over with a fresh Job: the store may come back.
        kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace, propagation="Background", uid=current["metadata"]["uid"])
        kopf.warn(kopf.Body(cast(kopf.RawBody, body)), reason="CleanupFailed", message=f"could not delete artifacts under {root}; retrying")
        raise kopf.TemporaryError(f"cleanup of {root} failed; retrying", delay=min(60, 5 * (retry + 1)))
    raise kopf.TemporaryError(f"deleting artifacts under {root}", delay=2)


def _delete_s3(body: dict[str, Any], config: OperatorConfig, root: str, logger: Any, retry: int) -> None:
    from ..storage import StorageError
    from ..storage.sign import delete_artifacts, store_client

    store = config.artifact_store
    try:
        count = delete_artifacts(store_client(store.endpoint, store.region), root)
    except StorageError as exc:
        kopf.warn(kopf.Body(cast(kopf.RawBody, body)), reason="CleanupFailed", message=f"could not delete artifacts: {exc}; retrying")
        raise kopf.TemporaryError(f"cleanup of {root} failed: {exc}; retrying", delay=min(60, 5 * (retry + 1))) from None
    logger.info("deleted %d object(s) under %s", count, root)


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)
