"""The Kaniko builder: a ConfigMap with the rendered context and a batch/v1 Job per attempt."""

from __future__ import annotations

import re
from typing import Any

from kubernetes import client

from envkiln import API_VERSION
from envkiln.builders import AttemptResult, AttemptState, tail
from envkiln.imageref import parse_image_reference
from envkiln.kube import Kube
from envkiln.models import BuildContext, EnvironmentBuildSpec
from envkiln.settings import OperatorSettings

LABEL_BUILD = "envkiln.dev/build"
LABEL_HASH = "envkiln.dev/hash"
LABEL_ATTEMPT = "envkiln.dev/attempt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "envkiln", "app.kubernetes.io/component": "build"}
CONTEXT_MOUNT = "/workspace"
DOCKER_CONFIG_SECRET = "envkiln-registry-credentials"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def job_name(definition_hash: str, attempt: int) -> str:
    return f"envkiln-{definition_hash}-{attempt}"


def context_configmap_name(definition_hash: str) -> str:
    return f"envkiln-{definition_hash}-context"


def owner_reference(build: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "EnvironmentBuild", "name": build["metadata"]["name"],
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


def _git_context(url: str, ref: str) -> str:
    # Kaniko's git source: git://host/repo.git#refs/heads/<branch> or #<commit>.
    address = re.sub(r"^(https|ssh)://", "", url)
    fragment = ref if re.fullmatch(r"[0-9a-f]{40}", ref) or ref.startswith("refs/") else f"refs/heads/{ref}"
    return f"git://{address}#{fragment}"


def _context_args(spec: EnvironmentBuildSpec, user: BuildContext | None) -> tuple[list[str], list[dict], list[dict]]:
    """(args, volumes, mounts) for where the context comes from."""
    if user is None or user.config_map is not None:
        configmap = user.config_map.name if user is not None and user.config_map else context_configmap_name(spec.hash)
        dockerfile = user.dockerfile_path if user is not None else "Dockerfile"
        return (
            [f"--context=dir://{CONTEXT_MOUNT}", f"--dockerfile={CONTEXT_MOUNT}/{dockerfile}"],
            [{"name": "context", "configMap": {"name": configmap}}],
            [{"name": "context", "mountPath": CONTEXT_MOUNT, "readOnly": True}],
        )
    if user.git is not None:
        args = [f"--context={_git_context(user.git.url, user.git.ref)}", f"--dockerfile={user.dockerfile_path}"]
        if user.git.path:
            args.append(f"--context-sub-path={user.git.path}")
        return args, [], []
    assert user.tarball is not None
    return [f"--context={user.tarball.url}", f"--dockerfile={user.dockerfile_path}"], [], []


def kaniko_job(build: dict[str, Any], attempt: int, settings: OperatorSettings, with_credentials: bool) -> dict:
    """The Job for one attempt. Pure: the same inputs give the same manifest."""
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    repository = spec.image.rsplit(":", 1)[0]
    registry_host = parse_image_reference(spec.image).registry
    context_args, volumes, mounts = _context_args(spec, spec.plan.context)
    args = [
        *context_args,
        f"--destination={spec.image}",
        f"--destination={repository}:latest",
        "--cache=true",
        f"--cache-repo={settings.effective_cache_repository}",
        "--digest-file=/dev/termination-log",
        "--snapshot-mode=redo",
        "--push-retry=3",
        f"--label=dev.envkiln.definition-hash={spec.hash}",
    ]
    if settings.insecure_registry and registry_host:
        # Scoped to our registry, rather than Kaniko's global --insecure.
        args += [f"--insecure-registry={registry_host}", f"--skip-tls-verify-registry={registry_host}"]
    args += settings.kaniko_extra_args
    if with_credentials:
        volumes.append({"name": "docker-config", "secret": {
            "secretName": DOCKER_CONFIG_SECRET, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": "docker-config", "mountPath": "/kaniko/.docker", "readOnly": True})
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
                    "containers": [{
                        "name": "kaniko",
                        "image": settings.kaniko_image,
                        "args": args,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "resources": {
                            "requests": {"cpu": settings.build_cpu_request, "memory": settings.build_memory_request},
                            "limits": {"cpu": settings.build_cpu_limit, "memory": settings.build_memory_limit,
                                       "ephemeral-storage": settings.build_ephemeral_storage_limit},
                        },
                        # Kaniko must run as root to unpack images; nothing more than that.
                        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


def _job_finished(job: client.V1Job) -> str | None:
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return "Complete"
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return f"Failed:{condition.reason or 'BackoffLimitExceeded'}:{condition.message or ''}"
    return None


def _termination(pods: list[client.V1Pod]) -> tuple[str | None, str | None]:
    """(message, reason) of the kaniko container's last termination."""
    for pod in reversed(pods):
        for status in (pod.status.container_statuses or []) if pod.status else []:
            if status.name != "kaniko" or status.state is None or status.state.terminated is None:
                continue
            return status.state.terminated.message, status.state.terminated.reason
    return None, None


class KanikoBuilder:
    name = "kaniko"

    def __init__(self, kube: Kube, settings: OperatorSettings, credentials_secret_data: dict[str, str] | None = None):
        self.kube = kube
        self.settings = settings
        self.credentials_secret_data = credentials_secret_data

    def _ensure_credentials(self, namespace: str) -> bool:
        if not self.credentials_secret_data:
            return False
        body = {"metadata": {"name": DOCKER_CONFIG_SECRET, "namespace": namespace, "labels": MANAGED_BY},
                "type": "kubernetes.io/dockerconfigjson", "data": self.credentials_secret_data}
        try:
            self.kube.core.create_namespaced_secret(namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            self.kube.core.patch_namespaced_secret(DOCKER_CONFIG_SECRET, namespace, {"data": body["data"]})
        return True

    def start(self, build: dict[str, Any], attempt: int) -> str:
        namespace = build["metadata"]["namespace"]
        configmap = context_configmap(build)
        if configmap is not None:
            self.kube.create_or_get_configmap(namespace, configmap)
        with_credentials = self._ensure_credentials(namespace)
        job, _ = self.kube.create_or_get_job(namespace, kaniko_job(build, attempt, self.settings, with_credentials))
        return str(job.metadata.name)

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        namespace = build["metadata"]["namespace"]
        name = job_name(build["spec"]["hash"], attempt)
        job = self.kube.read_job(namespace, name)
        if job is None:
            return AttemptResult(AttemptState.MISSING, name=name)
        finished = _job_finished(job)
        if finished is None:
            return AttemptResult(AttemptState.RUNNING, name=name)
        message, reason = _termination(self.kube.job_pods(namespace, name))
        if finished == "Complete":
            match = _DIGEST.search(message or "")
            if not match:
                return AttemptResult(AttemptState.FAILED, name=name, reason="NoDigest",
                                     log_tail="the build finished but reported no digest in its termination message")
            return AttemptResult(AttemptState.SUCCEEDED, digest=match.group(0), name=name)
        _, job_reason, job_message = finished.split(":", 2)
        log_tail = tail(message or "") or job_message or "the build pod left no log"
        return AttemptResult(AttemptState.FAILED, name=name, reason=reason or job_reason, log_tail=log_tail)
