"""The EnvironmentBuild: one build of one definition hash (spec: the plan; status: attempts, result)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from envkiln.core.models.base import KubeModel, ObjectMeta, StatusModel
from envkiln.core.models.context import BuildContext
from envkiln.core.models.status import Condition


class ContextFile(KubeModel):
    path: str = Field(description="Path relative to the context's root.")
    content: str = Field(description="The file's content.")


class ParentImage(KubeModel):
    """An earlier build of the namespace that this build starts from (envkiln.core.decisions.parent)."""

    build: str = Field(description="The earlier EnvironmentBuild.")
    image: str = Field(description="Its image, repository@digest, as the registry verified it.")
    dockerfile: str = Field(description="The Dockerfile FROM that image: it installs what the earlier image "
                            "lacks. The plan's own Dockerfile (from the base) is built when the image cannot "
                            "be pulled.")


class BuildPlan(KubeModel):
    """Everything a builder needs, rendered from a definition (envkiln.core.render)."""

    dockerfile: str = Field(description="The rendered Dockerfile (empty for user build contexts).")
    files: list[ContextFile] = Field(default_factory=list, description="Context files besides the Dockerfile.")
    context: BuildContext | None = Field(default=None, description="The user's build context, passed through.")
    parent: ParentImage | None = Field(
        default=None, description="The earlier image of the namespace this build starts from, when one holds "
        "all but some of its pip requirements (in-cluster buildah builds; ENVKILN_BUILD_ON_EARLIER_IMAGES).")
    context_digest: str | None = Field(
        default=None, description="sha256 of the ConfigMap context's files as they were hashed; the build pod "
        "checks the files it gets against it.")


class BuildReason(StrEnum):
    NEW_DEFINITION = "NewDefinition"
    IMAGE_MISSING = "ImageMissing"
    BASE_IMAGE_UPDATED = "BaseImageUpdated"


class BuildLock(StatusModel):
    """The packages the built image holds, as the build resolved them."""

    digest: str = Field(description="sha256 of text.")
    packages: int = Field(description="How many packages it holds.")
    text: str = Field(description="The lock: `micromamba list --explicit --md5` and `pip freeze` output "
                      "(`envkiln lock` prints it).")


class EnvironmentBuildSpec(KubeModel):
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="The definition hash this build makes the image of.")
    image: str = Field(description="Destination repository:tag (the tag is the hash).")
    builder: Literal["kaniko", "buildah", "local"] = Field(
        default="kaniko", description="kaniko or buildah (a Job per attempt), or local (inside the operator).")
    plan: BuildPlan = Field(
        description="What is built: the rendered Dockerfile and files, or the user's build context.")
    reason: BuildReason = Field(
        default=BuildReason.IMAGE_MISSING, description="Why it was created: NewDefinition, ImageMissing or "
        "BaseImageUpdated.")
    base_image_digest: str | None = Field(
        default=None, description="The base image's digest the plan's FROM is pinned to (system-managed only).")


class BuildPhase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class EnvironmentBuildStatus(StatusModel):
    phase: BuildPhase | None = Field(
        default=None, description="Pending (waiting for a build slot), Building (an attempt runs, or waits to be "
        "retried), Succeeded or Failed.")
    job: str | None = Field(default=None, description="The Job of the current attempt, envkiln-<hash>-<attempt>.")
    attempts: int | None = Field(default=None, description="Attempts started so far (1 = first try).")
    retry_after: str | None = Field(default=None, description="The next attempt starts after this time.")
    builder_instance: str | None = Field(default=None, description="Operator process running a local build.")
    start_time: str | None = Field(default=None, description="When the first attempt started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the build succeeded or failed (RFC 3339).")
    digest: str | None = Field(default=None, description="Digest of the pushed image, verified in the registry.")
    base_image_digest: str | None = Field(default=None, description="Digest of the base image it was built on.")
    lock: BuildLock | None = Field(
        default=None, description="The resolved packages (the file /opt/envkiln/envkiln-lock.txt), read once the "
        "image is verified: from the lock image beside it (tag sha256-<digest>.lock; buildah and local builders) "
        "or from the image's last layer (Kaniko).")
    image_ref: str | None = Field(
        default=None, description="The pushed image as workloads pull it, repository@sha256:...")
    record_signature: str | None = Field(
        default=None, description="The operator's signature over namespace, name, hash, image and digest.")
    log_tail: str | None = Field(
        default=None, description="The end of the last failed attempt's log, kept when its pod is gone "
        "(`envkiln logs NAME --attempt N`).")
    message: str | None = Field(default=None, description="The phase in words; on failure, why.")
    conditions: list[Condition] | None = Field(
        default=None, description="Succeeded: Unknown while the build runs, then True or False; kstatus's "
        "Ready (True once Succeeded), Reconciling (True while Pending or Building) and Stalled (True once Failed).")
    observed_generation: int | None = Field(default=None, description="The metadata.generation this status is for.")


class EnvironmentBuildManifest(KubeModel):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["envkiln.dev/v1alpha1"] = "envkiln.dev/v1alpha1"
    kind: Literal["EnvironmentBuild"] = "EnvironmentBuild"
    metadata: ObjectMeta
    spec: EnvironmentBuildSpec
