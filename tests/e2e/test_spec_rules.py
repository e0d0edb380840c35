"""The CEL side of api/rules.py on a real API server, against the same table the Python
predicates are tested on (tests/spec_rule_cases.py): the two agree on every spec, and the API
server's refusal names the same field."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from model_operator.api.types import GROUP, KIND, PLURAL, VERSION
from model_operator.api.validation import SpecError, load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_rule_cases import CASES  # noqa: E402 - the table shared with the unit test

pytestmark = pytest.mark.e2e


def _python_verdict(spec: dict[str, Any]) -> str | None:
    try:
        load_spec(spec)
    except SpecError as exc:
        return exc.field
    return None


@pytest.mark.parametrize("case_id,spec,field", CASES, ids=[c[0] for c in CASES])
def test_cel_and_python_agree(case_id: str, spec: dict[str, Any], field: str | None, custom_api: Any, crd_installed: Any) -> None:
    assert _python_verdict(spec) == field
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": case_id}, "spec": spec}
    try:
        custom_api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body, dry_run="All")
    except ApiException as exc:
        assert exc.status == 422, exc
        assert field is not None, f"the API server refused a spec Python admits: {exc.body}"
        assert f"spec.{field}" in exc.body, exc.body
        return
    assert field is None, f"the API server admitted a spec Python refuses ({field})"
