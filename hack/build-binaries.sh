#!/usr/bin/env bash
# Builds the control-plane binaries the e2e tests need from the Go module proxy,
# with pinned versions (hack/versions.env) and committed go.sum files
# (hack/gomod/*), into a cache keyed by version:
#   ${MODEL_OPERATOR_CACHE:-$HOME/.cache/model-operator}/bin/<name>-<version>/<name>
# A binary already in the cache is not rebuilt, so a second run is instant.
#
# Usage: hack/build-binaries.sh [--check] [name...]
#   --check  build nothing; exit 1 and list what is missing
#   name     only these (kube-apiserver kube-controller-manager kube-scheduler
#            kubectl kubelet kube-proxy etcd kwok helm prometheus
#            prometheus-adapter keda-operator keda-metrics-apiserver); default all
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"
CACHE="${MODEL_OPERATOR_CACHE:-${HOME}/.cache/model-operator}"
BIN_ROOT="${CACHE}/bin"

# Static binaries, no toolchain download behind our back, and only the
# dependency versions recorded in the committed go.sum files.
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"

ALL=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok helm prometheus prometheus-adapter keda-operator keda-metrics-apiserver)
CHECK=0
WANT=()
for arg in "$@"; do
  case "${arg}" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) WANT+=("${arg}") ;;
  esac
done
[[ ${#WANT[@]} -gt 0 ]] || WANT=("${ALL[@]}")

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

version_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "${KUBERNETES_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    kwok) echo "${KWOK_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    prometheus) echo "${PROMETHEUS_VERSION}" ;;
    prometheus-adapter) echo "${PROMETHEUS_ADAPTER_VERSION}" ;;
    keda-operator|keda-metrics-apiserver) echo "${KEDA_VERSION}" ;;
    *) echo "unknown component: $1" >&2; return 1 ;;
  esac
}

# module dir, module path whose version must match, package to build
recipe_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy)
      echo "kubernetes k8s.io/kubernetes k8s.io/kubernetes/cmd/$1" ;;
    etcd) echo "etcd go.etcd.io/etcd/server/v3 ." ;;
    kwok) echo "kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok" ;;
    helm) echo "helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm" ;;
    prometheus) echo "prometheus github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/prometheus" ;;
    prometheus-adapter) echo "prometheus-adapter sigs.k8s.io/prometheus-adapter sigs.k8s.io/prometheus-adapter/cmd/adapter" ;;
    keda-operator) echo "keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/operator" ;;
    keda-metrics-apiserver) echo "keda github.com/kedacore/keda/v2 github.com/kedacore/keda/v2/cmd/adapter" ;;
  esac
}

ldflags_of() {
  local name="$1" v="$2"
  case "${name}" in
    kube-*|kubectl|kubelet)
      # Without these, clients and `kubectl version` report v0.0.0-master,
      # which breaks version-skew checks in clients such as helm.
      local minor="${v#v1.}"; minor="${minor%%.*}"
      local x=""
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X ${pkg}.gitVersion=${v} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
        x+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
      done
      echo "${x}" ;;
    kwok) echo "-X sigs.k8s.io/kwok/pkg/consts.Version=${v}" ;;
    helm) echo "-X helm.sh/helm/v3/internal/version.version=${v}" ;;
    prometheus)
      local pv="2.${v#v0.}"
      echo "-X github.com/prometheus/common/version.Version=${pv} -X github.com/prometheus/common/version.Branch=release-${pv%.*}" ;;
    keda-*) echo "-X github.com/kedacore/keda/v2/version.Version=${v#v}" ;;
    *) echo "" ;;
  esac
}

missing=()
for name in "${WANT[@]}"; do
  v="$(version_of "${name}")"
  [[ -x "${BIN_ROOT}/${name}-${v}/${name}" ]] || missing+=("${name}")
done

if [[ ${CHECK} -eq 1 ]]; then
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "missing in ${BIN_ROOT}: ${missing[*]}" >&2
    exit 1
  fi
  exit 0
fi

command -v go >/dev/null || { echo "go is not on PATH" >&2; exit 1; }
total_start=${SECONDS}
log "cache: ${BIN_ROOT} ($(go version))"
for name in "${WANT[@]}"; do
  v="$(version_of "${name}")"
  out="${BIN_ROOT}/${name}-${v}/${name}"
  if [[ -x "${out}" ]]; then
    log "${name} ${v}: cached"
    continue
  fi
  read -r moddir modpath pkg <<<"$(recipe_of "${name}")"
  dir="${HACK_DIR}/gomod/${moddir}"
  pinned="$(cd "${dir}" && go list -m -f '{{.Version}}' "${modpath}")"
  if [[ "${pinned}" != "${v}" ]]; then
    echo "hack/gomod/${moddir}/go.mod pins ${modpath} ${pinned}, versions.env says ${v}" >&2
    exit 1
  fi
  log "${name} ${v}: building"
  start=${SECONDS}
  mkdir -p "${out%/*}"
  # Build next to the destination and rename, so an interrupted build never
  # leaves a half-written binary that a later run would take as cached.
  tmp="$(mktemp "${out}.XXXXXX")"
  (cd "${dir}" && go build -trimpath -ldflags "-s -w $(ldflags_of "${name}" "${v}")" -o "${tmp}" "${pkg}")
  if [[ "${name}" == keda-operator ]]; then
    # KEDA's CustomResourceDefinitions of the same release, next to the operator (before
    # the binary, whose presence means "cached"): the test fixture installs them.
    rm -rf "${out%/*}/crds"
    mkdir -p "${out%/*}/crds"
    cp "$(cd "${dir}" && go list -m -f '{{.Dir}}' "${modpath}")"/config/crd/bases/*.yaml "${out%/*}/crds/"
    chmod 0644 "${out%/*}/crds/"*.yaml
  fi
  chmod 0755 "${tmp}"
  mv -f "${tmp}" "${out}"
  log "${name} ${v}: built in $((SECONDS - start))s ($(du -h "${out}" | cut -f1))"
done
log "done in $((SECONDS - total_start))s"
