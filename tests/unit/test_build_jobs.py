"""The Job builders: the buildah pod (least privilege, credential only in the push container),
and the shared decisions on a finished Job (digest, log tail, running count), as tables."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from envkiln.builders.buildah import buildah_job
from envkiln.builders.jobs import first_failure, job_finished, job_is_running, repository_of, termination
from envkiln.builders.kaniko import kaniko_job
from envkiln.definition import definition_hash, image_name
from envkiln.models import EnvironmentBuildSpec
from envkiln.render import render
from envkiln.settings import OperatorSettings
from helpers import PIP_ENV, spec_of

SETTINGS = OperatorSettings(registry="reg.local:5000", insecure_registry=True, builder="buildah",
                            buildah_image="reg.local:5000/builder:1", buildah_push_image="reg.local:5000/push:1")


def build_for(spec: dict[str, Any], context: dict[str, str] | None = None) -> dict[str, Any]:
    doc = {**PIP_ENV, "spec": spec}
    value = definition_hash(spec_of(doc), context)
    build_spec = EnvironmentBuildSpec(hash=value, image=image_name(value, SETTINGS.registry),
                                      plan=render(spec_of(doc), value))
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
            "metadata": {"name": f"envb-{value}", "namespace": "ns", "uid": "uid-1"}, "spec": build_spec.to_kube()}


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.mark.parametrize("with_credentials", [False, True])
def test_buildah_pod_is_least_privilege_and_credential_free_where_user_code_runs(with_credentials: bool) -> None:
    build = build_for(PIP_ENV["spec"])
    job = buildah_job(build, 1, SETTINGS, with_credentials)
    pod = pod_of(job)
    [builder] = pod["initContainers"]
    [push] = pod["containers"]
    assert builder["securityContext"] == {
        "runAsUser": 0, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "envkiln/buildah.json"},
    }
    assert push["securityContext"]["runAsNonRoot"] is True and push["securityContext"]["runAsUser"] != 0
    assert push["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert push["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The user's RUN steps execute in the build container: it mounts no credential, ever.
    assert {m["name"] for m in builder["volumeMounts"]} == {"context", "out", "storage"}
    push_mounts = {m["name"]: m for m in push["volumeMounts"]}
    assert push_mounts["out"]["readOnly"] is True
    assert ("docker-config" in push_mounts) is with_credentials
    assert pod["automountServiceAccountToken"] is False
    assert builder["image"] == "reg.local:5000/builder:1" and push["image"] == "reg.local:5000/push:1"
    assert builder["resources"]["limits"]["ephemeral-storage"] == SETTINGS.build_ephemeral_storage_limit
    assert job == buildah_job(build, 1, SETTINGS, with_credentials), "pure: same inputs, same Job"


def test_buildah_values_reach_the_scripts_only_as_environment() -> None:
    build = build_for(PIP_ENV["spec"])
    pod = pod_of(buildah_job(build, 1, SETTINGS, False))
    builder, push = pod["initContainers"][0], pod["containers"][0]
    value = build["spec"]["hash"]
    assert env_of(builder)["ENVKILN_IMAGE"] == f"reg.local:5000/envkiln/env_{value}:{value}"
    assert env_of(builder)["ENVKILN_DOCKERFILE"] == "/workspace/Dockerfile"
    assert env_of(builder)["ENVKILN_INSECURE_REGISTRY"] == "reg.local:5000"
    assert env_of(push)["ENVKILN_LATEST"] == f"reg.local:5000/envkiln/env_{value}:latest"
    for container in (builder, push):
        assert value not in container["command"][2], "no spec value inside the script text"
    secure = pod_of(buildah_job(build, 1, SETTINGS.model_copy(update={"insecure_registry": False}), False))
    assert env_of(secure["initContainers"][0])["ENVKILN_INSECURE_REGISTRY"] == ""


@pytest.mark.parametrize(("spec", "context", "expected_context", "expected_dockerfile", "volume"), [
    (PIP_ENV["spec"], None, "/workspace", "/workspace/Dockerfile", "rendered"),
    ({"build": {"configMap": {"name": "user-ctx"}, "dockerfilePath": "gpu/Dockerfile"}}, {"Dockerfile": "FROM x"},
     "/workspace", "/workspace/gpu/Dockerfile", "user-ctx"),
    ({"build": {"git": {"url": "https://example.org/o/r.git", "ref": "v1.2", "path": "img"}}}, None,
     "https://example.org/o/r.git#v1.2:img", "Dockerfile", None),
    ({"build": {"tarball": {"url": "https://example.org/ctx.tar.gz"}}}, None,
     "https://example.org/ctx.tar.gz", "Dockerfile", None),
])
def test_buildah_context_sources(spec: dict[str, Any], context: dict[str, str] | None, expected_context: str,
                                 expected_dockerfile: str, volume: str | None) -> None:
    build = build_for(spec, context)
    pod = pod_of(buildah_job(build, 1, SETTINGS, False))
    env = env_of(pod["initContainers"][0])
    assert (env["ENVKILN_CONTEXT"], env["ENVKILN_DOCKERFILE"]) == (expected_context, expected_dockerfile)
    configmaps = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    if volume == "rendered":
        assert configmaps == [f"envkiln-{build['spec']['hash']}-context"]
    else:
        assert configmaps == ([volume] if volume else [])


@pytest.mark.parametrize("make", [buildah_job, kaniko_job])
def test_job_builders_share_the_job(make: Any) -> None:
    build = build_for(PIP_ENV["spec"])
    job = make(build, 3, SETTINGS, False)
    value = build["spec"]["hash"]
    assert job["metadata"]["name"] == f"envkiln-{value}-3"
    assert job["metadata"]["labels"]["envkiln.dev/attempt"] == "3"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild", "name": f"envb-{value}", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == SETTINGS.build_deadline_seconds
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.build_ttl_seconds
    assert pod_of(job)["restartPolicy"] == "Never" and pod_of(job)["enableServiceLinks"] is False


def _job(*conditions: tuple[str, str], succeeded: int = 0, failed: int = 0) -> client.V1Job:
    return client.V1Job(status=client.V1JobStatus(
        succeeded=succeeded or None, failed=failed or None,
        conditions=[client.V1JobCondition(type=t, status="True", reason=r, message=f"{r} message")
                    for t, r in conditions] or None))


@pytest.mark.parametrize(("job", "finished", "running"), [
    (client.V1Job(), None, True),
    (_job(), None, True),
    (_job(("Complete", "Done"), succeeded=1), (True, "Complete", ""), False),
    (_job(("SuccessCriteriaMet", "Done")), (True, "Complete", ""), True),
    (_job(("Failed", "DeadlineExceeded"), failed=1), (False, "DeadlineExceeded", "DeadlineExceeded message"), False),
    (_job(("FailureTarget", "BackoffLimitExceeded")), (False, "BackoffLimitExceeded", "BackoffLimitExceeded message"),
     True),
])
def test_job_outcome(job: client.V1Job, finished: tuple[bool, str, str] | None, running: bool) -> None:
    assert job_finished(job) == finished
    assert job_is_running(job) is running


def _terminated(name: str, code: int, message: str | None, reason: str = "Error") -> client.V1ContainerStatus:
    return client.V1ContainerStatus(name=name, image="i", image_id="", ready=False, restart_count=0,
                                    state=client.V1ContainerState(terminated=client.V1ContainerStateTerminated(
                                        exit_code=code, message=message, reason=reason)))


def _pod(init: list[client.V1ContainerStatus], main: list[client.V1ContainerStatus]) -> client.V1Pod:
    return client.V1Pod(status=client.V1PodStatus(init_container_statuses=init or None,
                                                  container_statuses=main or None))


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("pods", "container", "digest_message", "failure"), [
    ([], "push", None, (None, None, None)),
    ([_pod([_terminated("build", 0, "built")], [_terminated("push", 0, DIGEST, "Completed")])], "push", DIGEST,
     (None, None, None)),
    ([_pod([_terminated("build", 1, "ERROR: no matching distribution")], [])], "push", None,
     ("build", "ERROR: no matching distribution", "Error")),
    ([_pod([_terminated("build", 0, "built")], [_terminated("push", 1, "unauthorized")])], "push", "unauthorized",
     ("push", "unauthorized", "Error")),
    ([_pod([], [_terminated("kaniko", 0, DIGEST, "Completed")])], "kaniko", DIGEST, (None, None, None)),
    # The newest pod wins: an earlier pod's failure is not this attempt's story.
    ([_pod([], [_terminated("kaniko", 1, "old")]), _pod([], [_terminated("kaniko", 137, "OOMKilled", "OOMKilled")])],
     "kaniko", "OOMKilled", ("kaniko", "OOMKilled", "OOMKilled")),
])
def test_digest_and_failure_from_pods(pods: list[client.V1Pod], container: str, digest_message: str | None,
                                      failure: tuple[str | None, str | None, str | None]) -> None:
    assert termination(pods, container)[0] == digest_message
    assert first_failure(pods) == failure


@pytest.mark.parametrize(("image", "repository"), [
    ("reg:5000/envkiln/env_x:abc", "reg:5000/envkiln/env_x"),
    ("reg:5000/envkiln/env_x", "reg:5000/envkiln/env_x"),
    ("ghcr.io/a/b:1", "ghcr.io/a/b"),
])
def test_repository_of(image: str, repository: str) -> None:
    assert repository_of(image) == repository
