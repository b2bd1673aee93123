"""Constants and small helpers of the real-node tests."""

from __future__ import annotations

import urllib.request

from harness.pypi import PackageIndex

PROBE = "envkiln-probe"
PROBE_VERSION = "1.2.3"
PROBE_SOURCE = f'VERSION = "{PROBE_VERSION}"\n'


def index_steps(index: PackageIndex) -> list[str]:
    """Docker steps pointing pip at the local index (docker steps run before the package installs)."""
    return [f"ENV PIP_INDEX_URL={index.url} PIP_TRUSTED_HOST={index.host} PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0"]


MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def registry_digest(image: str) -> str:
    """The registry's own Docker-Content-Digest for repository:tag."""
    name, tag = image.rsplit(":", 1)
    host, repository = name.split("/", 1)
    request = urllib.request.Request(f"http://{host}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])
