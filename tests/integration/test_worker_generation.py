"""The worker on a real decoder language model: a tiny LLaMA trained here by the example's own
script (examples/generation/train.py, a short run) from the Python standard library's reference
topics. The search exports it with a KV cache through ONNX Runtime GenAI's builder (fp32, int8 and
int4 weight-only), gates each on held-out perplexity and greedy agreement against PyTorch, and
publishes the chosen one; the published artifact decodes like the original."""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_worker

from kubetest.genai import greedy_decoder

pytestmark = pytest.mark.slow


@dataclass
class TinyLm:
    model: Path
    validation: Path
    prompts: list[str]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLm:
    out = tmp_path_factory.mktemp("tiny-llama")
    spec = importlib.util.spec_from_file_location("generation_train", ROOT / "examples/generation/train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(out), "--steps", "80", "--batch", "8"]) == 0
    return TinyLm(out / "model", out / "validation.txt", (out / "prompts.txt").read_text().splitlines())


def _spec(lm: TinyLm, **optimization: object) -> dict[str, object]:
    return {
        "model": {"uri": str(lm.model), "format": "hf", "task": "generation"},
        "target": "device",
        "data": {"validation": {"uri": str(lm.validation), "samples": 8}},
        "generation": {"maxNewTokens": 32, "sampling": {"temperature": 0.5, "topK": 20}},
        "optimization": optimization,
    }


def _torch_next_tokens(model_dir: Path, ids: list[int], continuation: list[int]) -> list[int]:
    """The original's greedy pick after the prompt and each prefix of `continuation`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        x = torch.tensor([ids + continuation])
        logits = model(x, attention_mask=torch.ones_like(x)).logits[0]
    return [int(logits[len(ids) - 1 + k].argmax()) for k in range(len(continuation))]


def test_search_exports_with_a_kv_cache_gates_and_publishes_the_smallest_fast_enough(tiny_lm: TinyLm, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    import onnxruntime_genai as og  # type: ignore[import-untyped]

    from model_operator.storage import verify_dir

    dest = tmp_path / "out"
    spec = _spec(tiny_lm, search={"enabled": True, "maxCandidates": 3}, objective="size")
    res = run_worker(dest, spec=spec, name="tiny", env={"MODEL_OPERATOR_THREADS": "1"})
    assert res.rc == 0, res.stderr
    marker = json.loads((dest / "COMPLETE").read_text())
    assert marker["sha256"] == verify_dir(dest)
    report = json.loads((dest / "report.json").read_text())
    opt = report["optimization"]
    cands = {c["name"]: c for c in opt["candidates"]}
    assert list(cands) == ["fp32", "int8-weight-only", "int4-weight-only"]
    for c in cands.values():
        assert c["passed"], c
        assert c["quality"]["perplexityRatio"] <= 1.05 and c["quality"]["greedyAgreement"] >= 0.8
        assert c["tokensPerSecond"] > 0 and c["ttftMs"] > 0
    # weight-only quantization: int4 at least 4x smaller than the checkpoint's weights, int8 in between
    original = report["artifact"]["originalSizeBytes"]
    assert original == (tiny_lm.model / "model.safetensors").stat().st_size
    assert cands["int4-weight-only"]["sizeBytes"] * 4 <= original
    assert cands["int4-weight-only"]["sizeBytes"] < cands["int8-weight-only"]["sizeBytes"] < cands["fp32"]["sizeBytes"]
    assert opt["recipe"] == "int4-weight-only" and res.summary["optimization"]["recipe"] == "int4-weight-only"
    # a real perplexity to defend: far below a uniform guess over the 512-token vocabulary
    assert opt["qualityBefore"]["perplexity"] < 200

    version = dest / "repository/tiny/1"
    # the export carries the KV cache: past key/values in, present key/values out
    sess = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    ins, outs = {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"} <= ins
    assert {"logits", "present.0.key", "present.0.value"} <= outs
    graph = onnx.load(str(version / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    # the spec's lengths and sampling defaults went into the artifact
    genai = json.loads((version / "genai_config.json").read_text())
    assert genai["search"]["temperature"] == 0.5 and genai["search"]["top_k"] == 20 and genai["search"]["do_sample"] is True
    assert json.loads((version / "generation.json").read_text())["maxNewTokens"] == 32

    # the published artifact, with its own tokenizer, decodes greedily like the original in PyTorch
    model = og.Model(str(version))
    tok = og.Tokenizer(model)
    ids = [int(t) for t in tok.encode(tiny_lm.prompts[0])]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 12, min_length=len(ids) + 12)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray([ids], dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    # Each token the artifact chose is the one the original in PyTorch picks after the same
    # prefix (the gate's teacher-forced agreement), for most of them: int4 kernels round
    # differently per host (this check once compared free-running sequences, and a host without
    # VNNI took a different first token, then followed the original's continuation).
    want = _torch_next_tokens(tiny_lm.model, ids, got)
    assert sum(g == w for g, w in zip(got, want)) >= 0.75 * len(got), (got, want)
    assert tok.decode(np.asarray(got, dtype=np.int32)).strip()


def test_the_strictest_gate_refuses_every_candidate_that_misses_it(tiny_lm: TinyLm, tmp_path: Path) -> None:
    """The strictest gate the API allows: no perplexity above the original's, every greedy token
    the same. Each candidate's verdict must follow from its own measurements, and with none
    passing the worker exits 3 and publishes nothing. Rounding can lower a perplexity: on one CPU
    int4 in blocks of 128 measured 0.4% below the original with every token the same, and met
    even this gate; then it must be the one published."""
    dest = tmp_path / "out"
    gate = {"maxPerplexityRatio": 1.0, "minGreedyAgreement": 1.0}
    spec = _spec(tiny_lm, quantization={"mode": "int4-weight-only"}, search={"enabled": True}, qualityGate=gate)
    res = run_worker(dest, spec=spec, name="tiny", env={"MODEL_OPERATOR_THREADS": "1"})
    cands = res.summary.get("candidates") or res.summary["optimization"]["candidates"]
    assert [c["name"] for c in cands] == ["int4-weight-only", "int4-weight-only-block128", "int4-weight-only-embeddings"]
    for c in cands:
        q = c["quality"]
        assert c["passed"] == (q["perplexityRatio"] <= 1.0 and q["greedyAgreement"] >= 1.0), c
        if not c["passed"]:
            assert c["reason"], c
    passed = [c["name"] for c in cands if c["passed"]]
    if passed:
        assert res.rc == 0 and (dest / "COMPLETE").exists(), res.stderr
        assert res.summary["optimization"]["recipe"] in passed
    else:
        assert res.rc == 3, res.stderr
        assert "spec.optimization.qualityGate" in res.last_line and "maxPerplexityRatio 1.0" in res.stderr
        assert not (dest / "COMPLETE").exists()


def test_missing_tokenizer_files_name_the_field(tiny_lm: TinyLm, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).symlink_to(tiny_lm.model / f)
    spec = _spec(tiny_lm)
    spec["model"] = {"uri": str(bare), "format": "hf", "task": "generation"}
    res = run_worker(tmp_path / "out", spec=spec, name="tiny")
    assert res.rc == 2, res.stderr
    assert res.last_line.startswith("error: spec.model.uri:") and "tokenizer.json" in res.last_line
    spec["generation"] = {"tokenizerUri": str(tiny_lm.model), "maxNewTokens": 256}
    res = run_worker(tmp_path / "out2", spec=spec, name="tiny")
    assert res.rc == 2 and res.last_line.startswith("error: spec.generation.maxNewTokens:") and "context of 256 tokens" in res.last_line, res.stderr
    spec["generation"] = {"tokenizerUri": str(tiny_lm.model)}  # the tokenizer from elsewhere works; maxNewTokens defaults to half the context
    res = run_worker(tmp_path / "out3", spec=spec, name="tiny", env={"MODEL_OPERATOR_THREADS": "1"})
    assert res.rc == 0, res.stderr
    assert json.loads((tmp_path / "out3/repository/tiny/1/generation.json").read_text())["maxNewTokens"] == 128


def test_the_artifact_streams_tokens_from_a_real_triton_server(tiny_lm: TinyLm, tmp_path: Path) -> None:
    """The published repository loads in Triton as a decoupled model: generate_stream answers with
    server-sent events, one per piece of text, that add up to what generate answers (greedy), and
    the token metrics count them."""
    import onnxruntime_genai as og  # type: ignore[import-untyped]
    import requests

    from model_operator.triton.server import TritonServer

    dest = tmp_path / "out"
    res = run_worker(dest, spec=_spec(tiny_lm, quantization={"mode": "int8-weight-only"}), name="tiny", env={"MODEL_OPERATOR_THREADS": "1"})
    assert res.rc == 0, res.stderr
    with TritonServer(dest / "repository", log_file=tmp_path / "triton.log") as server:
        url = f"{server.http_url}/v2/models/tiny"
        body = {"text_input": tiny_lm.prompts[0], "max_tokens": 12, "temperature": 0}
        with requests.post(f"{url}/generate_stream", json=body, stream=True, timeout=60) as r:
            assert r.status_code == 200, r.text
            events = [json.loads(line[len(b"data: "):]) for line in r.iter_lines() if line.startswith(b"data: ")]
        pieces = [e["text_output"] for e in events if "text_output" in e]
        assert len(pieces) >= 3 and not any("error" in e for e in events), events
        # greedy: the same text as the artifact's own GenAI loop in this process
        model = og.Model(str(dest / "repository/tiny/1"))
        tok = og.Tokenizer(model)
        ids = tok.encode(tiny_lm.prompts[0])
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 12)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        want = []
        while not gen.is_done():
            gen.generate_next_token()
            want.append(int(gen.get_next_tokens()[0]))
        assert "".join(pieces) == tok.decode(np.asarray(want, dtype=np.int32))
        bad = requests.post(f"{url}/generate_stream", json={"text_input": ""}, stream=True, timeout=60)
        assert "text_input is required" in bad.text
        metrics = requests.get(server.metrics_url, timeout=10).text
        tokens = [ln for ln in metrics.splitlines() if ln.startswith("model_operator_generated_tokens{") and 'model="tiny"' in ln]
        assert tokens and float(tokens[0].split()[-1]) >= 12, tokens
        assert any(ln.startswith("model_operator_time_to_first_token_seconds_count{") and float(ln.split()[-1]) >= 1 for ln in metrics.splitlines())
        # The stream's last event reaches the client before the model's own bookkeeping ends: the
        # in-flight gauge goes back to 0 soon after, not necessarily by the first scrape.
        deadline = time.monotonic() + 15
        while not any(ln.startswith("model_operator_generation_requests_in_flight{") and float(ln.split()[-1]) == 0 for ln in metrics.splitlines()):
            assert time.monotonic() < deadline, [ln for ln in metrics.splitlines() if "in_flight" in ln]
            time.sleep(0.2)
            metrics = requests.get(server.metrics_url, timeout=10).text
        # The front's usage: the prompt as this process's GenAI tokenizer counts it, the tokens its loop generated.
        chat_ids = tok.encode(f"user: {tiny_lm.prompts[0]}\nassistant:")
        _openai_front(server.http_url, "".join(pieces), tiny_lm.prompts[0], (len(ids), len(want)), len(chat_ids))


def _sse(r: Any) -> list[Any]:
    lines = [ln[len(b"data: "):] for ln in r.iter_lines() if ln.startswith(b"data: ")]
    assert lines and lines[-1] == b"[DONE]", lines[-3:]
    return [json.loads(x) for x in lines[:-1]]


def _openai_front(triton: str, greedy_text: str, prompt: str, counts: tuple[int, int], chat_prompt_tokens: int) -> None:
    """The OpenAI-compatible routes in front of that server: the same text, streamed as chunks or
    whole, with usage `counts` (prompt, completion tokens) in the whole answer and in the stream's
    last chunk when asked for."""
    import threading

    import requests

    from model_operator.triton.openai_api import OpenAiServer

    front = OpenAiServer(("127.0.0.1", 0), triton, "tiny")
    threading.Thread(target=front.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{front.server_address[1]}/v1"
    try:
        assert requests.get(f"{base}/models", timeout=10).json()["data"][0]["id"] == "tiny"
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0}
        done = requests.post(f"{base}/completions", json=body, timeout=60).json()
        assert done["object"] == "text_completion" and done["choices"][0]["text"] == greedy_text, done
        usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1], "total_tokens": sum(counts)}
        finish = "length" if counts[1] == 12 else "stop"  # 12: max_tokens
        assert done["usage"] == usage and done["choices"][0]["finish_reason"] == finish, done
        with requests.post(f"{base}/completions", json={**body, "stream": True}, stream=True, timeout=60) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            chunks = _sse(r)
        assert len(chunks) >= 3 and "".join(c["choices"][0]["text"] for c in chunks) == greedy_text
        assert chunks[-1]["choices"][0]["finish_reason"] == finish and not any("usage" in c for c in chunks)  # not asked for
        with requests.post(f"{base}/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}, stream=True,
                           timeout=60) as r:
            counted = _sse(r)
        assert counted[-1]["choices"] == [] and counted[-1]["usage"] == usage, counted[-1]
        assert all(c["usage"] is None for c in counted[:-1]) and "".join(c["choices"][0]["text"] for c in counted[:-1]) == greedy_text
        chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with requests.post(f"{base}/chat/completions", json=chat, stream=True, timeout=60) as r:
            chat_chunks = _sse(r)
        assert chat_chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        assert all(c["object"] == "chat.completion.chunk" for c in chat_chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chat_chunks[:-1])
        chat_usage = chat_chunks[-1]["usage"]
        assert chat_usage["prompt_tokens"] == chat_prompt_tokens and 1 <= chat_usage["completion_tokens"] <= 8, chat_usage
        assert chat_usage["total_tokens"] == chat_usage["prompt_tokens"] + chat_usage["completion_tokens"]
        whole_chat = requests.post(f"{base}/chat/completions", json={**chat, "stream": False}, timeout=60).json()
        assert whole_chat["usage"] == chat_usage, whole_chat
        wrong = requests.post(f"{base}/completions", json={"model": "gpt-4", "prompt": "x"}, timeout=10)
        assert wrong.status_code == 404 and "not served here" in wrong.json()["error"]["message"]
        empty = requests.post(f"{base}/completions", json={"prompt": ""}, timeout=10)
        assert empty.status_code == 400
    finally:
        front.shutdown()
        front.server_close()


def test_local_up_serves_the_openai_api_of_a_generation_model(tiny_lm: TinyLm, tmp_path: Path) -> None:
    """`model-operator local up` on a generation spec: the worker's artifact in a local Triton and
    the OpenAI-compatible front beside it, the same API the operator's pods serve."""
    import signal

    import yaml
    from openai import OpenAI
    from test_local_up import Output, local_up, wait_for

    from model_operator.triton.server import free_port

    spec = {**_spec(tiny_lm, quantization={"mode": "none"}), "target": "cloud", "serving": {"replicas": 1}}
    yaml_file = tmp_path / "md.yaml"
    yaml_file.write_text(yaml.safe_dump({"apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment",
                                         "metadata": {"name": "tiny"}, "spec": spec}))
    workdir, port = tmp_path / "work", free_port()
    proc = local_up(yaml_file, workdir, "--openai-port", str(port), ports=(free_port(), free_port(), free_port()))
    try:
        output = Output(proc)
        wait_for(lambda: output.has("openai:"), 420, "the status block with the OpenAI endpoint", proc)
        assert any(f"openai: http://127.0.0.1:{port}/v1" in line for line in output.lines), output.lines
        prompt = tiny_lm.prompts[1]
        model = greedy_decoder(workdir / "artifact" / "repository" / "tiny" / "1")
        want = model(prompt, 10)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        pieces = [c.choices[0].text for c in client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True)
                  if c.choices[0].text]
        assert len(pieces) >= 3 and "".join(pieces) == want, (pieces, want)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
