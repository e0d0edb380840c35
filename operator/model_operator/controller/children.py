"""What the controller knows of every ModelDeployment's children, from the informers' lists and
watch events (kube/informer.py): a summary per child (plan/status.py's summarize_*), by owner.

Not kopf indexes: kopf holds every handler until each object of an indexed kind's initial list
is indexed, and wakes every waiting worker for each one; with ~35,000 children that held a
restarted operator for minutes before its first reconcile. Here the reconcile loop waits for
one event per kind (`synced`), and a child whose summary changed marks its owner for a reconcile."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..plan import Observed
from ..plan import status as st
from ..resources import common as names

Key = tuple[str, str]  # (namespace, ModelDeployment name)

# Which list of Observed a kind's summaries go to, and how a child is summarized.
JOBS, PODS, OTHERS = "jobs", "pods", "children"
_SUMMARIZE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    JOBS: st.summarize_job, PODS: st.summarize_pod, OTHERS: st.summarize_child,
}


def owner_of(obj: Mapping[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(names.LABEL_DEPLOYMENT)
    return (meta.get("namespace") or "", owner) if owner else None


class ChildCache:
    """Thread-safe: informer threads write, reconcile workers read."""

    def __init__(self, on_change: Callable[[Key], None] = lambda key: None) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        # owner -> (list, kind, name) -> summary
        self._by_owner: dict[Key, dict[tuple[str, str, str], dict[str, Any]]] = {}
        # (list, kind, namespace, name) -> owner, so a child whose owner label changed leaves its old owner
        self._owner: dict[tuple[str, str, str, str], Key] = {}
        self._synced: dict[str, threading.Event] = {}

    # --- written by the informers -------------------------------------------------------------

    def expect(self, stream: str) -> None:
        """A stream whose first list the reconciles must wait for."""
        with self._lock:
            self._synced.setdefault(stream, threading.Event())

    def mark_synced(self, stream: str) -> None:
        with self._lock:
            event = self._synced.setdefault(stream, threading.Event())
        event.set()

    def upsert(self, group: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        where = (group, str(obj.get("kind") or ""), meta.get("namespace") or "", meta.get("name") or "")
        owner = owner_of(obj)
        summary = _SUMMARIZE[group](obj) if owner else None
        changed: list[Key] = []
        with self._lock:
            before = self._owner.get(where)
            if before is not None and before != owner:
                self._drop(where, before)
                changed.append(before)
            if owner is not None and summary is not None:
                entries = self._by_owner.setdefault(owner, {})
                slot = (where[0], where[1], where[3])
                if entries.get(slot) != summary:
                    entries[slot] = summary
                    changed.append(owner)
                self._owner[where] = owner
        for key in changed:
            self.on_change(key)

    def remove(self, group: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        where = (group, str(obj.get("kind") or ""), meta.get("namespace") or "", meta.get("name") or "")
        with self._lock:
            owner = self._owner.get(where)
            if owner is not None:
                self._drop(where, owner)
        if owner is not None:
            self.on_change(owner)

    def replace(self, group: str, kind: str, namespace: str | None, objs: Iterable[dict[str, Any]]) -> None:
        """A full list of one kind (in one namespace, or everywhere with None): what it lacks is gone."""
        seen = set()
        for obj in objs:
            meta = obj.get("metadata") or {}
            seen.add((meta.get("namespace") or "", meta.get("name") or ""))
            self.upsert(group, obj)
        with self._lock:
            stale = [w for w in self._owner if w[0] == group and w[1] == kind and (namespace is None or w[2] == namespace)
                     and (w[2], w[3]) not in seen]
            owners = [self._owner[w] for w in stale]
            for where, owner in zip(stale, owners):
                self._drop(where, owner)
        for owner in set(owners):
            self.on_change(owner)

    def _drop(self, where: tuple[str, str, str, str], owner: Key) -> None:
        self._owner.pop(where, None)
        entries = self._by_owner.get(owner)
        if entries is not None:
            entries.pop((where[0], where[1], where[3]), None)
            if not entries:
                del self._by_owner[owner]

    # --- read by the reconciles -----------------------------------------------------------------

    def synced(self) -> bool:
        with self._lock:
            events = list(self._synced.values())
        return all(e.is_set() for e in events)

    def wait_synced(self, timeout: float | None = None) -> bool:
        with self._lock:
            events = list(self._synced.values())
        return all(e.wait(timeout) for e in events)

    def observed(self, key: Key) -> Observed:
        """The key's children as the plan reads them. The summaries are shared: read, never change them."""
        out: dict[str, list[dict[str, Any]]] = {JOBS: [], PODS: [], OTHERS: []}
        with self._lock:
            for (group, _, _), summary in (self._by_owner.get(key) or {}).items():
                out[group].append(summary)
        return Observed(jobs=out[JOBS], pods=out[PODS], children=out[OTHERS])

    def owners(self) -> int:
        with self._lock:
            return len(self._by_owner)

    def size(self) -> int:
        with self._lock:
            return len(self._owner)
