"""A hostPath volume provisioner for the default StorageClass ``local`` (real node).

Run as its own process next to the real node (``python -m kubetest.provisioner``):

* makes sure the StorageClass ``local`` exists and is the default;
* gives every Pending claim of that class a hostPath PersistentVolume at
  ``<pvc-dir>/<namespace>/<claim>`` (the path the local pod runner used), the directory
  owned by UID/GID 1000 and mode 0777, so pods running as the project's user 1000 (or any
  other) can write to it;
* deletes Released/Failed volumes it provisioned and their directories (reclaim policy
  Delete).

Polls the API server every second: simple, and quick enough for tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from .rest import ApiError, Kube

STORAGE_CLASS = "local"
PROVISIONER = "model-operator.io/local-runner"  # the same name the pod runner used
VOLUME_UID = 1000

log = logging.getLogger("provisioner")


def ensure_storage_class(kube: Kube) -> None:
    try:
        kube.create("/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        })
    except ApiError as e:
        if e.status != 409:
            raise


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, VOLUME_UID, VOLUME_UID)
    path.chmod(0o777)


def provision_once(kube: Kube, pvc_dir: Path) -> None:
    for pvc in kube.get("/api/v1/persistentvolumeclaims")["items"]:
        spec, meta = pvc["spec"], pvc["metadata"]
        if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName") or meta.get("deletionTimestamp"):
            continue
        if pvc.get("status", {}).get("phase") != "Pending":
            continue
        path = pvc_dir / meta["namespace"] / meta["name"]
        _make_dir(path)
        pv: dict[str, Any] = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            kube.create("/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for %s/%s at %s", pv["metadata"]["name"], meta["namespace"], meta["name"], path)
        except ApiError as e:
            if e.status != 409:
                raise
    for pv in kube.get("/api/v1/persistentvolumes")["items"]:
        if pv["spec"].get("storageClassName") != STORAGE_CLASS:
            continue
        if pv.get("status", {}).get("phase") not in ("Released", "Failed"):
            continue
        if pv["metadata"].get("annotations", {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            continue
        path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
        if path.is_relative_to(pvc_dir) and path != pvc_dir:
            shutil.rmtree(path, ignore_errors=True)
        try:
            kube.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
            log.info("deleted %s and %s", pv["metadata"]["name"], path)
        except ApiError as e:
            if e.status != 404:
                raise


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubetest.provisioner", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--pvc-dir", required=True, type=Path)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kube = Kube.from_kubeconfig(args.kubeconfig)
    args.pvc_dir.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ensure_storage_class(kube)
    log.info("provisioning StorageClass %s under %s", STORAGE_CLASS, args.pvc_dir)
    while not stopping.wait(args.interval):
        try:
            provision_once(kube, args.pvc_dir)
        except Exception as e:  # keep going whatever one round met
            log.warning("provisioner: %s", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
