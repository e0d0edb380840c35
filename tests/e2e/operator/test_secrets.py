"""Credentials never reach logs, Events, status or reports. A full digits run with the S3
artifact store (a moto server on the real node's address, where pods reach it) and credentials the test made up: the worker, the
Triton `assemble` container, the golden probe and the cleanup Job all receive them (envFrom a
Secret); afterwards every log, Event, status, pod termination message and stored report is
searched for them. Also the S3 store end to end in the cluster."""

from __future__ import annotations

import json
import secrets
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
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def s3() -> Any:
    import boto3
    from moto.server import ThreadedMotoServer

    from kubetest.node import NODE_IP

    server = ThreadedMotoServer(ip_address=NODE_IP, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    client.create_bucket(Bucket="artifacts")
    yield endpoint, client
    server.stop()


def test_no_credential_reaches_logs_events_status_or_reports(
    s3: Any, operator_env: dict[str, str], cluster: Any, namespace: str, core_api: Any, custom_api: Any, batch_api: Any,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from kubernetes import client

    endpoint, s3_client = s3
    store_key, store_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    model_key, model_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    known = [store_key, store_secret, model_key, model_secret]
    for name, (key, secret) in {"store-creds": (store_key, store_secret), "model-creds": (model_key, model_secret)}.items():
        core_api.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}))
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())

    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())
    cfg = tmp_path / "operator.yaml"
    cfg.write_text(yaml.safe_dump({**base, "metrics_port": 0, "artifact_store": {
        "type": "s3", "bucket": "artifacts", "prefix": "mo", "endpoint": endpoint, "secret": "store-creds"}}))
    op = OperatorProcess(cfg, cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    snapshots: list[str] = []

    def pod_logs() -> str:
        """The kubelet's container logs (what `kubectl logs` reads), every container of every pod."""
        return "\n".join(p.read_text(errors="replace") for p in (Path(cluster.state_dir) / "pods").glob(f"{namespace}_*/*/*.log"))

    try:
        body = digits_md("secretive", monitoring={"goldenProbe": {"enabled": True, "intervalSeconds": 5, "samples": 16}})
        body["spec"]["model"]["credentialsSecret"] = "model-creds"
        create_md(custom_api, namespace, body)
        md = wait_phase(custom_api, namespace, "secretive", "Ready", timeout=420)
        assert md["status"]["artifact"]["uri"].startswith("s3://artifacts/mo/")
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "secretive")).get("status", {}).get("quality", {}).get("passed") is True and m,
                      timeout=180, interval=1, message="a golden probe against the S3 artifact")
        assert condition(md, "QualityDegraded")["status"] == "False"

        # Everything the run left behind, before the deletion removes it (the kubelet drops a
        # pod's log files with the pod).
        snapshots.append(json.dumps(md))
        pod_logs_before = pod_logs()
        objects = s3_client.list_objects_v2(Bucket="artifacts", Prefix="mo/")["Contents"]
        reports = [o["Key"] for o in objects if o["Key"].endswith(".json")]
        assert any(k.endswith("report.json") for k in reports), reports
        snapshots += [s3_client.get_object(Bucket="artifacts", Key=k)["Body"].read().decode() for k in reports]
        for pod in core_api.list_namespaced_pod(namespace).items:
            for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
                for state in (status.state, status.last_state):
                    if state and state.terminated and state.terminated.message:
                        snapshots.append(state.terminated.message)
            # Pods get the credentials by reference only.
            for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
                assert not [e for e in c.env or [] if e.name.startswith("AWS_SECRET") or e.name == "AWS_ACCESS_KEY_ID"], (pod.metadata.name, c.name)
        snapshots += [json.dumps(j.to_dict(), default=str) for j in batch_api.list_namespaced_job(namespace).items]

        custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "secretive")
        wait_for(lambda: not custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
                 timeout=180, interval=1, message="the ModelDeployment deleted (cleanup Job done)")
        assert "Contents" not in s3_client.list_objects_v2(Bucket="artifacts", Prefix="mo/"), "artifacts left in the bucket"
    finally:
        op.stop()

    events = core_api.list_namespaced_event(namespace).items
    assert events
    sources = {
        "operator log": op.text(),
        "events": "\n".join(f"{e.reason} {e.message}" for e in events),
        "status, reports, termination messages, Jobs": "\n".join(snapshots),
        "pod logs": pod_logs_before + "\n" + pod_logs(),
        "kubelet and containerd logs": "\n".join(
            p.read_text(errors="replace") for p in (Path(cluster.state_dir) / "logs").glob("*.log") if p.stem in ("kubelet", "containerd")),
    }
    assert len(sources["pod logs"]) > 1000 and "published s3://artifacts/mo/" in sources["pod logs"]
    leaks = [(where, value[:6] + "…") for where, text in sources.items() for value in known if value in text]
    assert not leaks, f"credentials found in: {leaks}"


def test_a_missing_secret_is_a_clear_condition(
    operator_env: dict[str, str], cluster: Any, namespace: str, core_api: Any, custom_api: Any, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Only the operator's pods can find out that a Secret does not exist (the operator itself
    may not read Secrets): the worker pod cannot start, and the condition names the Secret."""
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())
    make_claim(core_api, namespace, "artifacts")
    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())
    cfg = tmp_path / "operator.yaml"
    cfg.write_text(yaml.safe_dump({**base, "metrics_port": 0}))
    op = OperatorProcess(cfg, cluster.kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        body = digits_md("nosecret")
        body["spec"]["model"]["credentialsSecret"] = "missing-creds"
        create_md(custom_api, namespace, body)
        md = wait_for(lambda: "missing-creds" in condition(m := get_md(custom_api, namespace, "nosecret"), "OptimizationSucceeded").get("message", "")
                      and m, timeout=120, interval=1, message="a condition naming the missing Secret")
        cond = condition(md, "OptimizationSucceeded")
        assert cond["reason"] == "CreateContainerConfigError" and cond["status"] == "Unknown", cond
        assert md["status"]["phase"] in ("Optimizing", "Degraded")
    finally:
        op.stop()
