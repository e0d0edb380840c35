"""The built-in scaler's writes on a real API server: a condition list made from a stale read is
refused (written only onto the version it was made from) and changes nothing (the reconcile's conditions stay), the
scaler's own fields still land, its Events are posted, and a replica change for an object of the same name but
another uid is refused."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from model_operator.api.types import GROUP, KIND, PLURAL, VERSION
from model_operator.controller import scaler
from model_operator.controller.scaler import write_through
from model_operator.kube.api import Kube, StaleRead

pytestmark = pytest.mark.e2e


def _cond(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": reason, "observedGeneration": 1,
            "lastTransitionTime": "2026-12-03T00:00:00Z"}


@pytest.fixture
def md(custom_api: Any, crd_installed: Any, namespace: str) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "scaled"},
            "spec": {"model": {"uri": "s3://models/m.onnx", "format": "onnx"}, "serving": {"replicas": 1}, "autoscaling": {}}}
    custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "scaled", {"status": {
        "artifact": {"sha256": "0" * 64, "uri": "s3://models/a", "format": "onnx"},
        "conditions": [_cond("ArtifactReady", "True", "Verified")]}})


def _stored(custom_api: Any, namespace: str) -> dict[str, Any]:
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled")


def test_conditions_from_a_stale_read_change_nothing_and_the_scalers_fields_still_land(
        kube: Any, core_api: Any, custom_api: Any, namespace: str, md: dict[str, Any]) -> None:
    read = scaler.view(md)
    assert read is not None
    # The reconcile writes its conditions after the scaler read the object.
    reconciled = [_cond("ArtifactReady", "True", "Verified"), _cond("Available", "True", "MinimumReplicasReady")]
    custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "scaled", {"status": {"conditions": reconciled}})
    mine = [*read["status"]["conditions"], _cond("MetricsAvailable", "False", "NoData")]
    scaling = {"engine": "operator", "desired": 1, "reason": "holding 1: no data", "lastPoll": 1000.0}
    writes = scaler.Writes(status={"conditions": mine, "scaling": scaling, "scalingWindow": [{"time": 1000.0, "replicas": 1}]},
                           read_version=read["metadata"]["resourceVersion"], read_conditions=read["status"]["conditions"])
    write_through(Kube(kube), read, writes)
    status = _stored(custom_api, namespace)["status"]
    assert status["conditions"] == reconciled  # not wiped by the stale list
    assert status["scaling"] == scaling and status["scalingWindow"] == [{"time": 1000.0, "replicas": 1}]

    # Conditions alone from the stale read: refused as such, nothing written.
    only = scaler.Writes(status={"conditions": mine}, read_version=read["metadata"]["resourceVersion"],
                         read_conditions=read["status"]["conditions"])
    with pytest.raises(StaleRead):
        write_through(Kube(kube), read, only)
    assert _stored(custom_api, namespace)["status"]["conditions"] == reconciled

    # From a fresh read the same change lands whole.
    fresh = scaler.view(_stored(custom_api, namespace))
    assert fresh is not None
    new = [*fresh["status"]["conditions"], _cond("MetricsAvailable", "False", "NoData")]
    # Another writer moves the object on without touching the conditions (kopf's annotations):
    # the scaler's write still lands, on the newer version.
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled", {"metadata": {"annotations": {"a": "b"}}})
    write_through(Kube(kube), fresh, scaler.Writes(status={"conditions": new}, read_version=fresh["metadata"]["resourceVersion"],
                                                   read_conditions=fresh["status"]["conditions"],
                                                   events=[("Warning", "MetricsUnavailable", "no data; holding 1 replicas")]))
    assert _stored(custom_api, namespace)["status"]["conditions"] == new
    # Its Event, posted through the API server (kopf.event posts only inside kopf's handling).
    events = [e for e in core_api.list_namespaced_event(namespace).items
              if e.involved_object.name == "scaled" and e.involved_object.uid == fresh["metadata"]["uid"]]
    assert [(e.type, e.reason, e.message, e.source.component) for e in events] == [
        ("Warning", "MetricsUnavailable", "no data; holding 1 replicas", "model-operator")]


def test_a_replica_change_for_a_recreated_object_is_refused(kube: Any, custom_api: Any, namespace: str, md: dict[str, Any]) -> None:
    old = scaler.view(md)
    assert old is not None
    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled")
    spec: dict[str, Any] = {"model": {"uri": "s3://models/m.onnx", "format": "onnx"}, "serving": {"replicas": 1}}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "scaled"}, "spec": spec}
    custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    with pytest.raises(ApiException) as refused:
        write_through(Kube(kube), old, scaler.Writes(replicas=3))
    assert refused.value.status in (409, 422)
    assert _stored(custom_api, namespace)["spec"]["serving"]["replicas"] == 1

    current = scaler.view({**_stored(custom_api, namespace), "spec": {**spec, "autoscaling": {"maxReplicas": 4}}})
    assert current is not None
    write_through(Kube(kube), current, scaler.Writes(replicas=3))
    assert _stored(custom_api, namespace)["spec"]["serving"]["replicas"] == 3
