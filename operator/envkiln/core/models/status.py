"""The status envkiln writes on an Environment: metav1.Condition, phase, version history."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from envkiln.core.models.base import StatusModel
from envkiln.core.models.environment import EnvironmentKind


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """metav1.Condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)] = Field(
        description="The condition's type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)] = (
        Field(description="Why, in one CamelCase word (e.g. Building, BuildFailed), for programs."))
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(default="", description="Why, for people.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the condition was set for.")


class Phase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    FAILED = "Failed"


class VersionRecord(StatusModel):
    version: str = Field(description="spec.version of that definition.")
    hash: str = Field(description="Its definition hash.")
    image_ref: str | None = Field(
        default=None, description="The image it was built into, repository@sha256:... (absent until it was Ready).")
    when: str = Field(description="When the definition was first seen (RFC 3339).")
    reason: str | None = Field(
        default=None, description="Why this entry was added: absent for a new definition, BaseImageUpdated for a "
        "rebuild on a new base image digest.")
    base_image_digest: str | None = Field(default=None, description="The base image's digest this image was built on.")


class LockSummary(StatusModel):
    """The resolved package set of a build, in short (`envkiln lock NAME` prints it whole)."""

    digest: str = Field(description="sha256 of the lock's text.")
    packages: int = Field(description="How many packages it holds.")


class EnvironmentStatus(StatusModel):
    phase: Phase | None = Field(
        default=None, description="Pending (waiting for a ConfigMap context or the registry), Building, Ready "
        "(status.imageRef is what workloads run) or Failed (status.message says why).")
    kind: EnvironmentKind | None = Field(default=None, description="Which of the three kinds this definition is.")
    hash: str | None = Field(
        default=None, description="The definition hash, the image's cache key (`envkiln hash FILE` prints it too).")
    short_hash: str | None = Field(default=None, description="First 12 characters of the hash, for listings.")
    image: str | None = Field(default=None, description="repository:tag of the built image.")
    image_digest: str | None = Field(default=None, description="Digest (sha256:...) of the image workloads run.")
    image_ref: str | None = Field(default=None, description="repository@sha256:... — what workloads run.")
    cache_hit: bool | None = Field(
        default=None, description="true when this Environment caused no build: its image existed already.")
    build: str | None = Field(default=None, description="Name of the EnvironmentBuild for this hash.")
    message: str | None = Field(default=None, description="The phase in words; on failure, why and what to do.")
    conditions: list[Condition] | None = Field(
        default=None, description="Valid, ImageAvailable and Ready; with kstatus's Reconciling while Pending or "
        "Building, and Stalled when Failed.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status is for; when it is behind, the operator has "
        "not acted on the latest spec yet.")
    base_image: str | None = Field(default=None, description="The base image reference as written (spec.image).")
    base_image_digest: str | None = Field(
        default=None, description="Digest of the base image the current image was built on; for a "
        "bring-your-own image, its own digest.")
    latest_base_image_digest: str | None = Field(
        default=None, description="The base image's digest when the base-update watcher last looked, when it "
        "differs from baseImageDigest.")
    resolved_commit: str | None = Field(
        default=None, description="The commit a git context's ref resolved to; part of the hash.")
    lock: LockSummary | None = Field(default=None, description="The current image's resolved packages, in short.")
    versions: list[VersionRecord] | None = Field(
        default=None, description="The definitions this Environment had, oldest first (at most 50), for "
        "NAME:VERSION references.")

