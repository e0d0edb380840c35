"""The Triton init container's assemble step for a generation artifact: the decoupled model keeps
its own config (generate-extension inputs, no batching); only instanceCount comes from serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_operator.api.types import Serving
from model_operator.triton import generation_model
from model_operator.triton.pod_commands import assemble, is_decoupled

CLASSIFIER_CONFIG = 'name: "d"\nbackend: "onnxruntime"\nmax_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'


def _artifact(root: Path, name: str, with_model_py: bool = True) -> Path:
    version = root / "repository" / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx")
    (version / "generation.json").write_text('{"maxNewTokens": 32}')
    if with_model_py:
        (version / "model.py").write_text("# the generation model\n")
    (version.parent / "config.pbtxt").write_text(generation_model.config_pbtxt(name))
    return root


def test_decoupled_artifact_keeps_its_config_with_the_serving_instance_count(tmp_path: Path) -> None:
    art = _artifact(tmp_path / "art", "llm")
    serving = Serving.model_validate({"instanceCount": 3, "maxBatchSize": 16, "dynamicBatching": {"maxQueueDelayMicroseconds": 500}})
    dest = assemble(art, "llm", "cloud", serving, tmp_path / "models")
    text = (dest / "config.pbtxt").read_text()
    assert "decoupled: true" in text and 'backend: "python"' in text
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text
    assert "count: 3 kind: KIND_CPU" in text
    assert 'name: "text_input" data_type: TYPE_STRING' in text
    assert sorted(p.name for p in (dest / "1").iterdir()) == ["generation.json", "model.onnx", "model.py"]


def test_decoupled_artifact_without_its_python_model_is_refused(tmp_path: Path) -> None:
    art = _artifact(tmp_path / "art", "llm", with_model_py=False)
    with pytest.raises(FileNotFoundError, match=r"1/model.py: a decoupled model needs its Python-backend model"):
        assemble(art, "llm", "cloud", Serving(), tmp_path / "models")
    assert not (tmp_path / "models" / "llm").exists()


def test_is_decoupled_reads_the_transaction_policy() -> None:
    assert is_decoupled(generation_model.config_pbtxt("m"))
    assert is_decoupled('name: "m"\nmodel_transaction_policy {\n  decoupled: true\n}\n')
    assert not is_decoupled('name: "m"\nmodel_transaction_policy { decoupled: false }\n')
    assert not is_decoupled(CLASSIFIER_CONFIG)
