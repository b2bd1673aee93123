"""Every name envkiln writes onto the cluster: API group, labels, annotations, finalizers, object
names, condition types and reasons. Change a name here, and only here.

Pure constants and name functions: no imports beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# --- API -------------------------------------------------------------------------------------

GROUP: Final = "envkiln.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
ENVIRONMENTS: Final = "environments"  # plural of the Environment kind
BUILDS: Final = "environmentbuilds"  # plural of the EnvironmentBuild kind
KIND_ENVIRONMENT: Final = "Environment"
KIND_BUILD: Final = "EnvironmentBuild"
COMPONENT: Final = "envkiln"  # Event source / reporting component

# --- Kopf's own bookkeeping (annotations, finalizer) -----------------------------------------

KOPF_PREFIX: Final = GROUP
FINALIZER: Final = f"{GROUP}/finalizer"

# --- labels ----------------------------------------------------------------------------------

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
MANAGED_BY_VALUE: Final = "envkiln"
MANAGED_BY: Final = {LABEL_MANAGED_BY: MANAGED_BY_VALUE}
# On build Jobs, their pods, context ConfigMaps and the registry-credentials Secret.
BUILD_COMPONENT: Final = {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_COMPONENT: "build"}
LABEL_BUILD: Final = f"{GROUP}/build"  # on Jobs and ConfigMaps: the EnvironmentBuild's name
LABEL_HASH: Final = f"{GROUP}/hash"  # the definition hash
LABEL_ATTEMPT: Final = f"{GROUP}/attempt"  # on Jobs: which attempt
LABEL_ANONYMOUS: Final = f"{GROUP}/anonymous"  # on Environments created from a pod's inline spec
# Pods opt in with this label (it scopes the webhook's object selector); value: Environment name or "inline".
LABEL_ENVIRONMENT: Final = f"{GROUP}/environment"
INLINE: Final = "inline"
JOB_NAME_LABEL: Final = "job-name"  # set by the Job controller on a Job's pods
# Set by the Job controller on a Job's pods: the Job's UID (the first since Kubernetes 1.27, the second the
# legacy name). With the controller ownerReference they say which pods a Job made; `job-name` alone proves nothing.
JOB_CONTROLLER_UID_LABELS: Final = ("batch.kubernetes.io/controller-uid", "controller-uid")

# --- annotations and pod fields --------------------------------------------------------------

ANNOTATION_ENVIRONMENT: Final = f"{GROUP}/environment"  # name or name:version
ANNOTATION_VERSION: Final = f"{GROUP}/environment-version"
# A pod names a curated environment (in the curated namespace, usable from every namespace) with
# `curated/NAME[:VERSION|@latest]` in the annotation, or `curated_NAME` in the label (label values cannot hold '/').
CURATED_REFERENCE_PREFIX: Final = "curated/"
CURATED_LABEL_PREFIX: Final = "curated_"
LATEST: Final = "latest"  # NAME@latest: the newest built version in status.versions
ANNOTATION_CONTAINER: Final = f"{GROUP}/container"
ANNOTATION_SPEC: Final = f"{GROUP}/environment-spec"  # an inline (anonymous) environment spec
ANNOTATION_SIGNATURE: Final = f"{GROUP}/signature"  # on EnvironmentBuilds: the operator's (envkiln.core.trust)
SCHEDULING_GATE: Final = f"{GROUP}/environment"
POD_CONDITION: Final = f"{GROUP}/EnvironmentReady"

# --- image labels written by the renderer ----------------------------------------------------

IMAGE_LABEL_HASH: Final = "dev.envkiln.definition-hash"
IMAGE_LABEL_BASE: Final = "org.opencontainers.image.base.name"
IMAGE_LABEL_BASE_DIGEST: Final = "org.opencontainers.image.base.digest"
# The earlier image a build started from (envkiln.core.decisions.parent).
IMAGE_LABEL_PARENT: Final = "dev.envkiln.parent"
# The resolved package set, in the image (written by the render's install step). The operator reads
# it from the image's last layer (the multi-stage render, for Kaniko) or, for the one-stage render
# (buildah, local), from a one-layer image beside it, tagged lock_tag(image digest).
LOCK_FILE: Final = "/opt/envkiln/envkiln-lock.txt"
# Where the one-stage render's lock step writes the lock: a directory the builder mounts into RUN
# steps (`--volume`), so the builder has the lock after the build without a stage of its own.
LOCK_EXPORT_DIR: Final = "/envkiln-lock"
LOCK_EXPORT_FILE: Final = f"{LOCK_EXPORT_DIR}/envkiln-lock.txt"


def lock_tag(digest: str) -> str:
    """The tag of the lock image of the image `digest` ("sha256:<hex>" -> "sha256-<hex>.lock", as
    cosign names what it attaches to an image)."""
    return digest.replace(":", "-", 1) + ".lock"

# On Environments made by `envkiln import azureml`: where each came from (envkiln.core.azureml).
ANNOTATION_AZUREML_NAME: Final = f"{GROUP}/azureml-name"  # the Azure ML name as written (before coercion)
ANNOTATION_AZUREML_SOURCE: Final = f"{GROUP}/azureml-source"  # file and field the definition was read from
ANNOTATION_AZUREML_IGNORED: Final = f"{GROUP}/azureml-ignored"  # Azure fields that have no envkiln counterpart
ANNOTATION_AZUREML_VERSION: Final = f"{GROUP}/azureml-version"  # the Azure ML version as written (before coercion)
# JSON {file and field or line: the text as written} of the Azure ML templates the importer filled
ANNOTATION_AZUREML_TEMPLATES: Final = f"{GROUP}/azureml-templates"

SIGNING_KEY_SECRET: Final = "envkiln-signing-key"  # in the operator's namespace (envkiln.core.trust)

# A ConfigMap build context key holding a tar of a nested tree: the build unpacks it into the context
# (ConfigMap keys are file names, so a ConfigMap alone is flat). Covered by the context digest like any key.
CONTEXT_TREE_KEY: Final = ".envkiln-context.tar"

# --- reserved names --------------------------------------------------------------------------

RESERVED_NAME_PREFIXES: Final = ("azureml-", "microsoft")
DEFAULT_CURATED_NAMESPACE: Final = "envkiln-curated"  # never the operator namespace (its Secrets): settings refuse it

# --- condition types and reasons -------------------------------------------------------------

CONDITION_READY: Final = "Ready"  # Environment
CONDITION_VALID: Final = "Valid"  # Environment
CONDITION_IMAGE_AVAILABLE: Final = "ImageAvailable"  # Environment
CONDITION_SUCCEEDED: Final = "Succeeded"  # EnvironmentBuild
CONDITION_BASE_IMAGE_UPDATED: Final = "BaseImageUpdated"  # Environment: the base tag moved (spec.baseImageUpdates)
CONDITION_GIT_REF_RESOLVED: Final = "GitRefResolved"  # Environment with a git context: the ref could be resolved

REASON_VALID: Final = "Valid"
REASON_INVALID_DEFINITION: Final = "InvalidDefinition"
REASON_IMAGE_NOT_FOUND: Final = "ImageNotFound"
REASON_CONTEXT_NOT_FOUND: Final = "ContextNotFound"
REASON_REGISTRY_UNAVAILABLE: Final = "RegistryUnavailable"
REASON_CACHE_HIT: Final = "CacheHit"
REASON_BUILT: Final = "Built"
REASON_IMAGE_READY: Final = "ImageReady"
REASON_BUILDING: Final = "Building"
REASON_BUILD_FAILED: Final = "BuildFailed"
REASON_BUILD_SUCCEEDED: Final = "BuildSucceeded"
REASON_QUEUED: Final = "Queued"
REASON_RETRYING: Final = "Retrying"
REASON_IMAGE_NOT_IN_REGISTRY: Final = "ImageNotInRegistry"
REASON_UNTRUSTED_BUILD: Final = "UntrustedBuild"  # an EnvironmentBuild the operator did not sign
REASON_NO_PUSH_IDENTITY: Final = "NoPushIdentity"  # no push credential for the build's namespace
REASON_CONTEXT_CHANGED: Final = "ContextChanged"  # the ConfigMap context changed after it was hashed
REASON_NO_PULL_CREDENTIALS: Final = "NoPullCredentials"  # a Secret of ENVKILN_BUILD_PULL_CREDENTIALS is missing
REASON_CANNOT_START: Final = "CannotStart"  # the build Job was refused (quota, admission)
REASON_NAME_TAKEN: Final = "NameTaken"  # an object envkiln did not make holds a name reserved for a build
REASON_READY: Final = "Ready"  # Event reason when an Environment becomes Ready
REASON_BASE_IMAGE_UPDATED: Final = "BaseImageUpdated"  # the base moved; also the reason of a rebuild's history entry
REASON_BASE_UP_TO_DATE: Final = "UpToDate"
REASON_REBUILDING: Final = "Rebuilding"  # a rebuild on the new base runs
REASON_REBUILT: Final = "Rebuilt"  # the image moved to the rebuild on the new base
REASON_REBUILD_FAILED: Final = "RebuildFailed"  # the rebuild failed; the previous image stays
REASON_GIT_REF_RESOLVED: Final = "Resolved"
REASON_GIT_UNREACHABLE: Final = "GitUnreachable"  # the git ref cannot be resolved (the last commit is kept)
REASON_ENVIRONMENT_FAILED: Final = "EnvironmentFailed"  # pod condition / Event
REASON_ENVIRONMENT_VERSION_MISSING: Final = "EnvironmentVersionMissing"  # pod condition / Event

# --- object names ----------------------------------------------------------------------------


def image_key(definition_hash: str, rebuild_base_digest: str | None = None) -> str:
    """What names one image of a definition: its hash, plus `-b` and the first 12 hex of the base
    digest for a rebuild on an updated base image (spec.baseImageUpdates: Rebuild). Used for the
    EnvironmentBuild, its Jobs, its context ConfigMap and the image tag."""
    if rebuild_base_digest is None:
        return definition_hash
    return f"{definition_hash}-b{rebuild_base_digest.split(':', 1)[-1][:12]}"


def build_key(spec: Mapping[str, Any]) -> str:
    """The image key (image_key) of an EnvironmentBuild, from its spec: a rebuild on a new base
    (reason BaseImageUpdated) is named after that base's digest."""
    rebuild = spec.get("reason") == REASON_BASE_IMAGE_UPDATED
    return image_key(str(spec["hash"]), str(spec["baseImageDigest"]) if rebuild else None)


def build_name(definition_hash: str, rebuild_base_digest: str | None = None) -> str:
    """The EnvironmentBuild of a hash: one per namespace, so concurrent Environments share it (and one
    per rebuild on a new base image digest)."""
    return f"envb-{image_key(definition_hash, rebuild_base_digest)}"


def job_name(key: str, attempt: int) -> str:
    """The build Job of one attempt of the image `key` (image_key; at most 63 characters)."""
    return f"envkiln-{key}-{attempt}"


def context_configmap_name(key: str) -> str:
    """The ConfigMap holding a rendered build context of the image `key` (image_key)."""
    return f"envkiln-{key}-context"


def push_secret_name(job: str) -> str:
    """The push credential copied for one build Job (owned by that Job, deleted when it ends)."""
    return f"{job}-push"


def pull_secret_name(job: str) -> str:
    """The administrator's base-image pull credentials, merged for one build Job (owned by that Job,
    deleted when it ends)."""
    return f"{job}-pull"


def ca_configmap_name(key: str) -> str:
    """The registry CA bundle (ENVKILN_REGISTRY_CA_FILE) copied for the builds of the image `key`."""
    return f"envkiln-{key}-ca"


def context_snapshot_name(definition_hash: str) -> str:
    """The immutable copy of a user's ConfigMap build context, taken when the build is created."""
    return f"envkiln-{definition_hash}-snapshot"


def anonymous_environment_name(definition_hash: str) -> str:
    return f"anonymous-{definition_hash}"
