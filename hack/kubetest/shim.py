"""Builds the bind() shim (bindshim.c) once into the cache, keyed by its source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .binaries import cache_dir

SOURCE = Path(__file__).with_name("bindshim.c")


class ShimUnavailable(RuntimeError):
    pass


def build_shim(compiler: Optional[str] = None) -> Path:
    """Path of the compiled shim, compiling it with the machine's C compiler if needed."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "lib" / f"bindshim-{digest}.so"
    if out.exists():
        return out
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise ShimUnavailable("no C compiler (gcc/cc) to build the pod runner's bind shim")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, str(SOURCE), "-ldl"],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, out)
    except subprocess.CalledProcessError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ShimUnavailable(f"compiling {SOURCE.name} failed: {e.stderr}") from e
    return out
