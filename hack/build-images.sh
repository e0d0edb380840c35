#!/usr/bin/env bash
# Builds the project's container images with buildah and pushes them to the local registry:
#
#   <registry>/model-operator:<hash>          Dockerfile, --target operator
#   <registry>/model-operator-worker:<hash>   Dockerfile, --target worker
#   <registry>/tritonserver-test:<hash>       hack/images/triton/Containerfile
#
# on a Debian base made by mmdebstrap (hack/images/base/), passed as the PYTHON_IMAGE build-arg.
# Tags are content hashes of the inputs (hack/kubetest/imagebuild.py); an image whose tag is
# already in the registry is neither built nor pushed, so a second run does nothing. The pushed
# references are written to $MODEL_OPERATOR_CACHE/images/images.json.
#
#   hack/build-images.sh            build and push what is missing
#   hack/build-images.sh --check    exit 1 unless images.json is current and the registry has it
#
# Environment: MODEL_OPERATOR_CACHE (default ~/.cache/model-operator), MODEL_OPERATOR_REGISTRY_PORT
# (default 5000). Builds always use the host network: buildah's default network would create a
# bridge in a private range.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "error: $*"; exit 1; }
now() { date +%s; }

CACHE="${MODEL_OPERATOR_CACHE:-$HOME/.cache/model-operator}"
STATE="$CACHE/images"
mkdir -p "$STATE" "$CACHE/containers/tmp"
# Build cache mounts (the wheel cache: torch is downloaded once) live under buildah's TMPDIR.
export TMPDIR="$CACHE/containers/tmp"
BUILDAH=(buildah --root "$CACHE/containers/storage" --runroot "$CACHE/containers/run" --storage-driver overlay)

for tool in buildah mmdebstrap docker-registry; do
  command -v "$tool" >/dev/null || die "$tool is missing: run hack/install.sh (Debian packages buildah, mmdebstrap, docker-registry)"
done

eval "$(python3 hack/kubetest/imagebuild.py plan)"   # BASE_HASH APP_HASH TRITON_HASH
REGISTRY="$(python3 hack/kubetest/registry.py start)"
OPERATOR_REF="$REGISTRY/model-operator:$APP_HASH"
WORKER_REF="$REGISTRY/model-operator-worker:$APP_HASH"
TRITON_REF="$REGISTRY/tritonserver-test:$TRITON_HASH"
BASE_IMAGE="localhost/model-operator-base:$BASE_HASH"

in_registry() {  # REF...: does the registry have these tags?
  python3 hack/kubetest/registry.py has "$@"
}

write_json() {
  python3 hack/kubetest/imagebuild.py write operator="$OPERATOR_REF" worker="$WORKER_REF" triton="$TRITON_REF" >/dev/null
}

if [ "${1:-}" = "--check" ]; then
  missing=0
  for ref in "$OPERATOR_REF" "$WORKER_REF" "$TRITON_REF"; do
    in_registry "$ref" || { echo "missing: $ref"; missing=1; }
  done
  python3 -c 'import sys; sys.path.insert(0, "hack"); from kubetest.imagebuild import built_images; built_images()' || missing=1
  exit "$missing"
fi

# buildah's own network would add a bridge in 10.88.0.0/16; builds use --network=host, and
# anything in that range found here is removed.
no_private_bridge() {
  local dev
  for dev in $(ip -o -4 addr show | awk '$4 ~ /^10\.88\./ {print $2}' | sort -u); do
    log "removing $dev (a private 10.88.0.0/16 address: builds must use the host network)"
    ip link delete "$dev" || true
  done
}

base_image() {
  if "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base $BASE_IMAGE: present"; return
  fi
  local suite packages sources=() tar ctr t0
  suite="$(tr -d ' \n' < hack/images/base/suite)"
  packages="$(grep -v '^#' hack/images/base/packages | grep -v '^$' | paste -sd, -)"
  # The host's apt sources when the host runs the same suite (its mirror and its security suite).
  if grep -qs "VERSION_CODENAME=$suite" /etc/os-release; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      [ -s "$f" ] && grep -qsv '^\s*#' "$f" && sources+=("$f")
    done
  fi
  tar="$STATE/base-$BASE_HASH.tar"
  t0=$(now)
  log "base: mmdebstrap --variant=minbase $suite + $packages"
  # /etc/pip.conf exists (empty) so the builds can mount the host's pip settings over it
  # without leaving a mount point in a layer.
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --customize-hook='touch "$1/etc/pip.conf"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$suite" "$tar" "${sources[@]}"
  ctr="$("${BUILDAH[@]}" from scratch)"
  "${BUILDAH[@]}" add --quiet "$ctr" "$tar" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label org.opencontainers.image.title=model-operator-base "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -f "$tar"
  log "base $BASE_IMAGE: built in $(( $(now) - t0 )) s"
}

PIPCONF="$STATE/build-pip.conf"
build() {  # LOCAL_TAG CONTEXT BUD_ARGS...
  local tag="$1" context="$2" t0 ca; shift 2
  ca="$(python3 hack/kubetest/imagebuild.py pipconf "$PIPCONF")"
  t0=$(now)
  log "build $tag"
  "${BUILDAH[@]}" bud --network=host --layers --force-rm --pull=false \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    --volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
    --volume "$PIPCONF:/etc/pip.conf:ro" \
    -t "$tag" "$@" "$context" >>"$STATE/build.log" 2>&1 || { tail -40 "$STATE/build.log"; die "build $tag failed (log: $STATE/build.log)"; }
  no_private_bridge
  log "build $tag: $(( $(now) - t0 )) s"
}

push() {  # LOCAL_TAG REF
  # gzip layers: buildah 1.28 compresses for a registry even with --disable-compression
  # (measured: the same sizes and times), so that flag is not used.
  local t0 args=(--tls-verify=false --quiet)
  t0=$(now)
  "${BUILDAH[@]}" push "${args[@]}" "$1" "docker://$2" || die "push $2 failed"
  log "push $2: $(( $(now) - t0 )) s"
}

T0=$(now)
no_private_bridge
todo=()
for ref in "$OPERATOR_REF" "$WORKER_REF" "$TRITON_REF"; do
  in_registry "$ref" || todo+=("$ref")
done
if [ ${#todo[@]} -eq 0 ]; then
  write_json
  log "nothing to build: $OPERATOR_REF $WORKER_REF $TRITON_REF are in the registry ($(( $(now) - T0 )) s)"
  exit 0
fi

: >"$STATE/build.log"
base_image
for ref in "${todo[@]}"; do
  local_tag="localhost/${ref#*/}"
  case "$ref" in
    "$OPERATOR_REF") build "$local_tag" . -f Dockerfile --target operator ;;
    "$WORKER_REF") build "$local_tag" . -f Dockerfile --target worker ;;
    "$TRITON_REF") build "$local_tag" hack/images/triton -f hack/images/triton/Containerfile ;;
  esac
  push "$local_tag" "$ref"
done
write_json

# Older builds' final images (the layers the current ones share stay, as the build cache).
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | while read -r img; do
  case "$img" in
    */model-operator:*|*/model-operator-worker:*) keep="$APP_HASH" ;;
    */tritonserver-test:*) keep="$TRITON_HASH" ;;
    */model-operator-base:*) keep="$BASE_HASH" ;;
    *) continue ;;
  esac
  [ "${img##*:}" = "$keep" ] || "${BUILDAH[@]}" rmi "$img" >/dev/null 2>&1 || true
done
log "done in $(( $(now) - T0 )) s: $STATE/images.json"
