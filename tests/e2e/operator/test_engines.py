"""The other autoscaling engines, against the real control plane: `hpa` gets an autoscaling/v2
HorizontalPodAutoscaler that the real HPA controller (kube-controller-manager) acts on through
the ModelDeployment's scale subresource; `keda` gets a ScaledObject where KEDA's CRD is served,
and a clear ScalingActive=False condition where it is not. Switching engines removes the old
engine's object. The Triton pods land on the KWOK gpu pool: only the objects matter there. In the
load tests real Triton pods on the real node scale through prometheus-adapter (the
`metrics_adapter` fixture: the custom metrics API the HPA reads) or KEDA (the `keda` fixture: its
operator and the external metrics API its HPAs read), and the three engines meet the same load
step side by side."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import pytest
from md_helpers import (
    GROUP,
    MODELS_CLAIM,
    PLURAL,
    STORE_CLAIM,
    VERSION,
    Load,
    condition,
    create_md,
    digits_md,
    get_md,
    make_claim,
    put_digits,
    ready_triton_pods,
    service_endpoint,
    wait_phase,
)

from kubetest import binaries
from kubetest import keda as keda_crds
from kubetest.rest import ApiError
from kubetest.wait import WaitTimeout, wait_for
from model_operator.scaling import promql

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GPU_SERVING = {"nodePool": "gpu", "replicas": 1, "gpus": 1, "backend": "python", "maxBatchSize": 16}


@pytest.fixture
def claims(core_api: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    put_digits(make_claim(core_api, namespace, MODELS_CLAIM), tmp_path_factory.getbasetemp())
    make_claim(core_api, namespace, STORE_CLAIM)


def md_with(name: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    return digits_md(name, optimization={"quantization": {"mode": "none"}}, serving=GPU_SERVING, autoscaling=autoscaling)


def test_hpa_engine_is_driven_by_the_real_hpa_controller(
    claims: None, start_operator: Any, namespace: str, custom_api: Any, kube: Any,
) -> None:
    from kubernetes import client

    autoscaling_api = client.AutoscalingV2Api(kube)
    start_operator()
    auto = {"engine": "hpa", "minReplicas": 2, "maxReplicas": 4, "metrics": [{"type": "cpuUtilization", "target": 70}]}
    create_md(custom_api, namespace, md_with("hpa", auto))

    hpa = wait_for(lambda: autoscaling_api.list_namespaced_horizontal_pod_autoscaler(namespace).items, timeout=300, interval=1,
                   message="the HorizontalPodAutoscaler")[0]
    assert hpa.spec.scale_target_ref.kind == "ModelDeployment" and hpa.spec.scale_target_ref.name == "hpa"
    assert hpa.metadata.owner_references[0].name == "hpa" and hpa.spec.min_replicas == 2

    # The HPA controller reads the scale subresource (1 replica < minReplicas) and scales the
    # ModelDeployment; the operator turns that into Triton replicas and leaves the count alone.
    md = wait_for(lambda: (m := get_md(custom_api, namespace, "hpa"))["spec"]["serving"]["replicas"] == 2 and m,
                  timeout=120, interval=1, message="the HPA controller scaling the ModelDeployment to minReplicas")
    md = wait_for(lambda: (m := get_md(custom_api, namespace, "hpa")).get("status", {}).get("readyReplicas") == 2 and m,
                  timeout=120, interval=1, message="two Triton replicas ready")
    assert condition(md, "ScalingActive")["reason"] == "HorizontalPodAutoscaler"
    assert md["status"]["scaling"]["engine"] == "hpa"
    managers = {f["manager"] for f in md["metadata"]["managedFields"] if "f:spec" in (f.get("fieldsV1") or {})}
    assert any("controller-manager" in m or "horizontal" in m for m in managers), managers

    # Back to the built-in engine: the HPA goes.
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "hpa", {"spec": {"autoscaling": {"engine": "operator"}}})
    wait_for(lambda: not autoscaling_api.list_namespaced_horizontal_pod_autoscaler(namespace).items, timeout=60, interval=1,
             message="the HPA deleted after the engine changed")
    wait_for(lambda: condition(get_md(custom_api, namespace, "hpa"), "ScalingActive").get("reason") == "OperatorScaler",
             timeout=60, interval=1, message="ScalingActive=OperatorScaler")


# Triton's dynamic batcher may hold a request up to this long for others to join its batch (16 at
# most). Under load from a few clients a request waits a few tenths of a millisecond in the queue
# (0.35-0.46 ms in a CI run on 2 cores, where the load clients share the CPU with Triton; the
# batcher seldom holds one for the whole delay); an idle pod reports 0 (no requests). The target
# sits far below the loaded value: a target of 0.5 ms once left the loaded value inside the HPA's
# 10% tolerance (0.46 / 0.5), and no scale-up came.
QUEUE_DELAY_US = 3000
QUEUE_TARGET_MS = 0.1
CLIENTS = 4
LOCAL_SERVING = {"nodePool": "local", "replicas": 1, "backend": "python", "maxBatchSize": 16,
                 "dynamicBatching": {"maxQueueDelayMicroseconds": QUEUE_DELAY_US}}


def test_hpa_engine_scales_on_queue_time_through_the_metrics_adapter(
    claims: None, start_operator: Any, metrics_adapter: Any, namespace: str, custom_api: Any, core_api: Any, kube: Any,
    prometheus: Any,
) -> None:
    from kubernetes import client
    from kubernetes.utils import parse_quantity

    autoscaling_api = client.AutoscalingV2Api(kube)
    start_operator()
    auto = {"engine": "hpa", "minReplicas": 1, "maxReplicas": 2, "metrics": [{"type": "queueTime", "target": QUEUE_TARGET_MS}],
            "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
            "scaleDown": {"stabilizationSeconds": 15, "periodSeconds": 5}}
    create_md(custom_api, namespace, digits_md("queue", optimization={"quantization": {"mode": "none"}}, serving=LOCAL_SERVING,
                                               autoscaling=auto))
    md = wait_phase(custom_api, namespace, "queue", "Ready", timeout=300)
    selector = md["status"]["selector"]
    wait_for(lambda: prometheus.query(f'nv_inference_queue_duration_us{{namespace="{namespace}"}}'), timeout=60,
             message="Triton's queue time scraped")
    # The custom metrics API answers for the Triton pod, through the aggregation layer: idle, 0.
    # (The aggregator may answer 503 for a moment after the APIService became Available.)
    idle = wait_for(lambda: metrics_adapter.pod_metric(namespace, "triton_queueTime", selector), timeout=60, interval=1,
                    message="the adapter serving triton_queueTime for the Triton pod", ignore=(ApiError,))
    assert len(idle) == 1 and idle[0]["describedObject"]["kind"] == "Pod" and parse_quantity(idle[0]["value"]) == 0, idle

    def hpa() -> Any:
        return autoscaling_api.read_namespaced_horizontal_pod_autoscaler("queue-triton", namespace)

    endpoint = service_endpoint(core_api, namespace, "queue-triton")
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(Load(endpoint, seconds=240, model="queue")) for _ in range(CLIENTS)]
        try:
            up = wait_for(lambda: (h := hpa()).status.desired_replicas == 2 and h, timeout=120, interval=1,
                          message="the HPA wanting 2 replicas on queue time")
        except WaitTimeout as e:
            raise AssertionError(f"{e}\nHPA status: {hpa().status}\nadapter: {metrics_adapter.pod_metric(namespace, 'triton_queueTime', selector)}"
                                 f"\nloads: {[(x.sent, x.failed, x.errors[-1:]) for x in loads]}") from e
        (current,) = up.status.current_metrics
        assert current.type == "Pods" and current.pods.metric.name == "triton_queueTime", current
        assert float(parse_quantity(current.pods.current.average_value)) > QUEUE_TARGET_MS, current
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "queue"))["spec"]["serving"]["replicas"] == 2 and m,
                      timeout=60, interval=1, message="the HPA controller scaling the ModelDeployment to 2")
        wait_for(lambda: len(ready_triton_pods(core_api, namespace, "queue")) == 2, timeout=180, interval=1,
                 message="two Triton replicas Ready")
    assert sum(load.sent for load in loads) > 50 and not sum(load.failed for load in loads), [(x.sent, x.errors) for x in loads]
    managers = {f["manager"] for f in md["metadata"]["managedFields"] if "f:serving" in str(f.get("fieldsV1") or {})}
    assert any("controller-manager" in m or "horizontal" in m for m in managers), managers
    conditions = {c.type: c for c in up.status.conditions}
    assert conditions["ScalingActive"].status == "True" and conditions["ScalingActive"].reason == "ValidMetricFound"

    # No load: queue time falls to 0 once the window has passed; after the 15 s stabilization the
    # HPA goes back to minReplicas, and the Deployment follows the ModelDeployment.
    wait_for(lambda: hpa().status.desired_replicas == 1 and get_md(custom_api, namespace, "queue")["spec"]["serving"]["replicas"] == 1,
             timeout=180, interval=1, message="the HPA scaling back to 1 replica")
    apps = client.AppsV1Api(kube)
    wait_for(lambda: apps.read_namespaced_deployment("queue-triton", namespace).spec.replicas == 1, timeout=60, interval=1,
             message="the Triton Deployment back to 1 replica")


def test_keda_engine_without_and_with_keda(
    claims: None, start_operator: Any, cluster: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    from md_helpers import stop

    try:
        keda_crds.crd_files()
    except binaries.BinariesMissing as e:
        binaries.unavailable(str(e))
    runner = start_operator()
    auto = {"engine": "keda", "minReplicas": 1, "maxReplicas": 3, "pollSeconds": 10,
            "metrics": [{"type": "queueTime", "target": 5}, {"type": "inferenceRate", "target": 40}]}
    create_md(custom_api, namespace, md_with("keda", auto))
    # No KEDA here: the fleet serves, and the condition says why nothing autoscales it.
    md = wait_phase(custom_api, namespace, "keda", "Ready", timeout=300)
    scaling = condition(md, "ScalingActive")
    assert scaling["status"] == "False" and scaling["reason"] == "KEDANotInstalled" and "autoscaling.engine" in scaling["message"]
    wait_for(lambda: [e for e in core_api.list_namespaced_event(namespace).items
                      if e.involved_object.name == "keda" and e.reason == "KEDANotInstalled" and e.type == "Warning"],
             timeout=30, message="the KEDANotInstalled Event")

    # KEDA's own CRDs of the pinned release, but no KEDA running: the operator's ScaledObject
    # passes the real schema; nothing acts on it (the `keda` fixture's tests below run KEDA).
    keda_crds.install_crds(cluster)
    try:
        stop(runner)
        start_operator()  # a restart asks the API server again at once (a running operator does every minute)
        keda = client_for_keda(custom_api)
        so = wait_for(lambda: keda(namespace), timeout=120, interval=1, message="the ScaledObject")[0]
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": "keda"}
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"], so["spec"]["pollingInterval"]) == (1, 3, 10)
        sel = promql.pod_matcher("keda", namespace, track=None)
        queries = [t["metadata"]["query"] for t in so["spec"]["triggers"]]
        assert queries[0] == promql.queue_time_ms(sel, "20s") and queries[1] == promql.inference_rate_per_replica(sel, "20s")
        md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "keda"), "ScalingActive").get("status") == "True" and m,
                      timeout=60, interval=1, message="ScalingActive=True")
        assert condition(md, "ScalingActive")["reason"] == "KEDA" and md["status"]["scaling"]["engine"] == "keda"

        custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keda", {"spec": {"autoscaling": {"enabled": False}}})
        wait_for(lambda: not keda(namespace), timeout=60, interval=1, message="the ScaledObject deleted when autoscaling is off")
    finally:
        custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keda")
        wait_for(lambda: not [m for m in custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]],
                 timeout=120, interval=1, message="the ModelDeployment gone")
        keda_crds.remove_crds(cluster)


def client_for_keda(custom_api: Any) -> Any:
    def scaled_objects(namespace: str) -> list[dict[str, Any]]:
        return custom_api.list_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects")["items"]

    return scaled_objects


def test_keda_engine_scales_on_queue_time_through_keda(
    claims: None, keda: Any, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, kube: Any,
    prometheus: Any,
) -> None:
    """`engine: keda` with KEDA running (the `keda` fixture): KEDA turns the operator's ScaledObject
    into an HPA on external metrics, its metrics server answers them by running the operator's
    Prometheus query, and the real HPA controller scales the ModelDeployment up under load through
    its Service and back down after it: the same step as the `hpa` engine's test above."""
    from kubernetes import client
    from kubernetes.utils import parse_quantity

    autoscaling_api = client.AutoscalingV2Api(kube)
    start_operator()
    auto = {"engine": "keda", "minReplicas": 1, "maxReplicas": 2, "pollSeconds": 5,
            "metrics": [{"type": "queueTime", "target": QUEUE_TARGET_MS}],
            "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
            "scaleDown": {"stabilizationSeconds": 15, "periodSeconds": 5}}
    create_md(custom_api, namespace, digits_md("kq", optimization={"quantization": {"mode": "none"}}, serving=LOCAL_SERVING,
                                               autoscaling=auto))
    md = wait_phase(custom_api, namespace, "kq", "Ready", timeout=300)
    assert condition(md, "ScalingActive")["reason"] == "KEDA", condition(md, "ScalingActive")
    scaled_objects = client_for_keda(custom_api)

    def so_ready() -> Any:
        items = scaled_objects(namespace)
        conds = {c["type"]: c for c in ((items[0].get("status") or {}).get("conditions") or [])} if items else {}
        return (conds.get("Ready") or {}).get("status") == "True" and items[0]

    so = wait_for(so_ready, timeout=60, interval=1, message="KEDA reporting the ScaledObject Ready")
    hpa_name = so["status"]["hpaName"]
    assert hpa_name == f"keda-hpa-{so['metadata']['name']}", so["status"]

    def hpa() -> Any:
        return autoscaling_api.read_namespaced_horizontal_pod_autoscaler(hpa_name, namespace)

    made = wait_for(hpa, timeout=30, interval=1, message="KEDA's HPA", ignore=(ApiError, client.ApiException))
    assert made.spec.scale_target_ref.kind == "ModelDeployment" and made.spec.scale_target_ref.name == "kq"
    (metric,) = made.spec.metrics
    assert metric.type == "External" and metric.external.target.type == "Value", metric
    assert float(parse_quantity(metric.external.target.value)) == QUEUE_TARGET_MS, metric
    external = metric.external.metric.name
    wait_for(lambda: prometheus.query(f'nv_inference_queue_duration_us{{namespace="{namespace}"}}'), timeout=60,
             message="Triton's queue time scraped")
    # The external metrics API answers through the aggregation layer, KEDA's metrics server asking
    # its operator, which runs the query: idle, 0.
    idle = wait_for(lambda: keda.external_metric(namespace, external, so["metadata"]["name"]), timeout=60, interval=1,
                    message=f"KEDA serving {external}", ignore=(ApiError,))
    assert len(idle) == 1 and parse_quantity(idle[0]["value"]) == 0, idle

    endpoint = service_endpoint(core_api, namespace, "kq-triton")
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(Load(endpoint, seconds=240, model="kq")) for _ in range(CLIENTS)]
        try:
            up = wait_for(lambda: (h := hpa()).status.desired_replicas == 2 and h, timeout=120, interval=1,
                          message="KEDA's HPA wanting 2 replicas on queue time")
        except WaitTimeout as e:
            raise AssertionError(f"{e}\nHPA status: {hpa().status}\nexternal: {keda.external_metric(namespace, external, so['metadata']['name'])}"
                                 f"\nloads: {[(x.sent, x.failed, x.errors[-1:]) for x in loads]}") from e
        (current,) = up.status.current_metrics
        assert current.type == "External" and current.external.metric.name == external, current
        # Value, not AverageValue: the query's per-request time is compared with the target as it is.
        assert float(parse_quantity(current.external.current.value)) > QUEUE_TARGET_MS, current
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "kq"))["spec"]["serving"]["replicas"] == 2 and m,
                      timeout=60, interval=1, message="the HPA controller scaling the ModelDeployment to 2")
        wait_for(lambda: len(ready_triton_pods(core_api, namespace, "kq")) == 2, timeout=180, interval=1,
                 message="two Triton replicas Ready")
    assert sum(load.sent for load in loads) > 50 and not sum(load.failed for load in loads), [(x.sent, x.errors) for x in loads]
    conditions = {c.type: c for c in up.status.conditions}
    assert conditions["ScalingActive"].status == "True" and conditions["ScalingActive"].reason == "ValidMetricFound"

    wait_for(lambda: hpa().status.desired_replicas == 1 and get_md(custom_api, namespace, "kq")["spec"]["serving"]["replicas"] == 1,
             timeout=180, interval=1, message="KEDA's HPA scaling back to 1 replica")
    apps = client.AppsV1Api(kube)
    wait_for(lambda: apps.read_namespaced_deployment("kq-triton", namespace).spec.replicas == 1, timeout=60, interval=1,
             message="the Triton Deployment back to 1 replica")



# The three engines side by side: one ModelDeployment each with the same per-replica
# inference-rate target, and the same paced load step through each one's Service (one loop per
# engine, all in this process). A request carries 4 images: 4 inferences, so each engine sees
# RATE_LOAD = 16 inferences/s against a target of 10 per replica: 1.6 replicas' worth, 2 wanted
# and kept (8 per replica at 2 is outside the 10% tolerance but ceil(2 x 0.8) = 2). maxReplicas
# 4 leaves room to overshoot: an engine that does not divide by its replicas goes to 4, and so
# did the built-in one while it counted a replica still starting as one the average was over,
# and again (a CI run: 1 -> 2 -> 4 at 16/s) while it counted a Ready replica that Prometheus had
# not scraped yet.
RATE_TARGET = 10.0
REQUESTS_PER_SECOND = 4.0
RATE_LOAD = 4 * REQUESTS_PER_SECOND
SETTLE_SECONDS = 20
ENGINES = {"eop": "operator", "ehpa": "hpa", "ekeda": "keda"}


def test_three_engines_settle_within_one_replica_under_the_same_load(
    claims: None, keda: Any, metrics_adapter: Any, start_operator: Any, namespace: str, custom_api: Any, core_api: Any,
    kube: Any, prometheus: Any,
) -> None:
    from kubernetes import client

    autoscaling_api = client.AutoscalingV2Api(kube)
    start_operator()
    for name, engine in ENGINES.items():
        auto = {"engine": engine, "minReplicas": 1, "maxReplicas": 4, "pollSeconds": 5,
                "metrics": [{"type": "inferenceRate", "target": RATE_TARGET}],
                "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
                "scaleDown": {"stabilizationSeconds": 15, "periodSeconds": 5}}
        create_md(custom_api, namespace, digits_md(name, optimization={"quantization": {"mode": "none"}},
                                                   serving=LOCAL_SERVING, autoscaling=auto))
    created = time.monotonic()
    selectors = {name: wait_phase(custom_api, namespace, name, "Ready", timeout=300)["status"]["selector"] for name in ENGINES}
    print(f"three ModelDeployments Ready in {time.monotonic() - created:.0f} s", file=sys.__stderr__)
    wait_for(lambda: len(prometheus.query(f'nv_inference_count{{namespace="{namespace}"}}')) == len(ENGINES), timeout=60,
             message="every Triton's inference count scraped")
    # Each engine armed before the step: the custom metrics API answers for the hpa engine's pod
    # and KEDA's metrics server for its ScaledObject, through the aggregation layer (which may
    # answer 503 for a moment after an APIService became Available).
    wait_for(lambda: metrics_adapter.pod_metric(namespace, "triton_inferenceRate", selectors["ehpa"]), timeout=60, interval=1,
             message="the adapter serving triton_inferenceRate", ignore=(ApiError,))
    so = wait_for(lambda: client_for_keda(custom_api)(namespace), timeout=60, interval=1, message="the ScaledObject")[0]
    keda_hpa = wait_for(lambda: autoscaling_api.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{so['metadata']['name']}", namespace),
                        timeout=60, interval=1, message="KEDA's HPA", ignore=(client.ApiException,))
    external = keda_hpa.spec.metrics[0].external.metric.name
    wait_for(lambda: keda.external_metric(namespace, external, so["metadata"]["name"]), timeout=60, interval=1,
             message=f"KEDA serving {external}", ignore=(ApiError,))

    def replicas() -> dict[str, int]:
        return {name: int(get_md(custom_api, namespace, name)["spec"]["serving"]["replicas"]) for name in ENGINES}

    def diagnosis(loads: list[Load]) -> str:
        hpas = [(h.metadata.name, h.status.desired_replicas, h.status.current_metrics,
                 [(c.type, c.status, c.reason, c.message) for c in h.status.conditions or []])
                for h in autoscaling_api.list_namespaced_horizontal_pod_autoscaler(namespace).items]
        builtin = (get_md(custom_api, namespace, "eop").get("status") or {}).get("scaling")
        return (f"replicas: {replicas()}, changes (s after the step): {changes}\nloads: {[(x.model, x.sent, x.failed, x.errors[-1:]) for x in loads]}"
                f"\nHPAs: {hpas}\nbuilt-in: {builtin}")

    last, since = [replicas()], [time.monotonic()]
    changes: list[tuple[int, dict[str, int]]] = []

    def settled() -> Any:
        now = replicas()
        if now != last[0]:
            changes.append((round(time.monotonic() - started), now))
            last[0], since[0] = now, time.monotonic()
        return all(n > 1 for n in now.values()) and time.monotonic() - since[0] >= SETTLE_SECONDS and now

    endpoints = {name: service_endpoint(core_api, namespace, f"{name}-triton") for name in ENGINES}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(Load(endpoints[name], seconds=240, model=name, per_second=REQUESTS_PER_SECOND)) for name in ENGINES]
        try:
            final = wait_for(settled, timeout=180, interval=1, message=f"every engine above 1 replica, unchanged for {SETTLE_SECONDS} s")
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n{diagnosis(loads)}") from e
        elapsed = time.monotonic() - started
        rates = {x.model: x.sent * 4 / elapsed for x in loads}
        # Each count is its own controller's: the built-in scaler's decision on inferenceRate, the
        # HPA controller's on the adapter's Pods metric and on KEDA's External metric.
        history = get_md(custom_api, namespace, "eop")["status"]["scaling"]["history"]
        assert any(h["toReplicas"] > h["fromReplicas"] and "inferenceRate" in h["reason"] for h in history), history
        for name, hpa_name in (("ehpa", "ehpa-triton"), ("ekeda", keda_hpa.metadata.name)):
            hpa = autoscaling_api.read_namespaced_horizontal_pod_autoscaler(hpa_name, namespace)
            active = next(c for c in hpa.status.conditions if c.type == "ScalingActive")
            assert hpa.status.desired_replicas == final[name] and active.reason == "ValidMetricFound", (name, hpa.status)
            assert hpa.status.current_metrics[0].type == ("Pods" if name == "ehpa" else "External"), hpa.status.current_metrics
    # The KopfRunner holds sys.stdout while the operator runs: the numbers go to the real stderr.
    print(f"three engines settled {elapsed:.0f} s after the step:", final, "changes (s after the step):", changes,
          "inferences/s sent:", rates, file=sys.__stderr__)
    assert not sum(load.failed for load in loads), [(x.model, x.sent, x.errors[-1:]) for x in loads]
    # The paced load kept its step: each engine saw the rate the replica counts are about.
    assert all(rate > 0.8 * RATE_LOAD for rate in rates.values()), rates
    assert max(final.values()) - min(final.values()) <= 1, (final, rates)

    # No load: each comes back down to minReplicas after its 15 s scale-down stabilization.
    try:
        wait_for(lambda: set(replicas().values()) == {1}, timeout=150, interval=1, message="every engine back to 1 replica")
    except WaitTimeout as e:
        raise AssertionError(f"{e}\n{diagnosis(loads)}") from e
    print(f"three engines back to 1 replica {time.monotonic() - started - elapsed:.0f} s after the load", file=sys.__stderr__)
