#!/usr/bin/env bash
# Resolves S3Proxy (an S3-compatible server that checks SigV4 signatures and the expiry of
# pre-signed URLs) from Maven Central into the cache, and writes its classpath next to it.
# Cached by version: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/versions.env
cache="${MODEL_OPERATOR_CACHE:-$HOME/.cache/model-operator}/s3proxy-${S3PROXY_VERSION}"
[ -s "$cache/classpath" ] && exit 0
command -v mvn >/dev/null && command -v java >/dev/null || { echo "install-s3proxy: needs java (17+) and mvn" >&2; exit 1; }
mkdir -p "$cache"
mvn -q -f hack/s3proxy/pom.xml -Ds3proxy.version="$S3PROXY_VERSION" dependency:build-classpath \
  -Dmdep.includeScope=runtime -Dmdep.outputFile="$cache/classpath.part" -Dstyle.color=never
grep -q "s3proxy-${S3PROXY_VERSION}.jar" "$cache/classpath.part" || { echo "install-s3proxy: no S3Proxy jar resolved" >&2; exit 1; }
mv "$cache/classpath.part" "$cache/classpath"
