"""Which watches the API server filters: every child kind by the operator's managed-by label and
its shard (the informers' selector), the ModelDeployments by the shard alone (kopf's setting; the
e2e tests test_watch_filters and test_shards show what arrives)."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from model_operator.controller import handlers
from model_operator.resources import common


def _selector(settings: kopf.OperatorSettings, group: str, version: str, plural: str) -> str:
    return ",".join(settings.watching.label_selectors.collect(Resource(group, version, plural, namespaced=True)))


CHILDREN = [("", "v1", "pods"), ("batch", "v1", "jobs"), ("apps", "v1", "deployments"), ("", "v1", "services"),
            ("policy", "v1", "poddisruptionbudgets"), ("autoscaling", "v2", "horizontalpodautoscalers"),
            ("keda.sh", "v1alpha1", "scaledobjects"), ("monitoring.coreos.com", "v1", "servicemonitors")]


def test_every_child_kind_is_filtered_by_the_managed_label_and_the_md_by_its_shard() -> None:
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    # The unnamed shard (the default): objects without the shard label.
    assert sorted(handlers.CHILD_KINDS) == sorted(CHILDREN)
    assert handlers.managed_selector() == "app.kubernetes.io/managed-by=model-operator,!serving.model-operator.io/shard"
    assert _selector(settings, "serving.model-operator.io", "v1alpha1", "modeldeployments") == "!serving.model-operator.io/shard"
    # kopf watches nothing else, so no selector of ours leaks onto another kind.
    assert _selector(settings, "metrics.k8s.io", "v1beta1", "pods") == ""


def test_a_named_shard_selects_its_label() -> None:
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings, "team-b")
    assert handlers.managed_selector("team-b") == "app.kubernetes.io/managed-by=model-operator,serving.model-operator.io/shard=team-b"
    assert _selector(settings, "serving.model-operator.io", "v1alpha1", "modeldeployments") == "serving.model-operator.io/shard=team-b"


def test_children_and_their_pods_carry_the_mds_shard() -> None:
    def deployment() -> dict[str, object]:
        return {"kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
                "spec": {"template": {"metadata": {"labels": {"app": "d"}}, "spec": {}}}}

    stamped = common.with_shard(deployment(), {common.LABEL_SHARD: "team-b", "other": "x"})
    assert stamped["metadata"]["labels"] == {"a": "b", common.LABEL_SHARD: "team-b"}
    assert stamped["spec"]["template"]["metadata"]["labels"] == {"app": "d", common.LABEL_SHARD: "team-b"}  # type: ignore[index]
    assert common.with_shard(deployment(), {"other": "x"}) == deployment()
    service = common.with_shard({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}}, {common.LABEL_SHARD: "c"})
    assert service["metadata"]["labels"] == {common.LABEL_SHARD: "c"} and "template" not in service["spec"]


def test_every_registered_watch_is_filtered() -> None:
    """A child index added later without a server-side selector would stream the whole cluster."""
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    registry = kopf.get_default_registry()
    selectors = [h.selector for reg in (registry._indexing, registry._changing, registry._spawning, registry._watching)
                 for h in reg.get_all_handlers() if h.selector is not None]
    unfiltered = set()
    for sel in selectors:
        resource = Resource(sel.group or "", sel.version or "v1", str(sel.any_name or sel.plural), namespaced=True)
        if not settings.watching.label_selectors.collect(resource):
            unfiltered.add(resource.plural)
    assert unfiltered == set()
