"""Which container images a ModelDeployment may run: the operator's image policy. Pure.

A tenant can name its own Triton image (`spec.serving.tritonImage`); the operator runs it only
when it matches one of the configured patterns (`allowedTritonImages`; by default the
repository of the operator's own Triton image). Patterns:

- `REPO`: that repository, any tag or digest (`registry.example/triton` allows
  `registry.example/triton:24.10` and `registry.example/triton@sha256:…`);
- `REPO:TAG`, `REPO@DIGEST`: exactly that reference;
- `PREFIX/*`: any repository under PREFIX, at any depth.

References are parsed by the container reference grammar, never matched as text: a tag can't
hold a `/`, so `tritonserver:5000/other/image` is the repository `other/image` on the registry
`tritonserver:5000`, not a tag of `tritonserver`. Names are compared as written (no implicit
registry or `library/` is added), so the policy allows exactly what it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
_PREFIX = re.compile(rf"{_NAME}|{_DOMAIN}")
MAX_REFERENCE = 512
PATTERN_HELP = "REPO (any tag or digest), REPO:TAG or REPO@DIGEST (exactly), PREFIX/* (any repository under PREFIX)"


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None = None
    digest: str | None = None


def parse(reference: str) -> ImageRef | None:
    """The parts of a container image reference; None when it is not one."""
    if len(reference) > MAX_REFERENCE:
        return None
    m = _REFERENCE.fullmatch(reference)
    return ImageRef(m["name"], m["tag"], m["digest"]) if m else None


def repository(reference: str) -> str:
    """The repository (name without tag or digest) of a reference; ValueError if it is none."""
    ref = parse(reference)
    if ref is None:
        raise ValueError(f"{reference!r} is not a container image reference")
    return ref.name


def invalid_patterns(patterns: list[str]) -> list[str]:
    """The patterns that can never match anything (not a reference, nor PREFIX/*)."""
    return [p for p in patterns if not (_PREFIX.fullmatch(p[:-2]) if p.endswith("/*") else parse(p))]


def matches(image: str, pattern: str) -> bool:
    ref = parse(image)
    if ref is None:
        return False
    if pattern.endswith("/*"):
        prefix = pattern[:-2]
        return bool(_PREFIX.fullmatch(prefix)) and ref.name.startswith(prefix + "/")
    want = parse(pattern)
    if want is None:
        return False
    if want.tag is None and want.digest is None:
        return ref.name == want.name
    return ref == want


def allowed(image: str, patterns: list[str]) -> bool:
    return any(matches(image, p) for p in patterns)


def refusal(field: str, image: str, patterns: list[str]) -> str | None:
    """None when `image` may run; else what to tell the user, naming the field, the image and
    the allowed patterns."""
    if allowed(image, patterns):
        return None
    what = "is not a valid image reference" if parse(image) is None else "is not allowed by the operator's image policy"
    return f"{field} {image!r} {what}; allowed images: {', '.join(patterns) or 'none'} ({PATTERN_HELP})"
