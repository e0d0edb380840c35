"""`model-operator autotune` (the autotune Job's container) against the real Triton in explicit
model control, on a repository laid out as `assemble` lays it: every config of the (cut) grid
is loaded, answered and measured, the report names the choice `tuning.choose` makes from the
reported table, and the assembled model is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_triton_server import CLF_IN, CLF_OUT, classifier_onnx

from model_operator.api.types import Serving
from model_operator.cli import main
from model_operator.triton import tuning
from model_operator.triton.repository import write_repository
from model_operator.triton.server import TritonServer

pytestmark = pytest.mark.slow


def test_the_sweep_measures_every_config_on_a_real_triton(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    assembled = write_repository(
        repo, "clf", classifier_onnx(tmp_path / "clf.onnx"), artifact_format="onnx", inputs=CLF_IN, outputs=CLF_OUT,
        serving=Serving(backend="python"), target="edge",
    )
    before = (assembled / "config.pbtxt").read_text()
    report = tmp_path / "summary.json"
    with TritonServer(repo, model_control_mode="explicit", log_file=tmp_path / "triton.log") as server:
        code = main([
            "autotune", "--repository", str(repo), "--name", "clf", "--target", "edge",
            "--serving-json", json.dumps({"backend": "python", "maxBatchSize": 8}), "--grpc", server.grpc_endpoint,
            "--cores", "2", "--concurrency", "4", "--duration", "0.5", "--warmup", "0.2", "--limit", "3",
            "--report-summary", str(report),
        ])
    assert code == 0, (tmp_path / "triton.log").read_text()[-2000:]
    summary = json.loads(report.read_text())
    assert summary["ok"] and summary["cores"] == 2 and summary["concurrency"] == 4
    names = [r["name"] for r in summary["table"]]
    assert names == [g.name for g in tuning.sweep_grid(2, limit=3, min_max_batch=8)]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["throughput"] > 0 for r in summary["table"])
    assert summary["table"][0]["maxBatchSize"] == 1 and not summary["table"][0]["dynamicBatching"]
    chosen = tuning.choose(tuning.table_from_dicts(summary["table"]), min_max_batch=8)
    assert chosen is not None and summary["chosen"] == chosen.knobs.name
    assert (assembled / "config.pbtxt").read_text() == before


def test_a_repository_without_the_model_is_bad_input(tmp_path: Path) -> None:
    report = tmp_path / "summary.json"
    code = main(["autotune", "--repository", str(tmp_path), "--name", "absent", "--report-summary", str(report)])
    assert code == 2
    assert not json.loads(report.read_text())["ok"] and "absent" in json.loads(report.read_text())["reason"]
