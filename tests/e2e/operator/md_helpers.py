"""Small helpers the operator e2e tests share: PVC paths on the local node, the digits model,
reading ModelDeployments, finding ready Triton pods."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetest.wait import wait_for

REPO = Path(__file__).resolve().parents[3]
GROUP, VERSION, PLURAL = "serving.model-operator.io", "v1alpha1", "modeldeployments"
LOCAL_TOLERATION = {"key": "model-operator.io/local", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
STORE_CLAIM = "artifacts"
MODELS_CLAIM = "models"


def make_claim(core_api: Any, namespace: str, name: str) -> Path:
    """A PVC bound by the local runner's provisioner; returns its directory on this machine."""
    core_api.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})
            ),
        ),
    )
    pvc = wait_for(
        lambda: (p := core_api.read_namespaced_persistent_volume_claim(name, namespace)).status.phase == "Bound" and p,
        timeout=60,
        message=f"PVC {namespace}/{name} Bound",
    )
    pv = core_api.read_persistent_volume(pvc.spec.volume_name)
    path = Path(pv.spec.host_path.path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digits_files(cache: Path) -> Path:
    """Train the digits example once per session (seconds) and return its output directory."""
    out = cache / "digits"
    if not (out / "digits.pt").exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "digits" / "train.py"), "--out", str(out)], check=True, timeout=300)
    return out


def put_digits(models_dir: Path, cache: Path) -> None:
    src = digits_files(cache)
    for name in ("digits.pt", "digits.onnx", "calibration.npz", "validation.npz"):
        if (src / name).exists():
            shutil.copy(src / name, models_dir / name)


def digits_md(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {
            "uri": "pvc://models/digits.pt",
            "format": "torchscript",
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        },
        "data": {"validation": {"uri": "pvc://models/validation.npz", "samples": 200}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}, "qualityGate": {"maxTop1Drop": 0.02}},
        "conversion": {"format": "onnx"},
        "serving": {"nodePool": "local", "replicas": 1, "backend": "python", "maxBatchSize": 16},
        "monitoring": {"goldenProbe": {"enabled": False}},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def get_md(custom_api: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def create_md(custom_api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def wait_phase(custom_api: Any, namespace: str, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_md(custom_api, namespace, name)
        status = md.get("status") or {}
        if status.get("phase") == phase:
            return md
        if status.get("phase") == "Failed":
            raise AssertionError(f"{name} Failed while waiting for {phase}: {status.get('conditions')}")
        return None

    try:
        return wait_for(check, timeout=timeout, interval=1, message=f"{namespace}/{name} phase {phase}")
    except Exception:
        md = get_md(custom_api, namespace, name)
        raise AssertionError(f"{name} never reached {phase}; status: {md.get('status')}") from None


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def ready_triton_pods(core_api: Any, namespace: str, name: str) -> list[Any]:
    pods = core_api.list_namespaced_pod(
        namespace, label_selector=f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=triton"
    ).items
    return [
        p for p in pods
        if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        and not p.metadata.deletion_timestamp
    ]


def stop(runner: Any) -> None:
    """Stop a KopfRunner as an operator restart would, and check it stopped cleanly."""
    runner.__exit__(None, None, None)
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0
