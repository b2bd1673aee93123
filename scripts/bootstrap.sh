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

binaries() {
  command -v go >/dev/null 2>&1 || { echo "envkiln: go not found; install Go 1.26 (or Debian's golang-go)" >&2; exit 1; }
  bash tests/controlplane/build.sh >/dev/null
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(packages binaries)
for step in "${want[@]}"; do "$step"; done
