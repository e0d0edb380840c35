"""How the local pod runner turns a container image into a local program.

There are no images here: a container's command runs as a local process. The
rules below say, per image, which local program stands for a path or name in
the image, what the image's ENTRYPOINT/CMD would have been, and extra
environment. This is the one place the mapping lives.

Built-in rules, first match wins:

* image containing ``tritonserver``: ``tritonserver`` (or
  ``/opt/tritonserver/bin/tritonserver``) is the Triton Inference Server that
  the ``nvidia-pytriton`` wheel ships, as
  ``model_operator.triton.server.triton_command_for_image`` prepares it (the
  tree copied once into the cache with the Python backend stub, the backend
  directory, ``LD_LIBRARY_PATH`` and ``PYTHONPATH`` for the Python backend).
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

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


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


class ImageMap:
    def __init__(self, rules: list[ImageRule]) -> None:
        self.rules = rules

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
            # The product's own mapping: binary prepared in the cache, the Python backend's
            # libpython and site-packages, and the backend directory.
            from model_operator.triton.server import triton_command_for_image

            base = {**env, **extra_env}
            argv, full_env = triton_command_for_image(["tritonserver", *argv[1:]], base)
            extra_env.update({k: v for k, v in full_env.items() if base.get(k) != v})
            return argv, extra_env
        if program:
            argv[0] = program
        elif "/" not in argv[0]:
            found = shutil.which(argv[0], path=env.get("PATH"))
            if not found:
                raise ImageError(f'executable "{argv[0]}" not found on PATH (image {image})')
            argv[0] = found
        return argv, extra_env
