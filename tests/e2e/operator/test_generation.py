"""A language model end to end on the real node: a tiny LLaMA trained here (examples/generation/
train.py, a short run) -> the worker Job exports it with a KV cache for ONNX Runtime GenAI and
gates it -> Triton serves the decoupled generation model with the OpenAI-compatible front beside
it in the same pod -> Ready -> the OpenAI client streams a completion through the Service: several
server-sent chunks whose text is the artifact's greedy output."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
from md_helpers import (
    GROUP,
    MODELS_CLAIM,
    REPO,
    STORE_CLAIM,
    VERSION,
    condition,
    create_md,
    make_claim,
    ready_triton_pods,
    service_endpoint,
    wait_phase,
)

from kubetest.genai import greedy_decoder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "tiny-llm"
MAX_TOKENS = 12


def tiny_llama(cache: Path) -> Path:
    """Train the example's tiny LLaMA once per session (a short run: a real, if weak, model)."""
    out = cache / "tiny-llama"
    if not (out / "model" / "model.safetensors").exists():
        spec = importlib.util.spec_from_file_location("generation_train", REPO / "examples/generation/train.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(["--out", str(out), "--steps", "150", "--batch", "8", "--seq", "64"]) == 0
    return out


def generation_md() -> dict[str, Any]:
    spec = {
        "model": {"uri": "pvc://models/tiny-llama/model", "format": "hf", "task": "generation"},
        "data": {"validation": {"uri": "pvc://models/tiny-llama/validation.txt", "samples": 8}},
        "generation": {"maxNewTokens": 32, "sampling": {"temperature": 0.7, "topK": 20}},
        "optimization": {"quantization": {"mode": "none"}},
        "serving": {"nodePool": "local", "replicas": 1},
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME}, "spec": spec}


def test_generation_model_streams_through_the_openai_front(
    start_operator: Any, namespace: str, custom_api: Any, core_api: Any, images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from openai import OpenAI

    trained = tiny_llama(tmp_path_factory.getbasetemp())
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    store = make_claim(core_api, namespace, STORE_CLAIM)
    dest = shutil.copytree(trained, models / "tiny-llama")
    for path in [dest, *dest.rglob("*")]:  # the worker runs as UID 1000; pytest's temporary folders are 0700
        path.chmod(0o755 if path.is_dir() else 0o644)
    prompt = (trained / "prompts.txt").read_text().splitlines()[0]
    start_operator()
    create_md(custom_api, namespace, generation_md())

    md = wait_phase(custom_api, namespace, NAME, "Ready", timeout=300)
    status = md["status"]
    assert condition(md, "Available")["status"] == "True"
    assert status["endpoint"]["openai"] == f"http://{NAME}-triton.{namespace}.svc:9000/v1"
    assert status["artifact"]["format"] == "onnx-genai"
    assert "quality" not in status  # no golden probe for a generation artifact: its quality is the gate's

    # Every replica is complete: Triton and the front, both Ready, in one pod on the real node.
    pods = ready_triton_pods(core_api, namespace, NAME)
    assert len(pods) == 1 and pods[0].spec.node_name == "local-0"
    assert [c.name for c in pods[0].spec.containers] == ["triton", "openai"]
    assert all(c.ready for c in pods[0].status.container_statuses)

    artifact_dir = store / namespace / NAME / status["artifact"]["specHash"]
    want = greedy_decoder(artifact_dir / "repository" / NAME / "1")(prompt, MAX_TOKENS)
    assert want.strip(), "the trained model's greedy answer is empty"

    # The OpenAI client, through the Service's ClusterIP (kube-proxy), as a user would.
    client = OpenAI(base_url=f"http://{service_endpoint(core_api, namespace, f'{NAME}-triton', port=9000)}/v1", api_key="unused",
                    max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [NAME]
    pieces: list[str] = []
    finish = None
    for chunk in client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True):
        choice = chunk.choices[0]
        if choice.text:
            pieces.append(choice.text)
        finish = choice.finish_reason or finish
    assert len(pieces) >= 3, pieces  # streamed: one server-sent chunk per decoded piece, not one answer
    assert "".join(pieces) == want
    assert finish in ("length", "stop")

    # The same greedy answer whole, and through the chat route (streamed, its own prompt format).
    whole = client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert whole.choices[0].text == want
    chat = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0,
                                               stream=True))
    assert chat[0].choices[0].delta.role == "assistant" and sum(1 for c in chat if c.choices[0].delta.content) >= 1

    # A model it doesn't serve: an OpenAI-shaped 404 the client raises.
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.completions.create(model="other", prompt=prompt, max_tokens=2)
