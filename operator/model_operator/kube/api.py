"""The one place that talks to the Kubernetes API server (besides kopf's own watches).

Children are written with server-side apply under our field manager: create and update are
one idempotent call, and fields other managers own (an HPA's replicas, a user's annotations)
are left alone. The desired object's hash rides along as an annotation, so the controller can
tell from its cache alone whether an apply is needed and makes no request when nothing changed.

Field ownership is forced only on an object proven ours, and then the apply carries its uid:
the API server refuses an apply whose `metadata.uid` differs from the stored object's (422,
"field is immutable"; 409 "uid mismatch" when none has the name), so it can change that very
object and no other that took its name since. A child that should not
exist yet is applied without force: the controller has just found no object of that name, and
one that appears in between is refused wherever its fields differ from ours. Deletes carry the
uid as a precondition. So a same-named object that is not ours is not taken over or deleted.
"""

from __future__ import annotations

import builtins
import datetime
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from ..api.types import GROUP

FIELD_MANAGER = "model-operator"
DESIRED_HASH = f"{GROUP}/desired-hash"

log = logging.getLogger(__name__)


class StaleRead(RuntimeError):
    """A write conditioned on the version the caller read found a newer one."""


class KindNotServed(RuntimeError):
    """The API server no longer serves this kind (its CRD was removed after discovery)."""


def desired_hash(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "status"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_desired_hash(obj: dict[str, Any]) -> dict[str, Any]:
    digest = desired_hash(obj)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[DESIRED_HASH] = digest
    return obj


class Kube:
    """A thin wrapper over the dynamic client. API errors keep their HTTP status (ApiException)."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        if api_client is None:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                # The client reads $KUBECONFIG when it is imported; read it again now.
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api_client = kubernetes.client.ApiClient()
        self.api_client = api_client
        # The dynamic client's discovery cache is not thread-safe: a lookup that misses rebuilds
        # it, and two handler threads rebuilding at once fail with KeyError('resources').
        self._discovery = threading.RLock()

    @cached_property
    def dynamic(self) -> DynamicClient:
        with self._discovery:
            return DynamicClient(self.api_client)

    def resource(self, api_version: str, kind: str) -> Any:
        with self._discovery:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def has_kind(self, api_version: str, kind: str) -> bool:
        try:
            self.resource(api_version, kind)
            return True
        except ResourceNotFoundError:
            return False

    def apply(self, obj: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
        """Server-side apply to the object with `uid` (proven ours: forced, refused if the name now
        holds another object), or, with None, a create that never forces a field."""
        try:
            res = self.resource(obj["apiVersion"], obj["kind"])
        except ResourceNotFoundError:
            raise KindNotServed(f"{obj['apiVersion']} {obj['kind']} is not served") from None
        meta = obj["metadata"]
        body = {**obj, "metadata": {**meta, "uid": uid}} if uid is not None else obj
        try:
            result = res.server_side_apply(
                body=body, name=meta["name"], namespace=meta.get("namespace"), field_manager=FIELD_MANAGER,
                force_conflicts=uid is not None,
            )
        except NotFoundError as exc:
            # An apply creates, so a 404 means the endpoint is gone (a removed CRD), or the namespace.
            if "page not found" in str(getattr(exc, "body", "") or ""):
                with self._discovery:
                    self.dynamic.resources.invalidate_cache()
                raise KindNotServed(f"{obj['apiVersion']} {obj['kind']} is no longer served") from None
            raise
        return result.to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        items = self.resource(api_version, kind).get(namespace=namespace, label_selector=label_selector).items
        return [i.to_dict() for i in items]

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete the object with `uid` (a precondition: another object of that name is refused
        with 409); False when it was already gone."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.resource(api_version, kind).delete(name=name, namespace=namespace, body=body)
            return True
        except NotFoundError:
            return False

    def peering_statuses(self, name: str, namespaces: Sequence[str]) -> Sequence[dict[str, Any] | None]:
        """The status of kopf's peering object `name` in each namespace (cluster-wide with none):
        its peers by identity; None for one that is missing or whose kind is not served."""
        kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
        out: builtins.list[dict[str, Any] | None] = []
        scopes: builtins.list[str | None] = [*namespaces] or [None]
        for namespace in scopes:
            try:
                obj = self.get("kopf.dev/v1", kind, name, namespace)
            except ResourceNotFoundError:
                obj = None
            out.append(None if obj is None else dict(obj.get("status") or {}))
        return out

    def patch_merge(self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict[str, Any]) -> dict[str, Any]:
        res = self.resource(api_version, kind)
        return res.patch(body=patch, name=name, namespace=namespace, content_type="application/merge-patch+json").to_dict()

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event on `obj` from outside kopf's handlers, where kopf.event has no queue to post to."""
        event = event_for(obj, type_, reason, message, datetime.datetime.now(datetime.timezone.utc))
        self.resource("v1", "Event").create(body=event, namespace=event["metadata"]["namespace"])

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """A merge patch of the status subresource (a write to the object itself can't change it).
        With `resource_version`, only if the object is still that version: else StaleRead, and
        nothing changed (the API server answers 409)."""
        res = self.resource(api_version, kind).subresources["status"]
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return res.patch(body=body, name=name, namespace=namespace, content_type="application/merge-patch+json").to_dict()
        except ApiException as exc:
            if resource_version is not None and exc.status == 409:
                raise StaleRead(f"{kind} {namespace}/{name} changed since it was read") from None
            raise


def event_for(obj: dict[str, Any], type_: str, reason: str, message: str, now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Event about `obj` from the operator (`kubectl describe` shows it with kopf's)."""
    meta = obj["metadata"]
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
        "reportingInstance": socket.gethostname(), "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409
