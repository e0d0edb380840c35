"""The bounded session kopf logs in with: one connection per watch stream plus the request pool."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from model_operator.controller import handlers
from model_operator.kube.session import EXTRA_STREAMS, bounded_session, connection_limit


def test_limit_leaves_one_connection_per_watch_stream() -> None:
    assert connection_limit(9, 0, 16) == 9 + EXTRA_STREAMS + 16  # cluster-wide: one stream per kind
    assert connection_limit(9, 3, 16) == 27 + EXTRA_STREAMS + 16  # one stream per kind and namespace
    assert connection_limit(9, 1, 0) == 9 + EXTRA_STREAMS + 1  # never a pool with no room for requests


def test_watched_kinds_match_what_kopf_watches() -> None:
    registry = kopf.get_default_registry()
    selectors: set[Any] = set()
    for part in (registry._indexing, registry._watching, registry._spawning, registry._changing):
        selectors |= part.get_all_selectors()
    assert handlers.WATCHED_KINDS == len(selectors), sorted(s.plural or s.any_name for s in selectors)


def test_session_keeps_the_credentials_and_bounds_the_pool() -> None:
    info = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="t0ken", insecure=True, default_namespace="ns", priority=5)

    async def build() -> tuple[int, str, str, int | None, str | None]:
        ctx = bounded_session(info, 27)
        try:
            session = ctx.aiohttp_session
            assert session.connector is not None
            return session.connector.limit, session.headers["Authorization"], ctx.server, ctx.priority, ctx.default_namespace
        finally:
            await ctx.aiohttp_session.close()

    assert asyncio.run(build()) == (27, "Bearer t0ken", "https://127.0.0.1:6443", 5, "ns")


def test_kopf_keeps_no_index_and_no_timer() -> None:
    """kopf holds every handler until each object of an indexed kind's initial list is indexed
    (quadratic: minutes at 10,000 objects), and keeps each object's whole body for its timers: the
    children are cached by the operator's informers and reconciles are scheduled by its loop."""
    registry = kopf.get_default_registry()
    assert list(registry._indexing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []


def test_in_cluster_login_uses_the_service_address_the_kubelet_gives() -> None:
    """No cluster DNS needed: $KUBERNETES_SERVICE_HOST/PORT replace kubernetes.default.svc."""
    from model_operator.controller.handlers import in_cluster_address

    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca")
    moved = in_cluster_address(info, {"KUBERNETES_SERVICE_HOST": "198.19.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert moved is not None and moved.server == "https://198.19.0.1:443"
    assert moved.token == "t" and moved.ca_path == "/ca"
    v6 = in_cluster_address(info, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert v6 is not None and v6.server == "https://[fd00::1]:6443"
    assert in_cluster_address(info, {}) is info
    assert in_cluster_address(None, {"KUBERNETES_SERVICE_HOST": "198.19.0.1", "KUBERNETES_SERVICE_PORT": "443"}) is None
