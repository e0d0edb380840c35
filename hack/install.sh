#!/usr/bin/env bash
# Installs everything model-operator needs on a fresh Debian machine: Debian packages, the
# Python package with its worker/Triton/dev extras, and the test control plane built from Go
# sources (cached by version, so a second run rebuilds nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[install %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v promtool >/dev/null || need+=(prometheus)   # promtool checks the chart's rules
  command -v openssl >/dev/null || need+=(openssl)
  command -v gcc >/dev/null || need+=(gcc)          # the real node's static pause image
  command -v ip >/dev/null || need+=(iproute2)      # the real node's address and bridge
  command -v nsenter >/dev/null || need+=(util-linux)
  # The real node (kubetest.node): container runtime, CNI plugins, kube-proxy's and the CNI
  # plugins' iptables, conntrack, and a static busybox for the node's own test image.
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
  command -v conntrack >/dev/null || [ -x /usr/sbin/conntrack ] || need+=(conntrack)
  [ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)  # static pause
  command -v docker-registry >/dev/null || need+=(docker-registry)  # plain-HTTP registry in the real-node tests
  command -v buildah >/dev/null || need+=(buildah)              # builds the images (hack/build-images.sh)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)        # the images' Debian base
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

log "pip install -e .[worker,triton,dev] (torch is large: the first run downloads several GB)"
python3 -m pip install --progress-bar off -q -e ".[worker,triton,dev]"

if [ -x hack/build-binaries.sh ]; then
  log "building the test control plane (kube-apiserver, controller-manager, scheduler, kubectl, kubelet, kube-proxy, etcd, kwok, helm)"
  hack/build-binaries.sh
fi
if command -v mvn >/dev/null || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -qq --no-install-recommends maven default-jre-headless >/dev/null; }; then
  log "resolving S3Proxy (the tests' authenticating S3 server) from Maven Central"
  hack/install-s3proxy.sh
fi
if [ "${MODEL_OPERATOR_SKIP_IMAGES:-0}" != 1 ]; then
  log "building the container images (operator, worker, test Triton) into the local registry"
  hack/build-images.sh
fi
log "done"
