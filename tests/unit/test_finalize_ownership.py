"""The finalizer's side of ownership: it stops only the optimization Jobs this ModelDeployment
controls (labels can be copied; the controller ownerReference can't), each by its uid, and a
cleanup Job of the same name that is not ours is reported (ChildConflict), never reused or deleted."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from model_operator.config import OperatorConfig
from model_operator.controller import finalize

MD = {"metadata": {"name": "digits", "namespace": "ns", "uid": "md-1"}}


def job(name: str, owner: str | None, **status: Any) -> dict[str, Any]:
    refs = [{"kind": "ModelDeployment", "name": "digits", "uid": owner, "controller": True}] if owner else []
    return {"metadata": {"name": name, "uid": f"uid-{name}", "ownerReferences": refs}, "status": status}


class Kube:
    def __init__(self, jobs: list[dict[str, Any]], cleanup: dict[str, Any] | None) -> None:
        self.jobs, self.cleanup = jobs, cleanup
        self.deleted: list[tuple[str, str | None]] = []
        self.applied: list[str] = []

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.jobs if kind == "Job" else []

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.cleanup

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, propagation: str = "Background",
               uid: str | None = None) -> bool:
        self.deleted.append((name, uid))
        return True

    def apply(self, obj: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
        self.applied.append(obj["metadata"]["name"])
        return obj


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "warn", lambda body, *, reason, message: seen.append((reason, message)))
    return seen


def run(kube: Kube) -> None:
    finalize.finalize(MD, kube, OperatorConfig(), logging.getLogger("test"), retry=0, started=None)  # type: ignore[arg-type]  # a fake Kube


def test_only_our_jobs_are_stopped_each_by_its_uid(warnings: list[tuple[str, str]]) -> None:
    kube = Kube([job("digits-opt-a", "md-1"), job("digits-opt-b", None), job("digits-opt-c", "other")], None)
    with pytest.raises(kopf.TemporaryError, match="waiting for"):
        run(kube)
    assert kube.deleted == [("digits-opt-a", "uid-digits-opt-a")]


def test_a_strangers_cleanup_job_is_a_conflict_not_reused(warnings: list[tuple[str, str]]) -> None:
    kube = Kube([job("digits-opt-b", None)], job("digits-cleanup", None, succeeded=1))
    with pytest.raises(kopf.TemporaryError, match="Job digits-cleanup already exists, with no controller"):
        run(kube)
    assert kube.deleted == [] and kube.applied == []
    assert [r for r, _ in warnings] == ["ChildConflict"]


def test_our_cleanup_job_finishes_the_deletion(warnings: list[tuple[str, str]]) -> None:
    run(Kube([], job("digits-cleanup", "md-1", succeeded=1)))
    assert warnings == []
