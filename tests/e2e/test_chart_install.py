"""`helm install` into the test control plane: the chart's ServiceAccount can do what the operator
needs and nothing it must not (`kubectl auth can-i --as system:serviceaccount:...`); the real
operator runs under that identity (a TokenRequest token) through a ModelDeployment's create,
Job, status, Events and finalizer; `helm upgrade` and `helm uninstall` leave no orphans.

The chart's own operator pods are pinned to the KWOK `cpu` pool, where nothing really runs, so
they never compete with the operator a test starts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import OperatorProcess, Release, base_values, http_ok

from kubetest.refusals import refused_lines

pytestmark = pytest.mark.e2e

INSTANCE = "app.kubernetes.io/instance"
# Kinds other controllers make from the chart's objects (Endpoints mirror a Service's labels
# without an owner reference); events are not objects anyone owns.
NOT_HELMS = {"events", "events.events.k8s.io", "endpoints", "componentstatuses"}


def live_objects(cluster: Any, release: str) -> list[dict[str, Any]]:
    """Every object of any listable kind labelled as this release's."""
    kinds = [k for k in cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split() if k not in NOT_HELMS]
    proc = cluster.kubectl("get", ",".join(kinds), "--all-namespaces", "-l", f"{INSTANCE}={release}", "-o", "json", check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["items"]


def unowned(objs: list[dict[str, Any]]) -> set[tuple[str, str | None, str]]:
    return {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objs
        if not o["metadata"].get("ownerReferences")
    }


# --- authorization -----------------------------------------------------------------------------

# (verb, resource, subresource) the operator must be allowed in the namespaces it watches.
MUST_IN_WATCHED = [
    ("list", "modeldeployments.serving.model-operator.io", None),
    ("watch", "modeldeployments.serving.model-operator.io", None),
    ("patch", "modeldeployments.serving.model-operator.io", None),
    ("patch", "modeldeployments.serving.model-operator.io", "status"),
    ("update", "modeldeployments.serving.model-operator.io", "finalizers"),
    ("create", "events", None),
    ("create", "jobs.batch", None), ("patch", "jobs.batch", None), ("get", "jobs.batch", None),
    ("list", "jobs.batch", None), ("watch", "jobs.batch", None), ("delete", "jobs.batch", None),
    ("list", "pods", None), ("watch", "pods", None),
    ("create", "deployments.apps", None), ("patch", "deployments.apps", None), ("delete", "deployments.apps", None),
    ("watch", "deployments.apps", None),
    ("create", "services", None), ("patch", "services", None), ("watch", "services", None),
    ("create", "poddisruptionbudgets.policy", None), ("delete", "poddisruptionbudgets.policy", None),
    ("watch", "poddisruptionbudgets.policy", None),
    ("create", "servicemonitors.monitoring.coreos.com", None), ("patch", "servicemonitors.monitoring.coreos.com", None),
    # (keda.sh scaledobjects are granted too; can-i cannot resolve a kind the cluster does not serve.)
    ("create", "horizontalpodautoscalers.autoscaling", None), ("patch", "horizontalpodautoscalers.autoscaling", None),
    ("watch", "horizontalpodautoscalers.autoscaling", None), ("delete", "horizontalpodautoscalers.autoscaling", None),
    ("list", "kopfpeerings.kopf.dev", None), ("watch", "kopfpeerings.kopf.dev", None),
    # A child is read by name before it is created (a same-named object that is not ours: ChildConflict).
    ("get", "deployments.apps", None), ("get", "services", None), ("get", "poddisruptionbudgets.policy", None),
    ("get", "horizontalpodautoscalers.autoscaling", None),
]
MUST_NOT_ANYWHERE = [
    ("get", "secrets", None), ("list", "secrets", None), ("watch", "secrets", None),
    ("create", "pods", "exec"), ("create", "pods", "attach"), ("create", "pods", "portforward"), ("get", "pods", "proxy"),
    ("create", "pods", None), ("delete", "pods", None), ("patch", "pods", None),
    ("create", "roles.rbac.authorization.k8s.io", None), ("create", "rolebindings.rbac.authorization.k8s.io", None),
    ("create", "serviceaccounts", "token"), ("impersonate", "serviceaccounts", None),
    ("get", "configmaps", None), ("delete", "modeldeployments.serving.model-operator.io", None),
    ("deletecollection", "jobs.batch", None), ("update", "deployments.apps", "scale"),
]
MUST_NOT_CLUSTER = [
    ("delete", "nodes", None), ("patch", "nodes", None), ("create", "nodes", "proxy"),
    ("create", "clusterroles.rbac.authorization.k8s.io", None), ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None), ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("impersonate", "users", None), ("impersonate", "groups", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None), ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("delete", "namespaces", None), ("create", "namespaces", None),
    ("create", "certificatesigningrequests.certificates.k8s.io", None),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None),
    ("patch", "clusterkopfpeerings.kopf.dev", None),
]


def _denials(rel: Release, checks: list[tuple[str, str, str | None]], namespace: str | None, expect: bool) -> list[str]:
    return [
        f"{'cannot' if expect else 'CAN'} {verb} {resource}{'/' + sub if sub else ''} in {namespace or 'the cluster'}"
        for verb, resource, sub in checks
        if rel.can_i(verb, resource, namespace, sub) != expect
    ]


def test_install_cluster_role_allows_what_the_operator_needs_and_nothing_more(release: Release, watched: str) -> None:
    release.values = base_values(watched)
    release.install()
    rel = release
    problems = _denials(rel, MUST_IN_WATCHED, watched, True)
    for ns in (watched, rel.namespace, "kube-system", "default"):
        problems += _denials(rel, MUST_NOT_ANYWHERE, ns, False)
    problems += _denials(rel, MUST_NOT_CLUSTER, None, False)
    # kopf: resource and namespace discovery, and its own peering object only.
    problems += _denials(rel, [("watch", "customresourcedefinitions.apiextensions.k8s.io", None), ("watch", "namespaces", None)], None, True)
    peering = f"kopfpeerings.kopf.dev/{rel.fullname}"
    problems += _denials(rel, [("patch", peering, None), ("get", peering, None)], watched, True)
    problems += _denials(rel, [("patch", "kopfpeerings.kopf.dev/someone-else", None)], watched, False)
    assert not problems, "\n".join(problems)


def test_install_cluster_wide(release: Release) -> None:
    """Default values: every namespace, a ClusterKopfPeering, no namespace scanning."""
    release.values = {"operator": {"nodeSelector": {"node-pool": "cpu"}}}
    release.install()
    rel = release
    problems = []
    for ns in ("default", rel.namespace):
        problems += _denials(rel, [c for c in MUST_IN_WATCHED if not c[1].startswith("kopfpeerings")], ns, True)
        problems += _denials(rel, MUST_NOT_ANYWHERE, ns, False)
    problems += _denials(rel, [c for c in MUST_NOT_CLUSTER if not c[1].startswith("clusterkopfpeerings")], None, False)
    peering = f"clusterkopfpeerings.kopf.dev/{rel.fullname}"
    problems += _denials(rel, [("patch", peering, None), ("get", peering, None), ("watch", "clusterkopfpeerings.kopf.dev", None),
                               ("list", "modeldeployments.serving.model-operator.io", None)], None, True)
    problems += _denials(rel, [("patch", "clusterkopfpeerings.kopf.dev/someone-else", None), ("list", "namespaces", None),
                               ("list", "kopfpeerings.kopf.dev", None)], None, False)
    assert not problems, "\n".join(problems)
    assert release.cluster.kubectl("get", "clusterkopfpeering", rel.fullname, "-o", "name").stdout.strip()


def test_install_namespaced_rbac_is_confined_to_watched_namespaces(release: Release, watched: str) -> None:
    release.values = {**base_values(watched), "rbac": {"namespaced": True}}
    release.install()
    rel = release
    problems = _denials(rel, MUST_IN_WATCHED, watched, True)
    # Outside the watched namespaces: nothing of the application's.
    for ns in (rel.namespace, "default", "kube-system"):
        problems += _denials(rel, MUST_IN_WATCHED, ns, False)
        problems += _denials(rel, MUST_NOT_ANYWHERE, ns, False)
    problems += _denials(rel, MUST_NOT_CLUSTER, None, False)
    problems += _denials(rel, [("list", "modeldeployments.serving.model-operator.io", None)], None, False)  # not cluster-wide
    assert not problems, "\n".join(problems)


def test_secrets_only_when_named(release: Release, watched: str) -> None:
    release.values = {**base_values(watched), "rbac": {"secrets": {"names": ["registry-token"]}}}
    release.install()
    assert release.can_i("get", "secrets/registry-token", watched)
    assert not release.can_i("get", "secrets/other", watched)
    assert not release.can_i("list", "secrets", watched)


def test_s3_store_writes_access_secrets_but_reads_none(release: Release, watched: str) -> None:
    """With an S3 store the operator writes each ModelDeployment's Secret of pre-signed URLs
    (server-side apply: create, patch) and still reads no Secret anywhere; the store's keys
    live in its own namespace, where only its pod's envFrom reads them. A tenant's default
    ServiceAccount can read nothing of the store (nor any Secret) in its own namespace."""
    release.values = {**base_values(watched), "artifactStore": {"type": "s3", "s3": {"bucket": "models", "secret": "store-keys"}}}
    release.install()
    rel = release
    problems = _denials(rel, [("create", "secrets", None), ("patch", "secrets", None)], watched, True)
    for ns in (watched, rel.namespace, "kube-system", "default"):
        problems += _denials(rel, MUST_NOT_ANYWHERE, ns, False)
        problems += _denials(rel, [("get", "secrets/store-keys", None), ("delete", "secrets", None), ("update", "secrets", None)], ns, False)
    problems += _denials(rel, MUST_NOT_CLUSTER, None, False)
    tenant = f"system:serviceaccount:{watched}:default"
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("get", "secrets/store-keys"),
                           ("create", "pods"), ("list", "configmaps")]:
        proc = rel.cluster.kubectl("auth", "can-i", verb, resource, "--as", tenant, "--namespace", watched, check=False)
        if proc.stdout.strip().splitlines()[-1:] != ["no"]:
            problems.append(f"the tenant's default ServiceAccount CAN {verb} {resource} in {watched}")
        proc = rel.cluster.kubectl("auth", "can-i", verb, resource, "--as", tenant, "--namespace", rel.namespace, check=False)
        if proc.stdout.strip().splitlines()[-1:] != ["no"]:
            problems.append(f"the tenant's default ServiceAccount CAN {verb} {resource} in the operator's namespace")
    assert not problems, "\n".join(problems)


# --- upgrade and uninstall ---------------------------------------------------------------------


def test_upgrade_and_uninstall_leave_no_orphans(release: Release, watched: str, wait_for: Any) -> None:
    cluster = release.cluster
    release.values = base_values(watched)
    release.install()
    assert unowned(live_objects(cluster, release.name)) == release.manifest()
    first = release.manifest()
    assert ("ClusterRole", None, release.fullname) in first and ("KopfPeering", watched, release.fullname) in first

    # Roles instead of the ClusterRole, no peering, no monitoring objects.
    release.upgrade({**base_values(watched), "rbac": {"namespaced": True}, "leaderElection": {"enabled": False},
                     "operator": {"replicas": 1, "nodeSelector": {"node-pool": "cpu"}},
                     "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False}})
    second = release.manifest()
    assert ("Role", watched, release.fullname) in second
    assert not {k for k, _, _ in second} & {"KopfPeering", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"}
    live = unowned(live_objects(cluster, release.name))
    assert live == second, f"left behind: {sorted(live - second)}; missing: {sorted(second - live)}"

    # And back: the removed objects return, the Roles go.
    release.upgrade(base_values(watched))
    assert release.manifest() == first
    assert unowned(live_objects(cluster, release.name)) == first

    release.uninstall()

    def gone() -> bool:
        return not live_objects(cluster, release.name)

    try:
        wait_for(gone, timeout=90, message=f"every object of release {release.name} to be deleted")
    except AssertionError:
        left = sorted((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in live_objects(cluster, release.name))
        raise AssertionError(f"left after helm uninstall: {left}") from None
    secrets = cluster.kubectl("get", "secrets", "-n", release.namespace, "-l", f"owner=helm,name={release.name}", "-o", "name").stdout
    assert not secrets.strip(), f"helm release records left: {secrets}"
    # CRDs stay by Helm's design (crds/ is install-only): the cluster's ModelDeployments survive an uninstall.
    assert cluster.kubectl("get", "crd", "modeldeployments.serving.model-operator.io", "-o", "name").stdout.strip()


# --- the operator, running as the chart's ServiceAccount --------------------------------------


def _modeldeployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.model-operator.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://models/digits.onnx", "format": "onnx"}, "serving": {"replicas": 1}, **spec},
    }


@pytest.mark.parametrize("rbac", ["cluster-role", "namespaced-roles"])
def test_operator_runs_as_the_chart_service_account(rbac: str, release: Release, watched: str, custom_api: Any, batch_api: Any,
                                                    core_api: Any, wait_for: Any, tmp_path: Path) -> None:
    """The operator, authenticated only as the chart's ServiceAccount, watches, writes status and
    Events, creates and deletes Jobs and runs its finalizer without a single 403. The worker and
    cleanup Jobs land on the KWOK cpu pool, which completes them without running anything."""
    from kubernetes.client.exceptions import ApiException

    release.values = {
        **base_values(watched),
        "artifactStore": {"type": "s3", "s3": {"bucket": "models"}},
        "worker": {"nodeSelector": {"node-pool": "cpu"}},
        # The store's keys are not given (no S3 server here): the operator's own artifact cleanup
        # can't run, so its finalizer gives up after this timeout and lets the objects go.
        "operator": {"nodeSelector": {"node-pool": "cpu"}, "finalizerTimeoutSeconds": 20},
        "rbac": {"namespaced": rbac == "namespaced-roles"},
    }
    release.install()
    group, version, plural = "serving.model-operator.io", "v1alpha1", "modeldeployments"

    def md(name: str) -> dict[str, Any] | None:
        try:
            return custom_api.get_namespaced_custom_object(group, version, watched, plural, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    op = OperatorProcess(release, "operator-0", tmp_path)
    with op:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{op.liveness}/healthz") or not op.alive(), timeout=60,
                 message="the operator's liveness endpoint")
        assert op.alive(), op.log()

        # kopf keeps itself alive in the release's peering object (get/patch by name).
        def registered() -> bool:
            peering = custom_api.get_namespaced_custom_object("kopf.dev", "v1", watched, "kopfpeerings", release.fullname)
            return "operator-0" in (peering.get("status") or {})

        wait_for(registered, timeout=30, message="the operator's keep-alive in its KopfPeering")

        # A spec the operator refuses: status and a Warning Event, written as the ServiceAccount.
        custom_api.create_namespaced_custom_object(group, version, watched, plural,
                                                   _modeldeployment("bad-pool", serving={"replicas": 1, "nodePool": "tpu"}))
        failed = wait_for(lambda: (md("bad-pool") or {}).get("status", {}).get("phase") == "Failed" and md("bad-pool"),
                          timeout=60, message="status.phase=Failed on bad-pool")
        cond = next(c for c in failed["status"]["conditions"] if c["type"] == "OptimizationSucceeded")
        assert cond["reason"] == "InvalidSpec" and "tpu" in cond["message"]
        wait_for(lambda: [e for e in core_api.list_namespaced_event(watched).items
                          if e.involved_object.name == "bad-pool" and e.reason == "InvalidSpec"],
                 timeout=30, message="the InvalidSpec Event")

        # A good spec: the optimization Job is server-side applied by the operator.
        custom_api.create_namespaced_custom_object(group, version, watched, plural, _modeldeployment("digits"))
        selector = "serving.model-operator.io/deployment=digits,app.kubernetes.io/component=optimizer"
        jobs = wait_for(lambda: batch_api.list_namespaced_job(watched, label_selector=selector).items, timeout=60,
                        message="the optimization Job of digits")
        managers = {(m.manager, m.operation) for m in jobs[0].metadata.managed_fields}
        assert ("model-operator", "Apply") in managers
        assert jobs[0].metadata.owner_references[0].name == "digits"
        wait_for(lambda: (md("digits") or {}).get("status", {}).get("phase") == "Optimizing", timeout=60,
                 message="status.phase=Optimizing on digits")

        # Deletion runs the finalizer: worker Jobs stopped, a cleanup Job, then the object goes.
        custom_api.delete_namespaced_custom_object(group, version, watched, plural, "digits")
        custom_api.delete_namespaced_custom_object(group, version, watched, plural, "bad-pool")
        wait_for(lambda: md("digits") is None and md("bad-pool") is None, timeout=120, interval=1,
                 message="the finalizer to finish and the ModelDeployments to go")
        assert op.alive(), op.log()
    log = op.log()
    assert not refused_lines(log), f"the operator was refused something:\n{log[-4000:]}"


def test_two_replicas_elect_one_active_operator_and_hand_over(release: Release, watched: str, custom_api: Any, wait_for: Any,
                                                                tmp_path: Path) -> None:
    """Two operators with the chart's environment (same peering name, different POD_ID, as the
    Deployment's two replicas get): one of them handles a new ModelDeployment; killed (SIGKILL,
    no goodbye), the other takes over within the peering lifetime."""
    release.values = base_values(watched)
    release.install()
    group, version, plural = "serving.model-operator.io", "v1alpha1", "modeldeployments"
    replicas = {"replica-a": OperatorProcess(release, "replica-a", tmp_path), "replica-b": OperatorProcess(release, "replica-b", tmp_path)}
    with replicas["replica-a"] as a, replicas["replica-b"] as b:
        for op in (a, b):
            wait_for(lambda op=op: http_ok(f"http://127.0.0.1:{op.liveness}/healthz") or not op.alive(), timeout=60,
                     message="liveness")

        def peers() -> dict[str, Any]:
            return custom_api.get_namespaced_custom_object("kopf.dev", "v1", watched, "kopfpeerings", release.fullname).get("status") or {}

        wait_for(lambda: {"replica-a", "replica-b"} <= set(peers()), timeout=30, message="both keep-alives")

        def handled(name: str) -> bool:
            obj = custom_api.get_namespaced_custom_object(group, version, watched, plural, name)
            return (obj.get("status") or {}).get("phase") == "Failed"

        custom_api.create_namespaced_custom_object(group, version, watched, plural,
                                                   _modeldeployment("elected", serving={"replicas": 1, "nodePool": "tpu"}))
        wait_for(lambda: handled("elected"), timeout=30, message="one of the two operators to handle the ModelDeployment")
        logs = a.log() + b.log()
        assert "Pausing all operators, including self" not in logs
        active = max(peers().items(), key=lambda kv: kv[1]["priority"])[0]
        standby = next(name for name in replicas if name != active)
        # The leader logged the InvalidSpec warning it posted for "elected"; the standby, paused
        # while the leader lives, handled nothing and logged no such line.
        marker = "unknown node pool 'tpu'"
        assert marker in replicas[active].log(), replicas[active].log()[-2000:]
        assert marker not in replicas[standby].log(), f"the standby handled it too:\n{replicas[standby].log()[-2000:]}"

        lifetime = float(peers()[active].get("lifetime") or 60)
        replicas[active].kill()
        killed = time.monotonic()
        custom_api.create_namespaced_custom_object(group, version, watched, plural,
                                                   _modeldeployment("handed-over", serving={"replicas": 1, "nodePool": "tpu"}))
        wait_for(lambda: handled("handed-over"), timeout=lifetime + 60, interval=1, message="the surviving replica to take over")
        took = time.monotonic() - killed
        assert took <= lifetime + 15, f"hand-over took {took:.0f}s with a {lifetime:.0f}s peering lifetime"
        for name in ("elected", "handed-over"):
            custom_api.delete_namespaced_custom_object(group, version, watched, plural, name)
