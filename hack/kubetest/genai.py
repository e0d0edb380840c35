"""The tests' reference for a generation artifact: its own ONNX Runtime GenAI loop, greedy,
decoded piece by piece as the served model streams it. What the server and the OpenAI front
answer is compared with this, not with the project's serving code."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def greedy_decoder(version_dir: Path) -> Callable[[str, int], str]:
    """prompt, n -> the model's greedy continuation of `prompt` by `n` tokens (the model is loaded once)."""
    import numpy as np
    import onnxruntime_genai as og  # type: ignore[import-untyped]

    model = og.Model(str(version_dir))
    tok = og.Tokenizer(model)

    def run(prompt: str, n: int) -> str:
        ids = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        stream, text = tok.create_stream(), ""
        while not gen.is_done():
            gen.generate_next_token()
            text += stream.decode(int(gen.get_next_tokens()[0]))
        return str(text)

    return run
