#!/usr/bin/env bash
# Regenerates operator/requirements.lock: every runtime dependency of the package (and the build
# backend, setuptools) pinned with the SHA-256 of each file PyPI has for it. operator/Dockerfile
# installs from it with --require-hashes, so an image built from the same commit gets the same
# packages. Run it after changing [project] dependencies in pyproject.toml, then commit the lock
# (tests/unit/test_release.py fails while a dependency is missing from it).
#
#   scripts/lock.sh            # resolve for Python 3.11 (the operator image's), newest allowed versions
#   scripts/lock.sh --upgrade-package kopf   # any further pip-compile flags
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS_VERSION=7.7.0
python=${PYTHON:-python3}
venv=$(mktemp -d /tmp/envkiln-lock-XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet "pip-tools==${PIP_TOOLS_VERSION}"
# pip-compile reads the package's metadata from pyproject.toml; --all-build-deps adds the build
# backend, installed into the image's venv so that `pip install --no-build-isolation .` needs
# nothing unpinned. Only the public index: no machine's local wheel directory.
PIP_FIND_LINKS= "$venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
  --no-header --no-emit-index-url --no-emit-find-links --output-file operator/requirements.lock "$@" pyproject.toml
echo "operator/requirements.lock: $(grep -c '^[a-z]' operator/requirements.lock) packages"
