"""Triton Python-backend model that serves an ONNX file with ONNX Runtime.

`repository.write_repository(..., backend="python")` copies this file to `<name>/1/model.py`
beside `model.onnx`. Triton's Python backend stub imports it and calls `TritonPythonModel`.
It depends only on numpy and onnxruntime (and on `triton_python_backend_utils`, which the stub
provides), never on model_operator: the stub's interpreter may not have it.

Batching: with `max_batch_size > 0`, Triton's dynamic batcher hands `execute` several requests
at once. Requests whose inputs have the same shapes past the batch axis are concatenated and
run as one ONNX Runtime call, then the outputs are split back per request; requests with other
shapes (e.g. other sequence lengths) run as their own group. When a group's run fails, its
requests run one by one, so only the failing request is answered with an error.

Failed requests are counted in `model_operator_backend_request_failure` (a custom metric on
Triton's metrics port): Triton counts a Python-backend response that carries an error as a
*success* in `nv_inference_request_failure`/`_success`, so without it the operator's error ratio
would never see this backend fail.

Config parameters read: `onnx_file` (default `model.onnx`), `intra_op_threads` (default: ONNX
Runtime's own choice). On a KIND_GPU instance the CUDA execution provider is used when ONNX
Runtime has it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

try:  # provided by the Triton Python backend stub; absent when this file is imported elsewhere
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised by unit tests outside Triton
    pb_utils = None

FAILURE_METRIC = "model_operator_backend_request_failure"

# ONNX Runtime type strings -> numpy dtypes (for the inputs ORT expects).
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def group_requests(shapes: Sequence[dict[str, tuple[int, ...]]]) -> list[list[int]]:
    """Indices of requests that can be concatenated along the batch axis: same input names and
    same shapes past axis 0. Order of first appearance is kept."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, req in enumerate(shapes):
        key = tuple(sorted((name, tuple(shape[1:])) for name, shape in req.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_batched(
    run: Any,
    requests: Sequence[dict[str, np.ndarray]],
    output_names: Sequence[str],
    batching: bool,
) -> list[dict[str, np.ndarray] | Exception]:
    """Run `run(feed) -> list[array]` over requests, concatenating compatible ones when the
    model batches. Returns, per request, its outputs by name or the exception it raised. When a
    concatenated run fails, its requests are run one by one, so one bad request fails alone."""
    results: list[dict[str, np.ndarray] | Exception] = [RuntimeError("not run")] * len(requests)

    def single(i: int) -> None:
        try:
            results[i] = dict(zip(output_names, run(requests[i])))
        except Exception as exc:  # noqa: BLE001 - reported to the client of this request
            results[i] = exc

    groups: Iterable[list[int]]
    if batching:
        groups = group_requests([{k: v.shape for k, v in r.items()} for r in requests])
    else:
        groups = [[i] for i in range(len(requests))]
    for idx in groups:
        if len(idx) == 1:
            single(idx[0])
            continue
        try:
            feed = {name: np.concatenate([requests[i][name] for i in idx], axis=0) for name in requests[idx[0]]}
            outs = run(feed)
        except Exception:  # noqa: BLE001 - find the request that fails
            for i in idx:
                single(i)
            continue
        sizes = [len(next(iter(requests[i].values()))) for i in idx]
        bounds = np.cumsum(sizes)[:-1]
        split = [np.split(o, bounds, axis=0) for o in outs]
        for j, i in enumerate(idx):
            results[i] = {name: split[k][j] for k, name in enumerate(output_names)}
    return results


class TritonPythonModel:
    """The model Triton's Python backend instantiates."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file") or "model.onnx")
        opts = ort.SessionOptions()
        threads = params.get("intra_op_threads")
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
        }
        self.ort_input_dtypes = {i.name: ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        missing = [n for n in self.input_names if n not in self.ort_input_dtypes]
        if missing:
            raise pb_utils.TritonModelException(
                f"config inputs {missing} are not inputs of {os.path.basename(path)} "
                f"(it has {sorted(self.ort_input_dtypes)})"
            )
        self.failures = None
        if hasattr(pb_utils, "MetricFamily"):  # Python backends from 23.05 on
            self._failure_family = pb_utils.MetricFamily(
                name=FAILURE_METRIC,
                description="Requests this model answered with an error (counted as successes by Triton's own metrics)",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            self.failures = self._failure_family.Metric(labels={"model": args["model_name"], "version": args["model_version"]})
        self.ort_output_names = [o.name for o in self.session.get_outputs()]
        unknown = [n for n in self.output_names if n not in self.ort_output_names]
        if unknown:
            raise pb_utils.TritonModelException(
                f"config outputs {unknown} are not outputs of {os.path.basename(path)} (it has {self.ort_output_names})"
            )

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        cast = {}
        for name, value in feed.items():
            want = self.ort_input_dtypes.get(name)
            cast[name] = value.astype(want, copy=False) if want is not None else value
        return self.session.run(self.output_names, cast)

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = []
        for request in requests:
            feeds.append({name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names})
        results = run_batched(self._run, feeds, self.output_names, self.batching)
        responses = []
        for result in results:
            if isinstance(result, Exception):
                if self.failures is not None:
                    self.failures.increment(1)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(result))))
                continue
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[name].astype(self.output_dtypes[name], copy=False)))
                for name in self.output_names
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.session = None
        self.failures = None  # a Metric must go before its MetricFamily
