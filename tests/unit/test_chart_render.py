"""The Helm chart, rendered with `helm template` (no cluster): lint, the objects default and edited
values produce, the operator configuration it writes (parsed by the operator's own config class),
least-privilege RBAC, restricted pods (the chart's and the ones the operator creates from the
chart's configuration), the CRDs, and values the schema must reject."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-operator"


from kubetest import chartlib  # noqa: E402
from kubetest.binaries import unavailable  # noqa: E402


@pytest.fixture(autouse=True)
def _helm_required() -> None:
    """Skipped on a machine without helm, failed under CI (kubetest.binaries.unavailable)."""
    if chartlib.helm_binary() is None:
        unavailable("helm not built: run hack/build-binaries.sh (or set MODEL_OPERATOR_HELM)")

NS = "model-operator"
RELEASE = "mo"
FULLNAME = "mo-model-operator"


@functools.lru_cache(maxsize=None)
def _render_cached(values_json: str, monitoring: bool) -> str:
    return json.dumps(chartlib.render(json.loads(values_json) or None, release=RELEASE, namespace=NS, monitoring=monitoring))


def render(values: dict[str, Any] | None = None, monitoring: bool = True) -> list[dict[str, Any]]:
    return json.loads(_render_cached(json.dumps(values or {}, sort_keys=True), monitoring))


def template_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """chartlib.pod_spec of an object chartlib.pod_templates kept (typed without the None)."""
    spec = chartlib.pod_spec(obj)
    assert spec is not None, f"{obj.get('kind')} has no pod template"
    return spec


def operator_config(objs: list[dict[str, Any]], tmp_path: Path) -> Any:
    from model_operator.config import OperatorConfig

    cm = chartlib.one(objs, "ConfigMap", f"{FULLNAME}-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return OperatorConfig.load(path)


def kinds(objs: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs)


# --- lint -----------------------------------------------------------------------------------


LINT_VALUES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"rbac": {"namespaced": True}, "watchNamespaces": ["team-a", "team-b"]},
    "s3": {"artifactStore": {"type": "s3", "s3": {"bucket": "models", "endpoint": "http://minio.storage:9000", "secret": "s3-creds"}}},
    "monitoring-off": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False}},
    "single-standalone": {"operator": {"replicas": 1}, "leaderElection": {"enabled": False}},
}


@pytest.mark.parametrize("case", sorted(LINT_VALUES))
def test_helm_lint(case: str, tmp_path: Path) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", chartlib.kube_version()]
    if LINT_VALUES[case]:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(LINT_VALUES[case]))
        args += ["--values", str(path)]
    out = chartlib.helm(*args)
    assert "0 chart(s) failed" in out


# --- what default values render -------------------------------------------------------------


def test_default_objects() -> None:
    objs = render()
    assert kinds(objs) == sorted(
        [
            ("ServiceAccount", FULLNAME, NS),
            ("ConfigMap", f"{FULLNAME}-config", NS),
            ("ConfigMap", f"{FULLNAME}-dashboard", NS),
            ("ClusterRole", FULLNAME, None),
            ("ClusterRoleBinding", FULLNAME, None),
            ("Deployment", FULLNAME, NS),
            ("PodDisruptionBudget", FULLNAME, NS),
            ("Service", f"{FULLNAME}-metrics", NS),
            ("ServiceMonitor", FULLNAME, NS),
            ("PrometheusRule", FULLNAME, NS),
            ("ClusterKopfPeering", FULLNAME, None),
        ]
    )
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        # managed-by model-operator marks what the operator creates; the chart's objects are Helm's.
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_operator_deployment_runs_the_cli_with_config_liveness_and_peering() -> None:
    objs = render()
    dep = chartlib.one(objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["model-operator"]
    assert c["args"][0] == "run"
    config_arg = next(a for a in c["args"] if a.startswith("--config="))
    config_path = Path(config_arg.split("=", 1)[1])
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert str(config_path.parent) in mounts and mounts[str(config_path.parent)]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(config_path.parent)]["name"]]["configMap"]["name"] == f"{FULLNAME}-config"
    assert config_path.name in chartlib.one(objs, "ConfigMap", f"{FULLNAME}-config")["data"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    env = {e["name"]: e for e in c["env"]}
    peering = chartlib.one(objs, "ClusterKopfPeering")
    assert env["MODEL_OPERATOR_PEERING"]["value"] == peering["metadata"]["name"]
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS"]["value"] == "5"

    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "healthz": 8080}
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["automountServiceAccountToken"] is True
    # A changed configuration rolls the pods.
    assert "checksum/config" in spec["template"]["metadata"]["annotations"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_config_checksum_changes_with_the_configuration() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return chartlib.one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"prometheus": {"url": "http://prom.monitoring:9090"}})


def test_metrics_service_and_servicemonitor_match_the_operator() -> None:
    objs = render({"metrics": {"port": 9300}, "serviceMonitor": {"labels": {"release": "kps"}}})
    dep = chartlib.one(objs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = chartlib.one(objs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9300, "targetPort": "metrics", "protocol": "TCP"}]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9300, "protocol": "TCP"} in c["ports"]
    sm = chartlib.one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["honorLabels"] is True


def test_pdb_only_with_more_than_one_replica() -> None:
    pdb = chartlib.one(render(), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert not chartlib.find(render({"operator": {"replicas": 1}}), "PodDisruptionBudget")


# --- the operator configuration file ---------------------------------------------------------


def test_default_config_parses_with_the_operator_config_class(tmp_path: Path) -> None:
    config = operator_config(render(), tmp_path)
    assert config.namespaces == []
    assert config.worker_image == "model-operator-worker:0.1.0"
    assert config.triton_image == "tritonserver:24.10-py3"
    assert config.allowed_triton_images == [] and config.triton_image_patterns() == ["tritonserver"]
    assert config.artifact_store.type == "pvc" and config.artifact_store.claim == "model-artifacts"
    assert config.artifact_store.secret is None
    assert sorted(config.node_pools) == ["edge", "gpu"]
    gpu = config.node_pools["gpu"]
    assert gpu.node_selector == {"node-pool": "gpu"}
    assert gpu.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu.resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    assert gpu.gpu_product is None and gpu.arch is None
    assert config.node_pools["edge"].arch == "arm64"
    assert config.default_node_pool == {"cloud": "gpu", "edge": "edge"}
    assert config.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    assert config.prometheus_timeout_seconds == 5 and config.prometheus_window == "1m"
    assert config.metrics_port == 9090
    assert config.worker_resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    assert (config.worker_placement, config.benchmark_pools) == ("target-pool", {})
    assert (config.security.run_as_user, config.security.run_as_group, config.security.fs_group) == (1000, 1000, 1000)


def test_edited_config_reaches_the_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's own MODEL_OPERATOR_* environment overrides its file; this test reads the file.
    for key in [k for k in os.environ if k.startswith("MODEL_OPERATOR_")]:
        monkeypatch.delenv(key)
    values = {
        "watchNamespaces": ["team-a"],
        "image": {"pullPolicy": "Always"},
        "worker": {
            "image": {"repository": "ml/model-operator-worker", "tag": "0.2.0"},
            "resources": {"requests": {"cpu": 2, "memory": "1Gi"}},
            "nodeSelector": {"node-pool": "cpu"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
            "serviceAccountName": "optimizer",
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 60,
            "placement": "worker",
            "benchmarkPools": {"edge": "a100"},
        },
        "triton": {"image": {"tag": "25.01-py3"}, "allowedImages": ["registry.example/*", "tritonserver:25.01-py3"],
                   "args": ["--metrics-config=histogram_latencies=true"], "serviceAccountName": "triton",
                   "drainSeconds": 12},
        "nodePools": {"a100": {"nodeSelector": {"gpu": "a100"}, "gpuProduct": "NVIDIA-A100-SXM4-80GB", "resources": {"limits": {"memory": "16Gi"}}}},
        "defaultNodePool": {"cloud": "a100", "edge": ""},
        "prometheus": {"url": "https://prom.example.test", "timeoutSeconds": 2.5, "window": "2m"},
        "operator": {"reconcileIntervalSeconds": 10, "resyncSeconds": 90, "reconcileWorkers": 6, "finalizerTimeoutSeconds": 120,
                     "shard": "team-b"},
        "workloadSecurity": {"runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 3000},
    }
    objs = render(values)
    config = operator_config(objs, tmp_path)
    assert config.namespaces == ["team-a"]
    assert config.image_pull_policy == "Always"
    assert config.worker_image == "ml/model-operator-worker:0.2.0"
    assert config.triton_image == "tritonserver:25.01-py3"
    assert config.triton_image_patterns() == ["registry.example/*", "tritonserver:25.01-py3"]
    assert config.triton_args == ["--metrics-config=histogram_latencies=true"]
    # A number became a quantity string; Helm deep-merged the default limits.
    assert config.worker_resources == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "8Gi"}}
    assert config.worker_node_selector == {"node-pool": "cpu"}
    assert config.worker_tolerations == [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
    assert (config.worker_service_account, config.triton_service_account) == ("optimizer", "triton")
    assert config.drain_seconds == 12
    assert (config.job_backoff_limit, config.job_ttl_seconds) == (0, 60)
    assert (config.worker_placement, config.benchmark_pools) == ("worker", {"edge": "a100"})
    # Helm deep-merges maps: the default pools stay, the new one joins them.
    assert sorted(config.node_pools) == ["a100", "edge", "gpu"]
    assert config.node_pools["a100"].gpu_product == "NVIDIA-A100-SXM4-80GB"
    assert config.default_node_pool == {"cloud": "a100", "edge": ""}
    assert (config.prometheus_url, config.prometheus_timeout_seconds, config.prometheus_window) == ("https://prom.example.test", 2.5, "2m")
    assert (config.reconcile_interval_seconds, config.finalizer_timeout_seconds) == (10, 120)
    assert (config.resync_seconds, config.reconcile_workers) == (90, 6)
    assert config.shard == "team-b"
    assert (config.security.run_as_user, config.security.run_as_group, config.security.fs_group) == (2000, 3000, 3000)
    env = {e["name"]: e.get("value") for e in chartlib.one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS"] == "10"


def test_s3_artifact_store(tmp_path: Path) -> None:
    objs = render({"artifactStore": {"type": "s3", "s3": {"bucket": "models", "prefix": "prod", "endpoint": "http://minio.storage:9000",
                                                          "region": "eu-west-1", "secret": "s3-creds"}}})
    store = operator_config(objs, tmp_path).artifact_store
    assert (store.type, store.bucket, store.prefix, store.endpoint, store.region, store.secret) == (
        "s3", "models", "prod", "http://minio.storage:9000", "eu-west-1", "s3-creds",
    )
    assert store.uri_for("team-a", "digits", "abc") == "s3://models/prod/team-a/digits/abc"
    assert store.url_ttl_seconds == 3600
    # The store's keys reach the operator pod only (envFrom, its own namespace): no tenant pod.
    pod = chartlib.one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # It writes each MD's Secret of pre-signed URLs (create/patch) and reads no Secret at all.
    secret_rules = [r for _, r in chartlib.rbac_rules(objs) if "secrets" in r.get("resources", [])]
    assert secret_rules and all(r["verbs"] == ["create", "patch"] and "resourceNames" not in r for r in secret_rules), secret_rules
    assert chartlib.rbac_violations(objs) != [] and chartlib.rbac_violations(objs, secret_writes=True) == []
    # With a claim store: no Secret rule, no envFrom.
    pvc = render()
    assert not [r for _, r in chartlib.rbac_rules(pvc) if "secrets" in r.get("resources", [])]
    assert "envFrom" not in chartlib.one(pvc, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_empty_node_pools(tmp_path: Path) -> None:
    config = operator_config(render({"nodePools": {"gpu": None, "edge": None}, "defaultNodePool": {"cloud": "", "edge": ""}}), tmp_path)
    assert config.node_pools == {}


# --- RBAC ------------------------------------------------------------------------------------


def _has(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    for r in rules:
        if group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", []):
            if name is None or not r.get("resourceNames") or name in r["resourceNames"]:
                return True
    return False


# What the operator does (controller/handlers.py, reconcile.py, finalize.py, kopf itself).
NEEDED_NAMESPACED = [
    ("serving.model-operator.io", "modeldeployments", "list"),
    ("serving.model-operator.io", "modeldeployments", "watch"),
    ("serving.model-operator.io", "modeldeployments", "patch"),
    ("serving.model-operator.io", "modeldeployments/status", "patch"),
    ("serving.model-operator.io", "modeldeployments/finalizers", "update"),
    ("", "events", "create"),
    ("batch", "jobs", "create"), ("batch", "jobs", "patch"), ("batch", "jobs", "get"), ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"), ("batch", "jobs", "delete"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("apps", "deployments", "create"), ("apps", "deployments", "patch"), ("apps", "deployments", "delete"),
    ("apps", "deployments", "list"), ("apps", "deployments", "watch"),
    ("", "services", "create"), ("", "services", "patch"), ("", "services", "list"), ("", "services", "watch"),
    ("policy", "poddisruptionbudgets", "create"), ("policy", "poddisruptionbudgets", "patch"),
    ("policy", "poddisruptionbudgets", "delete"), ("policy", "poddisruptionbudgets", "list"), ("policy", "poddisruptionbudgets", "watch"),
    ("monitoring.coreos.com", "servicemonitors", "create"), ("monitoring.coreos.com", "servicemonitors", "patch"),
    ("monitoring.coreos.com", "servicemonitors", "list"), ("monitoring.coreos.com", "servicemonitors", "watch"),
    ("autoscaling", "horizontalpodautoscalers", "patch"), ("keda.sh", "scaledobjects", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "list"), ("autoscaling", "horizontalpodautoscalers", "watch"),
    ("autoscaling", "horizontalpodautoscalers", "delete"), ("keda.sh", "scaledobjects", "list"),
    ("keda.sh", "scaledobjects", "watch"), ("keda.sh", "scaledobjects", "delete"),
    # Before creating a child, reconcile.py reads it by name (an object that is not ours is a ChildConflict).
    *((group, resource, "get") for group, resource in (
        ("apps", "deployments"), ("", "services"), ("policy", "poddisruptionbudgets"), ("monitoring.coreos.com", "servicemonitors"),
        ("autoscaling", "horizontalpodautoscalers"), ("keda.sh", "scaledobjects"))),
]


def test_cluster_rbac_covers_what_the_operator_does() -> None:
    objs = render()
    role = chartlib.one(objs, "ClusterRole")
    rules = role["rules"]
    for group, resource, verb in NEEDED_NAMESPACED:
        assert _has(rules, group, resource, verb), (group, resource, verb)
    peering = FULLNAME
    for verb in ("list", "watch"):
        assert _has(rules, "kopf.dev", "clusterkopfpeerings", verb)
        assert _has(rules, "apiextensions.k8s.io", "customresourcedefinitions", verb)
    for verb in ("get", "patch"):
        assert _has(rules, "kopf.dev", "clusterkopfpeerings", verb, peering)
    write = [r for r in rules if "kopf.dev" in r["apiGroups"] and "patch" in r["verbs"]]
    assert all(r.get("resourceNames") == [peering] for r in write), "peering writes are limited to our own object"
    # Cluster-wide operators don't scan namespaces.
    assert not _has(rules, "", "namespaces", "list")
    binding = chartlib.one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]


def test_status_and_finalizers_are_separate_rules() -> None:
    for _, rule in chartlib.rbac_rules(render()):
        resources = rule.get("resources", [])
        if any("/" in r for r in resources):
            assert len(resources) == 1, f"subresource rules stand alone: {rule}"


def test_namespaced_rbac() -> None:
    objs = render({"rbac": {"namespaced": True}, "watchNamespaces": ["team-a", "team-b"]})
    roles = chartlib.find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        for group, resource, verb in NEEDED_NAMESPACED:
            assert _has(role["rules"], group, resource, verb), (role["metadata"]["namespace"], group, resource, verb)
        assert _has(role["rules"], "kopf.dev", "kopfpeerings", "patch", FULLNAME)
        assert not _has(role["rules"], "kopf.dev", "clusterkopfpeerings", "list")
    bindings = chartlib.find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NS}]
    # The only cluster-scoped permission: kopf's read-only observation of namespaces and CRDs.
    (observer,) = chartlib.find(objs, "ClusterRole")
    assert observer["metadata"]["name"] == f"{FULLNAME}-observer"
    assert sorted((r["resources"][0], tuple(r["verbs"])) for r in observer["rules"]) == [
        ("customresourcedefinitions", ("list", "watch")), ("namespaces", ("list", "watch")),
    ]
    assert chartlib.one(objs, "ClusterRoleBinding")["roleRef"]["name"] == f"{FULLNAME}-observer"
    peerings = chartlib.find(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not chartlib.find(objs, "ClusterKopfPeering")
    assert chartlib.one(objs, "Deployment")  # the operator itself still runs in the release namespace


def test_namespaced_rbac_without_any_cluster_permission() -> None:
    objs = render({"rbac": {"namespaced": True, "clusterObservation": False}, "watchNamespaces": ["team-a"]})
    assert not chartlib.find(objs, "ClusterRole") and not chartlib.find(objs, "ClusterRoleBinding")


def test_watch_namespaces_with_a_cluster_role() -> None:
    objs = render({"watchNamespaces": ["team-a"]})
    rules = chartlib.one(objs, "ClusterRole")["rules"]
    assert _has(rules, "kopf.dev", "kopfpeerings", "patch", FULLNAME)
    assert _has(rules, "", "namespaces", "watch")
    assert chartlib.one(objs, "KopfPeering")["metadata"]["namespace"] == "team-a"


def test_rbac_off() -> None:
    objs = render({"rbac": {"create": False}})
    assert not [o for o in objs if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


VARIANTS: dict[str, dict[str, Any]] = {
    **LINT_VALUES,
    "watch-list": {"watchNamespaces": ["a", "b"]},
    "secrets-by-name": {"rbac": {"secrets": {"names": ["registry-token"]}}},
    "namespaced-secrets": {"rbac": {"namespaced": True, "secrets": {"names": ["registry-token"]}}, "watchNamespaces": ["a"]},
}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_rbac_least_privilege(case: str) -> None:
    values = VARIANTS[case]
    allowed = ((values.get("rbac") or {}).get("secrets") or {}).get("names") or []
    objs = render(values)
    s3 = (values.get("artifactStore") or {}).get("type") == "s3"
    assert chartlib.rbac_violations(objs, allowed, secret_writes=s3) == []
    verbs = {v for _, r in chartlib.rbac_rules(objs) for v in r["verbs"]}
    assert verbs <= {"get", "list", "watch", "create", "patch", "update", "delete"}
    assert not [r for _, r in chartlib.rbac_rules(objs) if "deletecollection" in r["verbs"]]


def test_secrets_only_by_name_and_only_get() -> None:
    objs = render({"rbac": {"secrets": {"names": ["registry-token", "s3-creds"]}}})
    secret_rules = [r for _, r in chartlib.rbac_rules(objs) if "secrets" in r["resources"]]
    assert secret_rules == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["registry-token", "s3-creds"], "verbs": ["get"]}]
    assert not [r for _, r in chartlib.rbac_rules(render()) if "secrets" in r["resources"]]


def test_rbac_policy_checker_catches_violations() -> None:
    """The checker the tests rely on must itself fail on bad rules."""
    bad = [
        {"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [r]}
        for r in (
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]},
            {"apiGroups": ["*"], "resources": ["deployments"], "verbs": ["get"]},
        )
    ]
    for obj in bad:
        assert chartlib.rbac_violations([obj]), obj["rules"]


# --- pods: restricted, everywhere -------------------------------------------------------------
# Whether a pod passes the `restricted` Pod Security level is judged by the API server's own
# admission plugin in tests/e2e/test_pod_security.py; these check our choices beyond it.


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_chart_pods_are_restricted(case: str) -> None:
    objs = render(VARIANTS[case])
    templates = chartlib.pod_templates(objs)
    assert templates
    for obj in templates:
        spec = template_spec(obj)
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0


# The examples a cluster runs (local ones, with a file path as model.uri, are for `model-operator local`).
EXAMPLES = [p for p in sorted((REPO / "examples").glob("*/modeldeployment.yaml"))
            if "://" in yaml.safe_load(p.read_text())["spec"]["model"]["uri"]]


@pytest.mark.parametrize("values_case", ["default", "s3"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_pods_the_operator_creates_from_the_chart_config_are_restricted(example: Path, values_case: str, tmp_path: Path) -> None:
    """Render each example with the operator's own builders and the configuration the chart writes:
    worker Jobs, Triton Deployments (with the assemble init container) — restricted, with /tmp writable."""
    from model_operator.plan.render import render as operator_render

    config = operator_config(render(LINT_VALUES[values_case]), tmp_path)
    doc = yaml.safe_load(example.read_text())
    children = operator_render(doc, config)
    pods = chartlib.pod_templates(children)
    assert pods, f"{example} renders no pods"
    for obj in pods:
        spec = template_spec(obj)
        assert spec.get("automountServiceAccountToken") is False
        for c in chartlib.containers(spec):
            tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
            assert tmp, f"{obj['metadata']['name']}/{c['name']} has no writable /tmp"
            vol = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
            assert "emptyDir" in vol
        images = {c["image"] for c in chartlib.containers(spec)}
        assert images <= {config.worker_image, config.triton_image} | {
            (doc["spec"].get("serving") or {}).get("tritonImage")
        }


# --- CRDs ------------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd() -> None:
    generated = sorted((REPO / "crds").glob("*.yaml"))
    assert generated
    for path in generated:
        copy_ = CHART / "crds" / path.name
        assert copy_.exists(), f"{copy_.relative_to(REPO)} is missing: cp {path.relative_to(REPO)} {copy_.relative_to(REPO)}"
        assert copy_.read_bytes() == path.read_bytes(), (
            f"{copy_.relative_to(REPO)} differs from {path.relative_to(REPO)}: "
            f"cp {path.relative_to(REPO)} {copy_.relative_to(REPO)}"
        )


def test_peering_crds() -> None:
    by_name = {c["metadata"]["name"]: c for c in chartlib.crds()}
    assert set(by_name) == {
        "modeldeployments.serving.model-operator.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev",
    }
    for name, scope, kind in (("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering"), ("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering")):
        crd = by_name[name]
        spec = crd["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        assert f"{spec['names']['plural']}.{spec['group']}" == name
        (version,) = spec["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        # kopf writes keep-alives into .status through the main resource: no status subresource.
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status.get("x-kubernetes-preserve-unknown-fields") is True


def test_every_custom_kind_rendered_has_a_crd() -> None:
    served = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for c in chartlib.crds()}
    builtin = {"", "apps", "policy", "rbac.authorization.k8s.io"}
    external = {("monitoring.coreos.com", "ServiceMonitor"), ("monitoring.coreos.com", "PrometheusRule")}
    for case in VARIANTS.values():
        for o in render(case):
            group = o["apiVersion"].rpartition("/")[0]
            if group not in builtin:
                assert (group, o["kind"]) in served | external, o["kind"]


# --- toggles --------------------------------------------------------------------------------


def test_monitoring_toggles() -> None:
    off = render(LINT_VALUES["monitoring-off"])
    assert not {o["kind"] for o in off} & {"ServiceMonitor", "PrometheusRule"}
    assert not chartlib.find(off, "ConfigMap", f"{FULLNAME}-dashboard")
    assert chartlib.find(off, "Service")  # the metrics endpoint stays
    # Where the cluster has no Prometheus operator, its kinds are skipped rather than failing the install.
    plain = render(monitoring=False)
    assert not {o["kind"] for o in plain} & {"ServiceMonitor", "PrometheusRule"}
    assert chartlib.find(plain, "ConfigMap", f"{FULLNAME}-dashboard")
    no_service = render({"metrics": {"service": {"enabled": False}}})
    assert not chartlib.find(no_service, "Service") and not chartlib.find(no_service, "ServiceMonitor")


def test_dashboard_configmap() -> None:
    objs = render({"dashboards": {"namespace": "grafana", "annotations": {"grafana_folder": "ML"}}})
    cm = chartlib.one(objs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    (text,) = cm["data"].values()
    assert text.strip() == (CHART / "files" / "dashboard.json").read_text().strip()
    assert json.loads(text)["uid"] == "model-operator-md"


def test_leader_election_off() -> None:
    objs = render(LINT_VALUES["single-standalone"])
    assert not chartlib.find(objs, "ClusterKopfPeering") and not chartlib.find(objs, "KopfPeering")
    env = {e["name"] for e in chartlib.one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MODEL_OPERATOR_PEERING" not in env
    assert not [r for _, r in chartlib.rbac_rules(objs) if "kopf.dev" in r["apiGroups"]]
    assert not chartlib.find(objs, "PodDisruptionBudget")


def test_names_follow_overrides_and_fit() -> None:
    objs = chartlib.render({"fullnameOverride": "mop"}, release="x", namespace=NS)
    assert chartlib.one(objs, "Deployment")["metadata"]["name"] == "mop"
    long = "r" * 53  # helm's limit for release names
    for o in chartlib.render(None, release=long, namespace=NS):
        assert len(o["metadata"]["name"]) <= 63


def test_images_name_no_registry_host() -> None:
    objs = render()
    images = [c["image"] for o in chartlib.pod_templates(objs) for c in chartlib.containers(template_spec(o))]
    cm = yaml.safe_load(chartlib.one(objs, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
    images += [cm["worker_image"], cm["triton_image"]]
    for image in images:
        first = image.split("/")[0]
        assert "/" not in image or ("." not in first and ":" not in first and first != "localhost"), image
        assert ":" in image and not image.endswith(":latest"), f"{image} is not pinned by tag"


def test_image_repository_may_name_a_registry_with_a_port() -> None:
    """`<registry>/model-operator` as README's "In a cluster" pushes it, e.g. a local registry."""
    objs = render({"image": {"repository": "127.0.0.1:5000/model-operator", "tag": "abc123"},
                   "worker": {"image": {"repository": "127.0.0.1:5000/model-operator-worker", "tag": "abc123"}}})
    images = [c["image"] for o in chartlib.pod_templates(objs) for c in chartlib.containers(template_spec(o))]
    assert "127.0.0.1:5000/model-operator:abc123" in images
    cm = yaml.safe_load(chartlib.one(objs, "ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
    assert cm["worker_image"] == "127.0.0.1:5000/model-operator-worker:abc123"


# --- the schema rejects bad values, naming them ------------------------------------------------


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-zero", {"operator": {"replicas": 0}}, "/operator/replicas"),
    ("replicas-string", {"operator": {"replicas": "two"}}, "/operator/replicas"),
    ("unknown-top-level-key", {"replica": 2}, "'replica' not allowed"),
    ("unknown-nested-key", {"rbac": {"namespace": True}}, "'namespace' not allowed"),
    ("pull-policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("image-with-tag-in-repository", {"image": {"repository": "model-operator:1.0"}}, "/image/repository"),
    ("image-with-tag-after-registry-port", {"image": {"repository": "127.0.0.1:5000/model-operator:1.0"}}, "/image/repository"),
    ("writable-root", {"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext/readOnlyRootFilesystem"),
    ("privilege-escalation", {"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext/allowPrivilegeEscalation"),
    ("root-user", {"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
    ("run-as-root-allowed", {"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ("capabilities-kept", {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "/securityContext/capabilities/drop"),
    ("capabilities-added", {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}, "/securityContext/capabilities/add"),
    ("workload-root", {"workloadSecurity": {"runAsUser": 0}}, "/workloadSecurity/runAsUser"),
    ("store-type", {"artifactStore": {"type": "gcs"}}, "/artifactStore/type"),
    ("claim-name", {"artifactStore": {"pvc": {"claim": "Model_Artifacts"}}}, "/artifactStore/pvc/claim"),
    ("s3-endpoint", {"artifactStore": {"s3": {"endpoint": "minio:9000"}}}, "/artifactStore/s3/endpoint"),
    ("prometheus-url", {"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
    ("prometheus-window", {"prometheus": {"window": "1 minute"}}, "/prometheus/window"),
    ("prometheus-timeout", {"prometheus": {"timeoutSeconds": 0}}, "/prometheus/timeoutSeconds"),
    ("namespace-name", {"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ("namespace-duplicate", {"watchNamespaces": ["a", "a"]}, "/watchNamespaces"),
    ("secret-name", {"rbac": {"secrets": {"names": ["Not A Name"]}}}, "/rbac/secrets/names/0"),
    ("pool-name", {"nodePools": {"GPU_Pool": {}}}, "invalid propertyName 'GPU_Pool'"),
    ("pool-unknown-key", {"nodePools": {"gpu": {"gpuType": "a100"}}}, "'gpuType' not allowed"),
    ("pool-arch", {"nodePools": {"gpu": {"arch": "x86"}}}, "/nodePools/gpu/arch"),
    ("pool-quantity", {"nodePools": {"gpu": {"resources": {"requests": {"cpu": "lots"}}}}}, "/nodePools/gpu/resources/requests/cpu"),
    ("pool-toleration-operator", {"nodePools": {"gpu": {"tolerations": [{"key": "a", "operator": "Maybe"}]}}}, "/nodePools/gpu/tolerations/0/operator"),
    ("node-selector-number", {"worker": {"nodeSelector": {"gpu": 1}}}, "/worker/nodeSelector/gpu"),
    ("metrics-port", {"metrics": {"port": 80}}, "/metrics/port"),
    ("triton-arg", {"triton": {"args": ["verbose"]}}, "/triton/args/0"),
    ("triton-allowed-glob", {"triton": {"allowedImages": ["registry.example/triton*"]}}, "/triton/allowedImages/0"),
    ("triton-allowed-space", {"triton": {"allowedImages": ["ok/*", "two words"]}}, "/triton/allowedImages/1"),
    ("alert-threshold", {"prometheusRule": {"alerts": {"errorRatio": {"threshold": 5}}}}, "/prometheusRule/alerts/errorRatio/threshold"),
    ("alert-for", {"prometheusRule": {"alerts": {"notReady": {"for": "15 minutes"}}}}, "/prometheusRule/alerts/notReady/for"),
    ("alert-severity", {"prometheusRule": {"alerts": {"notReady": {"severity": "page"}}}}, "/prometheusRule/alerts/notReady/severity"),
    ("latency-source", {"prometheusRule": {"alerts": {"latencySLO": {"source": "median"}}}}, "/prometheusRule/alerts/latencySLO/source"),
    ("backoff-limit", {"worker": {"backoffLimit": -1}}, "/worker/backoffLimit"),
]

# Rules across fields: checked in the templates, with a message that says what to do.
BAD_COMBINATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("namespaced-without-namespaces", {"rbac": {"namespaced": True}}, "rbac.namespaced=true needs watchNamespaces"),
    ("s3-without-bucket", {"artifactStore": {"type": "s3"}}, "artifactStore.type=s3 needs artifactStore.s3.bucket"),
    ("default-pool-unknown", {"defaultNodePool": {"cloud": "tpu"}}, 'defaultNodePool.cloud names node pool "tpu"'),
    ("existing-service-account-unnamed", {"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
]


@pytest.mark.parametrize("case,values,message", BAD_VALUES + BAD_COMBINATIONS, ids=[c[0] for c in BAD_VALUES + BAD_COMBINATIONS])
def test_bad_values_are_rejected_with_a_clear_message(case: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(chartlib.HelmError) as info:
        chartlib.render(values, release=RELEASE, namespace=NS)
    assert message in str(info.value), str(info.value)


def test_schema_covers_every_default_value() -> None:
    """Every key in values.yaml is described by the schema (so a typo in a user's file is caught)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        if "$ref" in sch:
            sch = {**schema["$defs"][sch["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in sch.items() if k != "$ref"}}
        props = sch.get("properties")
        if props is None:
            return
        for key, value in node.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict):
                walk(value, props[key], f"{path}{key}.")

    walk(values, schema, "")


@pytest.mark.parametrize(
    "release,values",
    [("mo", {}), ("model-operator", {}), ("prod-model-operator-eu", {}), ("x", {"fullnameOverride": "op"}),
     ("x", {"nameOverride": "mop"}), ("x", {"serviceAccount": {"name": "robot"}}), ("r" * 53, {})],
)
def test_chartlib_names_agree_with_the_chart(release: str, values: dict[str, Any]) -> None:
    """The helpers tests use to find a release's objects name them as the templates do."""
    objs = chartlib.render(values, release=release, namespace=NS)
    assert chartlib.one(objs, "Deployment")["metadata"]["name"] == chartlib.fullname(release, values)
    sa = chartlib.service_account_name(release, values)
    assert chartlib.one(objs, "ServiceAccount")["metadata"]["name"] == sa
    assert chartlib.one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == sa
