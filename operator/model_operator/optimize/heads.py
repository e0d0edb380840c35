"""Attention-head pruning that shrinks the graph: whole heads leave a transformer's ONNX model.

A *block* is one multi-head attention as an exporter writes it: three projections (MatMul with
an initializer weight [E_in, E], an optional bias Add) each reshaped into heads ([.., .., H, d],
d a constant) and transposed so the head axis is second; the scores, softmax and context
(MatMuls of two activations, scalar scaling, a mask Add, Where/IsNaN guards, Transposes, no-op
Reshapes); the context transposed back and reshaped to [.., .., E]; and the output projection
(MatMul with an initializer weight [E, E_out], an optional bias Add). Removing head h slices
columns [h*d, (h+1)*d) of the Q, K and V weights and biases and the same rows of the output
projection's weight; a Reshape constant that names the head count (H, or E after the merge) is
rewritten (where torch.export shares one shape Concat among all blocks, a block that loses heads
gets its own copy). Shapes computed from Shape ops follow by themselves.

Anything else leaves the block whole: a fused QKV projection, a head size that is not a
constant, a tensor of the block read outside it (other than by Shape), a shape constant the
pruner cannot place. After pruning, the sliced graph is run on the samples (ONNX Runtime without
and with graph optimizations) against the original with the removed heads' output-projection
rows zeroed (the same function, by construction): any difference (a softmax over heads, a mask
with a head axis, anything the pattern misses) and no head is removed. Fewer heads pruned,
never a broken graph.

Which heads go: per head, the spread (standard deviation over sample tokens) of its contribution
to the output projection (its slice of the context times its rows of the weight); the mean of a
removed head's contribution is folded into the output projection's bias where it has one (else
the score is the root mean square). Scores are normalized per block and ranked across blocks
like channel groups (shrink.choose): `amount` bounds the fraction of all heads removed, each
block keeps MIN_KEEP of its heads (and one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PASS = frozenset({"Transpose", "Reshape", "Mul", "Div", "Add", "Sub", "Where", "IsNaN", "Softmax", "MatMul", "Cast", "Dropout", "Identity"})
TOLERANCE = 1e-3  # the sliced graph's outputs vs the head-masked original's, relative to the output's scale


def consumer_map(graph: Any) -> dict[str, list[Any]]:
    """{tensor name: the nodes that read it} of an ONNX graph."""
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


@dataclass
class Proj:
    node: Any
    weight: str
    bias: str | None


@dataclass
class Rewrite:
    node: Any  # the Reshape or the Concat whose input holds the constant
    index: int  # that input
    offset: int  # the element in it
    kind: str  # "heads" (becomes the kept head count) or "width" (kept heads x d)
    readers: list[Any] = field(default_factory=list)  # this block's reshapes reading a Concat that others read too


@dataclass
class Block:
    q: Proj
    k: Proj
    v: Proj
    out: Proj
    heads: int
    dim: int
    rewrites: list[Rewrite] = field(default_factory=list)
    tensors: set[str] = field(default_factory=set)  # the tensors whose shapes change

    @property
    def name(self) -> str:
        return str(self.out.node.name or self.out.weight)


@dataclass
class HeadStats:
    blocks: int = 0
    projections_left: int = 0  # head-split projections not in a recognized block
    heads: int = 0
    removed: int = 0
    kept: dict[str, list[int]] = field(default_factory=dict)  # per block (output projection): the heads kept
    per_block: dict[str, int] = field(default_factory=dict)  # per block: its heads
    refused: str = ""  # why no head was removed although blocks were found


class _View:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                       if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = consumer_map(g)
        self.outputs = {o.name for o in g.output}

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return self.consts.get(name)

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, []))

    def only_user(self, tensor: str) -> Any:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def weight(self, node: Any) -> str | None:
        """The 2-D initializer at input 1 of a MatMul, used there only."""
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in self.inits or self.uses(node.input[1]) != 1:
            return None
        return str(node.input[1]) if len(self.inits[node.input[1]].dims) == 2 else None

    def proj(self, node: Any) -> tuple[Proj, str] | None:
        """The projection starting at MatMul `node` and the tensor it ends in (after its bias)."""
        w = self.weight(node)
        if w is None:
            return None
        width = int(self.inits[w].dims[1])
        out = node.output[0]
        add = self.only_user(out)
        if add is not None and add.op_type == "Add":
            other = next((x for x in add.input if x != out), None)
            arr = None if other is None or self.uses(other) != 1 else self.array(other)
            if other in self.inits and arr is not None and arr.shape == (width,):
                return Proj(node, w, str(other)), str(add.output[0])
        return Proj(node, w, None), str(out)

    def shape_elems(self, node: Any) -> list[tuple[int | None, Rewrite | None]] | None:
        """The elements of a Reshape's shape: (constant value or None, where it sits)."""
        src = node.input[1]
        arr = self.array(src)
        if arr is not None:
            return [(int(v), Rewrite(node, 1, i, "")) for i, v in enumerate(arr.reshape(-1))]
        cat = self.producer.get(src)
        if cat is None or cat.op_type != "Concat":  # (a Concat read by other nodes too: see _block)
            return None
        elems: list[tuple[int | None, Rewrite | None]] = []
        for idx, piece in enumerate(cat.input):
            arr = self.array(piece)
            if arr is not None:
                elems += [(int(v), Rewrite(cat, idx, i, "")) for i, v in enumerate(arr.reshape(-1))]
                continue
            p = self.producer.get(piece)
            if p is None or not _one_element(p):
                return None
            elems.append((None, None))
        return elems


def _one_element(node: Any) -> bool:
    """A dynamic shape piece of one element: an unsqueezed scalar (a Gather of a Shape), or a
    Shape sliced to one dimension."""
    if node.op_type == "Unsqueeze":
        return True
    if node.op_type != "Shape":
        return False
    attrs = {a.name: a.i for a in node.attribute}
    return "start" in attrs and "end" in attrs and attrs["end"] - attrs["start"] == 1 and (attrs["start"] >= 0) == (attrs["end"] > 0)


@dataclass
class Split:
    proj: Proj
    start: str  # the transposed heads tensor
    dim: int
    rewrites: list[Rewrite]
    tensors: set[str]  # projection output .. reshape output
    reshape: Any = None


def _split(v: _View, node: Any) -> Split | None:
    """A projection reshaped into heads [.., .., H, d] and transposed so the head axis is second."""
    found = v.proj(node)
    if found is None:
        return None
    proj, out = found
    reshape = v.only_user(out)
    if reshape is None or reshape.op_type != "Reshape" or reshape.input[0] != out:
        return None
    elems = v.shape_elems(reshape)
    width = int(v.inits[proj.weight].dims[1])
    if elems is None or len(elems) != 4:
        return None
    d = elems[3][0]
    if d is None or d <= 0 or width % d or width // d < 2:
        return None
    rewrites = []
    for i, (val, site) in enumerate(elems[:3]):
        if val is None or (i < 2 and val in (0, -1)) or (i == 2 and val == -1):
            continue
        if i == 2 and val == width // d and site is not None:
            site.kind = "heads"
            rewrites.append(site)
            continue
        return None  # a static batch or sequence, or a head count that is not H
    tr = v.only_user(reshape.output[0])
    if tr is None or tr.op_type != "Transpose":
        return None
    perm = [list(a.ints) for a in tr.attribute if a.name == "perm"]
    if not perm or perm[0] not in ([0, 2, 1, 3], [0, 2, 3, 1]):
        return None
    return Split(proj, str(tr.output[0]), d, rewrites, {str(node.output[0]), out, str(reshape.output[0])}, reshape)


def _reach(v: _View, start: str, nodes: list[Any]) -> set[str]:
    """The tensors reachable from `start` through `nodes`, not through a MatMul."""
    ids = {id(n) for n in nodes}
    seen, queue = {start}, [start]
    while queue:
        t = queue.pop()
        for n in v.consumers.get(t, []):
            if id(n) in ids and n.op_type != "MatMul":
                for o in n.output:
                    if o and o not in seen:
                        seen.add(o)
                        queue.append(o)
    return seen


def _region(v: _View, starts: set[str]) -> tuple[list[Any], set[str], Any] | None:
    """The nodes and tensors between the splits and the output projection (its MatMul); None
    where the flow leaves the block, meets an op outside PASS or reaches two projections."""
    region, queue, nodes, seen = set(starts), list(starts), [], set()
    out_mm = None
    while queue:
        t = queue.pop()
        if t in v.outputs:
            return None
        for n in v.consumers.get(t, []):
            if n.op_type == "Shape":
                continue  # reads the shape only: follows any head count by itself
            if n.op_type == "MatMul" and v.weight(n) is not None and n.input[0] == t:
                if out_mm is not None and out_mm is not n:
                    return None
                out_mm = n
                continue
            if n.op_type not in PASS:
                return None
            if id(n) not in seen:
                seen.add(id(n))
                nodes.append(n)
                for o in n.output:
                    if o and o not in region:
                        region.add(o)
                        queue.append(o)
    return (nodes, region, out_mm) if out_mm is not None else None


def _block(v: _View, splits: list[Split]) -> Block | None:
    """The attention block of three splits (of one input); None unless every piece is recognized."""
    found = _region(v, {s.start for s in splits})
    if found is None:
        return None
    nodes, region, out_mm = found
    proj = v.proj(out_mm)
    if proj is None:
        return None
    out = proj[0]
    widths = {int(v.inits[s.proj.weight].dims[1]) for s in splits}
    dims = {s.dim for s in splits}
    if len(widths) != 1 or len(dims) != 1 or int(v.inits[out.weight].dims[0]) not in widths:
        return None
    width, d = widths.pop(), dims.pop()
    rewrites = [r for s in splits for r in s.rewrites]
    merge = v.producer.get(out_mm.input[0])
    if merge is None or merge.op_type != "Reshape" or id(merge) not in {id(n) for n in nodes}:
        return None
    for n in nodes:
        if n.op_type != "Reshape":
            continue
        elems = v.shape_elems(n)
        if elems is None:
            return None
        if n is merge:  # [.., .., E]: E (rewritten) or -1
            if len(elems) != 3 or elems[2][0] not in (-1, width) or any(val not in (None, 0, -1) for val, _ in elems[:2]):
                return None
            site = elems[2][1]
            if elems[2][0] == width and site is not None:
                site.kind = "width"
                rewrites.append(site)
        elif any(val not in (None, 0, -1, d) for val, _ in elems):  # a reshape within the heads layout
            return None
    # Q and K meet in the scores MatMul; the probabilities and V in the context MatMul, whose
    # result alone reaches the output projection.
    mms = [n for n in nodes if n.op_type == "MatMul"]
    reach = {s.start: _reach(v, s.start, nodes) for s in splits}

    def origin(t: str) -> str | None:
        hits = [s for s, r in reach.items() if t in r]
        return hits[0] if len(hits) == 1 else None

    scores = [mm for mm in mms if origin(mm.input[0]) and origin(mm.input[1]) and origin(mm.input[0]) != origin(mm.input[1])]
    if len(mms) != 2 or len(scores) != 1:
        return None
    context = next(mm for mm in mms if mm is not scores[0])
    q, k, vs = origin(scores[0].input[0]), origin(scores[0].input[1]), origin(context.input[1])
    if vs is None or len({q, k, vs}) != 3 or context.input[0] not in _reach(v, scores[0].output[0], nodes) \
            or out_mm.input[0] not in _reach(v, context.output[0], nodes):
        return None
    # A rewritten Concat read by reshapes of other blocks too (torch.export shares one shape among
    # all splits of a model) is cloned for this block's reshapes; each element is rewritten once.
    reshapes = [n for n in nodes if n.op_type == "Reshape"] + [s.reshape for s in splits]
    unique: dict[tuple[int, int, int], Rewrite] = {}
    for r in rewrites:
        if r.node.op_type == "Concat":
            users = v.consumers.get(r.node.output[0], [])
            mine = [u for u in reshapes if u.input[1] == r.node.output[0]]
            if r.node.output[0] in v.outputs or any(u.op_type != "Reshape" or u.input[1] != r.node.output[0] for u in users):
                return None
            r.readers = mine if len(mine) < len(users) else []
        unique.setdefault((id(r.node), r.index, r.offset), r)
    by = {s.start: s.proj for s in splits}
    block = Block(by[str(q)], by[str(k)], by[vs], out, width // d, d, list(unique.values()))
    block.tensors = region.union(*(s.tensors for s in splits))
    return block


def find_blocks(model: Any) -> tuple[list[Block], int]:
    """The prunable attention blocks of `model` and how many head-split projections were left whole."""
    v = _View(model)
    splits = [s for s in (_split(v, n) for n in model.graph.node if n.op_type == "MatMul") if s is not None]
    by_input: dict[str, list[Split]] = {}  # the projections of one block read the same input
    for s in splits:
        by_input.setdefault(str(s.proj.node.input[0]), []).append(s)
    blocks, left = [], 0
    for group in by_input.values():
        block = _block(v, group) if len(group) == 3 else None
        if block is None:
            left += len(group)
        else:
            blocks.append(block)
    return blocks, left


def head_scores(model: Any, blocks: list[Block], acts: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per block, a score per head and the mean contribution per head ([heads, E_out]): the
    spread of the head's contribution to the output projection (its root mean square where the
    projection has no bias to take the mean)."""
    v = _View(model)
    scores, means = [], []
    for b in blocks:
        ctx = acts[b.out.node.input[0]].astype(np.float64).reshape(-1, b.heads * b.dim)
        w = np.asarray(v.array(b.out.weight), dtype=np.float64)
        s, m = np.zeros(b.heads), np.zeros((b.heads, w.shape[1]))
        for h in range(b.heads):
            c = ctx[:, h * b.dim : (h + 1) * b.dim] @ w[h * b.dim : (h + 1) * b.dim]
            m[h] = c.mean(axis=0)
            centred = c - m[h] if b.out.bias is not None else c
            s[h] = np.sqrt((centred**2).sum(axis=1).mean())
        scores.append(s)
        means.append(m)
    return scores, means


def _set(model: Any, arrays: dict[str, np.ndarray]) -> None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[init.name]), init.name))


def _clone(model: Any, cat: Any, readers: list[Any], n: int) -> Any:
    """A copy of Concat `cat` for `readers` only, placed right after it."""
    import onnx

    new = onnx.NodeProto()
    new.CopyFrom(cat)
    new.name = f"{cat.name}__heads{n}"
    new.output[0] = f"{cat.output[0]}__heads{n}"
    pos = next(i for i, node in enumerate(model.graph.node) if node is cat or node == cat)
    model.graph.node.insert(pos + 1, new)
    for r in readers:
        r.input[1] = new.output[0]
    return model.graph.node[pos + 1]


def _rewrite(model: Any, v: _View, site: Rewrite, value: int, n: int) -> str | None:
    """Set one shape element: in place where the constant is read there only (and its node is
    no clone), else in a fresh constant for this node (the others keep theirs; returned: the
    name it no longer reads)."""
    from onnx import numpy_helper

    name = site.node.input[site.index]
    arr = np.array(v.array(name)).copy()
    arr.reshape(-1)[site.offset] = value
    if v.uses(name) == 1 and name not in v.outputs and not site.readers:
        if name in v.inits:
            v.inits[name].CopyFrom(numpy_helper.from_array(arr, name))
            return None
        const = v.producer[name]
        const.attribute[0].t.CopyFrom(numpy_helper.from_array(arr, name))
        v.consts[name] = arr
        return None
    new = f"{name}__heads{n}"
    model.graph.initializer.append(numpy_helper.from_array(arr, new))
    v.consts[new] = arr  # where another element of it is rewritten later
    site.node.input[site.index] = new
    return str(name)


def prune_heads(
    model: Any, amount: float, sample: Callable[[Any, list[str]], dict[str, np.ndarray]] | None,
    check: Callable[[Any, Any], bool] | None = None,
) -> tuple[Any, HeadStats]:
    """A copy of `model` with `amount` of its attention heads removed (scored on `sample`), or the
    unchanged copy where no block is recognized, there are no samples or no `check`, or
    `check(masked, pruned)` finds the sliced graph differs from the head-masked original."""
    import onnx

    from .shrink import choose

    out = onnx.ModelProto()
    out.CopyFrom(model)
    blocks, left = find_blocks(out)
    stats = HeadStats(blocks=len(blocks), projections_left=left, heads=sum(b.heads for b in blocks))
    if not blocks or amount <= 0:
        return out, stats
    if sample is None or check is None:
        stats.refused = "no sample inputs to score and check heads on"
        return out, stats
    acts = sample(out, sorted({b.out.node.input[0] for b in blocks}))
    scores, means = head_scores(out, blocks, acts)
    keep = choose(scores, amount)
    v = _View(out)
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    arrays: dict[str, np.ndarray] = {}
    zeroed: dict[str, np.ndarray] = {}
    n, replaced = 0, set[str | None]()
    for b, k in zip(blocks, keep):
        idx = np.flatnonzero(k)
        stats.kept[b.name] = [int(i) for i in idx]
        stats.per_block[b.name] = b.heads
        if len(idx) == b.heads:
            continue
        stats.removed += b.heads - len(idx)
        cols = (idx[:, None] * b.dim + np.arange(b.dim)[None, :]).ravel()
        for p in (b.q, b.k, b.v):
            arrays[p.weight] = np.take(np.asarray(v.array(p.weight)), cols, axis=1)
            if p.bias is not None:
                arrays[p.bias] = np.take(np.asarray(v.array(p.bias)), cols)
        w_out = np.asarray(v.array(b.out.weight))
        arrays[b.out.weight] = w_out[cols]
        mask = np.zeros(b.heads * b.dim, dtype=bool)
        mask[cols] = True
        zeroed[b.out.weight] = np.where(mask[:, None], w_out, 0).astype(w_out.dtype)
        if b.out.bias is not None:
            gone = np.setdiff1d(np.arange(b.heads), idx)
            bias = np.asarray(v.array(b.out.bias))
            arrays[b.out.bias] = zeroed[b.out.bias] = (bias.astype(np.float64) + means[blocks.index(b)][gone].sum(axis=0)).astype(bias.dtype)
        for site in b.rewrites:
            n += 1
            if site.readers:
                site.node = _clone(out, site.node, site.readers, n)
            replaced.add(_rewrite(out, v, site, len(idx) if site.kind == "heads" else len(idx) * b.dim, n))
    if not stats.removed:
        return out, stats
    _set(out, arrays)
    _set(masked, zeroed)
    shaped = set().union(*(b.tensors for b in blocks)) | set(arrays)  # activations and sliced weights
    kept_info = [vi for vi in out.graph.value_info if vi.name not in shaped]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_info)
    used = {x for node in out.graph.node for x in node.input}  # the shared shape constants every site copied
    stale = [i for i in out.graph.initializer if i.name in replaced and i.name not in used]
    for init in stale:
        out.graph.initializer.remove(init)
    if not check(masked, out):
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(model)
        return unchanged, HeadStats(blocks=len(blocks), projections_left=left, heads=stats.heads,
                                    refused="the pruned graph differs from the head-masked original on the samples (or does not run)")
    return out, stats


def ort_check(feeds: dict[str, np.ndarray], batch: int = 8) -> Callable[[Any, Any], bool]:
    """A `check` for prune_heads(): on the first `batch` samples, the pruned model (without graph
    optimizations, and with all of them, which may fuse attention) answers like the head-masked
    original (without) within TOLERANCE, relative to the largest output value."""

    def check(masked: Any, pruned: Any) -> bool:
        from .runtime import OrtRunner

        part = {k: v[:batch] for k, v in feeds.items()}
        try:
            ref = OrtRunner(masked.SerializeToString(), level="disable").run(part)
            runs = [OrtRunner(pruned.SerializeToString(), level=level).run(part) for level in ("disable", "all")]
        except Exception:  # noqa: BLE001 - a graph that does not run is a refusal, not an error
            return False
        for got in runs:
            for r, g in zip(ref, got):
                r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
                if r.shape != g.shape or not np.allclose(g, r, rtol=TOLERANCE, atol=TOLERANCE * max(1.0, float(np.abs(r).max(initial=0.0)))):
                    return False
        return True

    return check
