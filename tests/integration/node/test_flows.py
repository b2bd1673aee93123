"""The product's flows with every pod really running on the node: build Jobs (in-cluster buildah),
training Jobs gated and released by the webhook, anonymous environments, lost build pods.

Nothing here writes a Job's or a pod's status: the Job controller, the scheduler, the kubelet and
containerd do."""

from __future__ import annotations

import json
from typing import Any

import yaml
from kubernetes import client

from harness.pypi import PackageIndex
from node_helpers import PROBE, PROBE_VERSION, job_pod, probe_spec, registry_digest, training_job, wait_job_complete
from operator_helpers import Envs, condition, environment, wait_for


def test_environment_builds_in_a_real_build_job(node_api: client.ApiClient, node_namespace: str,
                                                node_base_image: str, probe_index: PackageIndex,
                                                buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace)
    envs = Envs(node_api, node_namespace)
    envs.create(environment("probe", **probe_spec(node_base_image, probe_index)))
    status = envs.wait_phase("probe", "Ready", timeout=300, diagnostics=operator.log)
    assert status["cacheHit"] is False
    assert status["imageDigest"] == registry_digest(status["image"]), "status digest = the registry's digest"
    assert status["imageRef"].endswith("@" + status["imageDigest"])
    [job] = envs.jobs()
    assert job.status.succeeded == 1, "the Job controller saw the build pod succeed"
    [pod] = envs.core.list_namespaced_pod(node_namespace, label_selector=f"job-name={job.metadata.name}").items
    assert pod.spec.node_name and pod.status.phase == "Succeeded"
    statuses = {s.name: s for s in pod.status.init_container_statuses}
    assert list(statuses) == ["context", "build"], "the context is checked before the build"
    assert all(s.state.terminated.exit_code == 0 for s in statuses.values())
    assert probe_index.requested(PROBE, files=True), "the build installed the probe from the local index"


def test_failing_pip_install_fails_with_the_pod_log(node_api: client.ApiClient, node_namespace: str,
                                                   node_base_image: str, probe_index: PackageIndex,
                                                   buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace, build_retry_limit="0")
    envs = Envs(node_api, node_namespace)
    envs.create(environment("missing", **probe_spec(node_base_image, probe_index,
                                                    pip=["envkiln-no-such-package==9.9.9"])))
    status = envs.wait_phase("missing", "Failed", timeout=300, diagnostics=operator.log)
    [build] = envs.builds()
    tail = build["status"]["logTail"]
    assert "envkiln-no-such-package" in tail and "[build]" in tail, tail
    # uv's words (pip's when ENVKILN_UV_IMAGE is ""): the resolver's own reason reaches the status.
    assert any(words in tail for words in ("No solution found", "was not found in the package registry",
                                           "No matching distribution", "Could not find a version")), tail
    assert build["status"]["phase"] == "Failed"
    assert status["message"].startswith(f"EnvironmentBuild {build['metadata']['name']} failed: "), status["message"]
    assert condition(status, "Ready")["reason"] == "BuildFailed"
    events = envs.events(build["metadata"]["name"])
    assert any(e.reason == "BuildFailed" and e.type == "Warning" for e in events), [e.reason for e in events]


def test_training_job_is_gated_then_runs_on_the_built_digest(node_api: client.ApiClient, node_namespace: str,
                                                             node_base_image: str, probe_index: PackageIndex,
                                                             buildah_operator: Any, webhook: dict[str, str]) -> None:
    operator = buildah_operator(node_namespace, **webhook)
    envs = Envs(node_api, node_namespace)
    # A slow step keeps the build running long enough to see the gate.
    envs.create(environment("trainenv", version="2",
                            **probe_spec(node_base_image, probe_index, "RUN sleep 8")))
    envs.batch.create_namespaced_job(node_namespace, training_job(
        "train", {"envkiln.dev/environment": "trainenv"}, {"envkiln.dev/environment": "trainenv:2"}))
    gated = wait_for(lambda: job_pod(envs.core, node_namespace, "train"), timeout=30, what="the training pod")
    assert [g.name for g in gated.spec.scheduling_gates or []] == ["envkiln.dev/environment"], gated.spec
    assert envs.status("trainenv").get("phase") != "Ready"
    assert not gated.spec.node_name, "a gated pod is not scheduled"
    status = envs.wait_phase("trainenv", "Ready", timeout=300, diagnostics=operator.log)
    job = wait_job_complete(envs.batch, node_namespace, "train", 180, operator.log)
    assert job.status.succeeded == 1
    pod = job_pod(envs.core, node_namespace, "train")
    assert pod is not None and pod.spec.node_name
    assert pod.spec.containers[0].image == status["imageRef"], "the pod runs the digest, not a tag"
    assert pod.status.container_statuses[0].image_id.endswith(status["imageDigest"])
    log = envs.core.read_namespaced_pod_log(pod.metadata.name, node_namespace, container="trainer")
    assert f"probe {PROBE_VERSION}" in log, log


def test_anonymous_inline_environment_on_a_job(node_api: client.ApiClient, node_namespace: str,
                                               node_base_image: str, probe_index: PackageIndex,
                                               buildah_operator: Any, webhook: dict[str, str]) -> None:
    operator = buildah_operator(node_namespace, **webhook)
    envs = Envs(node_api, node_namespace)
    inline = probe_spec(node_base_image, probe_index)
    envs.batch.create_namespaced_job(node_namespace, training_job(
        "inline", {"envkiln.dev/environment": "inline"}, {"envkiln.dev/environment-spec": yaml.safe_dump(inline)}))
    job = wait_job_complete(envs.batch, node_namespace, "inline", 300, operator.log)
    [anonymous] = envs.custom.list_namespaced_custom_object(
        "envkiln.dev", "v1alpha1", node_namespace, "environments", label_selector="envkiln.dev/anonymous=true")["items"]
    assert anonymous["metadata"]["name"].startswith("anonymous-")
    assert anonymous["status"]["phase"] == "Ready"
    pod = job_pod(envs.core, node_namespace, "inline")
    assert pod is not None and pod.spec.containers[0].image == anonymous["status"]["imageRef"]
    log = envs.core.read_namespaced_pod_log(pod.metadata.name, node_namespace, container="trainer")
    assert f"probe {PROBE_VERSION}" in log and job.status.succeeded == 1


def test_deleted_build_pod_is_retried_within_the_budget(node_api: client.ApiClient, node_namespace: str,
                                                        node_base_image: str, probe_index: PackageIndex,
                                                        buildah_operator: Any) -> None:
    operator = buildah_operator(node_namespace, build_retry_limit="2")
    envs = Envs(node_api, node_namespace)
    envs.create(environment("lost", **probe_spec(node_base_image, probe_index, "RUN sleep 15")))

    def running_build_pod() -> client.V1Pod | None:
        for pod in envs.core.list_namespaced_pod(node_namespace, label_selector="envkiln.dev/attempt=1").items:
            statuses = [s for s in pod.status.init_container_statuses or [] if s.name == "build"]
            if statuses and statuses[0].state and statuses[0].state.running:
                return pod
        return None

    pod = wait_for(running_build_pod, timeout=120, what="the first build pod running", diagnostics=operator.log)
    envs.core.delete_namespaced_pod(pod.metadata.name, node_namespace, grace_period_seconds=0)
    status = envs.wait_phase("lost", "Ready", timeout=300, diagnostics=operator.log)
    build = envs.build(status["build"])
    assert build["status"]["attempts"] == 2, build["status"]
    assert sorted(j.metadata.name for j in envs.jobs()) == [
        f"envkiln-{status['hash']}-1", f"envkiln-{status['hash']}-2"]
    assert status["imageDigest"] == registry_digest(status["image"])
    events = envs.events(build["metadata"]["name"])
    assert any(e.reason == "BuildFailed" for e in events), "the lost attempt is reported"
    print(json.dumps({"attempts": build["status"]["attempts"]}))
