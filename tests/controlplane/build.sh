#!/usr/bin/env bash
# Builds the control-plane binaries (kube-apiserver, etcd, helm, kubectl) from the pinned
# Go modules in this folder into a cache outside the repository, once per
# distinct pin: the cache key is a hash of each module's go.mod, go.sum and
# sources, so a warm cache rebuilds nothing.
#
# Usage: build.sh [apiserver|etcd|helm|kubectl|node|kstatus ...]   (default: all)
# "kstatus" is a small program around sigs.k8s.io/cli-utils' kstatus (what Flux waits on),
# run by the integration tests on objects read from the API server.
# "node" builds kubelet, kube-controller-manager, kube-scheduler and kube-proxy
# (one module, node/cmd/*) for the one-node test cluster.
# Prints the cache directory holding bin/ on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${ENVKILN_CACHE:-$HOME/.cache/envkiln}"
kube_version="v1.34.4"
mkdir -p "$cache/bin"

build_one() {
  local name="$1" out="$2" pkg="$3" ldflags="${4:-}"
  local key
  key="$(cd "$here/$name" && cat go.mod go.sum $(ls *.go 2>/dev/null) | sha256sum | cut -c1-16)"
  local target="$cache/bin/$out-$key"
  if [[ ! -x "$target" ]]; then
    echo "building $out ($name, key $key)..." >&2
    local start=$SECONDS
    (cd "$here/$name" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$target.tmp" "$pkg")
    mv "$target.tmp" "$target"
    echo "built $out in $((SECONDS - start))s, $(du -h "$target" | cut -f1)" >&2
  fi
  ln -sf "$(basename "$target")" "$cache/bin/$out"
}

# node: one module, one main per cmd/ subdirectory, built in one go invocation.
build_node() {
  local ldflags="$1" key
  key="$(cd "$here/node" && cat go.mod go.sum $(find cmd -name '*.go' | sort) | sha256sum | cut -c1-16)"
  local names=() missing=0
  for d in "$here"/node/cmd/*/; do names+=("$(basename "$d")"); done
  for n in "${names[@]}"; do [[ -x "$cache/bin/$n-$key" ]] || missing=1; done
  if [[ $missing -eq 1 ]]; then
    echo "building ${names[*]} (node, key $key)..." >&2
    local start=$SECONDS tmp
    tmp="$(mktemp -d "$cache/bin/.node-XXXXXX")"
    (cd "$here/node" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" ./cmd/...) \
      || { rm -rf "$tmp"; exit 1; }
    for n in "${names[@]}"; do mv "$tmp/$n" "$cache/bin/$n-$key"; done
    rm -rf "$tmp"
    echo "built ${names[*]} in $((SECONDS - start))s" >&2
  fi
  for n in "${names[@]}"; do ln -sf "$n-$key" "$cache/bin/$n"; done
}

minor="${kube_version#v1.}"; minor="${minor%%.*}"
vflags="-X k8s.io/component-base/version.gitVersion=$kube_version"
vflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
vflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
vflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(etcd apiserver helm kubectl node kstatus)
for w in "${want[@]}"; do
  case "$w" in
    etcd) build_one etcd etcd . ;;
    apiserver) build_one apiserver kube-apiserver . "$vflags" ;;
    node) build_node "$vflags" ;;
    helm) build_one helm helm helm.sh/helm/v3/cmd/helm ;;
    kubectl) build_one kubectl kubectl . "$vflags" ;;
    kstatus) build_one kstatus kstatus . ;;
    *) echo "unknown binary: $w" >&2; exit 2 ;;
  esac
done
echo "$cache"
