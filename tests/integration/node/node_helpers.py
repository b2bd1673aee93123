"""Constants and small helpers of the real-node tests."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client

from harness.pypi import PackageIndex
from operator_helpers import wait_for

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


PRINT_PROBE = ["python", "-c", "import envkiln_probe; print('probe', envkiln_probe.VERSION)"]


def probe_spec(base: str, index: PackageIndex, *extra_steps: str, pip: list[str] | None = None) -> dict[str, Any]:
    """A definition of its own (a unique step), so no other test's image is a cache hit for it."""
    unique = f"ENV ENVKILN_TEST_DEFINITION={uuid.uuid4().hex[:12]}"
    return {"image": base, "dockerSteps": [*index_steps(index), unique, *extra_steps],
            "pip": pip or [f"{PROBE}=={PROBE_VERSION}"]}


def training_job(name: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 600, "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                         "containers": [{"name": "trainer", "image": "placeholder", "command": PRINT_PROBE}]}}}}


def job_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if pods else None


def wait_job_complete(batch: client.BatchV1Api, namespace: str, name: str, timeout: float,
                      diagnostics: Callable[[], str]) -> client.V1Job:
    def done() -> client.V1Job | None:
        job = batch.read_namespaced_job(name, namespace)
        types = {c.type for c in job.status.conditions or [] if c.status == "True"}
        if "Failed" in types:
            raise AssertionError(f"Job {name} failed: {job.status}\n{diagnostics()}")
        return job if "Complete" in types else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"Job {name} Complete", diagnostics=diagnostics)
