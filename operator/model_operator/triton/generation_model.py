"""Triton Python-backend model that streams the tokens of a decoder language model (model.task:
generation) as ONNX Runtime GenAI generates them.

The worker copies this file to `<name>/1/model.py` beside the GenAI model directory it built
(model.onnx, genai_config.json with the spec's sampling defaults, the tokenizer files,
generation.json with maxNewTokens). The model is *decoupled* (config.pbtxt's
`model_transaction_policy { decoupled: true }`): each request gets one response per generated
piece of text, then a final empty one, which is what Triton's `generate_stream` endpoint turns into
server-sent events. Inputs follow Triton's generate extension: `text_input` (required), optional
`max_tokens`, `temperature`, `top_p`, `top_k`; the output is `text_output`. The final response
(empty text) also carries `prompt_tokens` and `completion_tokens`: the request's token counts, by
the model's tokenizer and the generator's steps (what the OpenAI front reports as `usage`).

Batching: none across requests; each request runs its own GenAI Generator (prefill, then one
token per step on its KV cache) to its end, and `instance_count` instances serve requests in
parallel; further requests wait in Triton's queue.

Metrics on Triton's metrics port, per model and version: generated tokens, time to first token
and inter-token latency (sums and counts: rates and means from PromQL), requests in flight.
It imports only numpy, onnxruntime_genai and the stub's `triton_python_backend_utils`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import numpy as np

try:  # provided by the Triton Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported elsewhere only for its constants
    pb_utils = None

TOKENS_METRIC = "model_operator_generated_tokens"
TTFT_SUM_METRIC = "model_operator_time_to_first_token_seconds_sum"
TTFT_COUNT_METRIC = "model_operator_time_to_first_token_seconds_count"
ITL_SUM_METRIC = "model_operator_inter_token_latency_seconds_sum"
ITL_COUNT_METRIC = "model_operator_inter_token_latency_seconds_count"
IN_FLIGHT_METRIC = "model_operator_generation_requests_in_flight"


def _scalar(request: Any, name: str) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    value = t.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime_genai as og  # type: ignore[import-untyped]

        self.og = og
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        self.model = og.Model(model_dir)
        self.tokenizer = og.Tokenizer(self.model)
        with open(os.path.join(model_dir, "generation.json")) as f:
            self.limits = json.load(f)
        self.lock = threading.Lock()
        self.in_flight_count = 0
        labels = {"model": args["model_name"], "version": args["model_version"]}

        def metric(name: str, kind: Any, description: str) -> Any:
            family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
            self._families.append(family)
            return family.Metric(labels=labels)

        self._families: list[Any] = []
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.tokens = metric(TOKENS_METRIC, counter, "Tokens generated")
        self.ttft_sum = metric(TTFT_SUM_METRIC, counter, "Seconds from a model instance taking a request to its first token, summed")
        self.ttft_count = metric(TTFT_COUNT_METRIC, counter, "Requests that produced a first token")
        self.itl_sum = metric(ITL_SUM_METRIC, counter, "Seconds between consecutive tokens of a request, summed")
        self.itl_count = metric(ITL_COUNT_METRIC, counter, "Token intervals measured (tokens after the first)")
        self.in_flight = metric(IN_FLIGHT_METRIC, gauge, "Generation requests being answered")

    def _params(self, request: Any, prompt_tokens: int) -> Any:
        params = self.og.GeneratorParams(self.model)
        max_new = int(self.limits["maxNewTokens"])
        asked = _scalar(request, "max_tokens")
        if asked is not None:
            max_new = max(1, min(int(asked), max_new))
        opts: dict[str, Any] = {"max_length": min(prompt_tokens + max_new, int(self.limits["maxContextTokens"]))}
        temperature = _scalar(request, "temperature")
        if temperature is not None:
            opts["do_sample"] = float(temperature) > 0
            if float(temperature) > 0:
                opts["temperature"] = float(temperature)
        for name in ("top_p", "top_k"):
            v = _scalar(request, name)
            if v is not None:
                opts[name] = v
        params.set_search_options(**opts)
        return params

    def _stream(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        t0 = time.perf_counter()
        with self.lock:
            self.in_flight_count += 1
            self.in_flight.set(self.in_flight_count)
        try:
            prompt = _scalar(request, "text_input")
            if not prompt:
                raise ValueError("text_input is required and may not be empty")
            ids = self.tokenizer.encode(prompt)
            if len(ids) >= int(self.limits["maxContextTokens"]):
                raise ValueError(f"the prompt has {len(ids)} tokens; the context holds {self.limits['maxContextTokens']}")
            gen = self.og.Generator(self.model, self._params(request, len(ids)))
            gen.append_tokens(np.asarray([ids], dtype=np.int32))
            stream = self.tokenizer.create_stream()
            last = None
            generated = 0
            while not gen.is_done():
                gen.generate_next_token()
                token = int(gen.get_next_tokens()[0])
                now = time.perf_counter()
                if last is None:
                    self.ttft_sum.increment(now - t0)
                    self.ttft_count.increment(1)
                else:
                    self.itl_sum.increment(now - last)
                    self.itl_count.increment(1)
                last = now
                generated += 1
                self.tokens.increment(1)
                piece = stream.decode(token)
                if piece:
                    out = pb_utils.Tensor("text_output", np.array([piece.encode("utf-8")], dtype=np.object_))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            counts = [pb_utils.Tensor(name, np.array([n], dtype=np.int32)) for name, n in (("prompt_tokens", len(ids)), ("completion_tokens", generated))]
            empty = pb_utils.Tensor("text_output", np.array([b""], dtype=np.object_))
            sender.send(pb_utils.InferenceResponse(output_tensors=[empty, *counts]), flags=final)
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, the model keeps serving
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))), flags=final)
        finally:
            with self.lock:
                self.in_flight_count -= 1
                self.in_flight.set(self.in_flight_count)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._stream(request)
        return None

    def finalize(self) -> None:
        for name in ("tokens", "ttft_sum", "ttft_count", "itl_sum", "itl_count", "in_flight"):
            setattr(self, name, None)  # a Metric must go before its MetricFamily
        self._families = []
        self.model = None


CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "top_k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "prompt_tokens" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "completion_tokens" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def config_pbtxt(name: str, instances: int = 1) -> str:
    """The decoupled model's config.pbtxt (Triton's generate extension's input and output names)."""
    return CONFIG.format(name=name, instances=instances)
