"""How the local pod runner turns a container image into a local program.

There are no images here: a container's command runs as a local process. The
rules below say, per image, which local program stands for a path or name in
the image, what the image's ENTRYPOINT/CMD would have been, and extra
environment. This is the one place the mapping lives.

Built-in rules, first match wins:

* image containing ``tritonserver``: ``tritonserver`` (or
  ``/opt/tritonserver/bin/tritonserver``) is the Triton Inference Server that
  the ``nvidia-pytriton`` wheel ships, prepared once under
  ``$MODEL_OPERATOR_CACHE/tritonserver/`` (the Python backend stub copied into
  ``backends/python/``; ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries).
  The NGC image's entrypoint wrapper ``/opt/nvidia/nvidia_entrypoint.sh`` is
  dropped from argv.
* image containing ``model-operator``: the project's image; with no command
  it runs ``model-operator`` (the CLI installed with this Python).
* anything else: the command is looked up on the container's PATH (the
  runner's PATH, which includes this Python's scripts directory).

Extra rules come first from a YAML or JSON file named by
``$MODEL_OPERATOR_PODRUNNER_IMAGES`` (or ``podrunner --images``): a list of ::

    - image: "regex searched in the image reference"
      programs: {"name-or-path-in-image": "/local/program"}
      entrypoint: ["..."]     # used when the container has no command
      cmd: ["..."]            # used when it has neither command nor args
      env: {"NAME": "value"}
      drop: ["/entrypoint-wrapper.sh"]   # argv[0] values to skip
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .binaries import cache_dir

TRITON_MARK = "@triton"


@dataclass
class ImageRule:
    image: str
    programs: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)

    def matches(self, image: str) -> bool:
        return re.search(self.image, image) is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageRule":
        return cls(
            image=d["image"],
            programs=dict(d.get("programs") or {}),
            entrypoint=list(d.get("entrypoint") or []),
            cmd=list(d.get("cmd") or []),
            env={k: str(v) for k, v in (d.get("env") or {}).items()},
            drop=list(d.get("drop") or []),
        )


BUILTIN_RULES: tuple[ImageRule, ...] = (
    ImageRule(
        image=r"tritonserver",
        programs={"tritonserver": TRITON_MARK, "/opt/tritonserver/bin/tritonserver": TRITON_MARK},
        entrypoint=["/opt/nvidia/nvidia_entrypoint.sh"],
        cmd=["tritonserver"],
        drop=["/opt/nvidia/nvidia_entrypoint.sh"],
    ),
    ImageRule(image=r"model-operator", entrypoint=["model-operator"]),
    ImageRule(image=r""),
)


class ImageError(RuntimeError):
    """The container can't start: no local program for its command."""


_triton_lock = threading.Lock()


def prepare_triton() -> tuple[Path, Path]:
    """(tritonserver binary, its library dir), copying the wheel's tree into the cache once."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("the Triton image maps to the nvidia-pytriton wheel, which is not installed")
    pkg = Path(list(spec.submodule_search_locations)[0])
    libs = pkg.parent / "nvidia_pytriton.libs"
    version = importlib.metadata.version("nvidia-pytriton")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = cache_dir() / "tritonserver" / f"pytriton-{version}-py{py}"
    binary = dest / "bin" / "tritonserver"
    with _triton_lock:
        if not binary.exists():
            stub = pkg / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub"
            if not stub.exists():
                raise ImageError(f"nvidia-pytriton {version} has no Python backend stub for Python {py}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A private copy renamed into place: runners of other clusters may
            # be preparing the same tree at the same moment.
            tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent)) / "tree"
            # Triton looks for the stub next to the backend; the wheel keeps the
            # stubs elsewhere and its own launcher copies one in at run time.
            shutil.copytree(pkg / "tritonserver", tmp, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
            try:
                tmp.rename(dest)
            except OSError:
                if not binary.exists():
                    raise
            shutil.rmtree(tmp.parent, ignore_errors=True)
    return binary, libs


class ImageMap:
    def __init__(self, rules: list[ImageRule], triton: Callable[[], tuple[Path, Path]] = prepare_triton) -> None:
        self.rules = rules
        self._triton = triton

    @classmethod
    def load(cls, path: Optional[str | Path] = None) -> "ImageMap":
        path = path or os.environ.get("MODEL_OPERATOR_PODRUNNER_IMAGES")
        extra: list[ImageRule] = []
        if path:
            data = yaml.safe_load(Path(path).read_text()) or []
            extra = [ImageRule.from_dict(d) for d in data]
        return cls(extra + list(BUILTIN_RULES))

    def rule_for(self, image: str) -> ImageRule:
        return next(r for r in self.rules if r.matches(image))

    def resolve(
        self, image: str, command: list[str], args: list[str], env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """(argv with a local absolute program, extra env) for a container.

        ``command``/``args`` are the container's, already $(VAR)-expanded;
        Kubernetes' rules apply: command replaces the entrypoint, and args
        replace the image's CMD (which is also dropped when only command is set).
        """
        rule = self.rule_for(image)
        if command:
            argv = list(command) + list(args)
        else:
            argv = list(rule.entrypoint) + (list(args) if args else list(rule.cmd))
        while argv and argv[0] in rule.drop:
            argv = argv[1:]
        if not argv:
            raise ImageError(f"no command for image {image}: set command (no image entrypoint is known here)")
        extra_env = dict(rule.env)
        program = rule.programs.get(argv[0]) or rule.programs.get(os.path.basename(argv[0]))
        if program == TRITON_MARK:
            binary, libs = self._triton()
            program = str(binary)
            extra_env["LD_LIBRARY_PATH"] = os.pathsep.join(
                filter(None, [str(libs), extra_env.get("LD_LIBRARY_PATH") or env.get("LD_LIBRARY_PATH")])
            )
        if program:
            argv[0] = program
        elif "/" not in argv[0]:
            found = shutil.which(argv[0], path=env.get("PATH"))
            if not found:
                raise ImageError(f'executable "{argv[0]}" not found on PATH (image {image})')
            argv[0] = found
        return argv, extra_env
