"""The Dockerfile, checked without a Docker engine: it is parsed into stages and instructions,
and what it names must exist — the targets the chart's images come from, the entry point in
pyproject's [project.scripts], the subcommands in the CLI's parser, the extras in
[project.optional-dependencies], the files it copies — and its final stages must run as a
non-root user from a pinned base image without build tools."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TARGETS = ("operator", "worker")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|cmake|gfortran|rustc|cargo|python3?-dev)\b")


@dataclass
class Instruction:
    op: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def ops(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages, with line continuations joined."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text_ in logical:
        op, _, args = text_.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0], line=line))
        elif not stages:
            assert op == "ARG", f"line {line}: only ARG may come before the first FROM, not {op}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(op, args, line))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def resolve(base: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GLOBAL_ARGS.get(m.group(1), m.group(0)), base)


def chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = []
    stage: Stage | None = BY_NAME[name]
    while stage is not None:
        out.append(stage)
        stage = BY_NAME.get(stage.base)
    return out


def cli_subcommands() -> dict[str, object]:
    import argparse

    from model_operator.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_targets_exist_and_operator_is_the_default() -> None:
    for target in TARGETS:
        assert target in BY_NAME, f"no stage named {target}"
    assert STAGES[-1].name == "operator", "`docker build .` without --target should build the operator image"
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("target", TARGETS)
def test_final_stages_run_as_a_numeric_non_root_user(target: str) -> None:
    users = [i.args for s in chain(target) for i in s.ops("USER")]
    assert users, f"{target} sets no USER"
    user = users[0]  # the nearest USER wins
    uid, _, gid = user.partition(":")
    # Numeric, so the kubelet can enforce runAsNonRoot without resolving names.
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # ...and the same UID the chart's security contexts use.
    values = yaml.safe_load((REPO / "charts" / "model-operator" / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] == values["workloadSecurity"]["runAsUser"]


def test_base_images_are_pinned_and_name_no_registry_host() -> None:
    for stage in STAGES:
        if stage.base in BY_NAME:
            continue
        image = resolve(stage.base)
        assert "$" not in image, f"line {stage.line}: unresolved {stage.base}"
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"line {stage.line}: {image} is not pinned by a tag"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"line {stage.line}: {image}: pin a full version"
        first = name.split("/")[0]
        assert "/" not in name or ("." not in first and ":" not in first and first != "localhost"), (
            f"line {stage.line}: {image} names a registry host"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_final_stages_have_no_build_tools(target: str) -> None:
    stages = chain(target)
    # Final images are built on the plain base image, not on the build stage.
    assert all(s.name not in ("build", "operator-venv", "worker-venv") for s in stages), [s.name for s in stages]
    for stage in stages:
        for run in stage.ops("RUN"):
            assert not COMPILERS.search(run.args), f"line {run.line}: {run.args}"
            if "pip install" in run.args:
                # Only the project's own wheel, last, offline: the dependencies come built from a venv stage.
                assert "--no-index" in run.args and "/wheels/model_operator-" in run.args and "rm -rf /wheels" in run.args, (
                    f"line {run.line}: install dependencies in a venv stage and copy the result"
                )
    # What they copy comes from a venv stage that exists.
    for stage in stages:
        for copy in stage.ops("COPY"):
            m = re.search(r"--from=(\S+)", copy.args)
            if m:
                assert m.group(1) in BY_NAME, f"line {copy.line}: no stage {m.group(1)}"
    for stage in STAGES:
        for run in stage.ops("RUN"):
            assert not re.search(r"apt-get install[^&;]*\b(gcc|g\+\+|build-essential|clang)\b", run.args), run.args


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_is_a_project_script(target: str) -> None:
    entry = next(i for s in chain(target) for i in s.ops("ENTRYPOINT"))
    argv = entry.exec_form()
    assert argv is not None, f"line {entry.line}: use the exec form"
    assert argv == ["model-operator"]
    assert argv[0] in PYPROJECT["project"]["scripts"]
    module, _, func = PYPROJECT["project"]["scripts"][argv[0]].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("target", TARGETS)
def test_cmd_uses_subcommands_the_cli_has(target: str) -> None:
    cmd = next(i for s in chain(target) for i in s.ops("CMD"))
    argv = cmd.exec_form()
    assert argv is not None, f"line {cmd.line}: use the exec form"
    if argv[0].startswith("-"):
        assert argv == ["--help"]
        return
    subcommands = cli_subcommands()
    assert argv[0] in subcommands, f"{argv[0]} is not a `model-operator` subcommand ({sorted(subcommands)})"
    # The flags parse with the real parser.
    from model_operator.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_worker_installs_the_worker_extra_and_the_operator_does_not() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    runs = {
        name: " ".join(i.args for s in [*chain(name), *chain(f"{name}-venv")] for i in s.ops("RUN"))
        for name in ("operator", "worker")
    }
    used = {name: set(re.findall(r"\.whl\)?\[([\w,-]+)\]", text)) for name, text in runs.items()}
    assert used["operator"] == set()
    assert used["worker"] == {"worker"}
    # The venv stages install pyproject's dependencies: the worker's with the extra, the operator's without.
    assert re.search(r"optional-dependencies.*\bworker >", runs["worker"]) and not re.search(r"\bworker >", runs["operator"])
    assert "worker" in extras
    assert any(d.startswith("torch") for d in extras["worker"])
    assert any(d.startswith("onnxruntime") for d in extras["worker"])
    assert "torch==" in runs["worker"] and "torch" not in runs["operator"]
    copies = {name: [i.args for i in BY_NAME[name].ops("COPY")] for name in TARGETS}
    assert any("--from=worker-venv" in c for c in copies["worker"])
    assert any("--from=operator-venv" in c for c in copies["operator"])


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore starts by excluding everything"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in STAGES:
        for copy in stage.ops("COPY"):
            if "--from=" in copy.args:
                continue
            *sources, _dest = shlex.split(copy.args)
            for src in sources:
                assert (REPO / src).exists(), f"line {copy.line}: {src} does not exist"
                assert src.rstrip("/") in included, f"line {copy.line}: {src} is excluded by .dockerignore"
    # pyproject's readme is part of the build (setuptools reads it).
    assert PYPROJECT["project"]["readme"] in included
    assert "tests" not in included and "charts" not in included


def test_chart_and_builders_only_call_subcommands_the_images_have(tmp_path: Path) -> None:
    """The chart's operator container and every container the operator builds on the worker image
    run `model-operator <subcommand>` with a subcommand the CLI has."""
    from model_operator.config import NodePool, OperatorConfig
    from model_operator.plan.render import render

    subcommands = cli_subcommands()
    deployment = (REPO / "charts" / "model-operator" / "templates" / "deployment.yaml").read_text()
    assert 'command: ["model-operator"]' in deployment
    assert re.search(r"args:\s*\n\s*- run\b", deployment)
    assert "run" in subcommands

    config = OperatorConfig(node_pools={"gpu": NodePool(), "edge": NodePool()})
    seen = set()
    for example in sorted((REPO / "examples").glob("*/modeldeployment.yaml")):
        doc = yaml.safe_load(example.read_text())
        if "://" not in doc["spec"]["model"]["uri"]:
            continue  # a local example: `model-operator local` runs it, the operator refuses it
        for obj in render(doc, config):
            template = (obj.get("spec") or {}).get("template")
            if not template:
                continue
            spec = template["spec"]
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
                if c["image"] == config.worker_image:
                    argv = [*c.get("command", []), *c.get("args", [])]
                    assert argv[0] == "model-operator", argv
                    assert argv[1] in subcommands, argv
                    seen.add(argv[1])
    assert {"optimize", "assemble"} <= seen


def test_image_names_match_the_chart() -> None:
    values = yaml.safe_load((REPO / "charts" / "model-operator" / "values.yaml").read_text())
    text = DOCKERFILE.read_text()
    assert f"--target operator -t {values['image']['repository']}:" in text
    assert f"--target worker   -t {values['worker']['image']['repository']}:" in text


@pytest.mark.parametrize("target", TARGETS)
def test_dependency_layers_come_before_the_project_source(target: str) -> None:
    """A source change rebuilds and ships only the last, small layer: the venv stage (torch and
    pyproject's dependencies, through a download cache mount) never sees the source; the final
    stage copies it, then installs the project's wheel offline."""
    venv = f"{target}-venv"
    for stage in chain(venv):
        assert not [c for c in stage.ops("COPY") if "operator" in c.args or "--from=build" in c.args], (
            f"{venv} (via {stage.name}) copies the source: every source change would reinstall its dependencies"
        )
    downloads = [r for r in BY_NAME[venv].ops("RUN") if "pip download" in r.args]
    assert downloads and all("--mount=type=cache" in r.args for r in downloads)
    steps = BY_NAME[target].instructions
    venv_copy = next(i for i, s in enumerate(steps) if s.op == "COPY" and f"--from={venv}" in s.args)
    wheel_copy = next(i for i, s in enumerate(steps) if s.op == "COPY" and "--from=build" in s.args)
    assert venv_copy < wheel_copy
    if target == "worker":
        vsteps = BY_NAME[venv].instructions
        torch_run = next(i for i, s in enumerate(vsteps) if s.op == "RUN" and "torch==" in s.args)
        pyproject_copy = next(i for i, s in enumerate(vsteps) if s.op == "COPY" and "pyproject.toml" in s.args)
        assert torch_run < pyproject_copy, "torch must not reinstall when pyproject.toml changes"
