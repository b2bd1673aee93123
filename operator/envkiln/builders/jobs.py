"""What every in-cluster builder shares: one batch/v1 Job per attempt, and how it is followed.

A Job builder only says what its build pod looks like (`pod_spec`); everything else is here,
so proving one Job builder on a real node proves the orchestration of the others:

- deterministic names (`envkiln-<hash>-<attempt>`) and create-or-get, so a restarted operator
  adopts the Job it started and concurrent reconciles never start a second one;
- the rendered context as a ConfigMap owned by the EnvironmentBuild (garbage-collected with it);
- the Job owned by the EnvironmentBuild, `backoffLimit: 0` (envkiln retries itself so each
  attempt's log tail is kept), deadline and TTL from settings;
- the outcome: the digest from the termination message of the container that pushed, the log
  tail from the container that failed (its termination message, FallbackToLogsOnError);
- running Jobs counted for the concurrency limit.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from kubernetes import client

from envkiln import API_VERSION
from envkiln.builders import AttemptResult, AttemptState, tail
from envkiln.kube import Kube
from envkiln.models import BuildContext, EnvironmentBuildSpec
from envkiln.names import (
    BUILD_COMPONENT,
    KIND_BUILD,
    LABEL_ATTEMPT,
    LABEL_BUILD,
    LABEL_HASH,
    context_configmap_name,
    job_name,
)
from envkiln.settings import OperatorSettings

__all__ = ["JobBuilder", "build_job", "context_configmap", "context_configmap_name", "job_name"]

MANAGED_BY = BUILD_COMPONENT
CONTEXT_MOUNT = "/workspace"
DOCKER_CONFIG_SECRET = "envkiln-registry-credentials"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def owner_reference(build: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": KIND_BUILD, "name": build["metadata"]["name"],
        "uid": build["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
    }


def context_configmap(build: dict[str, Any]) -> dict[str, Any] | None:
    """The rendered Dockerfile and files; None when the user brings the context."""
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    if spec.plan.context is not None:
        return None
    data = {"Dockerfile": spec.plan.dockerfile, **{f.path: f.content for f in spec.plan.files}}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": context_configmap_name(spec.hash), "namespace": build["metadata"]["namespace"],
            "labels": {**MANAGED_BY, LABEL_BUILD: build["metadata"]["name"], LABEL_HASH: spec.hash},
            "ownerReferences": [owner_reference(build)],
        },
        "data": data,
    }


def context_volume(spec: EnvironmentBuildSpec) -> tuple[str, dict[str, Any] | None]:
    """(Dockerfile path inside the context, the ConfigMap volume) for rendered and ConfigMap contexts.

    The volume is None for git and tarball contexts, which the builder fetches itself.
    """
    user: BuildContext | None = spec.plan.context
    if user is None:
        return "Dockerfile", {"name": "context", "configMap": {"name": context_configmap_name(spec.hash)}}
    if user.config_map is not None:
        return user.dockerfile_path, {"name": "context", "configMap": {"name": user.config_map.name}}
    return user.dockerfile_path, None


def build_resources(settings: OperatorSettings) -> dict[str, Any]:
    return {
        "requests": {"cpu": settings.build_cpu_request, "memory": settings.build_memory_request,
                     "ephemeral-storage": settings.build_ephemeral_storage_request},
        "limits": {"cpu": settings.build_cpu_limit, "memory": settings.build_memory_limit,
                   "ephemeral-storage": settings.build_ephemeral_storage_limit},
    }


def repository_of(image: str) -> str:
    """registry/path/name of registry/path/name:tag (a registry port is not a tag)."""
    last = image.rsplit("/", 1)[-1]
    return image.rsplit(":", 1)[0] if ":" in last else image


def build_job(build: dict[str, Any], attempt: int, settings: OperatorSettings,
              pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The Job for one attempt around a builder's pod spec. Pure: same inputs, same manifest."""
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    labels = {**MANAGED_BY, LABEL_BUILD: build["metadata"]["name"], LABEL_HASH: spec.hash,
              LABEL_ATTEMPT: str(attempt)}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": job_name(spec.hash, attempt), "namespace": build["metadata"]["namespace"],
            "labels": labels, "ownerReferences": [owner_reference(build)],
        },
        "spec": {
            "backoffLimit": 0,  # envkiln retries itself, so each attempt's log tail is kept
            "activeDeadlineSeconds": settings.build_deadline_seconds,
            "ttlSecondsAfterFinished": settings.build_ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **pod_spec,
                },
            },
        },
    }


def job_finished(job: client.V1Job) -> tuple[bool, str, str] | None:
    """None while running; else (succeeded, reason, message)."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return True, "Complete", ""
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return False, condition.reason or "BackoffLimitExceeded", condition.message or ""
    return None


def _statuses(pod: client.V1Pod) -> list[client.V1ContainerStatus]:
    if pod.status is None:
        return []
    return [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]


def termination(pods: list[client.V1Pod], container: str) -> tuple[str | None, str | None]:
    """(message, reason) of `container`'s last termination in the newest pod that has one."""
    for pod in reversed(pods):
        for status in _statuses(pod):
            if status.name == container and status.state is not None and status.state.terminated is not None:
                return status.state.terminated.message, status.state.terminated.reason
    return None, None


def first_failure(pods: list[client.V1Pod]) -> tuple[str | None, str | None, str | None]:
    """(container, message, reason) of the first container (init containers first) that failed."""
    for pod in reversed(pods):
        for status in _statuses(pod):
            terminated = status.state.terminated if status.state is not None else None
            if terminated is not None and terminated.exit_code != 0:
                return status.name, terminated.message, terminated.reason
    return None, None, None


def job_is_running(job: client.V1Job) -> bool:
    status = job.status
    if status is None:
        return True
    if status.succeeded or status.failed:
        return False
    return not any(c.status == "True" and c.type in ("Complete", "Failed") for c in status.conditions or [])


class PodSpecFor(Protocol):
    def __call__(self, build: dict[str, Any], attempt: int, settings: OperatorSettings,
                 with_credentials: bool) -> dict[str, Any]: ...


class JobBuilder:
    """An in-cluster builder: subclasses set `name`, `digest_container` and `pod_spec`."""

    name = "job"
    digest_container = ""  # the container whose termination message is the pushed digest

    def __init__(self, kube: Kube, settings: OperatorSettings, credentials_secret_data: dict[str, str] | None = None):
        self.kube = kube
        self.settings = settings
        self.credentials_secret_data = credentials_secret_data

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: bool) -> dict[str, Any]:
        raise NotImplementedError

    def job(self, build: dict[str, Any], attempt: int, with_credentials: bool) -> dict[str, Any]:
        return build_job(build, attempt, self.settings, self.pod_spec(build, attempt, with_credentials))

    def _ensure_credentials(self, namespace: str) -> bool:
        if not self.credentials_secret_data:
            return False
        body = {"metadata": {"name": DOCKER_CONFIG_SECRET, "namespace": namespace, "labels": MANAGED_BY},
                "type": "kubernetes.io/dockerconfigjson", "data": self.credentials_secret_data}
        self.kube.create_or_patch_secret(namespace, body)
        return True

    def start(self, build: dict[str, Any], attempt: int) -> str:
        namespace = build["metadata"]["namespace"]
        configmap = context_configmap(build)
        if configmap is not None:
            self.kube.create_or_get_configmap(namespace, configmap)
        with_credentials = self._ensure_credentials(namespace)
        job, _ = self.kube.create_or_get_job(namespace, self.job(build, attempt, with_credentials))
        return str(job.metadata.name)

    def running_builds(self) -> int:
        """Build Jobs still running, in the watched namespaces (for the concurrency limit)."""
        jobs = self.kube.list_jobs(self.settings.namespaces, LABEL_BUILD)
        return sum(1 for job in jobs if job_is_running(job))

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        namespace = build["metadata"]["namespace"]
        name = job_name(build["spec"]["hash"], attempt)
        job = self.kube.read_job(namespace, name)
        if job is None:
            return AttemptResult(AttemptState.MISSING, name=name)
        finished = job_finished(job)
        if finished is None:
            return AttemptResult(AttemptState.RUNNING, name=name)
        succeeded, job_reason, job_message = finished
        pods = self.kube.job_pods(namespace, name)
        if succeeded:
            message, _ = termination(pods, self.digest_container)
            match = _DIGEST.search(message or "")
            if not match:
                return AttemptResult(AttemptState.FAILED, name=name, reason="NoDigest",
                                     log_tail="the build finished but reported no digest in its termination message")
            return AttemptResult(AttemptState.SUCCEEDED, digest=match.group(0), name=name)
        container, message, reason = first_failure(pods)
        log_tail = tail(message or "") or job_message or "the build pod left no log"
        if container is not None:
            log_tail = f"[{container}] {log_tail}"
        return AttemptResult(AttemptState.FAILED, name=name, reason=reason or job_reason, log_tail=log_tail)
