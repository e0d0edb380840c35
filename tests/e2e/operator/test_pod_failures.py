"""Failures users meet on a real node, reported truthfully in the ModelDeployment's status: a
condition with a reason and a message that names the object, never a phase that claims more.

- a Triton image that cannot be pulled: Degraded, ErrImagePull / ImagePullBackOff, naming the image;
- a Triton container over its memory limit: Degraded, OOMKilled (the cause, not the crash loop it
  leads to), with the limit and the restart count, counted by the real kubelet;
- the worker, `assemble` and Triton all run as UID 1000 from read-only root filesystems (the
  digits flow proves the worker and `assemble` write only where they may; here the containers'
  own view is checked with `kubectl exec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from md_helpers import (
    AS_IS,
    LOCAL,
    ONNX_MODEL,
    bloated_digits,
    condition,
    create_md,
    digits_md,
    get_md,
    ready_triton_pods,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



def degraded(custom_api: Any, namespace: str, name: str, reasons: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    return wait_for(
        lambda: condition(m := get_md(custom_api, namespace, name), "Degraded").get("reason") in reasons and m,
        timeout=timeout, interval=1, message=f"{name} Degraded with one of {reasons}",
    )


def test_an_image_that_cannot_be_pulled_is_named_in_the_status(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, images: dict[str, str],
) -> None:
    missing = images["triton"].rsplit(":", 1)[0] + ":no-such-tag"
    start_operator()
    create_md(custom_api, namespace, digits_md("nopull", model=ONNX_MODEL, optimization=AS_IS,
                                               serving={**LOCAL, "tritonImage": missing}))
    md = degraded(custom_api, namespace, "nopull", ("ErrImagePull", "ImagePullBackOff"))
    cond = condition(md, "Degraded")
    assert cond["status"] == "True" and missing in cond["message"], cond
    assert "nopull-triton" in cond["message"], cond  # names the pod it happened to
    assert md["status"]["phase"] == "Degraded" and not md["status"].get("readyReplicas")
    assert condition(md, "Available").get("status") != "True"


def test_a_triton_container_over_its_memory_limit_is_oomkilled_with_restarts_counted(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    start_operator()
    # A model whose weights (64 MiB) cannot fit in a 48 MiB container: ONNX Runtime inside Triton
    # allocates them when it loads the model, and the kernel kills the container.
    bloated_digits(models / "digits.onnx", models / "digits-big.onnx")
    small = {**LOCAL, "resources": {"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}}}
    create_md(custom_api, namespace, digits_md("oom", model={**ONNX_MODEL, "uri": "pvc://models/digits-big.onnx"},
                                               optimization=AS_IS, serving=small))
    md = degraded(custom_api, namespace, "oom", ("OOMKilled",))
    cond = condition(md, "Degraded")
    assert "48Mi" in cond["message"] and "triton" in cond["message"] and "oom-triton" in cond["message"], cond
    assert md["status"]["phase"] == "Degraded" and not md["status"].get("readyReplicas")

    def restarted_twice() -> bool:
        pods = core_api.list_namespaced_pod(namespace, label_selector="serving.model-operator.io/deployment=oom").items
        return any(c.restart_count >= 2 for p in pods for c in p.status.container_statuses or [] if c.name == "triton")

    wait_for(restarted_twice, timeout=300, interval=1, message="the kubelet restarting the OOM-killed container")
    md = degraded(custom_api, namespace, "oom", ("OOMKilled",), timeout=60)
    restarts = int(condition(md, "Degraded")["message"].split("restarted ", 1)[1].split(" ", 1)[0])
    assert restarts >= 1, condition(md, "Degraded")


def test_every_container_runs_as_uid_1000_on_a_read_only_root(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, kubectl: Any,
) -> None:
    start_operator()
    create_md(custom_api, namespace, digits_md("ro", model=ONNX_MODEL, optimization=AS_IS, serving=LOCAL))
    wait_phase(custom_api, namespace, "ro", "Ready", timeout=300)
    (pod,) = ready_triton_pods(core_api, namespace, "ro")
    uid = kubectl("exec", pod.metadata.name, "-n", namespace, "-c", "triton", "--", "id", "-u").stdout.strip()
    assert uid == "1000"
    refused = kubectl("exec", pod.metadata.name, "-n", namespace, "-c", "triton", "--", "touch", "/opt/written", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
    writable = kubectl("exec", pod.metadata.name, "-n", namespace, "-c", "triton", "--", "touch", "/tmp/written", check=False)
    assert writable.returncode == 0, writable.stderr
    # The init container (`assemble`, worker image) finished cleanly under the same rules.
    (init,) = pod.status.init_container_statuses
    assert init.state.terminated.exit_code == 0 and init.restart_count == 0
