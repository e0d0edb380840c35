"""Every query the operator sends parses and evaluates on a real Prometheus."""

from __future__ import annotations

from typing import Any

import pytest

from model_operator.api.types import ScalingMetricType
from model_operator.scaling import promql
from model_operator.scaling.prometheus import Prometheus

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["digits", "a.b-c", "m" * 63])
@pytest.mark.parametrize("track", ["stable", "canary", None])
def test_queries_evaluate(prometheus: Any, name: str, track: str | None) -> None:
    client = Prometheus(prometheus.url, timeout=10)
    sel = promql.pod_matcher(name, "ns", track=track)
    queries = [promql.scaling_query(m, sel, "30s") for m in ScalingMetricType]
    queries += [promql.error_ratio(sel, "30s"), promql.request_rate(sel, "30s"), promql.p99_latency_ms(sel, "30s"), promql.avg_latency_ms(sel, "30s")]
    for q in queries:
        # No series match here: a valid query answers "no data" (None); a broken one raises.
        assert client.query(q) is None, q


def test_fleet_queries_evaluate(prometheus: Any) -> None:
    import asyncio

    from model_operator.scaling.prometheus import AsyncPrometheus

    client = AsyncPrometheus(prometheus.url, timeout=10)
    queries = [promql.fleet_scaling_query(m, "30s") for m in ScalingMetricType]
    queries += [promql.fleet_request_rate("30s"), promql.fleet_error_ratio("30s"), promql.fleet_p99_latency_ms(), promql.fleet_reporting_pods()]
    for q in queries:
        # Valid PromQL (label_replace, grouping) answers a vector keyed by (namespace, md): empty,
        # or holding the Triton pods an earlier test in this session left within the window.
        # Broken PromQL raises.
        for answer in (asyncio.run(client.query_by(q, ("namespace", "md"))), Prometheus(prometheus.url, timeout=10).query_by(q, ("namespace", "md"))):
            assert all(len(key) == 2 and all(key) for key in answer), (q, answer)
    # The golden-set probe containers' verdicts: one query grouped by metric name.
    golden = Prometheus(prometheus.url, timeout=10).query_by(promql.fleet_golden_quality(), promql.GOLDEN_BY)
    assert all(len(key) == len(promql.GOLDEN_BY) for key in golden), golden
