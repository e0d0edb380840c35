"""Pure builders: desired Kubernetes objects from plain spec dicts and a config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from model_operator.api.hashing import spec_hash
from model_operator.api.validation import load_spec
from model_operator.config import ArtifactStore, NodePool, OperatorConfig
from model_operator.resources import common, job, serving
from model_operator.resources import store_jobs as cleanup

GPU_POOL = NodePool(
    node_selector={"node-pool": "gpu"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    gpu_product="NVIDIA-H100-80GB-HBM3",
    resources={"requests": {"cpu": "1"}},
)
EDGE_POOL = NodePool(
    node_selector={"node-pool": "edge"},
    tolerations=[{"key": "edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
    arch="arm64",
)
CONFIG = OperatorConfig(
    node_pools={"gpu": GPU_POOL, "edge": EDGE_POOL},
    worker_image="worker:test",
    triton_image="triton:test",
    artifact_store=ArtifactStore(type="pvc", claim="store"),
    worker_node_selector={"node-pool": "local"},
)
SPEC: dict[str, Any] = {
    "model": {"uri": "pvc://models/digits.pt", "format": "torchscript", "credentialsSecret": "creds"},
    "data": {"validation": {"uri": "pvc://data/val.npz"}},
    "optimization": {"quantization": {"mode": "dynamic-int8"}, "timeBudgetSeconds": 600},
    "serving": {"nodePool": "gpu", "gpus": 2, "replicas": 3, "resources": {"limits": {"memory": "4Gi"}}},
}
GENERATION_SPEC: dict[str, Any] = {
    "model": {"uri": "pvc://models/tiny-llama", "format": "hf", "task": "generation"},
    "data": {"validation": {"uri": "pvc://models/held-out.txt"}},
    "serving": {"nodePool": "gpu", "replicas": 2, "instanceCount": 2},
}
ARTIFACT = serving.ArtifactRef(uri="pvc://store/ns/digits/abc", sha256="f" * 64, revision="abc")


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == name)


def test_job_is_named_by_spec_hash_and_runs_the_worker() -> None:
    spec = load_spec(SPEC)
    obj = job.build_worker_job("digits", "ns", spec, CONFIG)
    digest = spec_hash(spec)
    assert obj["metadata"]["name"] == f"digits-opt-{digest}"
    pod = obj["spec"]["template"]["spec"]
    worker = _container(pod, "worker")
    assert worker["command"] == ["model-operator", "optimize"]
    args = worker["args"]
    assert json.loads(args[args.index("--spec-json") + 1])["model"]["uri"] == "pvc://models/digits.pt"
    assert args[args.index("--output") + 1] == f"pvc://store/ns/digits/{digest}"
    assert args[args.index("--report-summary") + 1] == worker["terminationMessagePath"] == "/dev/termination-log"
    # The user's keys under their own names: they read the model and data, never publish.
    assert worker["envFrom"] == [{"prefix": "MODEL_SOURCE_", "secretRef": {"name": "creds"}}]
    assert obj["spec"]["activeDeadlineSeconds"] == 600 and obj["spec"]["backoffLimit"] == CONFIG.job_backoff_limit
    assert pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m["readOnly"] for m in worker["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc")}
    # The store claim only at this MD's directory, the one writable place; inputs read-only.
    assert mounts == {"/mnt/pvc/models": True, "/mnt/pvc/data": True, "/mnt/pvc/store/ns/digits": False}
    store_mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == "/mnt/pvc/store/ns/digits")
    assert store_mount["subPath"] == "ns/digits"
    assert [v["persistentVolumeClaim"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "store"] == [
        {"claimName": "store", "readOnly": False}]


def test_the_job_measures_on_the_pool_that_will_serve() -> None:
    # Served on the GPU pool with GPUs: the Job runs there, on one GPU of the pool's model, and
    # tells the worker its pool and node (status.optimization.measuredOn).
    pod = job.build_worker_job("digits", "ns", load_spec(SPEC), CONFIG)["spec"]["template"]["spec"]
    worker = _container(pod, "worker")
    assert pod["nodeSelector"] == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == GPU_POOL.tolerations
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e for e in worker["env"]}
    assert env["MODEL_OPERATOR_POOL"]["value"] == "gpu"
    assert env["MODEL_OPERATOR_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}

    # An edge target: the edge pool's arch and taint, no GPU.
    edge = json.loads(json.dumps(SPEC)) | {"target": "edge", "serving": {"nodePool": "edge", "replicas": 1}}
    pod = job.build_worker_job("digits", "ns", load_spec(edge), CONFIG)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-pool": "edge", "kubernetes.io/arch": "arm64"} and pod["tolerations"] == EDGE_POOL.tolerations
    assert "nvidia.com/gpu" not in json.dumps(_container(pod, "worker")["resources"])

    # A benchmark pool for the target wins over the serving pool.
    bench = CONFIG.model_copy(update={"benchmark_pools": {"cloud": "edge"}})
    pod = job.build_worker_job("digits", "ns", load_spec(SPEC), bench)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-pool": "edge", "kubernetes.io/arch": "arm64"}

    # placement worker, or a device target (no serving pool): the worker's own placement, no pool.
    for config, spec in ((CONFIG.model_copy(update={"worker_placement": "worker"}), SPEC),
                         (CONFIG, {k: v for k, v in SPEC.items() if k != "serving"} | {"target": "device"})):
        pod = job.build_worker_job("digits", "ns", load_spec(spec), config)["spec"]["template"]["spec"]
        worker = _container(pod, "worker")
        assert pod["nodeSelector"] == {"node-pool": "local"} and "tolerations" not in pod
        assert "MODEL_OPERATOR_POOL" not in {e["name"] for e in worker["env"]}
        assert "nvidia.com/gpu" not in json.dumps(worker["resources"])


def test_a_benchmark_pool_must_exist() -> None:
    with pytest.raises(ValueError, match=r"benchmark_pools: \{'edge': 'nope'\} names no node pool \(known: edge, gpu\)"):
        OperatorConfig(node_pools={"gpu": GPU_POOL, "edge": EDGE_POOL}, benchmark_pools={"edge": "nope"})
    with pytest.raises(ValueError, match="not targets"):
        OperatorConfig(node_pools={"gpu": GPU_POOL}, benchmark_pools={"gpus": "gpu"})


def test_serving_edit_keeps_the_job_name() -> None:
    a = job.build_worker_job("digits", "ns", load_spec(SPEC), CONFIG)
    edited = json.loads(json.dumps(SPEC))
    edited["serving"]["replicas"] = 9
    b = job.build_worker_job("digits", "ns", load_spec(edited), CONFIG)
    assert a["metadata"]["name"] == b["metadata"]["name"]
    edited["optimization"]["quantization"]["mode"] = "fp16"
    c = job.build_worker_job("digits", "ns", load_spec(edited), CONFIG)
    assert c["metadata"]["name"] != a["metadata"]["name"]


def test_gpu_deployment_requests_gpus_tolerates_taint_and_selects_product() -> None:
    dep = serving.build_deployment("digits", "ns", load_spec(SPEC), CONFIG, ARTIFACT, replicas=3)
    pod = dep["spec"]["template"]["spec"]
    triton = _container(pod, "triton")
    assert triton["resources"]["limits"] == {"memory": "4Gi", "nvidia.com/gpu": "2"}
    assert triton["resources"]["requests"]["cpu"] == "1"
    assert pod["nodeSelector"] == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == GPU_POOL.tolerations
    assert "--model-repository=/models" in triton["args"] and "--strict-readiness=true" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assemble = _container(pod, "assemble")
    assert assemble["args"][assemble["args"].index("--sha256") + 1] == ARTIFACT.sha256
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"


def test_edge_deployment_lands_on_arm64_edge_pool_without_gpus() -> None:
    spec = load_spec({"model": SPEC["model"], "target": "edge", "serving": {"nodePool": "edge"}})
    pod = serving.build_deployment("d", "ns", spec, CONFIG, ARTIFACT, replicas=1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-pool": "edge", "kubernetes.io/arch": "arm64"}
    assert "nvidia.com/gpu" not in json.dumps(_container(pod, "triton")["resources"])


@pytest.mark.parametrize("builder", ["job", "deployment", "generation", "cleanup"])
def test_every_pod_runs_restricted(builder: str) -> None:
    spec = load_spec(SPEC)
    obj = {
        "job": lambda: job.build_worker_job("d", "ns", spec, CONFIG),
        "deployment": lambda: serving.build_deployment("d", "ns", spec, CONFIG, ARTIFACT, replicas=1),
        "generation": lambda: serving.build_deployment("d", "ns", load_spec(GENERATION_SPEC), CONFIG, ARTIFACT, replicas=1),
        "cleanup": lambda: cleanup.build_cleanup_job("d", "ns", CONFIG),
    }[builder]()
    pod = obj["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for ctr in pod.get("initContainers", []) + pod["containers"]:
        sc = ctr["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert any(m["mountPath"] == "/tmp" for m in ctr["volumeMounts"]), f"{ctr['name']} has no writable /tmp"


def test_unknown_pool_names_the_field() -> None:
    spec = load_spec({**SPEC, "serving": {"nodePool": "tpu"}})
    with pytest.raises(serving.PoolError, match=r"spec.serving.nodePool: unknown node pool 'tpu' \(known: edge, gpu\)"):
        serving.resolve_pool(spec, CONFIG)


def test_pdb_only_above_one_replica_and_service_ports() -> None:
    assert serving.build_pdb("d", "ns", 1) is None
    pdb = serving.build_pdb("d", "ns", 2)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    svc = serving.build_service("d", "ns")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 8001, 8002]
    assert svc["spec"]["selector"] == common.serving_selector("d")


def test_generation_pods_run_the_openai_front_beside_triton() -> None:
    spec = load_spec(GENERATION_SPEC)
    dep = serving.build_deployment("llm", "ns", spec, CONFIG, ARTIFACT, replicas=2)
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["triton", "openai"]
    front = _container(pod, "openai")
    assert front["image"] == "worker:test" and front["command"] == ["model-operator", "openai"]
    args = front["args"]
    # The front talks to its own pod's Triton and serves the model under the ModelDeployment's name.
    assert args[args.index("--triton") + 1] == "http://127.0.0.1:8000" and args[args.index("--model") + 1] == "llm"
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--port") + 1] == "9000"
    assert front["ports"] == [{"name": "openai", "containerPort": 9000, "protocol": "TCP"}]
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert front["livenessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert "nvidia.com/gpu" not in json.dumps(front["resources"])
    # Triton's own container is the classifier's: same probes, the pool's placement.
    triton = _container(pod, "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["nodeSelector"]["node-pool"] == "gpu"

    svc = serving.build_service("llm", "ns", openai=serving.is_generation(spec))
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]][-1] == ("openai", 9000, "openai")
    assert serving.endpoint("llm", "ns", openai=True)["openai"] == "http://llm-triton.ns.svc:9000/v1"
    assert "openai" not in serving.endpoint("llm", "ns")


def test_classifier_pods_run_the_golden_probe_beside_triton() -> None:
    spec = load_spec({**SPEC, "monitoring": {"goldenProbe": {"intervalSeconds": 30, "samples": 8}},
                      "optimization": {"qualityGate": {"minCosine": 0.95}}})
    dep = serving.build_deployment("d", "ns", spec, CONFIG, ARTIFACT, track="canary", replicas=1)
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["triton", "probe"]
    assert not serving.is_generation(spec)
    probe = _container(pod, "probe")
    args = dict(zip(probe["args"][::2], probe["args"][1::2], strict=True))
    assert args["--model"] == "d" and args["--triton"] == "127.0.0.1:8000" and args["--interval"] == "30" and args["--samples"] == "8"
    assert args["--revision"] == ARTIFACT.revision and args["--track"] == "canary" and json.loads(args["--gate-json"])["minCosine"] == 0.95
    assert probe["ports"] == [{"name": "probe-metrics", "containerPort": int(args["--port"]), "protocol": "TCP"}]
    assert probe["image"] == CONFIG.worker_image and probe["securityContext"] == common.container_security_context()
    assert probe["resources"]["limits"]["memory"] and "cpu" not in probe["resources"]["limits"], "no CPU throttling of the probe"
    assert "readinessProbe" not in probe, "the probe never holds the pod's readiness"
    # The init container copies golden.npz where the probe reads it; only they mount that volume.
    (assemble,) = pod["initContainers"]
    assert assemble["args"][assemble["args"].index("--golden-output") + 1] == "/golden"
    golden_mounts = {c["name"]: m for c in pod["initContainers"] + pod["containers"] for m in c["volumeMounts"] if m["name"] == "golden"}
    assert set(golden_mounts) == {"assemble", "probe"} and golden_mounts["probe"].get("readOnly") is True
    assert args["--golden"].startswith(golden_mounts["probe"]["mountPath"] + "/")

    svc = serving.build_service("d", "ns", probe=True)
    assert ("probe-metrics", int(args["--port"]), "probe-metrics") in [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]]
    monitor = serving.build_service_monitor("d", "ns", probe=True)
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "probe-metrics"]
    assert [e["port"] for e in serving.build_service_monitor("d", "ns")["spec"]["endpoints"]] == ["metrics"]


def test_classifier_pods_without_the_golden_probe_have_triton_only() -> None:
    spec = load_spec({**SPEC, "monitoring": {"goldenProbe": {"enabled": False}}})
    pod = serving.build_deployment("d", "ns", spec, CONFIG, ARTIFACT, replicas=1)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["triton"]
    assert "--golden-output" not in pod["initContainers"][0]["args"] and "golden" not in [v["name"] for v in pod["volumes"]]


def test_a_scale_change_leaves_the_pod_template_alone() -> None:
    # The autoscalers change spec.serving.replicas: only the Deployment's replicas may follow,
    # a changed template would replace every serving pod on each scale step.
    spec = load_spec(SPEC)
    one = serving.build_deployment("d", "ns", spec, CONFIG, ARTIFACT, replicas=1)
    scaled = spec.model_copy(update={"serving": spec.serving.model_copy(update={"replicas": 7})}) if spec.serving else spec
    seven = serving.build_deployment("d", "ns", scaled, CONFIG, ARTIFACT, replicas=7)
    assert seven["spec"]["replicas"] == 7 and one["spec"]["template"] == seven["spec"]["template"]
    edited = spec.model_copy(update={"serving": spec.serving.model_copy(update={"max_batch_size": 4})}) if spec.serving else spec
    assert serving.build_deployment("d", "ns", edited, CONFIG, ARTIFACT, replicas=1)["spec"]["template"] != one["spec"]["template"]


def test_serving_containers_pause_before_they_stop() -> None:
    # Every container the Service sends traffic to sleeps through the drain before SIGTERM; the
    # grace period leaves Triton its own 30 s after the pause.
    pod = serving.build_deployment("llm", "ns", load_spec(GENERATION_SPEC), CONFIG, ARTIFACT, replicas=1)["spec"]["template"]["spec"]
    for name in ("triton", "openai"):
        assert _container(pod, name)["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}, name
    assert pod["terminationGracePeriodSeconds"] == 35
    off = CONFIG.model_copy(update={"drain_seconds": 0})
    pod = serving.build_deployment("d", "ns", load_spec(SPEC), off, ARTIFACT, replicas=1)["spec"]["template"]["spec"]
    assert "lifecycle" not in _container(pod, "triton") and pod["terminationGracePeriodSeconds"] == 30


def test_names_fit_63_characters() -> None:
    long = "m" * 63
    assert len(common.job_name(long, "0123456789")) == 63
    assert len(common.deployment_name(long, "canary")) <= 63
    assert common.job_name(long, "0123456789").endswith("-opt-0123456789")


def test_s3_store_gives_the_worker_an_upload_grant_and_never_the_store_secret() -> None:
    cfg = CONFIG.model_copy(update={"artifact_store": ArtifactStore(type="s3", bucket="b", endpoint="http://s3.local:9000", secret="store-creds")})
    spec = load_spec({**SPEC, "model": {"uri": "s3://b/m.onnx"}, "data": {}})
    obj = job.build_worker_job("d", "ns", spec, cfg)
    pod = obj["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    output = worker["args"][worker["args"].index("--output") + 1]
    assert output.startswith("s3://b/model-operator/ns/d/")
    assert worker["args"][worker["args"].index("--upload-url-file") + 1] == f"/var/run/model-operator/artifact-access/put-{output.rsplit('/', 1)[1]}"
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3.local:9000"} in worker["env"]
    assert "envFrom" not in worker and "store-creds" not in json.dumps(obj)
    assert {"name": "artifact-access", "secret": {"secretName": "d-artifact-access", "defaultMode": 0o440}} in pod["volumes"]
