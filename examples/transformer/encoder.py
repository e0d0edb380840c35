"""A transformer encoder defined with torch.nn (nothing is downloaded here): token + position
embeddings, multi-head attention with a key-padding mask, GELU feed-forward, post-LayerNorm,
masked mean pooling. Two int64 inputs (input_ids, attention_mask) with dynamic batch and
sequence axes: the shape of model every step of the worker must handle. The tests build a tiny
one, benchmarks/optimize.py a 4-layer, 256-wide one."""

from __future__ import annotations

import math
from typing import Any


def build_encoder(vocab: int = 200, d: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2, maxlen: int = 64) -> Any:
    """A transformer encoder defined here with torch.nn: token + position embeddings, pre-built
    attention (Linear q/k/v/o, masked softmax), GELU feed-forward, LayerNorm; mean-pooled output."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            dk = d // heads

            def split(y: torch.Tensor) -> torch.Tensor:
                return y.view(b, t, heads, dk).transpose(1, 2)

            att = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / math.sqrt(dk) + bias, dim=-1)
            return self.o((att @ split(self.v(x))).transpose(1, 2).reshape(b, t, d))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.att, self.n1, self.f1, self.f2, self.n2 = Attention(), nn.LayerNorm(d), nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            x = self.n1(x + self.att(x, bias))
            return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(maxlen, d)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.tok(input_ids) + self.pos(positions)
            m = attention_mask.to(x.dtype)
            bias = ((1.0 - m) * -1e4)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)

    torch.manual_seed(0)
    return Encoder().eval()
