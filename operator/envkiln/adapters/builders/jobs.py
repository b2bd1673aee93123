"""What every in-cluster builder shares: one batch/v1 Job per attempt, and how it is followed.

A Job builder only says what its build pod looks like (`pod_spec`); everything else is here,
so proving one Job builder on a real node proves the orchestration of the others:

- deterministic names (`envkiln-<hash>-<attempt>`) and create-or-get, so a restarted operator
  follows the Job it started and concurrent reconciles never start a second one;
- nothing is adopted by its name alone (envkiln.core.decisions.adoption): a Job or ConfigMap under a
  build's name is followed only when its controller is the EnvironmentBuild (by UID), pods only when
  their controller-uid label and controller ownerReference are the Job's UID; anything else under a
  reserved name fails the attempt (`NameTaken`, naming the object) and is never changed or deleted;
- the rendered context as a ConfigMap owned by the EnvironmentBuild (garbage-collected with it);
- the Job owned by the EnvironmentBuild, `backoffLimit: 0` (envkiln retries itself so each
  attempt's log tail is kept), deadline and TTL from settings;
- the outcome: the digest from the termination message of the container that pushed, the log
  tail from the container that failed (its termination message, FallbackToLogsOnError);
- the push identity of the build's namespace (never the operator's own credential, except for the
  curated namespace), copied for one Job into a Secret that envkiln creates (a Secret already under
  that name is never used), owned by that Job and deleted when the attempt ends; the immutable
  snapshot of a ConfigMap context.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from envkiln import API_VERSION
from envkiln.adapters.builders import AttemptResult, AttemptState, BuildCannotStart, tail
from envkiln.adapters.kube import ApiError, Kube, V1ContainerStatus, V1Job, V1Pod, api_message
from envkiln.core.decisions.adoption import controlled_by, foreign_object_message, is_job_pod
from envkiln.core.definition import context_digest
from envkiln.core.imageref import parse_image_reference
from envkiln.core.manifests import config_map_data
from envkiln.core.models import BuildContext, EnvironmentBuildSpec
from envkiln.core.names import (
    BUILD_COMPONENT,
    CONTEXT_TREE_KEY,
    JOB_CONTROLLER_UID_LABELS,
    KIND_BUILD,
    LABEL_ATTEMPT,
    LABEL_BUILD,
    LABEL_HASH,
    REASON_CANNOT_START,
    REASON_CONTEXT_CHANGED,
    REASON_NAME_TAKEN,
    REASON_NO_PULL_CREDENTIALS,
    REASON_NO_PUSH_IDENTITY,
    build_key,
    ca_configmap_name,
    context_configmap_name,
    context_snapshot_name,
    job_name,
    pull_secret_name,
    push_secret_name,
)
from envkiln.core.placement import BuildPlacement, mask_credentials
from envkiln.core.registryauth import DockerConfigError, merge_auths
from envkiln.core.render import LockLocation, lock_location
from envkiln.core.settings import OperatorSettings

__all__ = ["JobBuilder", "build_job", "context_configmap", "context_configmap_name", "job_name"]

MANAGED_BY = BUILD_COMPONENT
CONTEXT_MOUNT = "/workspace"  # the verified context the build reads (an emptyDir)
CONTEXT_SOURCE = "/context-source"  # the operator's immutable ConfigMap, mounted read-only
OUT = "/out"
ARCHIVE = f"{OUT}/image.tar"
# A one-stage render's lock (envkiln.core.render.lock_location): the build's RUN step writes it into
# LOCK_OUT (mounted at names.LOCK_EXPORT_DIR), the build container makes it a one-layer image
# (LOCK_ARCHIVE), the push container pushes that beside the image as names.lock_tag(digest).
LOCK_OUT = f"{OUT}/lock"
LOCK_ARCHIVE = f"{OUT}/lock.tar"
PUSH_USER = 65532
CREDENTIALS_MOUNT = "/creds"
PUSH_TOKEN_DIR = "/var/run/secrets/envkiln/push-token"
PUSH_TOKEN_SECONDS = 3600
# Containers a cloud's workload-identity webhook must leave alone (only `push` gets a token).
NOT_PUSH_CONTAINERS = ("context", "pull-auth", "build-env", "build")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
POD_REFUSAL_GRACE_SECONDS = 5.0  # the Job controller's first tries; a refusal after that is reported

# The `context` init container: the build gets exactly the bytes that were hashed. ConfigMap
# contexts are checked against the digest in the signed plan and copied into an emptyDir; a key
# `.envkiln-context.tar` (names.CONTEXT_TREE_KEY: a nested tree, the digest covers it like any key)
# is unpacked there instead of copied, refusing absolute and `..` members (GNU tar would skip them;
# here they stop the build), never as the archive's owners or modes. Tarballs with a sha256 are
# downloaded, checked and unpacked there. Values reach the script as environment variables, always
# quoted: nothing from a spec is ever part of the script text.
CONTEXT_SCRIPT = """set -eu
if [ -n "${ENVKILN_TARBALL_URL:-}" ]; then
  curl -fsSL --proto =https --retry 3 -o /download/context.tar "$ENVKILN_TARBALL_URL"
  actual=$(sha256sum /download/context.tar | cut -d' ' -f1)
  if [ "$actual" != "$ENVKILN_CONTEXT_DIGEST" ]; then
    echo "the tarball is not the one in the definition: expected sha256 $ENVKILN_CONTEXT_DIGEST, got $actual" >&2
    exit 1
  fi
  tar -xf /download/context.tar -C /workspace --no-same-owner --no-same-permissions
else
  cd /context-source
  actual=$(find -L . -maxdepth 1 -type f ! -name '..*' | LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$actual" != "$ENVKILN_CONTEXT_DIGEST" ]; then
    echo "the build context is not what was hashed: expected sha256 $ENVKILN_CONTEXT_DIGEST, got $actual" >&2
    exit 1
  fi
  find -L . -maxdepth 1 -type f ! -name '..*' ! -name '@TREE@' -exec cp -L {} /workspace/ \\;
  if [ -f '@TREE@' ]; then
    if tar -tf '@TREE@' | grep -Eq '^/|(^|/)[.][.](/|$)'; then
      echo "the build context's @TREE@ has a member with an absolute path or '..'; nothing was built" >&2
      exit 1
    fi
    tar -xf '@TREE@' -C /workspace --no-same-owner --no-same-permissions
  fi
fi
echo "context verified: sha256 $actual"
""".replace("@TREE@", CONTEXT_TREE_KEY)

# The `push` container, the only one that mounts the push credential. The lock image (when the
# build made one) is pushed before the digest is reported: a build reported done has its lock.
PUSH_SCRIPT = """set -eu
set -- --retry-times 3
if [ -n "${ENVKILN_INSECURE_REGISTRY:-}" ]; then set -- "$@" --dest-tls-verify=false; fi
if [ -f /creds/config.json ]; then set -- "$@" --dest-authfile /creds/config.json; fi
skopeo copy --quiet "$@" --digestfile /var/tmp/envkiln-digest "$ENVKILN_ARCHIVE" "docker://$ENVKILN_IMAGE"
if [ -n "${ENVKILN_LOCK_ARCHIVE:-}" ]; then
  skopeo copy --quiet "$@" "$ENVKILN_LOCK_ARCHIVE" \\
    "docker://$ENVKILN_REPOSITORY:$(sed 's/:/-/' /var/tmp/envkiln-digest).lock"
fi
cat /var/tmp/envkiln-digest > /dev/termination-log
skopeo copy --quiet "$@" "$ENVKILN_ARCHIVE" "docker://$ENVKILN_LATEST"
"""

# Build env variables the `context` and `push` containers get too (they fetch a tarball and push
# through the same proxy); every other one reaches only the build container.
PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                             "http_proxy", "https_proxy", "no_proxy", "all_proxy"})

# Shell lines that write the build env's package-manager configuration, for RUN steps to read
# from bind mounts that are never committed to the image: PIP_* as the [global] section of the
# pip.conf "$pip" (PIP_INDEX_URL -> index-url, pip's own mapping; pip reads it without
# interpolation) and CONDA_* / MAMBA_* as the .condarc "$condarc" (CONDA_CHANNEL_ALIAS ->
# channel_alias, quoted). Values come from the environment, named by ENVKILN_BUILD_ENV_NAMES
# (names are checked, values hold no control character: envkiln.core.placement).
BUILD_ENV_FILES = """  printf '[global]\\n' > "$pip"
  : > "$condarc"
  for name in $ENVKILN_BUILD_ENV_NAMES; do
    case "$name" in
      PIP_*) printf '%s = %s\\n' "$(printf '%s' "${name#PIP_}" | tr 'A-Z_' 'a-z-')" "$(printenv "$name")" >> "$pip" ;;
      CONDA_*|MAMBA_*) key=${name#CONDA_}; key=${key#MAMBA_}
        printf '%s: "%s"\\n' "$(printf '%s' "$key" | tr 'A-Z' 'a-z')" \\
          "$(printenv "$name" | sed -e 's/\\\\/\\\\\\\\/g' -e 's/"/\\\\"/g')" >> "$condarc" ;;
    esac
  done
"""
PIP_CONF, CONDARC = "/etc/pip.conf", "/etc/conda/.condarc"  # where RUN steps find them


def build_env_files(env: dict[str, str]) -> dict[str, str]:
    """{file name under the build-env directory: where RUN steps find it} for the build env `env`."""
    files = {}
    if any(name.startswith("PIP_") for name in env):
        files["pip.conf"] = PIP_CONF
    if any(name.startswith(("CONDA_", "MAMBA_")) for name in env):
        files["condarc"] = CONDARC
    return files


# Base-image pull credentials (ENVKILN_BUILD_PULL_CREDENTIALS, the pull service account's imagePullSecrets):
# the `pull-auth` init container alone mounts their Secrets and writes one merged auth file for the
# build container (the builder pulls the base, micromamba and any FROM with it). That file is
# readable by the build's RUN steps, as everything in the build container is: pull credentials only,
# read-only ones (docs/registries.md); no push credential is ever in it. A document that is not of
# the form {"auths": {...}} (or names credential helpers) is skipped and said so; for a registry
# named twice, the later source (the namespace's own Secrets come after the administrator's) wins,
# as in Go's JSON decoding.
PULL_SOURCES = "/pull-sources"
PULL_AUTH = "/pull-auth"
PULL_AUTH_SCRIPT = r"""set -eu
umask 022
out=/pull-auth/config.json sep=''
ws='[[:space:]]*'
shape="^$ws{$ws\"auths\"$ws:$ws{\\(.*\\)}$ws}$ws\$"
printf '{"auths":{' > "$out"
for f in $ENVKILN_PULL_SOURCES; do
  [ -s "$f" ] || continue
  doc=$(tr -d '\r\n' < "$f")
  if ! printf '%s' "$doc" | grep -q "$shape" || printf '%s' "$doc" | grep -Eq '"cred(sStore|Helpers)"'; then
    echo "pull credentials ${f%/config.json}: not a dockerconfigjson of the form {\"auths\": {...}}; skipped" >&2
    continue
  fi
  body=$(printf '%s' "$doc" | sed "s/$shape/\\1/")
  [ -n "$body" ] || continue
  printf '%s%s' "$sep" "$body" >> "$out"
  sep=,
  echo "pull credentials from ${f%/config.json}"
done
printf '}}\n' >> "$out"
"""
CA_DIR = "/etc/envkiln/ca"  # the registry CA bundle's ConfigMap, where Go programs (SSL_CERT_DIR) find it


@dataclass(frozen=True)
class BuildAccess:
    """What a build pod pulls and trusts with, besides the push credential (`with_credentials`)."""

    pull_secret: str | None = None  # the Job's copy of the administrator's pull credentials
    tenant_pull_secrets: tuple[str, ...] = ()  # the namespace's own: its pull service account's imagePullSecrets
    ca_configmap: str | None = None  # the registry CA bundle, copied into the build's namespace

    @property
    def pulls_with_credentials(self) -> bool:
        return self.pull_secret is not None or bool(self.tenant_pull_secrets)


NO_ACCESS = BuildAccess()


def pull_auth_init(settings: OperatorSettings, access: BuildAccess) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the `pull-auth` init container, its volumes besides `pull-auth`): merges the pull credentials."""
    mounts: list[dict[str, Any]] = [{"name": "pull-auth", "mountPath": PULL_AUTH}]
    volumes: list[dict[str, Any]] = []
    sources = []
    named = ([("pull-admin", access.pull_secret, False)] if access.pull_secret else []) + [
        (f"pull-tenant-{index}", name, True) for index, name in enumerate(access.tenant_pull_secrets)]
    for volume, secret, optional in named:
        volumes.append({"name": volume, "secret": {
            "secretName": secret, "optional": optional,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": volume, "mountPath": f"{PULL_SOURCES}/{volume}", "readOnly": True})
        sources.append(f"{PULL_SOURCES}/{volume}/config.json")
    container = {
        "name": "pull-auth",
        "image": settings.buildah_push_image,
        "command": ["/bin/sh", "-c", PULL_AUTH_SCRIPT],
        "env": [{"name": "ENVKILN_PULL_SOURCES", "value": " ".join(sources)}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": NON_ROOT,
        "volumeMounts": mounts,
    }
    return container, volumes


NON_ROOT = {
    "runAsUser": PUSH_USER, "runAsGroup": PUSH_USER, "runAsNonRoot": True,
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def owner_reference(obj: dict[str, Any], kind: str = KIND_BUILD, api_version: str = API_VERSION) -> dict[str, Any]:
    return {
        "apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
    }


def owner_references(obj: Any) -> list[dict[str, Any]]:
    """An API object's ownerReferences (a client model, or anything with the same attributes) as the
    API server's JSON (envkiln.core.decisions.adoption reads them)."""
    refs = getattr(getattr(obj, "metadata", None), "owner_references", None) or []
    return [{"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid, "controller": r.controller,
             "blockOwnerDeletion": r.block_owner_deletion} for r in refs]


def made_for(obj: Any, build: dict[str, Any]) -> bool:
    """Whether the Job or ConfigMap `obj` is this EnvironmentBuild's (its controller, by UID)."""
    return controlled_by(owner_references(obj), KIND_BUILD, build["metadata"].get("uid"))


def not_made_for(kind: str, obj: Any, build: dict[str, Any]) -> BuildCannotStart:
    meta = build["metadata"]
    return BuildCannotStart(REASON_NAME_TAKEN, foreign_object_message(
        kind, meta["namespace"], obj.metadata.name, owner_references(obj), KIND_BUILD, meta["name"]))


# The Dockerfile FROM an earlier image (spec.plan.parent), beside the plan's own in the context.
PARENT_DOCKERFILE = "Dockerfile.on-earlier-image"


def rendered_files(spec: EnvironmentBuildSpec) -> dict[str, str]:
    parent = spec.plan.parent
    return {"Dockerfile": spec.plan.dockerfile, **{f.path: f.content for f in spec.plan.files},
            **({PARENT_DOCKERFILE: parent.dockerfile} if parent is not None else {})}


def context_configmap(build: dict[str, Any]) -> dict[str, Any] | None:
    """The rendered Dockerfile and files (immutable); None when the user brings the context."""
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    if spec.plan.context is not None:
        return None
    name = context_configmap_name(build_key(build["spec"]))
    return _immutable_configmap(build, name, spec.hash, {"data": rendered_files(spec)})


def _immutable_configmap(build: dict[str, Any], name: str, hash_value: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
        "metadata": {
            "name": name, "namespace": build["metadata"]["namespace"],
            "labels": {**MANAGED_BY, LABEL_BUILD: build["metadata"]["name"], LABEL_HASH: hash_value},
            "ownerReferences": [owner_reference(build)],
        },
        **content,
    }


def expected_context_digest(spec: EnvironmentBuildSpec) -> str | None:
    """What the `context` init container must find (None: the builder fetches a git context itself)."""
    user: BuildContext | None = spec.plan.context
    if user is None:
        return context_digest(rendered_files(spec))
    if user.config_map is not None:
        return spec.plan.context_digest
    if user.tarball is not None:
        return user.tarball.sha256
    return None


def context_init(spec: EnvironmentBuildSpec, settings: OperatorSettings
                 ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str]:
    """(the `context` init container or None, its volumes, the Dockerfile path) for a build.

    With a container, the builder reads the verified context from CONTEXT_MOUNT (the
    `workspace` volume); without one (git, or a tarball without sha256) it fetches the context
    itself.
    """
    user: BuildContext | None = spec.plan.context
    digest = expected_context_digest(spec)
    dockerfile = "Dockerfile" if user is None else user.dockerfile_path
    if digest is None:
        return None, [], dockerfile
    env = [{"name": "ENVKILN_CONTEXT_DIGEST", "value": digest}]
    mounts: list[dict[str, Any]] = [{"name": "workspace", "mountPath": CONTEXT_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "workspace", "emptyDir": {}}]
    if user is not None and user.tarball is not None:
        env.append({"name": "ENVKILN_TARBALL_URL", "value": user.tarball.url})
        volumes.append({"name": "download", "emptyDir": {}})
        mounts.append({"name": "download", "mountPath": "/download"})
    else:
        key = build_key(spec.to_kube())
        source = context_configmap_name(key) if user is None else context_snapshot_name(key)
        volumes.append({"name": "context-source", "configMap": {"name": source}})
        mounts.append({"name": "context-source", "mountPath": CONTEXT_SOURCE, "readOnly": True})
    container = {
        "name": "context",
        "image": settings.buildah_push_image,
        "command": ["/bin/sh", "-c", CONTEXT_SCRIPT],
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": NON_ROOT,
        "volumeMounts": mounts,
    }
    return container, volumes, dockerfile


def push_container(spec: EnvironmentBuildSpec, settings: OperatorSettings, archive: str, with_credentials: str | None,
                   lock_archive: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the `push` container, its volumes besides `out`): skopeo copies `archive` (e.g.
    oci-archive:/out/image.tar) to the image, then `lock_archive` (when the build makes a lock
    image) to names.lock_tag of the pushed digest, and writes that digest to its termination
    message. It alone mounts the push credential (`with_credentials`: the Secret's name)."""
    registry_host = parse_image_reference(spec.image).registry or ""
    volumes: list[dict[str, Any]] = [{"name": "push-tmp", "emptyDir": {}}]
    # skopeo unpacks the archive under /var/tmp (whatever TMPDIR says): the only writable path.
    mounts = [{"name": "out", "mountPath": OUT, "readOnly": True}, {"name": "push-tmp", "mountPath": "/var/tmp"}]
    if with_credentials:
        volumes.append({"name": "docker-config", "secret": {
            "secretName": with_credentials, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": "docker-config", "mountPath": CREDENTIALS_MOUNT, "readOnly": True})
    identity: list[dict[str, Any]] = []
    if settings.build_push_token_audience:
        # A short-lived token of the pod's service account for a credential helper to exchange for a
        # registry token (workload identity); mounted into this container only.
        volumes.append({"name": "push-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": settings.build_push_token_audience, "expirationSeconds": PUSH_TOKEN_SECONDS,
            "path": "token"}}]}})
        mounts.append({"name": "push-token", "mountPath": PUSH_TOKEN_DIR, "readOnly": True})
        identity.append({"name": "WORKLOAD_IDENTITY_TOKEN_FILE", "value": f"{PUSH_TOKEN_DIR}/token"})
    container = {
        "name": "push",
        "image": settings.buildah_push_image,
        "command": ["/bin/sh", "-c", PUSH_SCRIPT],
        "env": [{"name": "ENVKILN_IMAGE", "value": spec.image},
                {"name": "ENVKILN_LATEST", "value": f"{repository_of(spec.image)}:latest"},
                {"name": "ENVKILN_ARCHIVE", "value": archive},
                {"name": "ENVKILN_INSECURE_REGISTRY", "value": registry_host if settings.insecure_registry else ""},
                *([{"name": "ENVKILN_REPOSITORY", "value": repository_of(spec.image)},
                   {"name": "ENVKILN_LOCK_ARCHIVE", "value": lock_archive}] if lock_archive else []),
                {"name": "HOME", "value": "/var/tmp"},
                *identity, *env_entries(settings.build_push_env)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": NON_ROOT,
        "volumeMounts": mounts,
    }
    return container, volumes


def makes_lock_image(spec: EnvironmentBuildSpec) -> bool:
    """Whether the build pushes a lock image beside the image (the one-stage render's lock)."""
    return spec.plan.context is None and lock_location(spec.plan.dockerfile) is LockLocation.LOCK_IMAGE


def env_entries(env: dict[str, str], only_proxies: bool = False) -> list[dict[str, Any]]:
    """Container env entries of a build env (sorted: the same settings give the same manifest)."""
    return [{"name": name, "value": value} for name, value in sorted(env.items())
            if not only_proxies or name in PROXY_VARIABLES]


def placed_pod_fields(placement: BuildPlacement) -> dict[str, Any]:
    """The pod-level fields of a build pod's placement (only those that are set)."""
    fields: dict[str, Any] = {}
    if placement.node_selector:
        fields["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        fields["tolerations"] = [dict(t) for t in placement.tolerations]
    if placement.affinity:
        fields["affinity"] = dict(placement.affinity)
    if placement.priority_class_name:
        fields["priorityClassName"] = placement.priority_class_name
    if placement.runtime_class_name:
        fields["runtimeClassName"] = placement.runtime_class_name
    if placement.pull_secrets:
        fields["imagePullSecrets"] = [{"name": name} for name in placement.pull_secrets]
    return fields


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
    placement = settings.build_placement(build["metadata"]["namespace"])
    identity: dict[str, Any] = {}
    template_meta: dict[str, Any] = {"labels": labels}
    if settings.build_push_service_account:
        identity["serviceAccountName"] = settings.build_push_service_account
        # The clouds' webhooks inject their token into every container unless told otherwise.
        template_meta["annotations"] = {"eks.amazonaws.com/skip-containers": ",".join(NOT_PUSH_CONTAINERS),
                                        "azure.workload.identity/skip-containers": ";".join(NOT_PUSH_CONTAINERS)}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": job_name(build_key(build["spec"]), attempt), "namespace": build["metadata"]["namespace"],
            "labels": labels, "ownerReferences": [owner_reference(build)],
        },
        "spec": {
            "backoffLimit": 0,  # envkiln retries itself, so each attempt's log tail is kept
            "activeDeadlineSeconds": settings.build_deadline_seconds,
            "ttlSecondsAfterFinished": settings.build_ttl_seconds,
            "template": {
                "metadata": template_meta,
                "spec": {
                    "restartPolicy": "Never",
                    **identity,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **placed_pod_fields(placement),
                    **pod_spec,
                },
            },
        },
    }


def job_finished(job: V1Job) -> tuple[bool, str, str] | None:
    """None while running; else (succeeded, reason, message)."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return True, "Complete", ""
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return False, condition.reason or "BackoffLimitExceeded", condition.message or ""
    return None


def _statuses(pod: V1Pod) -> list[V1ContainerStatus]:
    if pod.status is None:
        return []
    return [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]


def termination(pods: list[V1Pod], container: str) -> tuple[str | None, str | None]:
    """(message, reason) of `container`'s last termination in the newest pod that has one."""
    for pod in reversed(pods):
        for status in _statuses(pod):
            if status.name == container and status.state is not None and status.state.terminated is not None:
                return status.state.terminated.message, status.state.terminated.reason
    return None, None


def first_failure(pods: list[V1Pod]) -> tuple[str | None, str | None, str | None]:
    """(container, message, reason) of the first container (init containers first) that failed."""
    for pod in reversed(pods):
        for status in _statuses(pod):
            terminated = status.state.terminated if status.state is not None else None
            if terminated is not None and terminated.exit_code != 0:
                return status.name, terminated.message, terminated.reason
    return None, None, None


def job_is_running(job: V1Job) -> bool:
    status = job.status
    if status is None:
        return True
    if status.succeeded or status.failed:
        return False
    return not any(c.status == "True" and c.type in ("Complete", "Failed") for c in status.conditions or [])


# (spec, settings, context directory or None, Dockerfile path, build env) -> (container, volumes)
BuildContainer = Callable[[EnvironmentBuildSpec, OperatorSettings, "str | None", str, dict[str, str]],
                          tuple[dict[str, Any], list[dict[str, Any]]]]


def job_pod_spec(build: dict[str, Any], settings: OperatorSettings, build_container: BuildContainer,
                 archive_format: str, with_credentials: str | None, access: BuildAccess = NO_ACCESS
                 ) -> dict[str, Any]:
    """The build pod: `context` (verifies the context, when there is one to verify), the builder's
    container (builds into ARCHIVE; called with the context directory, None when it fetches a git
    context itself, and the Dockerfile path), then `push`. Pure.

    The namespace's placement (settings.build_placement) gives the build container its resources
    and the build env (which the builder passes on to RUN steps, never into the image); the
    `context` and `push` containers get only its proxy variables.

    With pull credentials (`access`), `pull-auth` runs before the builder and hands it the merged
    auth file (REGISTRY_AUTH_FILE for buildah, DOCKER_CONFIG for Kaniko); with a registry CA bundle,
    the build and push containers trust it (SSL_CERT_DIR, besides the system's)."""
    spec = EnvironmentBuildSpec.model_validate(build["spec"])
    placement = settings.build_placement(build["metadata"]["namespace"])
    context, context_volumes, dockerfile = context_init(spec, settings)
    builder, builder_volumes = build_container(spec, settings, CONTEXT_MOUNT if context else None, dockerfile,
                                               placement.env)
    builder = {**builder, "resources": {key: dict(value) for key, value in placement.resources.items()}}
    if placement.env:
        builder["env"] = [*builder.get("env", []), *env_entries(placement.env)]
    lock_archive = f"{archive_format}:{LOCK_ARCHIVE}" if makes_lock_image(spec) else None
    push, push_volumes = push_container(spec, settings, f"{archive_format}:{ARCHIVE}", with_credentials, lock_archive)
    push["env"] = [*push["env"], *env_entries(placement.env, only_proxies=True)]
    if context is not None:
        context["env"] = [*context["env"], *env_entries(placement.env, only_proxies=True)]
    pull_init: list[dict[str, Any]] = []
    access_volumes: list[dict[str, Any]] = []
    if access.pulls_with_credentials:
        puller, pull_volumes = pull_auth_init(settings, access)
        puller["env"] = [*puller["env"], *env_entries(placement.env, only_proxies=True)]
        pull_init.append(puller)
        access_volumes += [{"name": "pull-auth", "emptyDir": {}}, *pull_volumes]
        builder["env"] = [*builder.get("env", []), {"name": "REGISTRY_AUTH_FILE", "value": f"{PULL_AUTH}/config.json"},
                          {"name": "DOCKER_CONFIG", "value": PULL_AUTH}]
        builder["volumeMounts"] = [*builder.get("volumeMounts", []),
                                   {"name": "pull-auth", "mountPath": PULL_AUTH, "readOnly": True}]
    if access.ca_configmap:
        access_volumes.append({"name": "registry-ca", "configMap": {"name": access.ca_configmap}})
        ca_mount = {"name": "registry-ca", "mountPath": CA_DIR, "readOnly": True}
        trust = [{"name": "SSL_CERT_DIR", "value": CA_DIR}]
        builder["env"] = [*builder.get("env", []), *trust, {"name": "ENVKILN_CA_DIR", "value": CA_DIR}]
        builder["volumeMounts"] = [*builder.get("volumeMounts", []), ca_mount]
        push["env"] = [*push["env"], *trust]
        push["volumeMounts"] = [*push["volumeMounts"], ca_mount]
    return {
        "initContainers": [*([context] if context else []), *pull_init, builder],
        "containers": [push],
        "volumes": [*context_volumes, *builder_volumes, {"name": "out", "emptyDir": {}}, *push_volumes,
                    *access_volumes],
    }


class JobBuilder:
    """An in-cluster builder: subclasses set `name` and `pod_spec` (usually `job_pod_spec` with their
    build container); starting, following, credentials and context snapshots are the same for all."""

    name = "job"
    digest_container = "push"  # the container whose termination message is the pushed digest
    uses_cluster_slots = True  # builds count against ENVKILN_MAX_CONCURRENT_BUILDS (envkiln.reconcile.buildsync)

    def __init__(self, kube: Kube, settings: OperatorSettings, credentials_secret_data: dict[str, str] | None = None,
                 ca_bundle: str | None = None):
        self.kube = kube
        self.settings = settings
        self.credentials_secret_data = credentials_secret_data
        self.ca_bundle = ca_bundle  # the PEM text of ENVKILN_REGISTRY_CA_FILE, read at start

    def pod_spec(self, build: dict[str, Any], attempt: int, with_credentials: str | None,
                 access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
        raise NotImplementedError

    def job(self, build: dict[str, Any], attempt: int, with_credentials: str | None,
            access: BuildAccess = NO_ACCESS) -> dict[str, Any]:
        return build_job(build, attempt, self.settings, self.pod_spec(build, attempt, with_credentials, access))

    def pull_credentials(self, namespace: str) -> dict[str, str] | None:
        """The dockerconfigjson data of the administrator's pull credentials for builds in `namespace`
        (ENVKILN_BUILD_PULL_CREDENTIALS and the namespace's override, merged: the first Secret naming a
        registry wins), or None when there are none."""
        names = self.settings.build_placement(namespace).pull_credentials
        if not names:
            return None
        documents = []
        for name in names:
            secret = self.kube.read_secret(self.settings.operator_namespace, name)
            raw = (secret.data or {}).get(".dockerconfigjson") if secret is not None else None
            if raw is None:
                problem = "is missing" if secret is None else "has no .dockerconfigjson"
                raise BuildCannotStart(REASON_NO_PULL_CREDENTIALS, (
                    f"ENVKILN_BUILD_PULL_CREDENTIALS (chart builds.pullCredentials): Secret "
                    f"{self.settings.operator_namespace}/{name} {problem}"
                    "; create it with `kubectl create secret docker-registry`, or remove it from the setting, then "
                    "delete this EnvironmentBuild to try again"))
            documents.append((f"Secret {self.settings.operator_namespace}/{name}", base64.b64decode(raw)))
        try:
            merged = merge_auths(documents)
        except DockerConfigError as error:
            raise BuildCannotStart(REASON_NO_PULL_CREDENTIALS, f"ENVKILN_BUILD_PULL_CREDENTIALS: {error}") from None
        return {".dockerconfigjson": base64.b64encode(merged.encode()).decode()}

    def tenant_pull_secrets(self, namespace: str) -> tuple[str, ...]:
        """The imagePullSecrets of the namespace's pull service account (ENVKILN_BUILD_PULL_SERVICE_ACCOUNT):
        the tenant's own registry credentials, which the build pod mounts (the operator never reads them)."""
        name = self.settings.build_pull_service_account
        if not name:
            return ()
        account = self.kube.read_service_account(namespace, name)
        refs = (account.image_pull_secrets or []) if account is not None else []
        return tuple(dict.fromkeys(ref.name for ref in refs if getattr(ref, "name", None)))

    def _ca_configmap(self, build: dict[str, Any]) -> str | None:
        """Copy the registry CA bundle into the build's namespace (owned by the EnvironmentBuild)."""
        if not self.ca_bundle:
            return None
        name = ca_configmap_name(build_key(build["spec"]))
        body = _immutable_configmap(build, name, build["spec"]["hash"], {"data": {"ca.crt": self.ca_bundle}})
        existing = self.kube.create_or_get_configmap(build["metadata"]["namespace"], body)
        if not made_for(existing, build):
            raise not_made_for("ConfigMap", existing, build)
        if dict(existing.data or {}) != body["data"]:
            raise BuildCannotStart(REASON_CONTEXT_CHANGED, (
                f"ConfigMap {name} does not hold the registry CA bundle of ENVKILN_REGISTRY_CA_FILE (it changed "
                "since the build started); delete the EnvironmentBuild to build again with the new one"))
        return name

    def push_identity(self, namespace: str) -> dict[str, str] | None:
        """The dockerconfigjson data the push container of a build in `namespace` gets (None: push
        without credentials). Each namespace has its own identity (ENVKILN_PUSH_SECRET_TEMPLATE);
        the operator's own credential (ENVKILN_REGISTRY_SECRET) pushes only curated images and is
        never copied into any other namespace, whose editors can read Secrets."""
        settings = self.settings
        if namespace == settings.curated_namespace:
            return self.credentials_secret_data
        name = settings.push_secret_template.format(namespace=namespace)
        secret = self.kube.read_secret(settings.operator_namespace, name)
        data = (secret.data or {}) if secret is not None else {}
        if ".dockerconfigjson" in data:
            return {".dockerconfigjson": data[".dockerconfigjson"]}
        if self.credentials_secret_data is None:
            return None  # a registry without authentication: nothing to copy
        repository = repository_of(settings.push_image("0" * 32, namespace)).rsplit("/", 1)[0]
        raise BuildCannotStart(REASON_NO_PUSH_IDENTITY, (
            f"namespace {namespace} has no push identity: create the dockerconfigjson Secret "
            f"{settings.operator_namespace}/{name} with a registry credential that can push only under "
            f"{repository}/ (the operator's own credential is never copied into a namespace), then delete this "
            "EnvironmentBuild to try again"))

    def _snapshot_context(self, build: dict[str, Any], spec: EnvironmentBuildSpec) -> None:
        """Copy the user's ConfigMap into an immutable one the operator owns, if it still holds the
        bytes that were hashed (the plan's context digest)."""
        user = spec.plan.context
        if user is None or user.config_map is None:
            return
        namespace, name = build["metadata"]["namespace"], context_snapshot_name(build_key(build["spec"]))
        existing = self.kube.read_configmap(namespace, name)
        if existing is not None:
            found = context_digest(config_map_data({"data": existing.data, "binaryData": existing.binary_data}))
            if not made_for(existing, build) or found != spec.plan.context_digest or not existing.immutable:
                raise BuildCannotStart(REASON_CONTEXT_CHANGED, (
                    f"ConfigMap {name} does not hold the context that was hashed (envkiln did not make it); "
                    f"delete it and envkiln makes it again from spec.build.configMap {user.config_map.name}"))
            return
        source = self.kube.read_configmap(namespace, user.config_map.name)
        content = {"data": dict(source.data or {}), "binaryData": dict(source.binary_data or {})} if source else {}
        if source is None or spec.plan.context_digest is None or (
                context_digest(config_map_data(content)) != spec.plan.context_digest):
            raise BuildCannotStart(REASON_CONTEXT_CHANGED, (
                f"spec.build.configMap: ConfigMap {user.config_map.name} "
                f"{'is gone' if source is None else 'changed'} after its content was hashed; envkiln builds only "
                "the bytes it hashed. The Environment picks up the new content by itself"))
        made = self.kube.create_or_get_configmap(namespace, _immutable_configmap(
            build, name, spec.hash, {k: v for k, v in content.items() if v}))
        if not made_for(made, build):  # someone else's, created between the read and the create
            raise not_made_for("ConfigMap", made, build)

    def _rendered_context(self, build: dict[str, Any]) -> None:
        """Create the rendered context ConfigMap, or follow the one this build made earlier; a ConfigMap of
        that name that is not this build's, or does not hold the plan, is refused."""
        configmap = context_configmap(build)
        if configmap is None:
            return
        existing = self.kube.create_or_get_configmap(build["metadata"]["namespace"], configmap)
        if not made_for(existing, build):
            raise not_made_for("ConfigMap", existing, build)
        if dict(existing.data or {}) != configmap["data"] or not existing.immutable:
            raise BuildCannotStart(REASON_CONTEXT_CHANGED, (
                f"ConfigMap {existing.metadata.name} does not hold this build's rendered context; delete it and "
                "envkiln makes it again"))

    def start(self, build: dict[str, Any], attempt: int) -> str:
        namespace = build["metadata"]["namespace"]
        spec = EnvironmentBuildSpec.model_validate(build["spec"])
        identity = self.push_identity(namespace)
        pull = self.pull_credentials(namespace)
        self._rendered_context(build)
        self._snapshot_context(build, spec)
        name = job_name(build_key(build["spec"]), attempt)
        secret = push_secret_name(name) if identity else None
        access = BuildAccess(pull_secret=pull_secret_name(name) if pull else None,
                             tenant_pull_secrets=self.tenant_pull_secrets(namespace),
                             ca_configmap=self._ca_configmap(build))
        try:
            job, created = self.kube.create_or_get_job(namespace, self.job(build, attempt, secret, access))
        except ApiError as error:
            if error.status in (400, 403, 422):  # quota, admission, policy: say so instead of holding a slot
                raise BuildCannotStart(REASON_CANNOT_START,
                                       f"the build Job {name} was refused: {api_message(error)}") from None
            raise
        if not created and not made_for(job, build):  # never followed, changed or deleted
            raise not_made_for("Job", job, build)
        job_dict = {"metadata": {"name": job.metadata.name, "uid": job.metadata.uid}}
        for data, secret_name in ((identity, secret), (pull, access.pull_secret)):
            if data and secret_name:
                self._job_secret(build, job_dict, secret_name, data)
        return str(job.metadata.name)

    def _job_secret(self, build: dict[str, Any], job: dict[str, Any], secret: str, data: dict[str, str]) -> None:
        """Create the credential Secret of one Job: created here or not at all. A Secret already under this
        name (envkiln cannot read Secrets in a build's namespace) is nobody's credential this Job may use.
        Owned by the Job (gone with it) and deleted as soon as the attempt ends."""
        namespace, name = build["metadata"]["namespace"], job["metadata"]["name"]
        if not self.kube.create_secret(namespace, {
                "metadata": {"name": secret, "namespace": namespace, "labels": {**MANAGED_BY, LABEL_BUILD: build[
                    "metadata"]["name"]}, "ownerReferences": [owner_reference(job, "Job", "batch/v1")]},
                "type": "kubernetes.io/dockerconfigjson", "data": data}):
            self.kube.delete_job(namespace, name)  # this build's own Job: no pod of it runs with that Secret
            raise BuildCannotStart(REASON_NAME_TAKEN, (
                f"Secret {namespace}/{secret} already exists and envkiln did not make it for Job {name}; envkiln "
                f"never uses, adopts or overwrites it. Delete it (kubectl -n {namespace} delete secret {secret}); "
                f"a retry of the build makes its own, and once the build has failed, delete {KIND_BUILD} "
                f"{build['metadata']['name']} to try again"))

    def _delete_job_secrets(self, namespace: str, name: str) -> None:
        self.kube.delete_secret(namespace, push_secret_name(name))
        if self.settings.build_placement(namespace).pull_credentials:
            self.kube.delete_secret(namespace, pull_secret_name(name))

    def job_pods(self, namespace: str, job: Any) -> list[V1Pod]:
        """The pods the Job `job` made, oldest first: selected by its UID (controller-uid label, the
        current name, else the legacy one) and controlled by it. Never by `job-name`, which anyone can set."""
        uid = job.metadata.uid
        for label in JOB_CONTROLLER_UID_LABELS:
            pods = [pod for pod in self.kube.list_pods(namespace, f"{label}={uid}")
                    if is_job_pod(pod.metadata.labels, owner_references(pod), uid)]
            if pods:
                return sorted(pods, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC))
        return []

    def _pods_refused(self, namespace: str, job: Any) -> str | None:
        """The Job controller's refusal to create the build pod, once it has had time to try."""
        status = job.status
        if status is not None and (status.active or status.ready or status.succeeded or status.failed):
            return None
        created = job.metadata.creation_timestamp
        if created is None or (datetime.now(UTC) - created).total_seconds() < POD_REFUSAL_GRACE_SECONDS:
            return None
        if self.job_pods(namespace, job):
            return None
        refusals = self.kube.job_pod_refusals(namespace, job.metadata.name)
        return refusals[-1] if refusals else None

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        namespace = build["metadata"]["namespace"]
        name = job_name(build_key(build["spec"]), attempt)
        job = self.kube.read_job(namespace, name)
        if job is None:
            return AttemptResult(AttemptState.MISSING, name=name)
        if not made_for(job, build):  # someone's Job under this attempt's name: not followed, not touched
            problem = not_made_for("Job", job, build)
            return AttemptResult(AttemptState.FAILED, name=name, reason=problem.reason, log_tail=problem.message)
        finished = job_finished(job)
        if finished is None:
            refused = self._pods_refused(namespace, job)
            if refused is None:
                return AttemptResult(AttemptState.RUNNING, name=name)
            # No pod can be made (quota, admission): give the slot back and say why, now.
            self.kube.delete_job(namespace, name)
            self._delete_job_secrets(namespace, name)
            return AttemptResult(AttemptState.FAILED, name=name, reason=REASON_CANNOT_START,
                                 log_tail=f"the build pod cannot be created: {refused}")
        self._delete_job_secrets(namespace, name)  # the credentials live no longer than needed
        succeeded, job_reason, job_message = finished
        pods = self.job_pods(namespace, job)
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
        # A build env value with a password (an index URL with user:password@) never reaches the status.
        log_tail = mask_credentials(log_tail, list(self.settings.build_placement(namespace).env.values()))
        return AttemptResult(AttemptState.FAILED, name=name, reason=reason or job_reason, log_tail=log_tail)
