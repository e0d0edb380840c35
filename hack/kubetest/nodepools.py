"""Simulated node pools: Node objects that the KWOK controller keeps Ready.

KWOK only manages nodes carrying ``kwok.x-k8s.io/node: fake``; it leaves the
local pod runner's node alone. Pods bound to these nodes never run anything:
KWOK walks them through Running/Ready (and Job pods to Succeeded), which is
enough to test placement (the real scheduler decides) and rollout logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_SELECTOR = f"{KWOK_ANNOTATION}=fake"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class NodePool:
    """``count`` nodes named ``<name>-0..count-1``."""

    name: str
    count: int
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    capacity: dict[str, str] = field(default_factory=dict)
    arch: str = "amd64"

    def with_count(self, count: int) -> "NodePool":
        return NodePool(self.name, count, self.labels, self.taints, self.capacity, self.arch)


_BASE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}

GPU_POOL = NodePool(
    name="gpu",
    count=2,
    labels={"node-pool": "gpu", "nvidia.com/gpu.product": GPU_PRODUCT, "nvidia.com/gpu.count": "4"},
    taints=({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},),
    capacity={**_BASE_CAPACITY, "nvidia.com/gpu": "4"},
)
EDGE_POOL = NodePool(
    name="edge",
    count=2,
    labels={"node-pool": "edge", "node-role.kubernetes.io/edge": ""},
    taints=({"key": "edge", "value": "true", "effect": "NoSchedule"},),
    capacity={"cpu": "4", "memory": "8Gi", "pods": "32", "ephemeral-storage": "64Gi"},
    arch="arm64",
)
CPU_POOL = NodePool(name="cpu", count=2, labels={"node-pool": "cpu"}, capacity=dict(_BASE_CAPACITY))

DEFAULT_POOLS: tuple[NodePool, ...] = (GPU_POOL, EDGE_POOL, CPU_POOL)


def node_manifests(pool: NodePool) -> list[dict[str, Any]]:
    """Node objects for ``pool``, with status set on create as a kubelet registers it."""
    nodes = []
    for i in range(pool.count):
        name = f"{pool.name}-{i}"
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": pool.arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": pool.arch,
            "type": "kwok",
            **pool.labels,
        }
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
                "spec": {"taints": [dict(t) for t in pool.taints]},
                "status": {
                    "capacity": dict(pool.capacity),
                    "allocatable": dict(pool.capacity),
                    "nodeInfo": {"architecture": pool.arch, "operatingSystem": "linux"},
                },
            }
        )
    return nodes
