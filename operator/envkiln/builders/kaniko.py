"""The Kaniko builder (default in real clusters): the executor in a Job per attempt.

Only the pod differs from the other Job builders (envkiln.builders.jobs): Kaniko pushes
itself and writes the digest to its termination message (`--digest-file=/dev/termination-log`).
Trade-off: Kaniko unpacks the user's build as root in its own container, and that container
mounts the push credential, so a build can read it.
"""

from __future__ import annotations

import re
from typing import Any

from envkiln.builders.jobs import (
    CONTEXT_MOUNT,
    DOCKER_CONFIG_SECRET,
    JobBuilder,
    build_job,
    build_resources,
    context_configmap,
    context_volume,
    job_name,
    repository_of,
)
from envkiln.imageref import parse_image_reference
from envkiln.models import EnvironmentBuildSpec
from envkiln.settings import OperatorSettings

__all__ = ["KanikoBuilder", "context_configmap", "job_name", "kaniko_job", "kaniko_pod_spec"]


def _git_context(url: str, ref: str) -> str:
    # Kaniko's git source: git://host/repo.git#refs/heads/<branch> or #<commit>.
    address = re.sub(r"^(https|ssh)://", "", url)
    fragment = ref if re.fullmatch(r"[0-9a-f]{40}", ref) or ref.startswith("refs/") else f"refs/heads/{ref}"
    return f"git://{address}#{fragment}"


def _context_args(spec: EnvironmentBuildSpec) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(args, volumes, mounts) for where the context comes from."""
    dockerfile, volume = context_volume(spec)
    if volume is not None:
        return (
            [f"--context=dir://{CONTEXT_MOUNT}", f"--dockerfile={CONTEXT_MOUNT}/{dockerfile}"],
            [volume],
            [{"name": "context", "mountPath": CONTEXT_MOUNT, "readOnly": True}],
        )
    user = spec.plan.context
    assert user is not None
    if user.git is not None:
        args = [f"--context={_git_context(user.git.url, user.git.ref)}", f"--dockerfile={dockerfile}"]
        if user.git.path:
            args.append(f"--context-sub-path={user.git.path}")
        return args, [], []
    assert user.tarball is not None
    return [f"--context={user.tarball.url}", f"--dockerfile={dockerfile}"], [], []


def kaniko_pod_spec(build: dict[str, Any], settings: OperatorSettings, with_credentials: bool) -> dict[str, Any]:
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    registry_host = parse_image_reference(spec.image).registry
    context_args, volumes, mounts = _context_args(spec)
    args = [
        *context_args,
        f"--destination={spec.image}",
        f"--destination={repository_of(spec.image)}:latest",
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
    return {
        "containers": [{
            "name": "kaniko",
            "image": settings.kaniko_image,
            "args": args,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": build_resources(settings),
            # Kaniko must run as root to unpack images; nothing more than that.
            "securityContext": {"privileged": False, "allowPrivilegeEscalation": False},
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }


def kaniko_job(build: dict[str, Any], attempt: int, settings: OperatorSettings,
               with_credentials: bool) -> dict[str, Any]:
    """The Job for one attempt. Pure: the same inputs give the same manifest."""
    return build_job(build, attempt, settings, kaniko_pod_spec(build, settings, with_credentials))


class KanikoBuilder(JobBuilder):
    name = "kaniko"
    digest_container = "kaniko"

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: bool) -> dict[str, Any]:
        return kaniko_pod_spec(build, self.settings, with_credentials)
