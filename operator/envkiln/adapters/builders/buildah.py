"""The in-cluster buildah builder: Debian's buildah and skopeo in a Job per attempt.

Only the pod differs from the other Job builders (envkiln.adapters.builders.jobs). It has two parts,
because a RUN step can escape buildah's chroot isolation and read whatever its container can:

- the init container `build` runs `buildah build` (vfs storage, chroot isolation) as root with
  only SETUID, SETGID and SETFCAP, no privilege escalation and a Localhost seccomp profile
  (Pod Security `baseline` admits it), and writes an OCI archive to an emptyDir (and for a
  one-stage render the lock image, from the lock its RUN step wrote into a mounted directory).
  It mounts no credential and no service-account token. ENVKILN_BUILDAH_STORAGE_DRIVER=overlay needs
  nothing more: without CAP_SYS_ADMIN buildah runs rootless, in a user namespace, where the kernel
  (5.13 or later) mounts overlay for it; where it cannot, the build says so and uses vfs;
- the container `push` (shared with Kaniko, envkiln.adapters.builders.jobs), non-root with every
  capability dropped and the runtime's default seccomp profile, alone mounts the push
  credential, copies the archive to the registry with skopeo and writes the pushed digest to
  its termination message.

Before both, the `context` init container checks the context against the signed digest.

A RUN step can still tamper with its own archive: the push container trusts the archive for
nothing but that build's own output, under that build's own name.

A plan with a parent (spec.plan.parent: an earlier image of the same namespace, by digest;
envkiln.core.decisions.parent) is built FROM that image with the plan's second Dockerfile, which
installs only what the earlier image lacks; when the build container cannot pull it (deleted,
or its registry wants a credential the build does not have) it says so and builds the plan's own
Dockerfile from the base.
"""

from __future__ import annotations

from typing import Any

from envkiln.adapters.builders.jobs import (
    ARCHIVE,
    BUILD_ENV_FILES,
    LOCK_ARCHIVE,
    LOCK_OUT,
    NO_ACCESS,
    OUT,
    PARENT_DOCKERFILE,
    BuildAccess,
    JobBuilder,
    build_job,
    job_pod_spec,
    makes_lock_image,
)
from envkiln.core.imageref import parse_image_reference
from envkiln.core.models import EnvironmentBuildSpec
from envkiln.core.names import LOCK_EXPORT_DIR, LOCK_EXPORT_FILE, LOCK_FILE
from envkiln.core.settings import OperatorSettings

__all__ = ["BuildahJobBuilder", "buildah_job", "buildah_pod_spec"]

# Values reach the script as environment variables, always quoted: nothing from a spec is ever
# part of the script text.
#
# The build env (envkiln.core.placement; ENVKILN_BUILD_ENV_NAMES names its variables) reaches RUN
# steps without entering the image: proxy variables through buildah's own --http-proxy (on by
# default: RUN containers get the *_PROXY variables of this container, and the image's config and
# history do not); PIP_* variables as the [global] section of a pip.conf (PIP_INDEX_URL ->
# index-url, as pip maps them) and CONDA_* / MAMBA_* variables as a .condarc (CONDA_CHANNEL_ALIAS
# -> channel_alias), both bind-mounted into RUN containers only (`--volume`), never committed: the
# image keeps at most an empty mount point file. A build arg would be recorded in the image's
# history, a containers.conf `env` is not given to RUN steps by buildah build. The registry CA bundle
# (ENVKILN_CA_DIR), when there is one, is bind-mounted read-only into RUN containers at the same path
# (e.g. for `PIP_CERT` in the build env), and never committed either.
#
# The image is committed straight into the OCI archive, its layers compressed there (`-t oci-archive:`,
# `--disable-compression=false`): not into the build's own storage first and then pushed out of it,
# which wrote and read every new layer once more (7 s of a 26 s build of a 335 MB layer here).
BUILD_SCRIPT = """set -eu
set --
if [ "$STORAGE_DRIVER" = overlay ] && ! buildah --storage-driver overlay info > /var/tmp/envkiln-overlay.log 2>&1; then
  echo "envkiln: the overlay storage driver cannot be used here; building with vfs:" >&2
  tail -n 3 /var/tmp/envkiln-overlay.log >&2
  STORAGE_DRIVER=vfs
fi
if [ -n "${ENVKILN_BUILD_ENV_NAMES:-}" ]; then
  mkdir -p /var/tmp/envkiln-build-env
  pip=/var/tmp/envkiln-build-env/pip.conf condarc=/var/tmp/envkiln-build-env/condarc
@BUILD_ENV_FILES@  if [ "$(wc -l < "$pip")" -gt 1 ]; then set -- "$@" --volume "$pip:/etc/pip.conf:ro"; fi
  if [ -s "$condarc" ]; then set -- "$@" --volume "$condarc:/etc/conda/.condarc:ro"; fi
fi
if [ -n "${ENVKILN_CA_DIR:-}" ]; then set -- "$@" --volume "$ENVKILN_CA_DIR:$ENVKILN_CA_DIR:ro"; fi
if [ -n "${ENVKILN_LOCK_DIR:-}" ]; then
  mkdir -p "$ENVKILN_LOCK_DIR"
  set -- "$@" --volume "$ENVKILN_LOCK_DIR:@LOCK_EXPORT_DIR@"
fi
if [ -n "${ENVKILN_INSECURE_REGISTRY:-}" ]; then
  mkdir -p /etc/containers/registries.conf.d
  printf '[[registry]]\\nlocation = "%s"\\ninsecure = true\\n' "$ENVKILN_INSECURE_REGISTRY" \\
    > /etc/containers/registries.conf.d/50-envkiln.conf
fi
dockerfile="$ENVKILN_DOCKERFILE"
if [ -n "${ENVKILN_PARENT:-}" ]; then
  echo "envkiln: pulling the earlier image $ENVKILN_PARENT"
  if buildah --storage-driver "$STORAGE_DRIVER" pull --quiet "$ENVKILN_PARENT" \\
      > /dev/null 2> /var/tmp/envkiln-parent.log; then
    echo "envkiln: starting from the earlier image $ENVKILN_PARENT"
    dockerfile="$ENVKILN_PARENT_DOCKERFILE"
  else
    echo "envkiln: the earlier image $ENVKILN_PARENT cannot be pulled; building from the base:" >&2
    tail -n 3 /var/tmp/envkiln-parent.log >&2
  fi
fi
buildah --storage-driver "$STORAGE_DRIVER" build --isolation chroot --layers=false --disable-compression=false "$@" \\
  --label "dev.envkiln.definition-hash=$ENVKILN_HASH" -f "$dockerfile" -t "oci-archive:$ENVKILN_ARCHIVE" \\
  "$ENVKILN_CONTEXT"
echo "built $ENVKILN_IMAGE"
if [ -n "${ENVKILN_LOCK_DIR:-}" ]; then
  if [ ! -s "$ENVKILN_LOCK_DIR/@LOCK_NAME@" ]; then
    echo "envkiln: the build wrote no lock to @LOCK_EXPORT_DIR@/@LOCK_NAME@; nothing is pushed" >&2
    exit 1
  fi
  printf 'FROM scratch\\nCOPY @LOCK_NAME@ @LOCK_FILE@\\n' > /var/tmp/envkiln-lock.Dockerfile
  buildah --storage-driver "$STORAGE_DRIVER" build --isolation chroot --layers=false --disable-compression=false \\
    --quiet -f /var/tmp/envkiln-lock.Dockerfile -t "oci-archive:$ENVKILN_LOCK_ARCHIVE" "$ENVKILN_LOCK_DIR" > /dev/null
  echo "lock image made ($(wc -l < "$ENVKILN_LOCK_DIR/@LOCK_NAME@") lines)"
fi
""".replace("@BUILD_ENV_FILES@", BUILD_ENV_FILES).replace("@LOCK_EXPORT_DIR@", LOCK_EXPORT_DIR).replace(
    "@LOCK_NAME@", LOCK_EXPORT_FILE.rsplit("/", 1)[1]).replace("@LOCK_FILE@", LOCK_FILE)


def buildah_container(spec: EnvironmentBuildSpec, settings: OperatorSettings, context_dir: str | None,
                      dockerfile: str, build_env: dict[str, str] | None = None
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    mounts: list[dict[str, Any]] = [{"name": "out", "mountPath": OUT},
                                    {"name": "storage", "mountPath": "/var/lib/containers"}]
    if context_dir is not None:
        context, dockerfile = context_dir, f"{context_dir}/{dockerfile}"
        mounts.append({"name": "workspace", "mountPath": context_dir, "readOnly": True})
    else:
        user = spec.plan.context
        assert user is not None
        if user.git is not None:
            # buildah clones git contexts itself: URL#ref[:subdirectory].
            context = f"{user.git.url}#{user.git.ref}" + (f":{user.git.path}" if user.git.path else "")
        else:
            assert user.tarball is not None  # a tarball without sha256: buildah fetches it
            context = user.tarball.url
    registry_host = parse_image_reference(spec.image).registry or ""
    container = {
        "name": "build",
        "image": settings.buildah_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT],
        "env": [{"name": "ENVKILN_IMAGE", "value": spec.image},
                {"name": "ENVKILN_ARCHIVE", "value": ARCHIVE},
                {"name": "ENVKILN_INSECURE_REGISTRY", "value": registry_host if settings.insecure_registry else ""},
                {"name": "ENVKILN_HASH", "value": spec.hash},
                {"name": "ENVKILN_DOCKERFILE", "value": dockerfile},
                {"name": "ENVKILN_CONTEXT", "value": context},
                {"name": "ENVKILN_BUILD_ENV_NAMES", "value": " ".join(sorted(build_env or {}))},
                *([{"name": "ENVKILN_PARENT", "value": spec.plan.parent.image},
                   {"name": "ENVKILN_PARENT_DOCKERFILE", "value": f"{context}/{PARENT_DOCKERFILE}"}]
                  if spec.plan.parent is not None and context_dir is not None else []),
                *([{"name": "ENVKILN_LOCK_DIR", "value": LOCK_OUT},
                   {"name": "ENVKILN_LOCK_ARCHIVE", "value": LOCK_ARCHIVE}] if makes_lock_image(spec) else []),
                {"name": "BUILDAH_ISOLATION", "value": "chroot"},
                {"name": "STORAGE_DRIVER", "value": settings.buildah_storage_driver}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {},  # the namespace's build placement (envkiln.adapters.builders.jobs.job_pod_spec)
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]},
            "seccompProfile": {"type": "Localhost", "localhostProfile": settings.buildah_seccomp_profile},
        },
        "volumeMounts": mounts,
    }
    return container, [{"name": "storage", "emptyDir": {}}]


def buildah_pod_spec(build: dict[str, Any], settings: OperatorSettings, with_credentials: str | None,
                     access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
    return job_pod_spec(build, settings, buildah_container, "oci-archive", with_credentials, access)


def buildah_job(build: dict[str, Any], attempt: int, settings: OperatorSettings,
                with_credentials: str | None, access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
    """The Job for one attempt. Pure: the same inputs give the same manifest."""
    return build_job(build, attempt, settings, buildah_pod_spec(build, settings, with_credentials, access))


class BuildahJobBuilder(JobBuilder):
    name = "buildah"

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: str | None,
                 access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
        return buildah_pod_spec(build, self.settings, with_credentials, access)
