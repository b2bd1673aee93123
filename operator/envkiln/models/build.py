"""The EnvironmentBuild: one build of one definition hash (spec: the plan; status: attempts, result)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from envkiln.models.base import KubeModel, ObjectMeta, StatusModel
from envkiln.models.context import BuildContext
from envkiln.models.status import Condition


class ContextFile(KubeModel):
    path: str
    content: str


class BuildPlan(KubeModel):
    """Everything a builder needs, rendered from a definition (envkiln.render)."""

    dockerfile: str = Field(description="The rendered Dockerfile (empty for user build contexts).")
    files: list[ContextFile] = Field(default_factory=list, description="Context files besides the Dockerfile.")
    context: BuildContext | None = Field(default=None, description="The user's build context, passed through.")
    context_digest: str | None = Field(
        default=None, description="sha256 of the ConfigMap context's files as they were hashed; the build pod "
        "checks the files it gets against it (envkiln.definition.context_digest).")


class BuildReason(StrEnum):
    NEW_DEFINITION = "NewDefinition"
    IMAGE_MISSING = "ImageMissing"


class EnvironmentBuildSpec(KubeModel):
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    image: str = Field(description="Destination repository:tag (the tag is the hash).")
    builder: Literal["kaniko", "buildah", "local"] = "kaniko"
    plan: BuildPlan
    reason: BuildReason = BuildReason.IMAGE_MISSING


class BuildPhase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class EnvironmentBuildStatus(StatusModel):
    phase: BuildPhase | None = None
    job: str | None = Field(default=None, description="The Job (kaniko) of the current attempt.")
    attempts: int | None = Field(default=None, description="Attempts started so far (1 = first try).")
    retry_after: str | None = Field(default=None, description="The next attempt starts after this time.")
    builder_instance: str | None = Field(default=None, description="Operator process running a local build.")
    start_time: str | None = None
    completion_time: str | None = None
    digest: str | None = None
    image_ref: str | None = None
    record_signature: str | None = Field(
        default=None, description="The operator's signature over namespace, name, hash, image and digest.")
    log_tail: str | None = None
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None


class EnvironmentBuildManifest(KubeModel):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["envkiln.dev/v1alpha1"] = "envkiln.dev/v1alpha1"
    kind: Literal["EnvironmentBuild"] = "EnvironmentBuild"
    metadata: ObjectMeta
    spec: EnvironmentBuildSpec
