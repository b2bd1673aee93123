"""The buildah builder's storage drivers on the real node (issue 25, items 1 and 4): the one-stage render
with its lock image beside the image, and the overlay driver, which needs no more privilege than vfs."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from harness.pypi import PackageIndex
from node_helpers import PROBE, PROBE_VERSION, probe_spec, registry_digest
from operator_helpers import Envs, environment

FALLBACK = "the overlay storage driver cannot be used here; building with vfs"


@pytest.mark.parametrize("driver", ["vfs", "overlay"])
def test_one_stage_build_pushes_its_lock_image_with_either_storage_driver(
        node_api: client.ApiClient, node_namespace: str, node_base_image: str, probe_index: PackageIndex,
        buildah_operator: Any, driver: str) -> None:
    operator = buildah_operator(node_namespace, buildah_storage_driver=driver)
    envs = Envs(node_api, node_namespace)
    envs.create(environment("driven", **probe_spec(node_base_image, probe_index, "RUN rm -f /etc/issue.net")))
    status = envs.wait_phase("driven", "Ready", timeout=400, diagnostics=operator.log)
    assert status["imageDigest"] == registry_digest(status["image"])
    [job] = envs.jobs()
    [pod] = envs.core.list_namespaced_pod(node_namespace, label_selector=f"job-name={job.metadata.name}").items
    [build_container] = [c for c in pod.spec.init_containers if c.name == "build"]
    assert build_container.security_context.capabilities.add == ["SETUID", "SETGID", "SETFCAP"]
    assert {e.name: e.value for e in build_container.env}["STORAGE_DRIVER"] == driver
    log = envs.core.read_namespaced_pod_log(pod.metadata.name, node_namespace, container="build")
    assert FALLBACK not in log, log[-2000:]  # overlay was used, in the pod, as it is
    assert "lock image made" in log, log[-2000:]
    # The lock: read by the operator from the one-layer image beside the image, tagged by its digest.
    [build] = envs.builds()
    locked = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
              for line in build["status"]["lock"]["text"].splitlines() if "==" in line}
    assert locked.get(PROBE.lower().replace("_", "-")) == PROBE_VERSION, locked
    lock_image = status["image"].rsplit(":", 1)[0] + ":" + status["imageDigest"].replace(":", "-") + ".lock"
    assert registry_digest(lock_image).startswith("sha256:")
    assert "FROM envkiln-image" not in build["spec"]["plan"]["dockerfile"], "no stage of its own for the lock"
