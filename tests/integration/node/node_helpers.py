"""Constants and small helpers of the real-node tests."""

from __future__ import annotations

from harness.pypi import PackageIndex

PROBE = "envkiln-probe"
PROBE_VERSION = "1.2.3"
PROBE_SOURCE = f'VERSION = "{PROBE_VERSION}"\n'


def index_steps(index: PackageIndex) -> list[str]:
    """Docker steps pointing pip at the local index (docker steps run before the package installs)."""
    return [f"ENV PIP_INDEX_URL={index.url} PIP_TRUSTED_HOST={index.host} PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0"]
