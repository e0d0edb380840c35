"""What `plan` reads and what it returns. Observed holds everything the controller gathered
(its caches, the optional kinds the cluster serves, fresh Prometheus readings, the time), so
plan() itself reads nothing and writes nothing: the same inputs always give the same Plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from ..config import ArtifactStore
from ..kube.api import DESIRED_HASH, with_desired_hash
from ..resources import access
from ..resources import common as names
from . import status as st

Key = tuple[str, str]
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")


@dataclass
class Readings:
    """Prometheus readings for one selection of Triton pods over the analysis window."""

    request_rate: float | None = None
    error_ratio: float | None = None
    latency_ms: float | None = None  # p99, from Triton's latency summaries
    requests: float | None = None  # answered since the analysis started (the canary's)


@dataclass
class Observed:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    # Optional kinds (apiVersion, kind) the cluster serves right now.
    served: frozenset[tuple[str, str]] = frozenset()
    # Prometheus readings taken for this reconcile: "all" (health, taken every health interval),
    # "stable"/"canary" (a track under analysis). Absent: not taken this time.
    metrics: dict[str, Readings] = field(default_factory=dict)
    # The same keys, for readings that failed (Prometheus unreachable, a bad answer).
    metrics_errors: dict[str, str] = field(default_factory=dict)
    # The golden-set probe's readings of this MD, by artifact revision (scaling/fleet.QualitySample),
    # when they were read for this reconcile; None: not read this time.
    quality: dict[str, dict[str, float]] | None = None
    quality_error: str | None = None
    # What running worker Jobs report on their /progress endpoint, by Job name.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    now: float = 0.0

    def child(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((c for c in self.children if c.get("kind") == kind and c.get("name") == name), None)

    def job(self, name: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs if j.get("name") == name), None)

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        """The cached summary of a Job or another child."""
        return self.job(name) if kind == "Job" else self.child(kind, name)

    def job_pods(self, job_name: str) -> list[dict[str, Any]]:
        return [p for p in self.pods if p.get("labels", {}).get("job-name") == job_name]


@dataclass
class Child:
    """A child object as it should be, and the cached summary of the one that exists (None: apply always)."""

    obj: dict[str, Any]
    observed: dict[str, Any] | None = None
    optional: bool = False
    # The operator counter to add one to once it is applied ("jobs_started").
    counter: str | None = None
    # The uid of the existing object, once it is proven ours (its controller is this MD): the
    # apply carries it, so it can only ever change that very object. None: it must not exist yet.
    uid: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.observed is not None and self.observed.get("desiredHash") == self.obj["metadata"]["annotations"][DESIRED_HASH]

    @property
    def ref(self) -> str:
        return f"{self.obj['kind']} {self.obj['metadata']['name']}"


@dataclass(frozen=True)
class Delete:
    api_version: str
    kind: str
    name: str
    namespace: str
    propagation: str = "Background"
    uid: str | None = None  # the object proven ours: a precondition of the delete


# Conditions whose transitions become Events; rollout Events come from the analysis itself.
EVENTFUL = {"OptimizationSucceeded", "ArtifactReady", "Available", "Degraded", "QualityDegraded"}
NEGATIVE = {"Degraded", "QualityDegraded", "RolledBack"}


@dataclass
class Plan:
    """Desired children, children to delete, the status to write and the Events to post."""

    apply: list[Child] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # Operator metrics the applier records: counter name -> increment; gauges by name.
    counts: dict[str, int] = field(default_factory=dict)
    # Pre-signed access this MD's pods need (S3 stores): grant name -> (verb, artifact URI).
    # The controller signs them into the MD's access Secret (resources/access.py).
    access: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Objects with a child's name that this MD does not control: left untouched, one message each.
    conflicts: list[str] = field(default_factory=list)

    def objects(self) -> list[dict[str, Any]]:
        return [c.obj for c in self.apply]


class Draft:
    """The plan under construction for one ModelDeployment: its identity, its conditions
    (starting from the ones it has), and the children and Events decided so far."""

    def __init__(self, md: dict[str, Any], observed: Observed) -> None:
        meta = md["metadata"]
        self.md = md
        self.name: str = meta["name"]
        self.uid: str | None = meta.get("uid")
        self.namespace: str = meta["namespace"]
        self.generation = meta.get("generation")
        self.old_status: dict[str, Any] = dict(md.get("status") or {})
        self.conditions: list[dict[str, Any]] = list(self.old_status.get("conditions") or [])
        self.observed = observed
        self.now = observed.now
        self.plan = Plan(status={"observedGeneration": self.generation})
        self.problems: list[st.Problem] = []

    def cond(self, type_: str, value: bool | str, reason: str, message: str) -> None:
        value_s = value if isinstance(value, str) else ("True" if value else "False")
        before = st.get_condition(self.conditions, type_)
        self.conditions = st.set_condition(self.conditions, type_, value_s, reason, message, self.generation)
        if type_ not in EVENTFUL or (before is not None and before.get("status") == value_s and before.get("reason") == reason):
            return
        bad = value_s == ("True" if type_ in NEGATIVE else "False")
        self.event("Warning" if bad else "Normal", reason, message)

    def old_condition(self, type_: str) -> dict[str, Any]:
        return st.get_condition(list(self.old_status.get("conditions") or []), type_) or {}

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append((type_, reason, message))

    def grant(self, store: ArtifactStore, verb: str, artifact_uri: str) -> None:
        """This MD's pods need `verb` on one of its own artifacts (nothing for claim stores)."""
        if access.uses_urls(store):
            self.plan.access[access.grant_name(verb, artifact_uri)] = (verb, artifact_uri)

    def count(self, name: str) -> None:
        self.plan.counts[name] = self.plan.counts.get(name, 0) + 1

    def owns(self, summary: dict[str, Any]) -> bool:
        """Whether an existing object is this MD's: its controller ownerReference names our uid."""
        return self.uid is not None and summary.get("owner") == self.uid

    def mine(self, kind: str, name: str) -> dict[str, Any] | None:
        """The cached summary of a child, only when it is ours (another object's status is no evidence)."""
        found = self.observed.find(kind, name)
        return found if found is not None and self.owns(found) else None

    def conflict(self, kind: str, name: str, summary: dict[str, Any]) -> None:
        """An object holds a child's name and is not ours: nothing is applied to it."""
        self.plan.conflicts.append(st.conflict_message(kind, name, summary))

    def want(
        self, obj: dict[str, Any], observed: dict[str, Any] | None = None, optional: bool = False, counter: str | None = None
    ) -> None:
        """A child that should exist as `obj`: owned by the MD, stamped with its desired hash.
        An object of that name that is not ours is a conflict: reported, never changed."""
        if observed is not None and not self.owns(observed):
            self.conflict(obj["kind"], obj["metadata"]["name"], observed)
            return
        kopf.adopt(obj, owner=kopf.Body(cast(kopf.RawBody, self.md)))
        names.with_shard(obj, (self.md.get("metadata") or {}).get("labels") or {})
        with_desired_hash(obj)
        self.plan.apply.append(Child(obj, observed, optional, counter, uid=observed.get("uid") if observed else None))

    def want_existing(self, obj: dict[str, Any], optional: bool = False) -> None:
        self.want(obj, self.observed.child(obj["kind"], obj["metadata"]["name"]), optional)

    def drop(self, api_version: str, kind: str, name: str, propagation: str = "Background") -> None:
        """Delete a child we no longer want: only if it exists and is ours, and only that very object."""
        found = self.mine(kind, name)
        if found is not None:
            self.plan.delete.append(Delete(api_version, kind, name, self.namespace, propagation, uid=found.get("uid")))

    def drop_if_present(self, pairs: Iterable[tuple[str, str]], name: str) -> None:
        for api_version, kind in pairs:
            self.drop(api_version, kind, name)
