"""The serving autotune's pure parts (the sweep grid, the choice from a measured table, the knobs
applied to a serving block) and the load generator's figures (percentiles, merged windows)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_operator.api.types import DType, DynamicBatching, Serving, TensorSpec
from model_operator.triton import tuning
from model_operator.triton.config import build_model_config, parse_model_config
from model_operator.triton.loadgen import merge, percentile, summarize, triton_datatype
from model_operator.triton.sweep import sample_inputs
from model_operator.triton.tuning import SweepRow, TritonKnobs, choose, sweep_grid

BASE = tuning.baseline(2)


def row(knobs: TritonKnobs, rps: float, p95: float, errors: int = 0, requests: int = 100) -> SweepRow:
    return SweepRow(knobs, rps, p95 / 2, p95, p95 * 1.5, errors, requests)


def k(mbs: int, delay: int, inst: int = 1, threads: int = 2) -> TritonKnobs:
    return TritonKnobs(mbs, delay, inst, threads)


# --- grid ---------------------------------------------------------------------------------------


def test_grid_starts_with_the_batch1_baseline_and_shares_cores_between_instances() -> None:
    grid = sweep_grid(4, max_batch_sizes=(8, 32), queue_delays_us=(100, 1000), instance_counts=(1, 2, 4, 8), limit=100)
    assert grid[0] == TritonKnobs(1, 0, 1, 4, dynamic_batching=False) and grid[0].is_baseline
    rest = grid[1:]
    assert len(rest) == 3 * 2 * 2  # 8 instances > 4 cores are left out
    assert {r.instance_count: r.intra_op_threads for r in rest} == {1: 4, 2: 2, 4: 1}
    assert all(r.dynamic_batching and not r.is_baseline for r in rest)
    assert len(set(grid)) == len(grid)


def test_grid_is_bounded_and_never_below_one_thread() -> None:
    grid = sweep_grid(1, instance_counts=(1, 2, 3), limit=4)
    assert len(grid) == 4 and grid[0].is_baseline
    assert all(r.instance_count == 1 and r.intra_op_threads == 1 for r in grid)
    assert tuning.threads_for(3, 2) == 1 and tuning.threads_for(16, 3) == 5


def test_grid_never_goes_below_the_specs_max_batch_size() -> None:
    grid = sweep_grid(2, max_batch_sizes=(8, 32), queue_delays_us=(100,), instance_counts=(1,), min_max_batch=16)
    assert [g.max_batch_size for g in grid] == [1, 16, 32]  # the batch-1 baseline stays, as a reference
    assert [g.max_batch_size for g in sweep_grid(2, max_batch_sizes=(8, 32), queue_delays_us=(100,), instance_counts=(1,),
                                                 min_max_batch=64)] == [1, 64]


def test_a_row_below_the_specs_max_batch_size_is_a_reference_never_the_choice() -> None:
    table = [row(BASE, 5000, 1.0), row(k(8, 100), 4000, 2.0), row(k(16, 100), 2000, 0.9), row(k(32, 100), 1900, 0.95)]
    assert choose(table) is table[0]
    assert choose(table, min_max_batch=16) is table[2]  # batch 1's p95 still bounds the rest
    assert choose(table, min_max_batch=64) is None


def test_when_every_candidate_has_a_worse_p95_the_fastest_still_wins() -> None:
    table = [row(BASE, 1000, 1.0), row(k(16, 100), 2000, 3.0), row(k(16, 500), 2500, 2.0)]
    assert choose(table, min_max_batch=16) is table[2]


@pytest.mark.parametrize(("cores", "limit"), [(0, 16), (2, 1)])
def test_grid_refuses_nonsense(cores: int, limit: int) -> None:
    with pytest.raises(ValueError):
        sweep_grid(cores, limit=limit)


# --- choice -------------------------------------------------------------------------------------


def test_highest_throughput_with_a_p95_no_worse_than_batch1_wins() -> None:
    table = [
        row(BASE, 1000, 10.0),
        row(k(8, 100), 2500, 9.0),
        row(k(32, 2000), 4000, 12.0),  # faster, but p95 worse than the baseline's
        row(k(8, 500, 2, 1), 3000, 10.0),  # p95 equal: allowed
    ]
    assert choose(table) is table[3]
    # With room on p95 the fastest wins.
    assert choose(table, p95_slack=1.3) is table[2]


def test_ties_go_to_the_simplest_config() -> None:
    table = [
        row(BASE, 1000, 10.0),
        row(k(32, 500, 2, 1), 3050, 5.0),
        row(k(32, 500), 3000, 6.0),  # within 3 %: one instance beats two
        row(k(8, 500), 3010, 6.0),  # same instances and delay, smaller batch: simpler still
        row(k(8, 100), 2000, 4.0),  # shorter delay, but not a tie
    ]
    assert choose(table) is table[3]
    assert choose(table, tie=0.0) is table[1]


def test_rows_with_errors_or_no_numbers_are_out() -> None:
    table = [
        row(BASE, 1000, 10.0),
        row(k(8, 100), 9000, 1.0, errors=3),
        row(k(8, 500), 8000, 1.0, requests=0),
        SweepRow(k(32, 100), math.nan, 1.0, 1.0, 1.0, 0, 10),
        row(k(32, 500), 1500, 9.0),
    ]
    assert choose(table) is table[4]


def test_without_a_usable_baseline_the_fastest_clean_row_wins_and_nothing_usable_is_none() -> None:
    table = [row(BASE, 1000, 10.0, errors=1), row(k(8, 100), 2000, 50.0), row(k(8, 500), 2500, 80.0)]
    assert choose(table) is table[2]
    assert choose([row(BASE, 1000, 10.0, errors=1)]) is None
    assert choose([]) is None


def test_the_choice_depends_on_the_table_only() -> None:
    table = [row(BASE, 1000, 10.0), row(k(8, 100), 2500, 9.0), row(k(8, 500), 2600, 9.5)]
    again = tuning.table_from_dicts([r.as_dict() for r in table])
    assert again == table
    assert choose(again) == choose(table) == table[2]  # 2500 < 2600 * 0.97: not a tie
    assert choose(list(reversed(table))) == table[2]


# --- applying the choice --------------------------------------------------------------------------


def test_knobs_applied_to_a_serving_block_reach_the_config() -> None:
    serving = Serving(backend="python", max_batch_size=32, instance_count=1,
                      dynamic_batching=DynamicBatching(preferred_batch_sizes=[8, 16], max_queue_delay_microseconds=200))
    tuned = tuning.apply_knobs(serving, k(8, 500, 2, 1))
    assert serving.max_batch_size == 32  # the original is left alone
    ins = [TensorSpec(name="x", shape=[-1, 4])]
    outs = [TensorSpec(name="y", shape=[-1, 2])]
    cfg = parse_model_config(build_model_config("m", ins, outs, artifact_format="onnx", serving=tuned, target="edge"))
    assert cfg.max_batch_size == 8
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].count == 2
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    base = parse_model_config(build_model_config("m", ins, outs, artifact_format="onnx", serving=tuning.apply_knobs(serving, BASE),
                                                 target="edge"))
    assert base.max_batch_size == 1 and not base.HasField("dynamic_batching")


# --- load generator figures -----------------------------------------------------------------------


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_summary_and_merged_windows() -> None:
    a = summarize([1.0, 2.0, 3.0, 4.0], errors=0, seconds=2.0, concurrency=4)
    b = summarize([10.0] * 4, errors=1, seconds=2.0, concurrency=4, first_error="boom")
    assert a.throughput == 2.0 and a.p50_ms == 2.0 and a.mean_ms == 2.5
    both = merge([a, b])
    assert both.requests == 8 and both.errors == 1 and both.seconds == 4.0 and both.throughput == 2.0
    assert both.p50_ms == 4.0 and both.p95_ms == 10.0 and both.first_error == "boom"
    with pytest.raises(ValueError):
        merge([a, summarize([1.0], 0, 1.0, concurrency=1)])
    with pytest.raises(ValueError):
        summarize([1.0], 0, 0.0, 1)


@pytest.mark.parametrize(("dtype", "name"), [(np.float32, "FP32"), (np.int64, "INT64"), (np.bool_, "BOOL"), (np.uint8, "UINT8")])
def test_wire_data_types(dtype: type, name: str) -> None:
    assert triton_datatype(np.zeros(1, dtype=dtype)) == name


def test_no_wire_type_for_float64() -> None:
    with pytest.raises(ValueError, match="float64"):
        triton_datatype(np.zeros(1))


def test_sample_inputs_follow_the_signature() -> None:
    ins = [
        TensorSpec(name="ids", dtype=DType.int64, shape=[-1, -1]),
        TensorSpec(name="img", dtype=DType.float32, shape=[-1, 1, 8, 8]),
    ]
    x = sample_inputs(ins, batch=2, dynamic=5)
    assert x["ids"].shape == (2, 5) and x["ids"].dtype == np.int64 and (x["ids"] == 1).all()
    assert x["img"].shape == (2, 1, 8, 8) and x["img"].dtype == np.float32
    assert 0 <= x["img"].min() and x["img"].max() < 1


def test_the_job_report_of_a_full_default_grid_fits_a_termination_message() -> None:
    import json

    from model_operator.triton.pod_commands import autotune_summary

    assert len(sweep_grid(64)) <= tuning.DEFAULT_LIMIT
    grid = sweep_grid(64, instance_counts=(1, 2, 4, 8))  # the longest table the default limit lets through
    assert len(grid) == tuning.DEFAULT_LIMIT
    rows = [SweepRow(kn, 12345.678, 123.456, 234.567, 345.678, 0, 987654) for kn in grid]
    summary = autotune_summary(rows, rows[3], cores=64, concurrency=16)
    text = json.dumps(summary, separators=(",", ":"))
    assert len(text.encode()) < 4096, len(text)
    assert summary["ok"] and summary["chosen"] == grid[3].name
    failed = autotune_summary(rows, None, cores=64, concurrency=16)
    assert not failed["ok"] and failed["reason"]
