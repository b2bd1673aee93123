"""The operator as users run it: `helm install charts/envkiln` on the node, its image built here,
the webhook on with failurePolicy Fail, nothing but the chart's RBAC. The product's flows pass
against it, and a new operator pod adopts the build Job of the one that was deleted."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness.buildah import push_archive
from harness.controlplane import REPO_ROOT, cache_dir
from harness.operator_image import operator_image_archive
from harness.pypi import PackageIndex
from node_helpers import PROBE_VERSION, job_pod, probe_spec, registry_digest, training_job, wait_job_complete
from operator_helpers import Envs, environment, wait_for

RELEASE = "envkiln"


class Release:
    def __init__(self, api: client.ApiClient, namespace: str, tenant: str):
        self.api = api
        self.namespace = namespace
        self.tenant = tenant
        self.core = client.CoreV1Api(api)

    def operator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=operator").items

    def running_operator(self) -> client.V1Pod | None:
        for pod in self.operator_pods():
            ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"
            if pod.metadata.deletion_timestamp is None and ready:
                return pod
        return None

    def log(self) -> str:
        chunks = []
        for pod in self.operator_pods():
            with contextlib.suppress(client.ApiException):
                chunks.append(f"--- {pod.metadata.name} ---\n" + self.core.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, tail_lines=60))
        return "\n".join(chunks)


@pytest.fixture(scope="module")
def release(cluster: Any, node_api: client.ApiClient, node_registry_host: str, node_base_image: str,
            builder_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    core = client.CoreV1Api(node_api)
    extensions = client.ApiextensionsV1Api(node_api)
    crds_before = {crd.metadata.name for crd in extensions.list_custom_resource_definition().items}
    suffix = uuid.uuid4().hex[:6]
    namespace, tenant = f"envkiln-system-{suffix}", f"tenant-{suffix}"
    core.create_namespace({"metadata": {"name": tenant, "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})
    archive = operator_image_archive(node_base_image)
    repository = f"{node_registry_host}/envkiln/operator"
    tag = archive.name.split(".")[0].removeprefix("operator-")
    push_archive(archive, f"{repository}:{tag}")
    values = {
        "image": {"repository": repository, "tag": tag},
        "curated": {"enabled": False},
        "webhook": {"enabled": True, "failurePolicy": "Fail"},
        "operator": {
            "registry": node_registry_host, "insecureRegistry": True, "builder": "buildah",
            "buildah": {"image": builder_image, "pushImage": builder_image,
                        "kubeletRootDir": str(cluster.kubelet_root_dir)},
            "buildResources": {"cpuRequest": "100m", "cpuLimit": "2", "memoryRequest": "128Mi",
                               "memoryLimit": "2Gi", "ephemeralStorageRequest": "100Mi",
                               "ephemeralStorageLimit": "5Gi"},
            "buildRetryBackoffSeconds": 1, "watchNamespaces": [tenant],
            "extraEnv": [{"name": "ENVKILN_BUILD_SYNC_SECONDS", "value": "1"},
                         {"name": "ENVKILN_ENV_SYNC_SECONDS", "value": "2"},
                         {"name": "ENVKILN_CACHE_TTL_SECONDS", "value": "0"},
                         {"name": "ENVKILN_WATCH_TIMEOUT_SECONDS", "value": "30"}],
        },
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm = [str(cache_dir() / "bin" / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    installed = subprocess.run([*helm, "install", RELEASE, str(REPO_ROOT / "charts" / "envkiln"), "-n", namespace,
                                "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "5m"],
                               capture_output=True, text=True, timeout=400)
    handle = Release(node_api, namespace, tenant)
    try:
        assert installed.returncode == 0, installed.stderr + "\n" + handle.log()
        yield handle
    finally:
        subprocess.run([*helm, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "2m"],
                       capture_output=True, timeout=200)
        for name in (tenant, namespace):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(name)
        # Helm never removes the CRDs it installed (Kopf's peering ones): leave the cluster as found.
        for crd in extensions.list_custom_resource_definition().items:
            if crd.metadata.name not in crds_before:
                with contextlib.suppress(client.ApiException):
                    extensions.delete_custom_resource_definition(crd.metadata.name)


def test_operator_pod_runs_under_the_chart(release: Release, cluster: Any) -> None:
    pod = wait_for(release.running_operator, timeout=120, what="a ready operator pod", diagnostics=release.log)
    assert pod.spec.node_name and pod.spec.service_account_name.endswith("envkiln")
    assert pod.spec.security_context.run_as_non_root is True
    profile = Path(cluster.kubelet_root_dir) / "seccomp" / "envkiln" / "buildah.json"
    wait_for(profile.exists, timeout=60, what="the chart's DaemonSet to install the seccomp profile")
    assert "forbidden" not in release.log().lower(), release.log()


def test_flows_against_the_chart_operator(release: Release, node_api: client.ApiClient, node_base_image: str,
                                          probe_index: PackageIndex) -> None:
    envs = Envs(node_api, release.tenant)
    # 1. an Environment builds through a real Job; its digest is the registry's.
    envs.create(environment("built", **probe_spec(node_base_image, probe_index)))
    status = envs.wait_phase("built", "Ready", timeout=300, diagnostics=release.log)
    assert status["imageDigest"] == registry_digest(status["image"])
    # 2. a training Job waits behind the gate while its environment builds, then runs on the digest.
    envs.create(environment("gated", **probe_spec(node_base_image, probe_index, "RUN sleep 8")))
    envs.batch.create_namespaced_job(release.tenant, training_job(
        "train", {"envkiln.dev/environment": "gated"}, {}))
    pod = wait_for(lambda: job_pod(envs.core, release.tenant, "train"), timeout=30, what="the training pod")
    assert [g.name for g in pod.spec.scheduling_gates or []] == ["envkiln.dev/environment"]
    gated = envs.wait_phase("gated", "Ready", timeout=300, diagnostics=release.log)
    wait_job_complete(envs.batch, release.tenant, "train", 180, release.log)
    pod = job_pod(envs.core, release.tenant, "train")
    assert pod is not None and pod.spec.containers[0].image == gated["imageRef"]
    assert f"probe {PROBE_VERSION}" in envs.core.read_namespaced_pod_log(pod.metadata.name, release.tenant)
    # 3. an inline definition: the webhook (under the chart's RBAC) creates the anonymous Environment.
    envs.batch.create_namespaced_job(release.tenant, training_job(
        "inline", {"envkiln.dev/environment": "inline"},
        {"envkiln.dev/environment-spec": yaml.safe_dump(probe_spec(node_base_image, probe_index, "ENV X=1"))}))
    wait_job_complete(envs.batch, release.tenant, "inline", 300, release.log)
    pod = job_pod(envs.core, release.tenant, "inline")
    assert pod is not None and "@sha256:" in pod.spec.containers[0].image
    assert f"probe {PROBE_VERSION}" in envs.core.read_namespaced_pod_log(pod.metadata.name, release.tenant)
    assert "forbidden" not in release.log().lower(), release.log()


def test_new_operator_pod_adopts_the_running_build(release: Release, node_api: client.ApiClient,
                                                   node_base_image: str, probe_index: PackageIndex) -> None:
    envs = Envs(node_api, release.tenant)
    envs.create(environment("adopted", **probe_spec(node_base_image, probe_index, "RUN sleep 20")))

    def build_running() -> client.V1Pod | None:
        for pod in envs.core.list_namespaced_pod(release.tenant, label_selector="envkiln.dev/attempt").items:
            statuses = [s for s in pod.status.init_container_statuses or [] if s.name == "build"]
            if statuses and statuses[0].state and statuses[0].state.running:
                return pod
        return None

    wait_for(build_running, timeout=120, what="the build pod running", diagnostics=release.log)
    old = release.running_operator()
    assert old is not None
    release.core.delete_namespaced_pod(old.metadata.name, release.namespace, grace_period_seconds=0)
    replacement: Callable[[], client.V1Pod | None] = lambda: (  # noqa: E731
        pod if (pod := release.running_operator()) is not None and pod.metadata.uid != old.metadata.uid else None)
    wait_for(replacement, timeout=120, what="a new operator pod", diagnostics=release.log)
    status = envs.wait_phase("adopted", "Ready", timeout=300, diagnostics=release.log)
    build = envs.build(status["build"])
    assert build["status"]["attempts"] == 1, "adopted, not restarted"
    assert [j.metadata.name for j in envs.jobs() if j.metadata.labels["envkiln.dev/hash"] == status["hash"]] == [
        f"envkiln-{status['hash']}-1"], "no duplicate build Job"
