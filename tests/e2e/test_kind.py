"""End to end on a real cluster with kubelets (kind, via scripts/kind-up.sh).

Opt-in: runs only when ENVKILN_E2E=1 and the current kubeconfig reaches a cluster where the chart
is installed; skipped everywhere else (as on the CI machine, which has no Docker or kind).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("ENVKILN_E2E") != "1",
                                reason="set ENVKILN_E2E=1 with a kind cluster from scripts/kind-up.sh")


@pytest.fixture(scope="module")
def api() -> client.ApiClient:
    config.load_kube_config()
    return client.ApiClient()


def wait_ready(custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = custom.get_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments",
                                                     name).get("status") or {}
        if status.get("phase") in ("Ready", "Failed"):
            return status
        time.sleep(5)
    raise AssertionError(f"{name} not settled: {status}")


def test_kaniko_builds_and_a_job_runs_on_the_image(api: client.ApiClient) -> None:
    custom, core, batch = client.CustomObjectsApi(api), client.CoreV1Api(api), client.BatchV1Api(api)
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    marker = uuid.uuid4().hex[:8]
    custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", {
        "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "e2e"},
        "spec": {"image": "python:3.11-slim", "pip": ["six==1.16.0"], "dockerSteps": [f"ENV E2E_MARKER={marker}"]}})
    status = wait_ready(custom, namespace, "e2e", timeout=900)
    assert status["phase"] == "Ready", status
    assert "@sha256:" in status["imageRef"]
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "train", "image": status["imageRef"],
            "command": ["python", "-c", "import os, six; print('marker', os.environ['E2E_MARKER'])"]}]}}}})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job("train", namespace)
        if job.status.succeeded or job.status.failed:
            break
        time.sleep(5)
    assert job.status.succeeded == 1
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=train").items[0]
    assert f"marker {marker}" in core.read_namespaced_pod_log(pod.metadata.name, namespace)
    core.delete_namespace(namespace)
