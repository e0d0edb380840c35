"""A language model end to end on the real node: a tiny LLaMA trained here (examples/generation/
train.py, a short run) -> the worker Job exports it with a KV cache for ONNX Runtime GenAI and
gates it -> Triton serves the decoupled generation model with the OpenAI-compatible front beside
it in the same pod -> Ready -> the OpenAI client streams a completion through the Service: several
server-sent chunks whose text is the artifact's greedy output. And the built-in scaler on a token
metric (requestsInFlight, read from the real Prometheus scraping the generation pods): concurrent
streams through the Service -> 2 Ready replicas -> the streams stop -> back to 1."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from md_helpers import (
    CONNECT_BACKOFF,
    GROUP,
    MODELS_CLAIM,
    REPO,
    STORE_CLAIM,
    VERSION,
    ServiceTimeline,
    clock,
    condition,
    create_md,
    get_md,
    make_claim,
    ready_triton_pods,
    service_endpoint,
    wait_phase,
)

from kubetest.genai import greedy_decoder
from kubetest.wait import wait_for
from model_operator.api.types import ScalingMetricType
from model_operator.scaling import promql
from model_operator.scaling.prometheus import Prometheus

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


def generation_md(**spec_extra: Any) -> dict[str, Any]:
    spec = {
        "model": {"uri": "pvc://models/tiny-llama/model", "format": "hf", "task": "generation"},
        "data": {"validation": {"uri": "pvc://models/tiny-llama/validation.txt", "samples": 8}},
        "generation": {"maxNewTokens": 32, "sampling": {"temperature": 0.7, "topK": 20}},
        "optimization": {"quantization": {"mode": "none"}},
        "serving": {"nodePool": "local", "replicas": 1},
        **spec_extra,
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": NAME}, "spec": spec}


def deploy(start_operator: Any, namespace: str, custom_api: Any, core_api: Any, base: Path, **spec_extra: Any) -> tuple[dict[str, Any], Path, Path]:
    """The trained model on the models claim, the operator started, the MD Ready: (md, trained model dir, store dir)."""
    trained = tiny_llama(base)
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    store = make_claim(core_api, namespace, STORE_CLAIM)
    dest = shutil.copytree(trained, models / "tiny-llama")
    for path in [dest, *dest.rglob("*")]:  # the worker runs as UID 1000; pytest's temporary folders are 0700
        path.chmod(0o755 if path.is_dir() else 0o644)
    start_operator()
    create_md(custom_api, namespace, generation_md(**spec_extra))
    return wait_phase(custom_api, namespace, NAME, "Ready", timeout=300), trained, store


def test_generation_model_streams_through_the_openai_front(
    start_operator: Any, namespace: str, custom_api: Any, core_api: Any, images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from openai import OpenAI

    md, trained, store = deploy(start_operator, namespace, custom_api, core_api, tmp_path_factory.getbasetemp())
    prompt = (trained / "prompts.txt").read_text().splitlines()[0]
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
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    for chunk in chunks[:-1]:
        choice = chunk.choices[0]
        if choice.text:
            pieces.append(choice.text)
        finish = choice.finish_reason or finish
    assert len(pieces) >= 3, pieces  # streamed: one server-sent chunk per decoded piece, not one answer
    assert "".join(pieces) == want
    assert finish in ("length", "stop")
    # The last chunk: no choices, the token counts (the model's tokenizer and generator's).
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == MAX_TOKENS if finish == "length" else 1 <= usage.completion_tokens < MAX_TOKENS
    assert usage.prompt_tokens >= 1 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    # The same greedy answer whole (with the same usage), and through the chat route (streamed, its own prompt format).
    whole = client.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert whole.choices[0].text == want and whole.usage == usage
    chat = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0,
                                               stream=True))
    assert chat[0].choices[0].delta.role == "assistant" and sum(1 for c in chat if c.choices[0].delta.content) >= 1

    # A model it doesn't serve: an OpenAI-shaped 404 the client raises.
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.completions.create(model="other", prompt=prompt, max_tokens=2)


class StreamLoad:
    """`clients` threads, each streaming completions through the OpenAI front back to back until
    stopped; a new connection per request (kube-proxy balances a Service per connection). After a
    connection it could not make, a thread waits CONNECT_BACKOFF, as the OpenAI client does."""

    def __init__(self, base_url: str, prompt: str, clients: int) -> None:
        self.url, self.prompt = f"{base_url}/completions", prompt
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.done = self.failed = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        import requests

        while not self.stop_flag.is_set():
            try:
                with requests.post(self.url, json={"model": NAME, "prompt": self.prompt, "max_tokens": 32, "stream": True},
                                   stream=True, timeout=60) as r:
                    if r.status_code != 200:
                        raise AssertionError(f"{time.strftime('%H:%M:%S')} {r.status_code} {r.text[:300]}")
                    lines = [line for line in r.iter_lines() if line.startswith(b"data: ")]
                if lines[-1] != b"data: [DONE]" or any(b'"error"' in line for line in lines):
                    raise AssertionError(lines[-3:])
                with self.lock:
                    self.done += 1
            except Exception as exc:  # noqa: BLE001 - counted, the test asserts on it
                with self.lock:
                    self.failed += 1
                    self.errors = [*self.errors[-9:], f"{clock()} {str(exc)[:400]}"]
                if isinstance(exc, requests.ConnectionError):
                    self.stop_flag.wait(CONNECT_BACKOFF)

    def __enter__(self) -> "StreamLoad":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)


AUTOSCALING = {
    # One model instance answers one request at a time (the others wait in Triton's queue), so a
    # replica under steady load has 1 in flight: twice the target, 2 replicas wanted.
    "minReplicas": 1,
    "maxReplicas": 2,
    "metrics": [{"type": "requestsInFlight", "target": 0.5}],
    "pollSeconds": 2,
    "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
    "scaleDown": {"stabilizationSeconds": 15, "periodSeconds": 5},
}


def test_generation_model_scales_on_requests_in_flight(
    start_operator: Any, namespace: str, custom_api: Any, core_api: Any, images: dict[str, str], prometheus: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _, trained, _ = deploy(start_operator, namespace, custom_api, core_api, tmp_path_factory.getbasetemp(), autoscaling=AUTOSCALING)
    prompt = (trained / "prompts.txt").read_text().splitlines()[0]
    assert len(ready_triton_pods(core_api, namespace, NAME)) == 1
    # The scaler's input is there before the load: the generation model's gauge, scraped from the pod.
    sel = promql.pod_matcher(NAME, namespace)
    wait_for(lambda: Prometheus(prometheus.url).query(promql.scaling_query(ScalingMetricType.requests_in_flight, sel, "20s")) is not None,
             timeout=60, interval=1, message="requests in flight scraped from the generation pod")
    assert get_md(custom_api, namespace, NAME)["spec"]["serving"]["replicas"] == 1  # idle: no scale-up

    base_url = f"http://{service_endpoint(core_api, namespace, f'{NAME}-triton', port=9000)}/v1"
    timeline = ServiceTimeline(core_api, namespace, f"{NAME}-triton", f"serving.model-operator.io/deployment={NAME}")
    with timeline, StreamLoad(base_url, prompt, clients=3) as load:
        md = wait_for(
            lambda: (m := get_md(custom_api, namespace, NAME))["spec"]["serving"]["replicas"] == 2
            and ((m.get("status") or {}).get("scaling") or {}).get("history") and m,
            timeout=120, interval=1, message="a scale-up decision on requests in flight",
        )
        up = md["status"]["scaling"]["history"][-1]
        assert (up["fromReplicas"], up["toReplicas"]) == (1, 2) and "requestsInFlight" in up["reason"], up
        assert condition(md, "MetricsAvailable")["status"] == "True"
        wait_for(lambda: len(ready_triton_pods(core_api, namespace, NAME)) == 2, timeout=180, interval=1,
                 message="the second replica (Triton and the OpenAI front) Ready")
        # The new replica's gauge is scraped too, and once per pod (Triton's metrics, not once per
        # container of the pod): the scaler averages over both pods.
        def in_flight_series() -> list[dict[str, Any]]:
            return list(prometheus.query(f"model_operator_generation_requests_in_flight{{{sel}}}"))

        wait_for(lambda: len({s["metric"]["pod"] for s in in_flight_series()}) == 2, timeout=60, interval=1,
                 message="both replicas' requests in flight scraped")
        assert len(in_flight_series()) == 2, in_flight_series()
    restarts = {p.metadata.name: {cs.name: cs.restart_count for cs in p.status.container_statuses or []}
                for p in core_api.list_namespaced_pod(namespace, label_selector=f"serving.model-operator.io/deployment={NAME}").items}
    # The load kept being served while the fleet grew. Not a zero-failure check: one run (with an
    # integration test loading the same 2 cores) saw 10 of 162 streams end in 503 from the front
    # (Triton in its pod unreachable), and CI runs saw the Service refuse connections for moments
    # during the scale-up (114 and 25 failures from clients that retried at once, hence the
    # back-off), causes not found; the timeline in the message is there to find them. A broken
    # rollout fails far more than 10%.
    assert load.done > 10 and load.failed * 10 <= load.done, f"{(load.done, load.failed, load.errors, restarts)}\n{timeline}"

    # The streams stopped: nothing in flight, back to 1 after the scale-down window.
    md = wait_for(
        lambda: (m := get_md(custom_api, namespace, NAME))["spec"]["serving"]["replicas"] == 1
        and m["status"]["scaling"]["history"][-1]["toReplicas"] == 1 and m,
        timeout=120, interval=1, message="scale-down to 1 once no request is in flight",
    )
    down = md["status"]["scaling"]["history"][-1]
    assert down["fromReplicas"] == 2 and "requestsInFlight" in down["reason"], down
    wait_for(lambda: len(ready_triton_pods(core_api, namespace, NAME)) == 1, timeout=60, interval=1, message="one Triton pod left")
