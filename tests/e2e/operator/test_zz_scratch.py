from typing import Any
import pytest
from md_helpers import MODELS_CLAIM, STORE_CLAIM, condition, create_md, digits_md, make_claim, wait_phase, get_md
import time

def test_scratch(start_operator: Any, namespace: str, custom_api: Any, core_api: Any, batch_api: Any) -> None:
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    (models / "corrupt.pt").write_bytes(b"junk")
    start_operator()
    body = digits_md("corrupt")
    body["spec"]["model"]["uri"] = "pvc://models/corrupt.pt"
    create_md(custom_api, namespace, body)
    try:
        md = wait_phase(custom_api, namespace, "corrupt", "Failed", timeout=120)
    finally:
        open("/tmp/scratch_status.txt","w").write(repr(get_md(custom_api, namespace, "corrupt").get("status")))
        for j in batch_api.list_namespaced_job(namespace).items:
            print("JOB", j.metadata.name, j.status)
    print(condition(md, "OptimizationSucceeded"))
