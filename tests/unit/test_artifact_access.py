"""Store access without store keys (issue 13): which grants the plan gives, what the per-MD
access Secret holds, when it is re-signed, and that no pod the operator builds in a tenant's
namespace references the store's Secret or mounts more of the store than its own artifacts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from model_operator.api.hashing import spec_hash
from model_operator.api.validation import load_spec
from model_operator.config import ArtifactStore, NodePool, OperatorConfig
from model_operator.plan import Observed, plan
from model_operator.resources import access, job, serving, store_jobs
from model_operator.resources import common as names

S3 = ArtifactStore(type="s3", bucket="b", prefix="mo", endpoint="http://s3.local:9000", secret="store-creds")
PVC = ArtifactStore(type="pvc", claim="store")
SPEC: dict[str, Any] = {
    "model": {"uri": "s3://user-bucket/digits.pt", "format": "torchscript", "credentialsSecret": "user-creds"},
    "data": {"validation": {"uri": "s3://user-bucket/val.npz"}},
    "optimization": {"quantization": {"mode": "dynamic-int8"}},
    "serving": {"nodePool": "gpu", "replicas": 2},
    "monitoring": {"goldenProbe": {"enabled": True, "intervalSeconds": 5}},
}


def config(store: ArtifactStore) -> OperatorConfig:
    return OperatorConfig(node_pools={"gpu": NodePool()}, artifact_store=store)


def pods_of(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def md(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "digits", "namespace": "team-a", "uid": "u1", "generation": 1}, "spec": SPEC, "status": status or {}}


def every_pod(store: ArtifactStore) -> list[dict[str, Any]]:
    cfg = config(store)
    spec = load_spec(SPEC)
    uri = store.uri_for("team-a", "digits", spec_hash(spec))
    ref = serving.ArtifactRef(uri=uri, sha256="f" * 64, revision=spec_hash(spec))
    objs = [
        job.build_worker_job("digits", "team-a", spec, cfg),
        serving.build_deployment("digits", "team-a", spec, cfg, ref, replicas=2),
    ]
    if store.type == "pvc":
        objs.append(store_jobs.build_cleanup_job("digits", "team-a", cfg))
    return objs


@pytest.mark.parametrize("store", [S3, PVC], ids=["s3", "pvc"])
def test_no_pod_references_the_store_secret(store: ArtifactStore) -> None:
    for obj in every_pod(store):
        text = json.dumps(obj)
        assert "store-creds" not in text, obj["metadata"]["name"]
        for c in containers(pods_of(obj)):
            for source in c.get("envFrom", []):
                # Only the user's own Secret, and only under the MODEL_SOURCE_ names.
                assert source == {"prefix": "MODEL_SOURCE_", "secretRef": {"name": "user-creds"}}, (obj["metadata"]["name"], source)
            assert not [e for e in c.get("env", []) if e["name"].startswith("AWS_") and e["name"] != "AWS_ENDPOINT_URL"
                        and e["name"] not in ("AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")]


def test_s3_readers_get_one_presigned_get_of_their_own_artifact() -> None:
    spec = load_spec(SPEC)
    for obj in every_pod(S3)[1:]:
        pod = pods_of(obj)
        reader = next(c for c in containers(pod) if c["name"] == "assemble")
        args = reader["args"]
        assert args[args.index("--artifact-url-file") + 1] == f"{access.MOUNT_PATH}/get-{spec_hash(spec)}"
        assert access.mount() in reader["volumeMounts"]
        assert "subPath" not in access.mount()  # the kubelet refreshes only whole-volume mounts
        assert access.volume("digits") in pod["volumes"]
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    triton = next(c for c in pods_of(every_pod(S3)[1])["containers"] if c["name"] == "triton")
    assert access.mount() not in triton["volumeMounts"], "the Triton container itself needs no URL"
    for store in (S3, PVC):
        probe = next(c for c in pods_of(every_pod(store)[1])["containers"] if c["name"] == "probe")
        assert [m["name"] for m in probe["volumeMounts"]] == ["golden", "tmp"], "the golden-set probe reads a file the init container wrote"


def test_pvc_pods_mount_only_their_own_directory_and_only_writers_may_write() -> None:
    """Every pod that mounts the store claim mounts it at <ns>/<md> only: readers (assemble)
    read-only, the worker and the cleanup Job writable."""
    writers = {"digits-opt-" + spec_hash(load_spec(SPEC)), "digits-cleanup"}
    pods = every_pod(PVC)
    assert {obj["metadata"]["name"] for obj in pods} >= writers
    for obj in pods:
        name, pod = obj["metadata"]["name"], pods_of(obj)
        read_only = name not in writers
        store = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "store"]
        assert store == [{"name": "store", "persistentVolumeClaim": {"claimName": "store", "readOnly": read_only}}], name
        mounts = [m for c in containers(pod) for m in c["volumeMounts"] if m["name"] == "store"]
        assert mounts and all(m == {"name": "store", "mountPath": "/mnt/pvc/store/team-a/digits", "subPath": "team-a/digits",
                                    "readOnly": read_only} for m in mounts), name


def test_access_secret_holds_the_urls_and_expiry() -> None:
    urls = {"put-abc": "http://s3/b/k?X-Amz-Signature=1", "get-old": "http://s3/b/o?X-Amz-Signature=2"}
    secret = access.build_access_secret("digits", "team-a", urls, 1_000_000.4)
    assert secret["metadata"]["name"] == "digits-artifact-access" and secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["annotations"][access.ANNOTATION_EXPIRES] == "1000000"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == urls
    assert "stringData" not in secret  # a dropped grant must disappear under server-side apply
    assert access.secret_name("x" * 80).endswith("-artifact-access") and len(access.secret_name("x" * 80)) <= 63


@pytest.mark.parametrize(("signed", "grants", "now", "refresh"), [
    (None, frozenset(), 0.0, True),  # never written by this process
    ((frozenset({"get-a"}), 3600.0), frozenset({"get-a"}), 0.0, False),
    ((frozenset({"get-a"}), 3600.0), frozenset({"get-a"}), 1799.0, False),
    ((frozenset({"get-a"}), 3600.0), frozenset({"get-a"}), 1801.0, True),  # less than half the lifetime left (spread 0)
    ((frozenset({"get-a"}), 3600.0), frozenset({"get-a", "put-b"}), 10.0, True),  # a new grant
    ((frozenset({"get-a", "put-b"}), 3600.0), frozenset({"get-a"}), 10.0, True),  # a revoked grant
])
def test_needs_refresh(signed: tuple[frozenset[str], float] | None, grants: frozenset[str], now: float, refresh: bool) -> None:
    assert access.needs_refresh(signed, grants, now, 3600.0) is refresh


def test_urls_signed_together_come_up_for_refresh_spread_over_a_fifth_of_their_lifetime() -> None:
    signed = (frozenset({"get-a"}), 3600.0)  # 10,000 objects signed at t=0, expiring at t=3600
    spreads = [access.refresh_spread("team-a", f"md-{i:05d}") for i in range(10_000)]
    assert spreads == [access.refresh_spread("team-a", f"md-{i:05d}") for i in range(10_000)], "the same in every process"
    due_at = [min(t for t in range(0, 3600, 10) if access.needs_refresh(signed, signed[0], float(t), 3600.0, s))
              for s in spreads]
    assert min(due_at) >= 1800 and max(due_at) <= 2530, "between half and 70% of the lifetime, never later"
    per_minute = [sum(1 for t in due_at if m * 60 <= t < (m + 1) * 60) for m in range(30, 43)]
    assert max(per_minute) < 1000, per_minute  # all 10,000 at once before the spread


def test_grant_names_refuse_other_verbs() -> None:
    assert access.grant_name("get", "s3://b/mo/ns/d/abc/") == "get-abc"
    with pytest.raises(ValueError):
        access.grant_name("delete", "s3://b/mo/ns/d/abc")


def test_plan_grants_the_worker_one_put_then_the_tracks_gets() -> None:
    cfg = config(S3)
    digest = spec_hash(load_spec(SPEC))
    uri = S3.uri_for("team-a", "digits", digest)
    first = plan(md(), Observed(now=100.0), cfg)
    assert first.access == {f"put-{digest}": ("put", uri)}
    running = Observed(jobs=[{"name": names.job_name("digits", digest), "active": 1, "owner": "u1"}], now=110.0)
    assert plan(md(first.status), running, cfg).access == {f"put-{digest}": ("put", uri)}
    ready = md({"artifact": {"uri": uri, "sha256": "a" * 64, "specHash": digest}})
    serving_plan = plan(ready, Observed(now=200.0), cfg)
    assert serving_plan.access == {f"get-{digest}": ("get", uri)}, "no upload once the artifact exists"
    assert plan(md(), Observed(now=100.0), config(PVC)).access == {}
