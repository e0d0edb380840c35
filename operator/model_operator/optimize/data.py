"""Datasets: `.npz` files with one array per model input (by name; a single-input model may use
`x` or `input`), plus `labels` (classification) or `targets` (regression/embedding)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..api.types import DType, TensorSpec
from .errors import InputError
from .signature import is_integer, numpy_dtype

ALIASES = ("x", "input")
EXTRA_KEYS = ("labels", "targets")


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    uri: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        return Dataset(
            inputs={k: v[:n] for k, v in self.inputs.items()},
            labels=None if self.labels is None else self.labels[:n],
            targets=None if self.targets is None else self.targets[:n],
            uri=self.uri,
        )

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(
            inputs={k: v[index] for k, v in self.inputs.items()},
            labels=None if self.labels is None else self.labels[index],
            targets=None if self.targets is None else self.targets[index],
            uri=self.uri,
        )

    def batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.size, batch):
            yield {k: v[start : start + batch] for k, v in self.inputs.items()}


def load_npz(path: Path, *, field_name: str, uri: str, inputs: Sequence[TensorSpec], samples: int | None) -> Dataset:
    """Read and check a dataset against the model's input signature. Every problem is an
    InputError naming `field_name` (e.g. `spec.data.validation.uri`) and the file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(field_name, f"{uri}: not a readable .npz file ({type(exc).__name__})") from None
    if not arrays:
        raise InputError(field_name, f"{uri}: the .npz file holds no arrays")
    out: dict[str, np.ndarray] = {}
    for t in inputs:
        key = t.name
        if key not in arrays and len(inputs) == 1:
            key = next((a for a in ALIASES if a in arrays), key)
        if key not in arrays:
            have = ", ".join(sorted(arrays)) or "nothing"
            raise InputError(field_name, f"{uri}: no array '{t.name}' for model input '{t.name}' (the file has: {have})")
        out[t.name] = _check_array(arrays[key], t, field_name, uri, key)
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(field_name, f"{uri}: arrays have different numbers of samples: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InputError(field_name, f"{uri}: the dataset is empty")
    labels = arrays.get("labels")
    targets = arrays.get("targets")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(field_name, f"{uri}: 'labels' must be {n} integers (got {labels.dtype} {list(labels.shape)})")
    if targets is not None and len(targets) != n:
        raise InputError(field_name, f"{uri}: 'targets' has {len(targets)} samples, the inputs {n}")
    ds = Dataset(inputs=out, labels=labels, targets=None if targets is None else targets.astype(np.float32), uri=uri)
    return ds.take(samples) if samples else ds


def _check_array(arr: np.ndarray, t: TensorSpec, field_name: str, uri: str, key: str) -> np.ndarray:
    want = numpy_dtype(t.dtype)
    if len(t.shape) != arr.ndim:
        raise InputError(field_name, f"{uri}: array '{key}' has shape {list(arr.shape)}, the model input '{t.name}' is {list(t.shape)}")
    for axis, (d, a) in enumerate(zip(t.shape, arr.shape)):
        if axis > 0 and d != -1 and d != a:
            raise InputError(field_name, f"{uri}: array '{key}' has shape {list(arr.shape)}, the model input '{t.name}' is {list(t.shape)}")
    if DType(t.dtype) == DType.bool_:
        return arr.astype(np.bool_)
    if is_integer(t):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise InputError(field_name, f"{uri}: array '{key}' is {arr.dtype}, the model input '{t.name}' needs integers ({DType(t.dtype).value})")
        return np.ascontiguousarray(arr.astype(want))
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(field_name, f"{uri}: array '{key}' is {arr.dtype}, the model input '{t.name}' needs {DType(t.dtype).value}")
    return np.ascontiguousarray(arr.astype(want))


SPLIT_SEED = 0
SELECTION_SHARE = 2 / 3
MIN_SPLIT = 12  # fewer samples than this: no held-out part (both parts are the whole set)


@dataclass(frozen=True)
class Split:
    """Indices of the validation samples that choose the recipe (`selection`: the gate) and of
    the held-out ones whose quality is reported (`report`). `held_out` is False when the set was
    too small to split and both are the whole set."""

    selection: np.ndarray
    report: np.ndarray
    held_out: bool


def split(n: int, *, share: float = SELECTION_SHARE, seed: int = SPLIT_SEED) -> Split:
    """A seeded random split of n samples: round(n * share) for selection, the rest held out
    (at least one each). Below MIN_SPLIT samples both parts are everything."""
    everything = np.arange(n)
    if n < MIN_SPLIT:
        return Split(everything, everything, held_out=False)
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(n * share)))
    return Split(np.sort(order[:k]), np.sort(order[k:]), held_out=True)
