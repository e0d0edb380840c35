"""Cross-field rules, enforced outside the API server too (worker, `local`, the operator).

The rules are api/rules.py's, the same ones the CRD carries as CEL, so a spec that never passed
through an API server (a file given to `model-operator local up`) fails the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .rules import broken
from .types import ModelDeploymentSpec


class SpecError(ValueError):
    """A spec that cannot work as written. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field
        self.message = message


def check_rules(spec: ModelDeploymentSpec) -> None:
    """The first cross-field rule (api/rules.py) the spec breaks, as a SpecError naming its field."""
    for rule in broken(spec):
        raise SpecError(rule.field, rule.message)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def load_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Parse and check a spec dict; every failure is a SpecError naming the field."""
    if not isinstance(spec, dict):
        raise SpecError("", "spec must be a mapping")
    try:
        parsed = ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(_field_path(tuple(err["loc"])), err["msg"]) from None
    check_rules(parsed)
    return parsed
