"""The fleet-wide scaler: one Prometheus query per metric kind per poll (and one for the pods
reporting), however many
ModelDeployments tick; each tick's decision and what it writes, from plain dicts."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from model_operator.api.types import ScalingMetricType as K
from model_operator.api.validation import load_spec
from model_operator.config import OperatorConfig
from model_operator.controller import autoscale
from model_operator.controller.reconcile import Observed, Reconciler
from model_operator.scaling.fleet import FleetHealth, FleetMetrics
from model_operator.scaling.prometheus import Prometheus, PrometheusError
from model_operator.scaling.promql import fleet_reporting_pods


class FakeProm:
    """Answers each fleet query with rows for MDs md-0 .. md-{n-1} in namespace ns."""

    def __init__(self, n: int, error: PrometheusError | None = None) -> None:
        self.n, self.error = n, error
        self.queries: list[str] = []

    async def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        self.queries.append(promql)
        await asyncio.sleep(0.01)  # an answer takes a while: concurrent ticks wait on it
        if self.error is not None:
            raise self.error
        if promql == fleet_reporting_pods():
            return {("ns", f"md-{i}"): 2.0 for i in range(self.n)}
        base = 1000.0 if "nv_inference_count" in promql else 1.0
        rows: dict[tuple[str, ...], float] = {("ns", f"md-{i}"): base + i for i in range(self.n)}
        return rows | {("other", "md-0"): -1.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_thousand_ticks_share_one_query_per_kind() -> None:
    prom, clock = FakeProm(1000), Clock()
    fleet = FleetMetrics(prom, "30s", clock=clock)  # type: ignore[arg-type]
    kinds = [K.queue_time, K.inference_rate]

    async def ticks() -> list[dict[str, float | None]]:
        samples = await asyncio.gather(*(fleet.sample(kinds, max_age=4.5) for _ in range(1000)))
        return [s.of("ns", f"md-{i}", kinds) for i, s in enumerate(samples)]

    values = asyncio.run(ticks())
    assert len(prom.queries) == 3 and fleet.queries == 3
    assert values[7] == {"queueTime": 8.0, "inferenceRate": 1007.0}
    assert all('by (namespace, md)' in q for q in prom.queries)
    # Within max_age the sample is reused; after it, one new query per kind (and the pods) again.
    clock.now += 3
    sample = asyncio.run(fleet.sample(kinds, max_age=4.5))
    assert len(prom.queries) == 3
    assert sample.reporting("ns", "md-7") == 2 and sample.reporting("ns", "md-1000") is None
    clock.now += 2
    asyncio.run(fleet.sample(kinds, max_age=4.5))
    assert len(prom.queries) == 6


def test_a_new_kind_is_queried_at_once_and_absent_mds_have_no_data() -> None:
    prom = FakeProm(3)
    fleet = FleetMetrics(prom, "30s", clock=Clock())  # type: ignore[arg-type]
    asyncio.run(fleet.sample([K.queue_time], max_age=60))
    sample = asyncio.run(fleet.sample([K.queue_time, K.pending_requests], max_age=60))
    assert len(prom.queries) == 5  # queueTime and the pods, then queueTime, pendingRequests and the pods
    assert sample.of("ns", "md-9", [K.pending_requests]) == {"pendingRequests": None}


def test_a_failed_poll_is_shared_not_retried_per_md() -> None:
    polls: list[tuple[int, Any]] = []
    prom = FakeProm(3, PrometheusError("unreachable", "Prometheus at http://p is unreachable: ClientConnectorError"))
    fleet = FleetMetrics(prom, "30s", clock=Clock(), on_poll=lambda n, e: polls.append((n, e and e.cause)))  # type: ignore[arg-type]

    async def ticks() -> list[Any]:
        return await asyncio.gather(*(fleet.sample([K.queue_time], max_age=5) for _ in range(50)))

    samples = asyncio.run(ticks())
    assert len(prom.queries) == 2 and polls == [(2, "unreachable")]
    assert all(s.error is not None and s.error.cause == "unreachable" for s in samples)


# --- one MD's tick, from plain dicts ---------------------------------------------------------

AUTO = {"minReplicas": 1, "maxReplicas": 10, "pollSeconds": 5, "metrics": [{"type": "inferenceRate", "target": 5}],
        "scaleUp": {"stabilizationSeconds": 0}, "scaleDown": {"stabilizationSeconds": 300}}


def body(replicas: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = {"model": {"uri": "pvc://m/d.onnx", "format": "onnx"}, "serving": {"replicas": replicas}, "autoscaling": AUTO}
    return {"metadata": {"name": "md-0", "namespace": "ns", "generation": 1, "uid": "u"}, "spec": spec,
            "status": {"artifact": {"sha256": "x"}, **(status or {})}}


def tick(b: dict[str, Any], values: Any, now: float, state: autoscale.State, reporting: int | None = None) -> autoscale.ScaleOutcome:
    return autoscale.tick(b, load_spec(b["spec"]), values, now, state, reporting=reporting)


def test_a_replica_ready_before_its_first_scrape_is_not_multiplied_by() -> None:
    # Two Ready replicas, one of them not yet scraped: 8/s is the one scraped pod's rate, so the
    # load is 8/s against 5 per replica, 2 replicas' worth: no change (not ceil(2 x 1.6) = 4).
    b = body(2, {"readyReplicas": 2})
    out = tick(b, {"inferenceRate": 8.0}, 1000.0, autoscale.State.from_status(b["status"]), reporting=1)
    assert out.replicas is None and out.scaling is not None and out.scaling["desired"] == 2
    # Once both are scraped the same per-replica value is twice the load: 4 wanted.
    out = tick(b, {"inferenceRate": 8.0}, 1005.0, autoscale.State.from_status(b["status"]), reporting=2)
    assert out.replicas == 4
    # A pod scraped while still starting (its metrics port answers before it is Ready) is not a base either.
    b = body(2, {"readyReplicas": 1})
    out = tick(b, {"inferenceRate": 8.0}, 1000.0, autoscale.State.from_status(b["status"]), reporting=2)
    assert out.replicas is None


def test_three_replicas_at_ten_each_against_five_want_six() -> None:
    b = body(3)
    out = tick(b, {"inferenceRate": 10.0}, 1000.0, autoscale.State.from_status(b["status"]))
    assert out.replicas == 6 and out.scaling is not None and out.scaling["desired"] == 6
    assert out.scaling["history"][-1] | {"reason": ""} == {"time": "1970-01-01T00:16:40Z", "unixTime": 1000.0, "fromReplicas": 3,
                                                            "toReplicas": 6, "reason": ""}
    assert "recommendations" not in out.scaling and out.window == [{"time": 1000.0, "replicas": 6}]


def test_a_tick_scales_up_from_the_ready_replicas_in_status() -> None:
    # The second replica of the last step is not Ready yet: 9 per Ready replica wants 2, not 4.
    b = body(2, {"readyReplicas": 1})
    out = tick(b, {"inferenceRate": 9.0}, 1000.0, autoscale.State.from_status(b["status"]))
    assert out.replicas is None and out.scaling is not None and out.scaling["desired"] == 2
    b = body(2, {"readyReplicas": 2})
    assert tick(b, {"inferenceRate": 9.0}, 1000.0, autoscale.State.from_status(b["status"])).replicas == 4


@pytest.mark.parametrize("values", [{"inferenceRate": 5.0}, {}], ids=["at-target", "no-data"])
def test_steady_state_writes_once_then_only_on_the_heartbeat(values: dict[str, float]) -> None:
    b = body(3)
    state = autoscale.State.from_status(b["status"], 1000.0, 3)
    writes = []
    for i in range(241):  # 20 minutes of polls every 5 s, load at the target (or no Triton series at all)
        now = 1000.0 + 5 * i
        out = tick(b, values, now, state)
        assert out.scaling is not None and out.window is not None and out.replicas is None
        state.scaling, state.window = out.scaling, out.window
        if autoscale.worth_writing(state, out.scaling, out.window, False, now, heartbeat=600):
            writes.append(now)
            state.written, state.written_window = out.scaling, out.window
    assert writes == [1000.0, 1600.0, 2200.0]


def test_a_stabilization_in_progress_is_written_and_survives_a_restart() -> None:
    b = body(6)
    state = autoscale.State.from_status(b["status"])
    out = tick(b, {"inferenceRate": 5.0}, 1000.0, state)  # 6 wanted: first write
    assert out.scaling is not None and out.window is not None
    state.scaling, state.window, state.written, state.written_window = out.scaling, out.window, out.scaling, out.window
    out = tick(b, {"inferenceRate": 1.0}, 1040.0, state)  # load drops: 2 wanted, the window holds 6
    assert out.replicas is None and out.scaling is not None and out.window is not None
    assert [w["replicas"] for w in out.window] == [6, 2]
    assert autoscale.worth_writing(state, out.scaling, out.window, False, 1040.0)  # reason kind changed: holding
    # The operator restarts from what was written: still held by the window until 300 s pass.
    restarted = autoscale.State.from_status({**b["status"], "scaling": out.scaling, "scalingWindow": out.window})
    held = tick(b, {"inferenceRate": 1.0}, 1200.0, restarted)
    assert held.replicas is None and "stabilization" in held.scaling["reason"]  # type: ignore[index]
    later = tick(b, {"inferenceRate": 1.0}, 1301.0, restarted)
    assert later.replicas is not None and later.replicas < 6


@pytest.mark.parametrize("values", [{"inferenceRate": 5.0}, {}], ids=["at-target", "no-data"])
def test_a_restart_writes_nothing_for_a_steady_md(values: dict[str, float]) -> None:
    b = body(3)
    first = tick(b, values, 1000.0, autoscale.State.from_status(b["status"], 1000.0, 3))  # as the handler starts
    assert first.scaling is not None and first.window == [{"time": 1000.0, "replicas": 3}]
    b["status"] |= {"scaling": first.scaling, "scalingWindow": first.window}
    # A new process 200 s later: the running replicas join the window as a recommendation made now.
    state = autoscale.State.from_status(b["status"], 1200.0, 3)
    out = tick(b, values, 1200.0, state)
    assert out.replicas is None and out.scaling is not None and out.window is not None
    assert [w["replicas"] for w in out.window] == [3]
    assert not autoscale.worth_writing(state, out.scaling, out.window, False, 1200.0, heartbeat=600)


def test_an_older_status_list_of_recommendations_seeds_the_window() -> None:
    status = {"scaling": {"lastPoll": 990.0, "recommendations": [{"time": 900.0 + i, "replicas": 6} for i in range(90)]}}
    b = body(6, status)
    out = tick(b, {"inferenceRate": 1.0}, 1000.0, autoscale.State.from_status(b["status"]))
    assert out.replicas is None and out.window == [{"time": 989.0, "replicas": 6}, {"time": 1000.0, "replicas": 2}]


@pytest.mark.parametrize("cause", ["unreachable", "timeout", "garbage"])
def test_a_failed_sample_holds_and_says_why(cause: str) -> None:
    b = body(2)
    out = tick(b, PrometheusError(cause, f"Prometheus {cause}"), 1000.0, autoscale.State.from_status(b["status"]))
    cond = next(c for c in out.conditions or [] if c["type"] == "MetricsAvailable")
    assert out.replicas is None and cond["status"] == "False" and cond["reason"] == f"Prometheus{cause.capitalize()}"
    assert out.scaling is not None and "holding 2 replicas" in out.scaling["reason"]
    assert [e[1] for e in out.events] == ["MetricsUnavailable"]


# --- serving health: the reconciler's readings, shared the same way --------------------------


class FakeSyncProm:
    def __init__(self, error: PrometheusError | None = None) -> None:
        self.error = error
        self.queries: list[str] = []
        self.lock = threading.Lock()

    def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        with self.lock:
            self.queries.append(promql)
        time.sleep(0.02)
        if self.error is not None:
            raise self.error
        if "nv_inference_request_summary_us" in promql and "rate(" not in promql:
            return {("ns", "busy"): 12.5}
        if "clamp_min" in promql:
            return {("ns", "busy"): 0.02, ("ns", "idle"): 0.0}
        return {("ns", "busy"): 40.0, ("ns", "idle"): 0.0}


def _readings_in_threads(prom: FakeSyncProm, names: list[str]) -> list[Any]:
    config = OperatorConfig(health_interval_seconds=30)
    reconciler = Reconciler(None, config, prom=Prometheus("http://unused"))  # type: ignore[arg-type]
    reconciler.fleet_health = FleetHealth(prom, "20s")  # type: ignore[arg-type]
    observed = [Observed() for _ in names]
    threads = [threading.Thread(target=reconciler._take_from_fleet, args=(o, "ns", n)) for o, n in zip(observed, names, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return observed


def test_fifty_reconcile_threads_share_three_health_queries() -> None:
    prom = FakeSyncProm()
    observed = _readings_in_threads(prom, ["busy"] * 25 + ["idle"] * 25)
    assert len(prom.queries) == 3
    busy, idle = observed[0].metrics["all"], observed[-1].metrics["all"]
    assert (busy.request_rate, busy.error_ratio, busy.latency_ms) == (40.0, 0.02, 12.5)
    # No traffic: no error ratio to judge, as with one query per MD.
    assert (idle.request_rate, idle.error_ratio, idle.latency_ms) == (0.0, None, None)


def test_a_failed_health_poll_is_each_mds_metrics_error() -> None:
    prom = FakeSyncProm(PrometheusError("timeout", "Prometheus at http://p did not answer within 2s"))
    observed = _readings_in_threads(prom, ["busy"] * 10)
    assert len(prom.queries) == 1
    assert all(o.metrics_errors == {"all": "Prometheus at http://p did not answer within 2s"} and not o.metrics for o in observed)


class GatedProm(FakeSyncProm):
    """Answers once `gate` is set: a Prometheus too loaded to answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.asked = threading.Event()

    def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        self.asked.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().query_by(promql, labels)


def test_while_one_thread_polls_a_slow_prometheus_the_others_read_the_last_sample_without_waiting() -> None:
    prom = GatedProm()
    now = [1000.0]
    fleet = FleetHealth(prom, "20s", clock=lambda: now[0])  # type: ignore[arg-type]
    prom.gate.set()
    first = fleet.sample(max_age=15)
    assert first.of("ns", "busy")["requestRate"] == 40.0 and len(prom.queries) == 3
    prom.gate.clear()
    prom.asked.clear()
    now[0] += 60  # stale
    poller = threading.Thread(target=fleet.sample, kwargs={"max_age": 15})
    poller.start()
    assert prom.asked.wait(5)
    # The poll hangs in Prometheus; other callers get the earlier sample at once.
    t0 = time.monotonic()
    others = [fleet.sample(max_age=15) for _ in range(20)]
    assert time.monotonic() - t0 < 1.0 and all(o is first for o in others)
    prom.gate.set()
    poller.join(10)
    assert not poller.is_alive()
    assert fleet.last is not first and fleet.last is not None and fleet.last.time == now[0]
    assert len(prom.queries) == 6  # the stale readers sent nothing
    # Fresh again: read, not asked.
    assert fleet.sample(max_age=15) is fleet.last and len(prom.queries) == 6


def test_the_first_sample_is_waited_for_when_there_is_none() -> None:
    prom = GatedProm()
    fleet = FleetHealth(prom, "20s")  # type: ignore[arg-type]
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(fleet.sample(max_age=15))) for _ in range(5)]
    for th in threads:
        th.start()
    assert prom.asked.wait(5)
    assert got == []  # nobody returned without an answer
    prom.gate.set()
    for th in threads:
        th.join(10)
    assert len(got) == 5 and all(g is got[0] for g in got) and len(prom.queries) == 3


def test_a_reconcile_reads_the_loops_sample_for_two_health_intervals() -> None:
    prom = FakeSyncProm()
    now = [1000.0]
    config = OperatorConfig(health_interval_seconds=30)
    reconciler = Reconciler(None, config, prom=Prometheus("http://unused"))  # type: ignore[arg-type]
    reconciler.fleet_health = FleetHealth(prom, "20s", clock=lambda: now[0])  # type: ignore[arg-type]
    reconciler.fleet_health.sample(max_age=15)  # the loop's poll
    now[0] += 59
    observed = Observed()
    reconciler._take_from_fleet(observed, "ns", "busy")
    assert observed.metrics["all"].request_rate == 40.0 and len(prom.queries) == 3
    now[0] += 2  # the loop has fallen two intervals behind: the reconcile asks itself
    reconciler._take_from_fleet(Observed(), "ns", "busy")
    assert len(prom.queries) == 6


def test_after_a_restart_a_steady_replica_count_is_held_for_the_whole_window() -> None:
    """Steady at 4 replicas, last written 500 s ago (within the heartbeat): the written window's
    entry has left the 300 s scale-down window. The load drops right after the restart: the
    replicas running at the restart still hold the count for 300 s, as after an HPA restart."""
    b = body(4)
    written = {"scaling": {"lastPoll": 500.0, "reason": "steady at 4"}, "scalingWindow": [{"time": 500.0, "replicas": 4}]}
    state = autoscale.State.from_status({**b["status"], **written}, now=1000.0, current=4)
    out = tick(b, {"inferenceRate": 1.0}, 1005.0, state)
    assert out.replicas is None and out.scaling is not None and "stabilization" in out.scaling["reason"]
    assert out.window is not None
    state.scaling, state.window = out.scaling, out.window
    assert tick(b, {"inferenceRate": 1.0}, 1301.0, state).replicas == 1
