"""The Python side of api/rules.py against the shared table (the CEL side: tests/e2e/test_spec_rules.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from model_operator.api import rules
from model_operator.api.validation import SpecError, load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spec_rule_cases import CASES  # noqa: E402 - the table shared with the e2e test


@pytest.mark.parametrize("case_id,spec,field", CASES, ids=[c[0] for c in CASES])
def test_python_rules_on_the_shared_table(case_id: str, spec: dict[str, Any], field: str | None) -> None:
    if field is None:
        load_spec(spec)
        return
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert err.value.field == field, err.value


def test_every_rule_is_in_the_table_both_ways() -> None:
    broken = {c[2] for c in CASES if c[2]}
    assert {r.field for r in rules.RULES} <= broken
    for rule in rules.RULES:
        assert any(c[2] is None and rule.holds(load_spec(c[1])) for c in CASES), rule.field


def test_the_crd_carries_every_rule_with_its_field() -> None:
    from model_operator.api.crd import build_crd as crd

    validations = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert validations == rules.cel_validations()
    assert all(v["fieldPath"].startswith(".") and v["message"] for v in validations)


def test_the_batching_rules_know_servings_defaults() -> None:
    """The generation batching rules accept Serving's defaults (the API server fills them in)."""
    from model_operator.api.types import Serving

    serving = Serving()
    assert serving.max_batch_size == rules.DEFAULT_MAX_BATCH_SIZE
    assert serving.dynamic_batching.max_queue_delay_microseconds == rules.DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS
