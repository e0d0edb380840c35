"""apply → Ready of the digits example with an S3 artifact store that enforces authentication,
two source trees side by side in one sitting: runs alternate between tree A and tree B (A, B,
A, B, ...), each on its own fresh test cluster with that tree's CRDs, images and operator
process (PYTHONPATH=<tree>/operator) and a fresh S3Proxy on the real node's address. The same
harness code (this tree's) sets the stage and times both; what differs is only the store
configuration each tree understands:

- keys in the tenant namespace (a tree without storage/presigned.py, e.g. the commit before
  issue 13): a Secret with the store's keys is created in the bench namespace and named in
  `artifact_store.secret`; the worker, Triton's assemble container and the cleanup Job read
  and write the bucket with those keys.
- pre-signed URLs (this tree): the keys are in the operator process's environment only; it
  signs a PUT for the worker's archive and a GET for assemble into `<md>-artifact-access`.

    python benchmarks/apply_to_ready_s3_ab.py --base DIR [--base-label base] [--runs 2] \\
        [--out benchmarks/results/apply-to-ready-s3-ab-<date>.md]

DIR must hold the base commit's files with its images built (`hack/build-images.sh` there).
Prints a line per round and per run; writes the medians, their ratio and every run's numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
from harness import log

harness.use_paths("tests/e2e/operator")

import apply_to_ready  # noqa: E402
from apply_to_ready_ab import Run, ab_table, parse_ab_args  # noqa: E402
from conftest import operator_config  # noqa: E402

from kubetest.node import NODE_IP  # noqa: E402
from kubetest.s3store import S3Server  # noqa: E402

NAMESPACE = "bench"
BUCKET = "artifacts"
PREFIX = "mo"
STORE_SECRET = "artifact-store"
# boto3 >= 1.36 sends CRC checksums with PutObject by default, which S3Proxy refuses
# (NotImplemented). The keys-in-namespace path reads its boto3 settings from the store Secret's
# variables, so that Secret carries these too; the pre-signed path sends no checksum headers
# and the operator's own client sets the same in code.
CHECKSUMS_WHEN_REQUIRED = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


def signs_urls(tree: Path) -> bool:
    """Does this tree's operator hold the store's keys and hand out pre-signed URLs?"""
    return (tree / "operator" / "model_operator" / "storage" / "presigned.py").is_file()


def tree_images(tree: Path) -> dict[str, str]:
    """The images built from `tree`'s inputs, as that tree's own hack/kubetest records them."""
    code = "import json, sys; sys.path.insert(0, 'hack'); from kubetest.imagebuild import built_images; print(json.dumps(built_images()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: no images for its inputs (run hack/build-images.sh there): {proc.stderr.strip()[-500:]}")
    return dict(json.loads(proc.stdout))


def store_for(tree: Path, s3: S3Server, core: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(artifact_store config, the operator's extra environment) in the form `tree` understands;
    for a keys-in-namespace tree the store Secret is created in the bench namespace."""
    from kubernetes import client

    store: dict[str, Any] = {"type": "s3", "bucket": BUCKET, "prefix": PREFIX, "endpoint": s3.endpoint, "region": "us-east-1"}
    if signs_urls(tree):
        return store, s3.env
    core.create_namespaced_secret(NAMESPACE, client.V1Secret(
        metadata=client.V1ObjectMeta(name=STORE_SECRET), string_data={**s3.env, **CHECKSUMS_WHEN_REQUIRED}))
    return {**store, "secret": STORE_SECRET}, {}


def refuses_unsigned(s3: S3Server) -> None:
    """The server enforces authentication: an unsigned listing of the bucket is refused."""
    import requests

    code = requests.get(f"{s3.endpoint}/{BUCKET}?list-type=2", timeout=10).status_code
    if code != 403:
        raise RuntimeError(f"S3Proxy answered an unsigned listing with {code}, not 403: authentication is not enforced")


def on_s3(md: dict[str, Any]) -> None:
    uri = (md.get("status") or {}).get("artifact", {}).get("uri", "")
    if not uri.startswith(f"s3://{BUCKET}/{PREFIX}/"):
        raise RuntimeError(f"{md['metadata']['name']}: artifact {uri!r} is not in the S3 store")


def no_disk_pressure(core: Any, node: str) -> None:
    """Raise when the node's DiskPressure condition is or was True in this cluster's life: the
    kubelet then taints the node (pods wait) and garbage-collects images (pulled again inside
    the timing), so the run measured the shared disk, not the operator."""
    conditions = core.read_node(node).status.conditions or []
    pressure = next((c for c in conditions if c.type == "DiskPressure"), None)
    if pressure is None:
        return
    # A condition that never changed keeps the time of the kubelet's first status.
    first = min(c.last_transition_time for c in conditions)
    if pressure.status != "False" or (pressure.last_transition_time - first).total_seconds() > 30:
        raise RuntimeError(f"node {node} had disk pressure during the run (DiskPressure {pressure.status} since "
                           f"{pressure.last_transition_time:%H:%M:%S}): not a measurement")


def one_run(tree: Path, images: dict[str, str], drop: list[str], prefix: str) -> Run:
    """One round of each variant on a fresh cluster and S3Proxy with `tree`'s operator and
    `images`; the images `drop` names are removed from the node first (disk: the two trees'
    worker images, 6.7 GB each unpacked, need not fit side by side)."""
    state = harness.new_state_dir("bench-s3-")
    cluster, images = harness.start_real_node_cluster(state, images, drop, prometheus=True)
    try:
        with S3Server(ip=NODE_IP) as s3:
            s3.client().create_bucket(Bucket=BUCKET)
            refuses_unsigned(s3)
            kube = harness.connect(cluster)
            harness.install_crds(cluster, tree=tree)
            harness.make_namespace(kube.core, NAMESPACE)
            harness.put_digits_claims(kube.core, NAMESPACE, state, store=False)
            store, keys_env = store_for(tree, s3, kube.core)
            conf = operator_config(cluster.prometheus_url or "http://127.0.0.1:1", harness.free_port(), images)
            cfg = harness.write_config(state, {**conf, "artifact_store": store})
            env = harness.operator_env(cluster.kubeconfig, {
                "MODEL_OPERATOR_CONFIG": str(cfg), "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1",
                "PYTHONPATH": str(tree / "operator"), **keys_env})
            with harness.run_operator(state, cfg, env):
                results = apply_to_ready.run_rounds(kube, NAMESPACE, 1, prefix=prefix, check=on_s3)
            no_disk_pressure(kube.core, cluster.local_node)
    finally:
        cluster.stop()
    shutil.rmtree(state, ignore_errors=True)  # kept when the run failed, for its logs
    return {variant: (marks[0]["artifact"], marks[0]["ready"]) for variant, marks in results.items()}


def write_page(out: str, trees: dict[str, Path], runs: int, results: dict[str, list[Run]], retries: list[str]) -> None:
    """The result page with the runs so far (written after every run from the second on, so an
    interrupted sitting leaves what it measured)."""
    def how(tree: Path) -> str:
        return ("pre-signed URLs (keys in the operator's environment only)" if signs_urls(tree)
                else f"keys in the namespace (Secret `{STORE_SECRET}`, `artifact_store.secret`)")

    done = min(len(r) for r in results.values())
    lines = harness.header("apply → Ready, S3 store with authentication, two trees side by side",
                           harness.machine_line(*harness.python_and_system()), [
        *(f"Tree {label}: store access {how(tree)}." for label, tree in trees.items()),
        *apply_to_ready.CLUSTER,
        f"Store: S3Proxy (in-memory backend, signatures enforced: an unsigned listing is refused, checked per run) on the real node's "
        f"address {NODE_IP}, bucket `{BUCKET}`, prefix `{PREFIX}`; model and validation data on the `models` claim.",
        "Each run: a fresh cluster and S3Proxy, the other tree's images removed from the node and this tree's pulled before the "
        f"operator starts (not timed), one round of each variant; alternating {', '.join(trees)}, ... "
        f"for {runs} runs each" + ("" if done == runs else f" (written when each tree had {done} of them)") + "; medians of Ready below.",
    ])
    lines += ab_table(results)
    lines += ["", f"Runs that failed and were run again: {'; '.join(retries) if retries else 'none'}."]
    harness.write_result(out, lines)


def main() -> int:
    args, trees = parse_ab_args("apply-to-ready-s3-ab")
    images = {label: tree_images(tree) for label, tree in trees.items()}
    results: dict[str, list[Run]] = {label: [] for label in trees}
    retries: list[str] = []
    for i in range(args.runs):
        for label, tree in trees.items():
            kind = "pre-signed URLs" if signs_urls(tree) else "keys in the namespace"
            log(f"run {i + 1}/{args.runs} {label} ({kind}): {tree}")
            drop = [ref for other, refs in images.items() if other != label for ref in refs.values()]
            try:
                found = one_run(tree, images[label], drop, f"run {i + 1}/{args.runs} {label} ")
            except Exception as exc:  # noqa: BLE001 - a shared, loaded machine: one retry, counted on the page
                retries.append(f"run {i + 1} {label}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
                log(f"run {i + 1}/{args.runs} {label} failed, once more: {retries[-1]}")
                found = one_run(tree, images[label], drop, f"run {i + 1}/{args.runs} {label} (retry) ")
            results[label].append(found)
            log(f"run {i + 1}/{args.runs} {label}: " + ", ".join(f"{v} Ready {r[1]:.1f}s" for v, r in found.items()))
            if all(results.values()):
                write_page(args.out, trees, args.runs, results, retries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
