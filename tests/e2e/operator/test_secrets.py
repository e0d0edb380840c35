"""Credentials never reach logs, Events, status or reports, and the artifact store's keys never
reach a tenant's namespace (issue 13). A full digits run with the S3 artifact store on an
authenticating S3-compatible server (S3Proxy on the real node's address, where pods reach it;
keys the test made up, held by the operator process only): the worker publishes through a
pre-signed PUT, the Triton `assemble` container and the golden probe read through pre-signed
GETs, the operator deletes the artifacts itself. Afterwards every Secret, env and volume of every
pod in the namespace is checked for the store's keys, the URLs a tenant can read are tried
against another tenant's artifact, and every log, Event, status, termination message and stored
report is searched for the credentials."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import requests
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

from kubetest.s3store import S3Server
from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
OTHER_TENANT = "mo/team-b/their-model/r1/artifact.tar"


@pytest.fixture
def s3() -> Any:
    from kubetest.node import NODE_IP

    with S3Server(ip=NODE_IP) as server:
        client = server.client()
        client.create_bucket(Bucket="artifacts")
        client.put_object(Bucket="artifacts", Key=OTHER_TENANT, Body=b"tenant B's model")
        yield server


def test_store_keys_stay_with_the_operator_and_no_credential_leaks(
    s3: S3Server, operator_env: dict[str, str], cluster: Any, namespace: str, core_api: Any, custom_api: Any, batch_api: Any,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from kubernetes import client

    s3_client = s3.client()
    model_key, model_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    known = [s3.access_key, s3.secret_key, model_key, model_secret]
    core_api.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="model-creds"), string_data={"AWS_ACCESS_KEY_ID": model_key, "AWS_SECRET_ACCESS_KEY": model_secret}))
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())

    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())
    cfg = tmp_path / "operator.yaml"
    cfg.write_text(yaml.safe_dump({**base, "metrics_port": 0, "artifact_store": {
        "type": "s3", "bucket": "artifacts", "prefix": "mo", "endpoint": s3.endpoint}}))
    # The store's keys: in the operator's environment (the chart's envFrom in its own namespace), nowhere else.
    op = OperatorProcess(cfg, cluster.kubeconfig, namespace, tmp_path / "operator.log", env=s3.env).start()
    snapshots: list[str] = []

    def pod_logs() -> str:
        """The kubelet's container logs (what `kubectl logs` reads), every container of every pod."""
        return "\n".join(p.read_text(errors="replace") for p in (Path(cluster.state_dir) / "pods").glob(f"{namespace}_*/*/*.log"))

    try:
        body = digits_md("secretive", monitoring={"goldenProbe": {"enabled": True, "intervalSeconds": 5, "samples": 16}})
        body["spec"]["model"]["credentialsSecret"] = "model-creds"
        create_md(custom_api, namespace, body)
        md = wait_phase(custom_api, namespace, "secretive", "Ready", timeout=420)
        assert md["status"]["artifact"]["uri"].startswith(f"s3://artifacts/mo/{namespace}/secretive/")
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "secretive")).get("status", {}).get("quality", {}).get("passed") is True and m,
                      timeout=180, interval=1, message="a golden probe against the S3 artifact")
        assert condition(md, "QualityDegraded")["status"] == "False"
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="artifacts", Prefix=f"mo/{namespace}/")["Contents"]]
        assert keys == [f"{md['status']['artifact']['uri'][len('s3://artifacts/'):]}/artifact.tar"], keys

        # What anyone who can read the namespace sees: no store key in any Secret ...
        urls: dict[str, str] = {}
        for secret in core_api.list_namespaced_secret(namespace).items:
            values = {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
            assert not [k for k, v in values.items() if s3.secret_key in v], secret.metadata.name
            if secret.metadata.name == "secretive-artifact-access":
                urls = values
            else:
                assert not [k for k, v in values.items() if s3.access_key in v], secret.metadata.name
        # ... (the access key's id is in the pre-signed URLs as X-Amz-Credential: an identifier, not a key)
        assert urls and all(u.startswith(s3.endpoint) and "X-Amz-Signature=" in u for u in urls.values()), sorted(urls)
        assert set(urls) == {f"get-{md['status']['artifact']['specHash']}"}, "only a GET of the served artifact once it is published"
        # ... nor in any pod the operator made: env, envFrom, volumes.
        pods = core_api.list_namespaced_pod(namespace).items
        # (The probe's pods come and go with its Jobs; their specs are checked in the unit tests.)
        assert {p.metadata.labels.get("app.kubernetes.io/component") for p in pods} >= {"optimizer", "triton"}
        for pod in pods:
            text = json.dumps(client.ApiClient().sanitize_for_serialization(pod.spec))
            assert s3.secret_key not in text and s3.access_key not in text, pod.metadata.name
            for c in [*(pod.spec.init_containers or []), *pod.spec.containers]:
                assert all(src.prefix == "MODEL_SOURCE_" and src.secret_ref.name == "model-creds" for src in c.env_from or []), (pod.metadata.name, c.name)
            secret_volumes = {v.secret.secret_name for v in pod.spec.volumes or [] if v.secret}
            assert secret_volumes <= {"secretive-artifact-access"}, (pod.metadata.name, secret_volumes)
        # The tenant's URLs open its own artifact and nothing else.
        url = next(iter(urls.values()))
        assert requests.get(url, timeout=10).status_code == 200
        other = url.split("?", 1)[0].rsplit("/mo/", 1)[0] + "/" + OTHER_TENANT + "?" + url.split("?", 1)[1]
        tries = {
            "read B's artifact with A's URL": requests.get(other, timeout=10).status_code,
            "list the bucket unsigned": requests.get(f"{s3.endpoint}/artifacts?list-type=2&prefix=mo/", timeout=10).status_code,
            "read B's artifact unsigned": requests.get(f"{s3.endpoint}/artifacts/{OTHER_TENANT}", timeout=10).status_code,
            "delete B's artifact unsigned": requests.delete(f"{s3.endpoint}/artifacts/{OTHER_TENANT}", timeout=10).status_code,
            "delete A's artifact with A's GET URL": requests.delete(url, timeout=10).status_code,
        }
        assert all(code == 403 for code in tries.values()), tries

        # Everything the run left behind, before the deletion removes it (the kubelet drops a
        # pod's log files with the pod).
        snapshots.append(json.dumps(md))
        pod_logs_before = pod_logs()
        archive = s3_client.get_object(Bucket="artifacts", Key=keys[0])["Body"].read()
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            reports = [m for m in tar.getmembers() if m.name.endswith(".json") or m.name == "COMPLETE"]
            assert any(m.name == "report.json" for m in reports)
            snapshots += [tar.extractfile(m).read().decode() for m in reports]  # type: ignore[union-attr]
        for pod in pods:
            for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
                for state in (status.state, status.last_state):
                    if state and state.terminated and state.terminated.message:
                        snapshots.append(state.terminated.message)
        snapshots += [json.dumps(j.to_dict(), default=str) for j in batch_api.list_namespaced_job(namespace).items]

        custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "secretive")
        wait_for(lambda: not custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
                 timeout=180, interval=1, message="the ModelDeployment deleted (the operator deleted its artifacts)")
        assert "Contents" not in s3_client.list_objects_v2(Bucket="artifacts", Prefix=f"mo/{namespace}/"), "artifacts left in the bucket"
        assert s3_client.get_object(Bucket="artifacts", Key=OTHER_TENANT)["Body"].read() == b"tenant B's model"
        assert not [j.metadata.name for j in batch_api.list_namespaced_job(namespace).items if j.metadata.name.endswith("-cleanup")]
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
    assert len(sources["pod logs"]) > 1000 and "assembled" in sources["pod logs"]
    leaks = [(where, value[:6] + "…") for where, text in sources.items() for value in [*known, "X-Amz-Signature"] if value in text]
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
