"""The in-cluster buildah builder: Debian's buildah and skopeo in a Job per attempt.

Only the pod differs from the other Job builders (envkiln.builders.jobs). It has two parts,
because a RUN step can escape buildah's chroot isolation and read whatever its container can:

- the init container `build` runs `buildah build` (vfs storage, chroot isolation) as root with
  only SETUID, SETGID and SETFCAP, no privilege escalation and a Localhost seccomp profile
  (Pod Security `baseline` admits it), and writes an OCI archive to an emptyDir. It mounts no
  credential and no service-account token;
- the container `push`, non-root with every capability dropped and the runtime's default
  seccomp profile, alone mounts the push credential, copies the archive to the registry with
  skopeo and writes the pushed digest to its termination message.

A RUN step can still tamper with its own archive: the push container trusts the archive for
nothing but that build's own output, under that build's own name.
"""

from __future__ import annotations

from typing import Any

from envkiln.builders.jobs import (
    CONTEXT_MOUNT,
    DOCKER_CONFIG_SECRET,
    JobBuilder,
    build_job,
    build_resources,
    context_volume,
    repository_of,
)
from envkiln.imageref import parse_image_reference
from envkiln.models import EnvironmentBuildSpec
from envkiln.settings import OperatorSettings

__all__ = ["BuildahJobBuilder", "buildah_job", "buildah_pod_spec"]

ARCHIVE = "/out/image.tar"
PUSH_USER = 65532
CREDENTIALS_MOUNT = "/creds"

# Values reach the scripts as environment variables, always quoted: nothing from a spec is
# ever part of the script text.
BUILD_SCRIPT = """set -eu
if [ -n "${ENVKILN_INSECURE_REGISTRY:-}" ]; then
  mkdir -p /etc/containers/registries.conf.d
  printf '[[registry]]\\nlocation = "%s"\\ninsecure = true\\n' "$ENVKILN_INSECURE_REGISTRY" \\
    > /etc/containers/registries.conf.d/50-envkiln.conf
fi
buildah --storage-driver vfs build --isolation chroot --layers=false \\
  --label "dev.envkiln.definition-hash=$ENVKILN_HASH" -f "$ENVKILN_DOCKERFILE" -t "$ENVKILN_IMAGE" "$ENVKILN_CONTEXT"
buildah --storage-driver vfs push --quiet "$ENVKILN_IMAGE" "oci-archive:$ENVKILN_ARCHIVE"
echo "built $ENVKILN_IMAGE"
"""

PUSH_SCRIPT = """set -eu
set -- --retry-times 3
if [ -n "${ENVKILN_INSECURE_REGISTRY:-}" ]; then set -- "$@" --dest-tls-verify=false; fi
if [ -f /creds/config.json ]; then set -- "$@" --dest-authfile /creds/config.json; fi
skopeo copy --quiet "$@" --digestfile /dev/termination-log "oci-archive:$ENVKILN_ARCHIVE" "docker://$ENVKILN_IMAGE"
skopeo copy --quiet "$@" "oci-archive:$ENVKILN_ARCHIVE" "docker://$ENVKILN_LATEST"
"""


def _context(spec: EnvironmentBuildSpec) -> tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(context, Dockerfile, volumes, mounts) for where the context comes from."""
    dockerfile, volume = context_volume(spec)
    if volume is not None:
        return (CONTEXT_MOUNT, f"{CONTEXT_MOUNT}/{dockerfile}", [volume],
                [{"name": "context", "mountPath": CONTEXT_MOUNT, "readOnly": True}])
    user = spec.plan.context
    assert user is not None
    if user.git is not None:
        # buildah clones git contexts itself: URL#ref[:subdirectory].
        fragment = user.git.ref + (f":{user.git.path}" if user.git.path else "")
        return f"{user.git.url}#{fragment}", dockerfile, [], []
    assert user.tarball is not None
    return user.tarball.url, dockerfile, [], []


def buildah_pod_spec(build: dict[str, Any], settings: OperatorSettings, with_credentials: bool) -> dict[str, Any]:
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    registry_host = parse_image_reference(spec.image).registry or ""
    context, dockerfile, volumes, mounts = _context(spec)
    insecure = registry_host if settings.insecure_registry else ""
    common_env = [
        {"name": "ENVKILN_IMAGE", "value": spec.image},
        {"name": "ENVKILN_ARCHIVE", "value": ARCHIVE},
        {"name": "ENVKILN_INSECURE_REGISTRY", "value": insecure},
    ]
    volumes = [
        *volumes,
        {"name": "out", "emptyDir": {}},
        {"name": "storage", "emptyDir": {}},
        {"name": "push-tmp", "emptyDir": {}},
    ]
    # skopeo unpacks the archive under /var/tmp (whatever TMPDIR says): the only writable path.
    push_mounts = [{"name": "out", "mountPath": "/out", "readOnly": True},
                   {"name": "push-tmp", "mountPath": "/var/tmp"}]
    if with_credentials:
        volumes.append({"name": "docker-config", "secret": {
            "secretName": DOCKER_CONFIG_SECRET, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        push_mounts.append({"name": "docker-config", "mountPath": CREDENTIALS_MOUNT, "readOnly": True})
    build_container = {
        "name": "build",
        "image": settings.buildah_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT],
        "env": [*common_env,
                {"name": "ENVKILN_HASH", "value": spec.hash},
                {"name": "ENVKILN_DOCKERFILE", "value": dockerfile},
                {"name": "ENVKILN_CONTEXT", "value": context},
                {"name": "BUILDAH_ISOLATION", "value": "chroot"},
                {"name": "STORAGE_DRIVER", "value": "vfs"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": build_resources(settings),
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
            "seccompProfile": {"type": "Localhost", "localhostProfile": settings.buildah_seccomp_profile},
        },
        "volumeMounts": [*mounts,
                         {"name": "out", "mountPath": "/out"},
                         {"name": "storage", "mountPath": "/var/lib/containers"}],
    }
    push_container = {
        "name": "push",
        "image": settings.buildah_push_image,
        "command": ["/bin/sh", "-c", PUSH_SCRIPT],
        "env": [*common_env,
                {"name": "ENVKILN_LATEST", "value": f"{repository_of(spec.image)}:latest"},
                {"name": "HOME", "value": "/var/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsUser": PUSH_USER, "runAsGroup": PUSH_USER, "runAsNonRoot": True,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": push_mounts,
    }
    return {"initContainers": [build_container], "containers": [push_container], "volumes": volumes}


def buildah_job(build: dict[str, Any], attempt: int, settings: OperatorSettings,
                with_credentials: bool) -> dict[str, Any]:
    """The Job for one attempt. Pure: the same inputs give the same manifest."""
    return build_job(build, attempt, settings, buildah_pod_spec(build, settings, with_credentials))


class BuildahJobBuilder(JobBuilder):
    name = "buildah"
    digest_container = "push"

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: bool) -> dict[str, Any]:
        return buildah_pod_spec(build, self.settings, with_credentials)
