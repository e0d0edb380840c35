"""Client helpers on `tritonclient`: readiness, metadata, inference with numpy arrays by name,
and the golden-set probe that the `probe` container beside each Triton runs against its own pod.

Endpoints are `host:port` (tritonclient's form); an `http://` prefix is accepted and dropped.
`protocol` is "http" (default) or "grpc".

The golden set (`golden.npz`, written by the worker beside the repository) holds the validation
inputs and the optimized model's outputs on them: one array per input and one per output, keyed
by tensor name (tensor names are unique across inputs and outputs; `input:<name>` /
`output:<name>` keys are accepted too, and a single-input model may use `x` or `input`).
`probe()` sends the first `samples` rows, in batches no larger than the model's max_batch_size,
and compares Triton's answers with the stored outputs: top-1 agreement (classification outputs:
2-D with more than one column), mean cosine similarity and max absolute error, judged against
the spec's quality gate (agreement >= 1 - maxTop1Drop, cosine >= minCosine, error <= maxAbsError).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api.types import QualityGate


class ProbeError(RuntimeError):
    """The golden set or the endpoint cannot be probed (missing arrays, unreachable server)."""


def _endpoint(url: str) -> str:
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
    return url.rstrip("/")


def connect(endpoint: str, protocol: str = "http", timeout: float = 60.0) -> Any:
    """A tritonclient InferenceServerClient for `host:port`."""
    if protocol == "http":
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(_endpoint(endpoint), connection_timeout=timeout, network_timeout=timeout)
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(_endpoint(endpoint))
    raise ValueError(f"protocol must be http or grpc, not {protocol!r}")


def wait_ready(endpoint: str, model: str | None = None, timeout: float = 60.0, protocol: str = "http") -> None:
    """Wait until the server (and `model`, when given) is ready; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: Exception | None = None
    client = connect(endpoint, protocol, timeout=min(timeout, 5.0))
    try:
        while True:
            try:
                if client.is_server_ready() and (model is None or client.is_model_ready(model)):
                    return
            except Exception as exc:  # noqa: BLE001 - connection refused etc.: keep waiting
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{endpoint}: not ready after {timeout:.0f} s" + (f" ({last})" if last else ""))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    finally:
        client.close()


def model_metadata(endpoint: str, model: str, protocol: str = "http") -> dict[str, Any]:
    """{"name", "platform", "inputs": [{"name", "datatype", "shape"}], "outputs": [...]}."""
    client = connect(endpoint, protocol)
    try:
        if protocol == "grpc":
            return dict(client.get_model_metadata(model, as_json=True))
        return dict(client.get_model_metadata(model))
    finally:
        client.close()


def model_config(endpoint: str, model: str, protocol: str = "http") -> dict[str, Any]:
    """The model's configuration as JSON (Triton's field names: max_batch_size, input, ...)."""
    client = connect(endpoint, protocol)
    try:
        if protocol == "grpc":
            return dict(client.get_model_config(model, as_json=True).get("config", {}))
        return dict(client.get_model_config(model))
    finally:
        client.close()


def infer(
    endpoint: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    protocol: str = "http",
    client: Any = None,
) -> dict[str, np.ndarray]:
    """Send numpy arrays by input name; return the outputs by name (all of them by default)."""
    from tritonclient.utils import np_to_triton_dtype

    if protocol == "http":
        import tritonclient.http as mod
    elif protocol == "grpc":
        import tritonclient.grpc as mod  # type: ignore[no-redef]  # the http and grpc clients share one interface
    else:
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    own = client is None
    client = client or connect(endpoint, protocol)
    try:
        if outputs is None:
            meta = client.get_model_metadata(model, as_json=True) if protocol == "grpc" else client.get_model_metadata(model)
            outputs = [o["name"] for o in meta["outputs"]]
        req = []
        for name, value in inputs.items():
            arr = np.ascontiguousarray(value)
            item = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            item.set_data_from_numpy(arr)
            req.append(item)
        wanted = [mod.InferRequestedOutput(n) for n in outputs]
        result = client.infer(model, req, outputs=wanted)
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        if own:
            client.close()


# --- golden probe --------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What one probe found; `summary()` has the keys the operator folds into status.quality."""

    passed: bool
    samples: int
    agreement: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    reason: str = ""
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "passed": self.passed, "samples": self.samples, "reason": self.reason}
        if self.agreement is not None:
            out["agreement"] = round(self.agreement, 6)
        if self.cosine is not None:
            out["cosine"] = round(self.cosine, 6)
        if self.max_abs_error is not None:
            out["maxAbsError"] = float(f"{self.max_abs_error:.6g}")
        return out


def _lookup(arrays: Mapping[str, np.ndarray], name: str, kind: str, single: bool) -> np.ndarray | None:
    for key in (name, f"{kind}:{name}"):
        if key in arrays:
            return arrays[key]
    if kind == "input" and single:
        for key in ("x", "input"):
            if key in arrays:
                return arrays[key]
    return None


def golden_arrays(
    golden: Mapping[str, np.ndarray] | str | Path, input_names: Sequence[str], output_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of a golden set, by tensor name. Raises ProbeError naming what is missing."""
    if isinstance(golden, (str, Path)):
        try:
            with np.load(golden, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ProbeError(f"{golden}: not a readable .npz file: {exc}") from None
    else:
        arrays = dict(golden)
    single = len(input_names) == 1
    ins, outs = {}, {}
    for name in input_names:
        arr = _lookup(arrays, name, "input", single)
        if arr is None:
            raise ProbeError(f"golden set has no array for input {name!r} (it has {sorted(arrays)})")
        ins[name] = arr
    for name in output_names:
        arr = _lookup(arrays, name, "output", False)
        if arr is None:
            raise ProbeError(f"golden set has no array for output {name!r} (it has {sorted(arrays)})")
        outs[name] = arr
    counts = {len(a) for a in (*ins.values(), *outs.values())}
    if len(counts) != 1:
        raise ProbeError(f"golden arrays disagree on the number of samples: {sorted(counts)}")
    return ins, outs


def is_classification_output(arr: np.ndarray) -> bool:
    return arr.ndim == 2 and arr.shape[1] > 1 and np.issubdtype(arr.dtype, np.floating)


def compare(
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    gate: QualityGate | Mapping[str, Any] | None = None,
    task: str | None = None,
) -> ProbeResult:
    """Compare outputs with the golden outputs and judge them against the quality gate.

    Agreement is measured on the first output when the task is classification (or, with no task
    given, when that output looks like class scores)."""
    gate = gate if isinstance(gate, QualityGate) else QualityGate.model_validate(dict(gate or {}))
    names = list(expected)
    if not names:
        raise ProbeError("nothing to compare: the golden set has no outputs")
    n = len(expected[names[0]])
    per: dict[str, dict[str, float]] = {}
    cosines, errors = [], []
    for name in names:
        want = np.asarray(expected[name])
        have = np.asarray(got[name])
        if want.shape != have.shape:
            return ProbeResult(False, n, reason=f"output {name}: shape {list(have.shape)}, expected {list(want.shape)}")
        w = want.reshape(len(want), -1).astype(np.float64)
        h = have.reshape(len(have), -1).astype(np.float64)
        err = float(np.max(np.abs(w - h))) if w.size else 0.0
        denom = np.linalg.norm(w, axis=1) * np.linalg.norm(h, axis=1)
        both_zero = (np.linalg.norm(w, axis=1) == 0) & (np.linalg.norm(h, axis=1) == 0)
        cos = np.where(denom > 0, np.sum(w * h, axis=1) / np.where(denom > 0, denom, 1), np.where(both_zero, 1.0, 0.0))
        per[name] = {"cosine": float(np.mean(cos)), "maxAbsError": err}
        cosines.append(float(np.mean(cos)))
        errors.append(err)
    result = ProbeResult(True, n, cosine=min(cosines), max_abs_error=max(errors), per_output=per)
    first = np.asarray(expected[names[0]])
    classify = task == "classification" if task is not None else is_classification_output(first)
    if classify and first.ndim >= 2:
        agree = np.argmax(first, axis=-1) == np.argmax(np.asarray(got[names[0]]), axis=-1)
        result.agreement = float(np.mean(agree))
        per[names[0]]["agreement"] = result.agreement
    problems = []
    if result.agreement is not None and result.agreement < 1.0 - gate.max_top1_drop - 1e-12:
        problems.append(f"top-1 agreement {result.agreement:.4f} < {1.0 - gate.max_top1_drop:.4f}")
    if result.cosine is not None and result.cosine < gate.min_cosine:
        problems.append(f"cosine {result.cosine:.4f} < {gate.min_cosine}")
    if gate.max_abs_error is not None and result.max_abs_error is not None and result.max_abs_error > gate.max_abs_error:
        problems.append(f"max abs error {result.max_abs_error:.4g} > {gate.max_abs_error}")
    result.passed = not problems
    result.reason = "; ".join(problems)
    return result


def probe(
    endpoint: str,
    model: str,
    golden: Mapping[str, np.ndarray] | str | Path,
    gate: QualityGate | Mapping[str, Any] | None = None,
    *,
    samples: int | None = None,
    task: str | None = None,
    protocol: str = "http",
) -> ProbeResult:
    """Send the golden inputs to a live model and compare its answers with the golden outputs.

    Raises ProbeError when the golden set doesn't fit the model or the endpoint fails."""
    try:
        client = connect(endpoint, protocol, timeout=30.0)
    except Exception as exc:  # noqa: BLE001 - any connection failure is the probe's answer for that endpoint
        raise ProbeError(f"{endpoint}: {exc}") from None
    try:
        try:
            if protocol == "grpc":
                meta = client.get_model_metadata(model, as_json=True)
                max_batch = int(client.get_model_config(model, as_json=True)["config"].get("max_batch_size", 0))
            else:
                meta = client.get_model_metadata(model)
                max_batch = int(client.get_model_config(model).get("max_batch_size", 0))
        except Exception as exc:  # noqa: BLE001 - InferenceServerException, connection errors
            raise ProbeError(f"{endpoint}: model {model}: {exc}") from None
        in_names = [t["name"] for t in meta["inputs"]]
        out_names = [t["name"] for t in meta["outputs"]]
        ins, outs = golden_arrays(golden, in_names, out_names)
        n = len(next(iter(ins.values())))
        if samples is not None:
            n = min(n, samples)
        if n == 0:
            raise ProbeError("the golden set is empty")
        step = max_batch if max_batch > 0 else 1
        got: dict[str, list[np.ndarray]] = {name: [] for name in out_names}
        for start in range(0, n, step):
            batch = {k: v[start : min(n, start + step)] for k, v in ins.items()}
            try:
                answer = infer(endpoint, model, batch, out_names, protocol=protocol, client=client)
            except Exception as exc:  # noqa: BLE001 - any inference failure is the probe's answer for that endpoint
                raise ProbeError(f"{endpoint}: inference on model {model} failed: {exc}") from None
            for name in out_names:
                got[name].append(answer[name])
        merged = {name: np.concatenate(parts, axis=0) for name, parts in got.items()}
        expected = {name: outs[name][:n] for name in out_names}
        return compare(expected, merged, gate, task)
    finally:
        client.close()
