#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh machine, and nothing when it is
# already there: Debian packages, then the Go binaries (cached by tests/controlplane/build.sh).
# Quiet when everything is present; a missing tool that cannot be installed gives one line.
#
# Usage: scripts/bootstrap.sh [packages|binaries]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a file it provides (checked instead of dpkg, so a tool installed another
# way counts too).
declare -A PROVIDES=(
  [docker-registry]=/usr/bin/docker-registry
  [buildah]=/usr/bin/buildah
  [skopeo]=/usr/bin/skopeo
  [debootstrap]=/usr/sbin/debootstrap
  [git]=/usr/bin/git
  [openssl]=/usr/bin/openssl
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [busybox-static]=/bin/busybox
  [iptables]=/usr/sbin/iptables
  [iproute2]=/usr/sbin/ip
  [conntrack]=/usr/sbin/conntrack
)

packages() {
  local missing=()
  for pkg in "${!PROVIDES[@]}"; do
    local file="${PROVIDES[$pkg]}"
    [[ -e "$file" ]] || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "envkiln: missing ${missing[*]}; install these Debian packages (apt-get install ${missing[*]}) and run again" >&2
    exit 1
  fi
  echo "--- installing Debian packages: ${missing[*]}" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; } >/tmp/envkiln-apt.log 2>&1; then
    echo "envkiln: apt-get install ${missing[*]} failed; see /tmp/envkiln-apt.log" >&2
    exit 1
  fi
}

# The Go the pinned modules need (their go.mod's `go` line). A machine without it gets it from the
# package registries: Debian's Go (any version) downloads the official toolchain module
# golang.org/toolchain from the Go module proxy, checked against the checksum database, as Go's own
# GOTOOLCHAIN switching does. Kept in the cache; nothing else on the machine changes.
go_wanted() { sed -n 's/^go \([0-9.]*\)$/\1/p' tests/controlplane/apiserver/go.mod; }

go_ok() {  # is the `go` on PATH at least the wanted version?
  local have want
  have="$(go env GOVERSION 2>/dev/null | sed 's/^go//')" || return 1
  want="$(go_wanted)"
  [[ -n "$have" ]] && [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" == "$want" ]]
}

ensure_go() {
  command -v go >/dev/null 2>&1 && go_ok && return 0
  local cache="${ENVKILN_CACHE:-$HOME/.cache/envkiln}" want arch
  want="$(go_wanted)"
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
  local root="$cache/go-$want"
  if [[ ! -x "$root/bin/go" ]]; then
    local bootstrap_go
    bootstrap_go="$(command -v go || true)"
    if [[ -z "$bootstrap_go" ]]; then
      [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || {
        echo "envkiln: no Go; install Debian's golang-go (any version: it fetches Go $want) and run again" >&2; exit 1; }
      echo "--- installing Debian's golang-go (to fetch Go $want)" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go; } \
        >/tmp/envkiln-apt-go.log 2>&1 || { echo "envkiln: apt-get install golang-go failed; see /tmp/envkiln-apt-go.log" >&2; exit 1; }
      bootstrap_go=/usr/bin/go
    fi
    echo "--- fetching Go $want (golang.org/toolchain from the module proxy)" >&2
    local gopath dir
    gopath="$(mktemp -d)"
    dir="$(cd "$gopath" && GOPATH="$gopath" GOFLAGS=-modcacherw GO111MODULE=on "$bootstrap_go" mod download -json \
      "golang.org/toolchain@v0.0.1-go$want.linux-$arch" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -n "$dir" && -d "$dir/bin" ]] || { echo "envkiln: could not fetch Go $want from the module proxy" >&2; exit 1; }
    mkdir -p "$cache" && rm -rf "$root.tmp" && cp -r "$dir" "$root.tmp"
    chmod +x "$root.tmp"/bin/* "$root.tmp"/pkg/tool/*/*  # module zips keep no file modes
    mv "$root.tmp" "$root" && rm -rf "$gopath"
  fi
  export PATH="$root/bin:$PATH"
  go_ok || { echo "envkiln: $root/bin/go is not Go $want" >&2; exit 1; }
}

binaries() {
  ensure_go
  bash tests/controlplane/build.sh >/dev/null
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(packages binaries)
for step in "${want[@]}"; do "$step"; done
