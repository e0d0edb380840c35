"""Which watches the API server filters: every child kind by the operator's managed-by label, the
ModelDeployments themselves not at all (the e2e test test_watch_filters shows what arrives)."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from model_operator.controller import handlers


def _selector(settings: kopf.OperatorSettings, group: str, version: str, plural: str) -> str:
    return ",".join(settings.watching.label_selectors.collect(Resource(group, version, plural, namespaced=True)))


def test_every_child_kind_is_filtered_by_the_managed_label_and_the_md_is_not() -> None:
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    for group, version, plural in [("", "v1", "pods"), ("batch", "v1", "jobs"), ("apps", "v1", "deployments"), ("", "v1", "services"),
                                   ("policy", "v1", "poddisruptionbudgets"), ("autoscaling", "v2", "horizontalpodautoscalers"),
                                   ("keda.sh", "v1alpha1", "scaledobjects"), ("monitoring.coreos.com", "v1", "servicemonitors")]:
        assert _selector(settings, group, version, plural) == "app.kubernetes.io/managed-by=model-operator", plural
    assert _selector(settings, "serving.model-operator.io", "v1alpha1", "modeldeployments") == ""
    # Same-named kinds of other groups are not the operator's children: no selector leaks onto them.
    assert _selector(settings, "metrics.k8s.io", "v1beta1", "pods") == ""


def test_every_registered_watch_but_the_mds_is_filtered() -> None:
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
    assert unfiltered == {"modeldeployments"}
