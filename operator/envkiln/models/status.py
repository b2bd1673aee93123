"""The status envkiln writes on an Environment: metav1.Condition, phase, version history."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from envkiln.models.base import StatusModel
from envkiln.models.environment import EnvironmentKind


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """metav1.Condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: str
    observed_generation: int | None = Field(default=None, ge=0)


class Phase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    FAILED = "Failed"


class VersionRecord(StatusModel):
    version: str
    hash: str
    image_ref: str | None = None
    when: str


class EnvironmentStatus(StatusModel):
    phase: Phase | None = None
    kind: EnvironmentKind | None = Field(default=None, description="Which of the three kinds this definition is.")
    hash: str | None = None
    short_hash: str | None = Field(default=None, description="First 12 characters of the hash, for listings.")
    image: str | None = Field(default=None, description="repository:tag of the built image.")
    image_digest: str | None = None
    image_ref: str | None = Field(default=None, description="repository@sha256:... — what workloads run.")
    cache_hit: bool | None = None
    build: str | None = Field(default=None, description="Name of the EnvironmentBuild for this hash.")
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
    versions: list[VersionRecord] | None = None

