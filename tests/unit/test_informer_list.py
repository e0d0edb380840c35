"""The informer's paged list with the API server replaced by a recorder of pages: the cache takes
each page's items before the next page is asked for (a fleet's children are never all held as
bodies at once), a list restarted after an expired continue token still drops what is gone, and
a kind that is not served counts as listed and empty. The list-then-watch against the real API
server is tests/e2e/test_informer.py."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from model_operator.controller.children import OTHERS, ChildCache
from model_operator.kube.informer import Informer

OWNER = "serving.model-operator.io/deployment"


def svc(name: str, owner: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "labels": {OWNER: owner}}, "spec": {"selector": {"app": name}}}


class Response:
    def __init__(self, page: dict[str, Any]) -> None:
        self.data = json.dumps(page).encode()


class PagedServer:
    """Answers list requests from `pages` (a list of (continue token asked for, answer)); records
    what the cache held when each request came."""

    def __init__(self, cache: ChildCache, pages: list[tuple[str, Any]]) -> None:
        self.cache, self.pages = cache, list(pages)
        self.held_at_request: list[int] = []

    def call_api(self, path: str, method: str, query_params: list[tuple[str, Any]], **_: Any) -> Response:
        self.held_at_request.append(self.cache.size())
        token = dict(query_params).get("continue", "")
        asked, answer = self.pages.pop(0)
        assert asked == token, f"asked for continue={token!r}, expected {asked!r}"
        if isinstance(answer, ApiException):
            raise answer
        return Response(answer)


def page(items: list[dict[str, Any]], token: str = "", version: str = "") -> dict[str, Any]:
    return {"items": items, "metadata": {"continue": token, "resourceVersion": version}}


def informer(server: PagedServer, cache: ChildCache) -> Informer:
    return Informer(server, "", "v1", "services", "Service", "ns", "m=1", cache, OTHERS)  # type: ignore[arg-type]


def test_each_page_is_taken_in_before_the_next_is_asked_for() -> None:
    cache = ChildCache()
    server = PagedServer(cache, [("", page([svc("a", "md-a"), svc("b", "md-b")], token="t1")),
                                 ("t1", page([svc("c", "md-a")], version="42"))])
    inf = informer(server, cache)
    assert inf._list() is True
    assert server.held_at_request == [0, 2]  # the first page was in the cache when the second was asked for
    assert sorted(c["name"] for c in cache.observed(("ns", "md-a")).children) == ["a", "c"]
    assert inf.version == "42" and inf.lists == 1 and cache.synced()


def test_a_list_restarted_after_its_continue_token_expired_still_drops_what_is_gone() -> None:
    cache = ChildCache()
    cache.upsert(OTHERS, {**svc("old", "md-a"), "kind": "Service"})
    server = PagedServer(cache, [
        ("", page([svc("a", "md-a")], token="t1")),
        ("t1", ApiException(status=410, reason="Expired")),
        ("", page([svc("a", "md-a")], token="t2")),
        ("t2", page([svc("b", "md-b")], version="7")),
    ])
    inf = informer(server, cache)
    assert inf._list() is True
    assert [c["name"] for c in cache.observed(("ns", "md-a")).children] == ["a"]  # "old" was in neither list
    assert [c["name"] for c in cache.observed(("ns", "md-b")).children] == ["b"] and inf.version == "7"


def test_a_kind_not_served_counts_as_listed_and_empty() -> None:
    cache = ChildCache()
    cache.upsert(OTHERS, {**svc("old", "md-a"), "kind": "Service"})
    inf = informer(PagedServer(cache, [("", ApiException(status=404, reason="Not Found"))]), cache)
    cache.expect(inf.stream)
    assert inf._list() is False
    assert cache.size() == 0 and cache.synced() and inf.lists == 0
