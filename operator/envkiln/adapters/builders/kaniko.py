"""The Kaniko builder (default in real clusters): the executor in a Job per attempt.

Only the build container differs from the other Job builders (envkiln.adapters.builders.jobs). Kaniko
builds with `--no-push` into a tarball on an emptyDir; the `push` container, which alone mounts
the push credential, copies it to the registry. So the user's RUN steps, which Kaniko executes
as root in its own container, can never read a credential. Kaniko's remote layer cache is off:
it would need the push credential in that same container, and a shared cache is a way to poison
other builds.

What Kaniko needs: root (it unpacks images and runs RUN steps in its own root filesystem) and
the container runtime's default capabilities (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID,
SETGID, SETFCAP, KILL, MKNOD...), since the files and users of the image are created for real.
It runs with the runtime's default seccomp profile and no privilege escalation.
"""

from __future__ import annotations

import re
from typing import Any

from envkiln.adapters.builders.jobs import (
    ARCHIVE,
    BUILD_ENV_FILES,
    NO_ACCESS,
    NON_ROOT,
    OUT,
    PROXY_VARIABLES,
    BuildAccess,
    JobBuilder,
    build_env_files,
    build_job,
    context_configmap,
    env_entries,
    job_name,
    job_pod_spec,
)
from envkiln.core.imageref import parse_image_reference
from envkiln.core.models import EnvironmentBuildSpec
from envkiln.core.settings import OperatorSettings

__all__ = ["KanikoBuilder", "context_configmap", "job_name", "kaniko_job", "kaniko_pod_spec"]


def _git_context(url: str, ref: str) -> str:
    # Kaniko's git source: git://host/repo.git#refs/heads/<branch> or #<commit>.
    address = re.sub(r"^(https|ssh)://", "", url)
    fragment = ref if re.fullmatch(r"[0-9a-f]{40}", ref) or ref.startswith("refs/") else f"refs/heads/{ref}"
    return f"git://{address}#{fragment}"


def kaniko_container(spec: EnvironmentBuildSpec, settings: OperatorSettings, context_dir: str | None,
                     dockerfile: str, build_env: dict[str, str] | None = None
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The executor. The build env (envkiln.core.placement) is in its environment (Kaniko pulls the base
    through its proxy). RUN steps get the proxy variables as build args, `--build-arg=NAME=$(NAME)`, which
    the kubelet expands from that environment (a value never stands in the Job; Kaniko gives RUN steps the
    predefined proxy args); PIP_* / CONDA_* / MAMBA_* as the pip.conf and .condarc the `build-env` init
    container writes (`kaniko_pod_spec`), mounted at /etc/pip.conf and /etc/conda/.condarc: Kaniko runs
    RUN steps in its own root and never snapshots a mount point."""
    registry_host = parse_image_reference(spec.image).registry
    mounts: list[dict[str, Any]] = [{"name": "out", "mountPath": OUT}]
    if context_dir is not None:
        args = [f"--context=dir://{context_dir}", f"--dockerfile={context_dir}/{dockerfile}"]
        mounts.append({"name": "workspace", "mountPath": context_dir, "readOnly": True})
    else:
        user = spec.plan.context
        assert user is not None
        if user.git is not None:
            args = [f"--context={_git_context(user.git.url, user.git.ref)}", f"--dockerfile={dockerfile}"]
            if user.git.path:
                args.append(f"--context-sub-path={user.git.path}")
        else:
            assert user.tarball is not None  # a tarball without sha256: Kaniko fetches it
            args = [f"--context={user.tarball.url}", f"--dockerfile={dockerfile}"]
    args += [
        f"--destination={spec.image}",
        "--no-push",
        f"--tar-path={ARCHIVE}",
        "--cache=false",
        "--snapshot-mode=redo",
        f"--label=dev.envkiln.definition-hash={spec.hash}",
    ]
    if settings.insecure_registry and registry_host:
        # Base images are pulled from our registry without TLS, scoped to it rather than --insecure.
        args += [f"--insecure-registry={registry_host}", f"--skip-tls-verify-registry={registry_host}"]
    args += [f"--build-arg={name}=$({name})" for name in sorted(build_env or {}) if name in PROXY_VARIABLES]
    mounts += [{"name": "build-env", "mountPath": path, "subPath": name, "readOnly": True}
               for name, path in build_env_files(build_env or {}).items()]
    args += settings.kaniko_extra_args
    return {
        "name": "build",
        "image": settings.kaniko_image,
        "args": args,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {},  # the namespace's build placement (envkiln.adapters.builders.jobs.job_pod_spec)
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }, []


def kaniko_job(build: dict[str, Any], attempt: int, settings: OperatorSettings,
               with_credentials: str | None, access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
    """The Job for one attempt. Pure: the same inputs give the same manifest."""
    return build_job(build, attempt, settings, kaniko_pod_spec(build, settings, with_credentials, access))


# The `build-env` init container: writes the build env's pip.conf and .condarc (jobs.BUILD_ENV_FILES).
BUILD_ENV_SCRIPT = """set -eu
pip=/build-env/pip.conf condarc=/build-env/condarc
""" + BUILD_ENV_FILES


def kaniko_pod_spec(build: dict[str, Any], settings: OperatorSettings, with_credentials: str | None,
                    access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
    # --tar-path writes a docker-archive tarball.
    pod = job_pod_spec(build, settings, kaniko_container, "docker-archive", with_credentials, access)
    env = settings.build_placement(build["metadata"]["namespace"]).env
    if not build_env_files(env):
        return pod
    wanted = {name: value for name, value in env.items() if name.startswith(("PIP_", "CONDA_", "MAMBA_"))}
    writer = {
        "name": "build-env",
        "image": settings.buildah_push_image,
        "command": ["/bin/sh", "-c", BUILD_ENV_SCRIPT],
        "env": [{"name": "ENVKILN_BUILD_ENV_NAMES", "value": " ".join(sorted(wanted))}, *env_entries(wanted)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": NON_ROOT,
        "volumeMounts": [{"name": "build-env", "mountPath": "/build-env"}],
    }
    init = pod["initContainers"]
    return {**pod, "initContainers": [*init[:-1], writer, init[-1]],
            "volumes": [*pod["volumes"], {"name": "build-env", "emptyDir": {}}]}


class KanikoBuilder(JobBuilder):
    name = "kaniko"

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: str | None,
                 access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
        return kaniko_pod_spec(build, self.settings, with_credentials, access)
