"""serving.autotune on the real node: after the optimization, a sweep Job (the serving pod with
the test Triton in explicit mode as a sidecar, `model-operator autotune` from the worker image)
measures a cut grid on the pool's node, status.autotune holds the table, and the Deployment
serves the config `tuning.choose` picks from that table: Triton itself reports the chosen
instance count and max batch size, and answers like the original model."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from md_helpers import (
    MODELS_CLAIM,
    STORE_CLAIM,
    agreement_with_original,
    create_md,
    digits_md,
    make_claim,
    put_digits,
    ready_triton_pods,
    service_endpoint,
    wait_phase,
)

from model_operator.triton import tuning

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_autotune_serves_the_sweeps_choice(
    start_operator: Any, namespace: str, custom_api: Any, core_api: Any, apps_api: Any, batch_api: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp()
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, cache)
    # Short measurements, three configs: the mechanics, not the numbers (benchmarks/serving.py has those).
    start_operator(autotune_seconds_per_config=0.5, autotune_max_configs=3)
    serving = {"nodePool": "local", "replicas": 1, "backend": "python", "maxBatchSize": 16, "autotune": True}
    create_md(custom_api, namespace, digits_md("tuned", serving=serving))

    md = wait_phase(custom_api, namespace, "tuned", "Ready", timeout=480)
    tune = md["status"]["autotune"]
    assert tune["state"] == "Succeeded", tune
    grid = tuning.sweep_grid(tune["cores"], limit=3, min_max_batch=16)
    assert [r["name"] for r in tune["table"]] == [g.name for g in grid]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["throughput"] > 0 for r in tune["table"]), tune["table"]
    chosen = tuning.choose(tuning.table_from_dicts(tune["table"]), min_max_batch=16)
    assert chosen is not None and tune["chosen"] == chosen.knobs.name
    assert tune["artifactSha256"] == md["status"]["artifact"]["sha256"]

    # The sweep ran on the serving pool's node, in the pool's pod.
    (job,) = [j for j in batch_api.list_namespaced_job(namespace).items if j.metadata.name == tune["job"]]
    pods = core_api.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
    assert pods and all(p.spec.node_name == "local-0" for p in pods)

    # The served Triton runs the chosen config.
    (pod,) = ready_triton_pods(core_api, namespace, "tuned")
    http = service_endpoint(core_api, namespace, "tuned-triton")
    with urllib.request.urlopen(f"http://{http}/v2/models/tuned/config", timeout=10) as resp:
        config = json.loads(resp.read())
    assert config["max_batch_size"] == chosen.knobs.max_batch_size >= 16  # never below the spec's: clients send up to 16
    assert config["instance_group"][0]["count"] == chosen.knobs.instance_count
    assert config["parameters"]["intra_op_threads"]["string_value"] == str(chosen.knobs.intra_op_threads)
    assert bool(config.get("dynamic_batching")) == chosen.knobs.dynamic_batching
    assert agreement_with_original(http, cache, model="tuned") >= 0.9
