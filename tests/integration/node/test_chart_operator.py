"""The operator as users run it: `helm install charts/envkiln` on the node, its image built here,
the webhook on with failurePolicy Fail, nothing but the chart's RBAC, two replicas (Kopf peering)
under a PodDisruptionBudget. The product's flows pass against it; a new operator pod adopts the
build Job of the active one that was deleted; labelled pods are admitted throughout a rolling
upgrade and a drain of the replicas; `helm upgrade` takes over the CRDs; `helm test` passes, and
fails when the operator is gone."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness.controlplane import REPO_ROOT, cache_dir
from harness.pypi import PackageIndex
from node_helpers import (
    PROBE_VERSION,
    AdmissionProbe,
    active_operator,
    chart_release,
    job_pod,
    probe_spec,
    registry_digest,
    training_job,
    wait_job_complete,
)
from operator_helpers import Envs, environment, wait_for

pytestmark = pytest.mark.kube_proxy  # its pods reach ClusterIP Services

RELEASE = "envkiln"


class Release:
    def __init__(self, api: client.ApiClient, namespace: str, tenant: str, helm: list[str]):
        self.api = api
        self.namespace = namespace
        self.tenant = tenant
        self.helm = helm
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def operator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=operator").items

    def running_operator(self) -> client.V1Pod | None:
        for pod in self.operator_pods():
            ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"
            if pod.metadata.deletion_timestamp is None and ready:
                return pod
        return None

    def ready_operators(self) -> list[client.V1Pod]:
        return [pod for pod in self.operator_pods() if pod.metadata.deletion_timestamp is None
                and {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"]

    def active_operator(self) -> client.V1Pod | None:
        return active_operator(self.api, self.namespace, self.tenant)

    def rolled_out(self, replicas: int) -> bool:
        """The Deployment's latest template runs on `replicas` ready pods, and no other pod is left."""
        deployment = self.apps.read_namespaced_deployment(RELEASE, self.namespace)
        status = deployment.status
        return (status.observed_generation == deployment.metadata.generation
                and status.updated_replicas == replicas and status.ready_replicas == replicas
                and status.available_replicas == replicas and len(self.operator_pods()) == replicas)

    def helm_run(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.helm, *args, "-n", self.namespace], capture_output=True, text=True,
                              timeout=timeout)

    def log(self) -> str:
        chunks = []
        for pod in self.operator_pods():
            with contextlib.suppress(client.ApiException):
                chunks.append(f"--- {pod.metadata.name} ---\n" + self.core.read_namespaced_pod_log(
                    pod.metadata.name, self.namespace, tail_lines=60))
        return "\n".join(chunks)


@pytest.fixture(scope="module")
def release(cluster: Any, node_api: client.ApiClient, node_registry_host: str, node_base_image: str,
            builder_image: str, uv_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed as the fault tests install it (node_helpers.chart_release), uv mounted from its tool
    image; uninstalled, and the CRDs left as found, after the module."""
    helm = [str(cache_dir() / "bin" / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    with chart_release(cluster, node_api, node_registry_host, node_base_image, builder_image,
                       tmp_path_factory.mktemp("chart"), name=RELEASE, uv_image=uv_image) as (namespace, tenant):
        yield Release(node_api, namespace, tenant, helm)


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
    old = wait_for(release.active_operator, timeout=60, what="the active operator replica", diagnostics=release.log)
    release.core.delete_namespaced_pod(old.metadata.name, release.namespace, grace_period_seconds=0)
    replacement: Callable[[], client.V1Pod | None] = lambda: (  # noqa: E731
        pod if (pod := release.running_operator()) is not None and pod.metadata.uid != old.metadata.uid else None)
    wait_for(replacement, timeout=120, what="a new operator pod", diagnostics=release.log)
    status = envs.wait_phase("adopted", "Ready", timeout=300, diagnostics=release.log)
    build = envs.build(status["build"])
    assert build["status"]["attempts"] == 1, "adopted, not restarted"
    assert [j.metadata.name for j in envs.jobs() if j.metadata.labels["envkiln.dev/hash"] == status["hash"]] == [
        f"envkiln-{status['hash']}-1"], "no duplicate build Job"


def test_helm_upgrade_takes_over_the_crds(release: Release, node_api: client.ApiClient) -> None:
    """Installed from crds/ and adopted by the release's Job; from the first upgrade on, the CRDs
    are the release's templates (kept on uninstall), so `helm upgrade` updates them."""
    extensions = client.ApiextensionsV1Api(node_api)
    names = {"environments.envkiln.dev", "environmentbuilds.envkiln.dev", "kopfpeerings.kopf.dev",
             "clusterkopfpeerings.kopf.dev"}

    def adopted() -> bool:
        for name in names:
            annotations = extensions.read_custom_resource_definition(name).metadata.annotations or {}
            if annotations.get("meta.helm.sh/release-name") != RELEASE:
                return False
        return True

    # The release's Job (one per revision) has made the CRDs the release's before any upgrade renders them.
    batch = client.BatchV1Api(node_api)
    jobs = wait_for(lambda: [j for j in batch.list_namespaced_job(
        release.namespace, label_selector="app.kubernetes.io/component=crds").items if j.status.succeeded],
        timeout=120, what="the CRD adoption Job to succeed", diagnostics=release.log)
    logs = "".join(release.core.read_namespaced_pod_log(pod.metadata.name, release.namespace)
                   for pod in release.core.list_namespaced_pod(
                       release.namespace, label_selector=f"job-name={jobs[0].metadata.name}").items)
    print(f"\n{jobs[0].metadata.name}:\n{logs}")
    if jobs[0].metadata.name.endswith("-1"):  # the install's: Helm made the CRDs from crds/, unowned
        for name in names:
            assert f"{name}: adopted by release {release.namespace}/{RELEASE}" in logs, logs
    assert "left alone" not in logs and adopted(), logs
    upgraded = release.helm_run("upgrade", RELEASE, str(REPO_ROOT / "charts" / "envkiln"), "--reuse-values",
                                "--wait", "--timeout", "5m")
    assert upgraded.returncode == 0, upgraded.stderr
    manifest = release.helm_run("get", "manifest", RELEASE)
    rendered = {doc["metadata"]["name"] for doc in yaml.safe_load_all(manifest.stdout)
                if doc and doc["kind"] == "CustomResourceDefinition"}
    assert rendered == names
    for name in rendered:
        metadata = extensions.read_custom_resource_definition(name).metadata
        assert metadata.annotations["meta.helm.sh/release-name"] == RELEASE
        assert metadata.annotations["meta.helm.sh/release-namespace"] == release.namespace
        assert metadata.annotations["helm.sh/resource-policy"] == "keep"
        assert metadata.labels["helm.sh/chart"].startswith("envkiln-")


def _review_directly(api: client.ApiClient, release: Release, pod: client.V1Pod, environment_name: str) -> str:
    """POST an AdmissionReview of a pod labelled for `environment_name` to `pod`'s webhook port: the
    refusal's message (the Environment does not exist)."""
    configuration = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(RELEASE)
    bundle = base64.b64decode(configuration.webhooks[0].client_config.ca_bundle).decode()
    context = ssl.create_default_context(cadata=bundle)
    host = f"{RELEASE}-webhook.{release.namespace}.svc"
    uid = str(uuid.uuid4())
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
        "namespace": release.tenant, "dryRun": True, "userInfo": {"username": "test"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "direct", "labels": {"envkiln.dev/environment": environment_name}},
            "spec": {"containers": [{"name": "main", "image": "placeholder"}]}}}}
    with socket.create_connection((pod.status.pod_ip, 9443), timeout=15) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        body = json.dumps(review).encode()
        tls.sendall(b"POST /envkiln-environment HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    response = json.loads(answer.split(b"\r\n\r\n", 1)[1])["response"]
    assert response["uid"] == uid and response["allowed"] is False, response
    return str(response["status"]["message"])


def _evict(core: client.CoreV1Api, pod: client.V1Pod) -> int:
    """Evict `pod` as `kubectl drain` does (the PodDisruptionBudget decides): the HTTP status."""
    try:
        core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod.metadata.name, "namespace": pod.metadata.namespace}})
    except client.ApiException as error:
        return int(error.status)
    return 201


def test_labelled_pods_are_admitted_through_a_rolling_upgrade_and_a_drain(
        release: Release, node_api: client.ApiClient, node_base_image: str) -> None:
    envs = Envs(node_api, release.tenant)
    envs.create(environment("admitted", image=node_base_image, userManaged=True))  # nothing to build
    wait_for(lambda: release.rolled_out(2), timeout=180, what="two ready operator replicas", diagnostics=release.log)
    policy = client.PolicyV1Api(node_api)
    budget = policy.read_namespaced_pod_disruption_budget(RELEASE, release.namespace)
    assert budget.spec.min_available == 1
    before = {pod.metadata.uid for pod in release.operator_pods()}

    probe = AdmissionProbe(release.core, release.tenant, "admitted")
    probe.start()
    steps: dict[str, float] = {}
    try:
        # Every ready replica answers the webhook, the standby as well as the active one (Kopf pauses
        # only the standby's watches). The API server keeps its connection to one of them, so ask each
        # one directly, as the API server would: TLS verified with the caBundle, as the Service's name.
        active = wait_for(release.active_operator, timeout=60, what="the active replica", diagnostics=release.log)
        for pod in release.ready_operators():
            message = _review_directly(node_api, release, pod, "no-such-environment")
            assert "no-such-environment" in message and "does not exist" in message, message
        print(f"\nreviews answered by each replica directly, the active one ({active.metadata.name}) and the standby")
        # 1. A rolling upgrade: a changed pod annotation rolls every replica.
        began = time.monotonic()
        upgraded = release.helm_run("upgrade", RELEASE, str(REPO_ROOT / "charts" / "envkiln"), "--reuse-values",
                                    "--set", f"podAnnotations.envkiln-test/rollout={uuid.uuid4().hex[:8]}",
                                    "--wait", "--timeout", "5m")
        assert upgraded.returncode == 0, upgraded.stderr + "\n" + release.log()
        # Every replica replaced: waited for (under load the Deployment's status and the pod list were read
        # once in the instant between them, a replaced pod still listed), and it fails after 180 s if not.
        wait_for(lambda: release.rolled_out(2) and not {p.metadata.uid for p in release.operator_pods()} & before,
                 timeout=180, what="the rollout to replace every replica", diagnostics=release.log)
        rolled = {pod.metadata.uid for pod in release.operator_pods()}
        steps["rolling upgrade"] = time.monotonic() - began
        # 2. A drain, replica by replica: the budget lets one go at a time, each after its replacement is ready.
        began = time.monotonic()
        first, second = release.ready_operators()
        assert _evict(release.core, first) == 201
        assert _evict(release.core, second) == 429, "the budget refuses a second eviction while one is replaced"
        wait_for(lambda: _evict(release.core, second) == 201, timeout=180,
                 what="the budget to allow the second eviction", diagnostics=release.log)
        wait_for(lambda: release.rolled_out(2), timeout=180, what="two new replicas after the drain",
                 diagnostics=release.log)
        assert not {pod.metadata.uid for pod in release.operator_pods()} & rolled
        steps["drain"] = time.monotonic() - began
        time.sleep(3)
    finally:
        probe.stop()
    total = len(probe.admitted) + len(probe.refused)
    print(f"\nadmission during {probe.ended - probe.started:.1f} s ("
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps.items())
          + f"): {total} labelled pods, {len(probe.admitted)} admitted, {len(probe.refused)} refused; "
          f"longest refusal-free window {probe.longest_clear_window():.1f} s, "
          f"longest time between admissions {probe.longest_gap():.2f} s")
    assert not probe.refused, probe.refused[:5]
    assert len(probe.admitted) >= 50 and probe.longest_gap() < 15, (len(probe.admitted), probe.longest_gap())


def test_helm_test_passes_and_fails_without_the_operator(release: Release) -> None:
    """Last in the module: it scales the operator down."""
    passed = release.helm_run("test", RELEASE, "--logs", "--timeout", "3m")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Established=True" in passed.stdout and "allowed=False" in passed.stdout, passed.stdout
    release.apps.patch_namespaced_deployment_scale(RELEASE, release.namespace, {"spec": {"replicas": 0}})
    try:
        wait_for(lambda: not release.operator_pods(), timeout=120, what="no operator pod")
        failed = release.helm_run("test", RELEASE, "--logs", "--timeout", "3m")
        assert failed.returncode != 0, failed.stdout
        assert "FAIL: Deployment envkiln has no ready replica" in failed.stdout + failed.stderr, failed.stdout
    finally:
        release.apps.patch_namespaced_deployment_scale(RELEASE, release.namespace, {"spec": {"replicas": 2}})
    wait_for(lambda: release.rolled_out(2), timeout=180, what="the operator back", diagnostics=release.log)
