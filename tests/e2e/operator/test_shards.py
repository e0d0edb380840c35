"""A fleet split between two operator processes by the shard label (config.shard): each runs
only the ModelDeployments of its share, and its children carry the label, so the API server
sends each process only its own objects.

Both ModelDeployments name a credentials Secret that does not exist: the worker pod can't
start, so no optimization runs, yet the condition that names the Secret is written only by an
operator that saw the Job's pod through its (shard-filtered) pod watch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from md_helpers import (
    GROUP,
    MODELS_CLAIM,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    digits_md,
    get_md,
    make_claim,
    put_digits,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHARD = "serving.model-operator.io/shard"


def _md(name: str, shard: str) -> dict[str, Any]:
    body = digits_md(name)
    body["spec"]["model"]["credentialsSecret"] = "missing-creds"
    if shard:
        body["metadata"].setdefault("labels", {})[SHARD] = shard
    return body


def _named_the_secret(custom_api: Any, namespace: str, name: str) -> bool:
    return "missing-creds" in condition(get_md(custom_api, namespace, name), "OptimizationSucceeded").get("message", "")


def test_two_shards_split_the_fleet(
    operator_env: dict[str, str], cluster: Any, namespace: str, core_api: Any, custom_api: Any, batch_api: Any,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())
    make_claim(core_api, namespace, "artifacts")
    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())

    def operator(shard: str) -> OperatorProcess:
        label = shard or "unnamed"
        cfg = tmp_path / f"operator-{label}.yaml"
        cfg.write_text(yaml.safe_dump({**base, "metrics_port": 0, "shard": shard}))
        return OperatorProcess(cfg, cluster.kubeconfig, namespace, tmp_path / f"operator-{label}.log").start()

    ops = [operator("")]
    try:
        create_md(custom_api, namespace, _md("sharded", "a"))
        create_md(custom_api, namespace, _md("unsharded", ""))
        wait_for(lambda: _named_the_secret(custom_api, namespace, "unsharded"), timeout=120, interval=1,
                 message="the unnamed shard's operator running the unlabelled ModelDeployment")
        # The unnamed shard's operator never saw the labelled one (created first): no status, no Job.
        assert not get_md(custom_api, namespace, "sharded").get("status"), get_md(custom_api, namespace, "sharded")
        assert not batch_api.list_namespaced_job(namespace, label_selector=f"{SHARD}=a").items

        ops.append(operator("a"))
        wait_for(lambda: _named_the_secret(custom_api, namespace, "sharded"), timeout=120, interval=1,
                 message="shard a's operator running its ModelDeployment, through its filtered pod watch")
        # The labelled ModelDeployment's Job and the pod it made carry the shard; the other's don't.
        (job,) = batch_api.list_namespaced_job(namespace, label_selector="serving.model-operator.io/deployment=sharded").items
        assert job.metadata.labels[SHARD] == "a" and job.spec.template.metadata.labels[SHARD] == "a"
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"{SHARD}=a").items
        assert pods and {p.metadata.labels["serving.model-operator.io/deployment"] for p in pods} == {"sharded"}
        (other,) = batch_api.list_namespaced_job(namespace, label_selector="serving.model-operator.io/deployment=unsharded").items
        assert SHARD not in (other.metadata.labels or {})

        # With the unnamed shard's operator gone, an edit of its ModelDeployment waits for it;
        # shard a's operator takes the edit of its own, made after, and leaves the other alone.
        ops[0].stop()
        for name in ("unsharded", "sharded"):
            custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"serving": {"replicas": 2}}})
        wait_for(lambda: get_md(custom_api, namespace, "sharded")["status"].get("observedGeneration") == 2, timeout=60, interval=1,
                 message="shard a's operator observing its edited ModelDeployment")
        assert get_md(custom_api, namespace, "unsharded")["status"]["observedGeneration"] == 1

        # Deleting runs each finalizer in the operator of its shard.
        ops[0].start()
        for name in ("unsharded", "sharded"):
            custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        wait_for(lambda: not custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"], timeout=120,
                 interval=1, message="both ModelDeployments deleted by their shards' finalizers")
    finally:
        for op in ops:
            op.stop()
