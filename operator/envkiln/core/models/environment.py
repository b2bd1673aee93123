"""The Environment: what users write (spec), its three kinds, and the whole manifest."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from envkiln.core.imageref import InvalidImageReference, parse_image_reference
from envkiln.core.models.base import KubeModel, ObjectMeta
from envkiln.core.models.context import BuildContext
from envkiln.core.models.lines import (
    ENV_VAR_NAME,
    MAX_PACKAGES,
    MAX_STEPS,
    VERSION_PATTERN,
    DockerStep,
    Line,
    PipLine,
)
from envkiln.core.models.packages import CondaSpec


class InferenceConfig(KubeModel):
    """Runtime metadata for serving; never enters the hash."""

    liveness_route: Line | None = Field(default=None, description="HTTP path of the liveness probe when serving.")
    readiness_route: Line | None = Field(default=None, description="HTTP path of the readiness probe when serving.")
    scoring_route: Line | None = Field(default=None, description="HTTP path that serves predictions (e.g. /score).")
    port: int | None = Field(default=None, ge=1, le=65535, description="Port the inference server listens on.")


class BaseImageUpdates(StrEnum):
    """What happens when the base image's tag moves to a new digest (the base-update watcher)."""

    NOTIFY = "Notify"
    REBUILD = "Rebuild"
    IGNORE = "Ignore"


# Size caps (docs/security.md, "Size caps"); the others are in envkiln.core.models.lines.
MAX_LOCK = 131072  # characters of a pinned lock (spec.lock): about a thousand packages
MAX_TAGS = 50
MAX_TAG = 256  # a tag's key or value
MAX_ENV_VARS = 64
MAX_ENV_VALUE = 2048
MAX_ENV_NAME = 256


class EnvironmentKind(StrEnum):
    SYSTEM_MANAGED = "SystemManaged"
    BUILD_CONTEXT = "BuildContext"
    BRING_YOUR_OWN = "BringYourOwnContainer"


class EnvironmentSpec(KubeModel):
    """What the user writes under `spec:` of an Environment."""

    version: Annotated[str, StringConstraints(max_length=63)] = Field(
        default="1",
        description="A label for this definition; the image-affecting fields are immutable per version.",
        json_schema_extra={"pattern": VERSION_PATTERN},
    )
    description: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description="Free text about the environment; may change at any time and never causes a build."
    )
    tags: dict[Annotated[str, StringConstraints(max_length=MAX_TAG)],
               Annotated[str, StringConstraints(max_length=MAX_TAG)]] | None = Field(
        default=None, max_length=MAX_TAGS, description=f"Free key/value labels (at most {MAX_TAGS}); never cause a "
        "build."
    )
    image: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="Base image (system-managed) or the image to run as is (userManaged)."
    )
    user_managed: bool = Field(
        default=False, description="true: the image already holds everything; envkiln builds nothing."
    )
    conda: CondaSpec | None = Field(
        default=None, description="Conda packages, as in a conda environment.yml, installed with micromamba into "
        "/opt/envkiln/conda on top of spec.image."
    )
    pip: list[PipLine] | None = Field(
        default=None, max_length=MAX_PACKAGES, description="pip requirements, one per entry (PEP 508, e.g. "
        "numpy==2.1.0), installed with uv into /opt/envkiln/venv. Their order is part of the hash."
    )
    docker_steps: list[DockerStep] | None = Field(
        default=None, max_length=MAX_STEPS, description="Dockerfile instructions applied after FROM, before the "
        "packages are installed: one instruction per entry (RUN, ENV, WORKDIR, USER...; not FROM, COPY, ADD or "
        "ONBUILD)."
    )
    build: BuildContext | None = Field(
        default=None, description="A Docker build context you bring (a ConfigMap, git or an https tarball), built as "
        "is with its Dockerfile; excludes image, conda, pip and dockerSteps."
    )
    base_image_updates: BaseImageUpdates | None = Field(
        default=None, description="When spec.image's tag moves to a new digest: Notify (the default; condition "
        "BaseImageUpdated and an Event), Rebuild (a new image on the new base; status.imageRef moves when it is "
        "Ready) or Ignore. Curated environments default to Rebuild. Never part of the hash.")
    lock: Annotated[str, StringConstraints(max_length=MAX_LOCK)] | None = Field(
        default=None, description="A package lock as `envkiln lock` prints it: the build installs exactly these "
        "packages and fails, naming the packages that differ, when it cannot reproduce them. Part of the hash.")
    environment_variables: dict[Annotated[str, StringConstraints(max_length=MAX_ENV_NAME)],
                                Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE)]] | None = Field(
        default=None, max_length=MAX_ENV_VARS, description="Variables added to the workload's container (its own "
        "values win); may change at any time and never cause a build."
    )
    inference: InferenceConfig | None = Field(
        default=None, description="Runtime metadata for serving; may change at any time and never causes a build."
    )

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if not re.fullmatch(VERSION_PATTERN, version):
            raise ValueError(
                f"{version!r} is not a version label: letters, digits, '.', '_' and '-', starting with a "
                "letter or digit, at most 63 characters (e.g. \"3\" or \"2024.06\")"
            )
        return version

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        if image is None:
            return image
        try:
            parse_image_reference(image)
        except InvalidImageReference as error:
            raise ValueError(str(error)) from None
        return image

    @field_validator("pip")
    @classmethod
    def _pip(cls, lines: list[str] | None) -> list[str] | None:
        if lines is not None and not lines:
            raise ValueError("empty list; list at least one requirement or remove the field")
        return lines

    @field_validator("environment_variables")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (env or {}).items():
            if not ENV_VAR_NAME.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
            if "\0" in value:
                raise ValueError(f"the value of {key} contains a NUL character")
        return env

    @model_validator(mode="after")
    def _kind_rules(self) -> EnvironmentSpec:
        packages = self.conda is not None or bool(self.pip)
        if self.build is not None:
            clashes = [
                field
                for field, present in (
                    ("conda", self.conda is not None),
                    ("pip", self.pip is not None),
                    ("image", self.image is not None),
                    ("dockerSteps", self.docker_steps is not None),
                    ("lock", self.lock is not None),
                )
                if present
            ]
            if clashes:
                raise ValueError(
                    f"spec.build cannot be combined with spec.{', spec.'.join(clashes)}: a build context is built "
                    "as is; install packages in its Dockerfile, or drop spec.build for a system-managed environment"
                )
            return self
        if self.image is None:
            if packages or self.docker_steps:
                raise ValueError(
                    "spec.image is required: name the base image to install packages on "
                    "(e.g. python:3.11-slim or mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04)"
                )
            raise ValueError(
                "the definition is empty: set spec.image (with spec.conda/spec.pip/spec.dockerSteps, or "
                "spec.userManaged: true) or spec.build"
            )
        if self.lock is not None and self.conda is None and not self.pip:
            raise ValueError(
                "spec.lock pins the packages of spec.conda and spec.pip, and this definition has neither; "
                "remove spec.lock, or add the packages it locks"
            )
        if self.user_managed:
            extra = [f for f, p in (("conda", self.conda), ("pip", self.pip), ("dockerSteps", self.docker_steps)) if p]
            if extra:
                raise ValueError(
                    f"spec.userManaged: true runs spec.image as is, so spec.{', spec.'.join(extra)} would be "
                    "ignored; remove them, or set userManaged: false to have envkiln install them"
                )
            return self
        if not packages and not self.docker_steps:
            raise ValueError(
                "spec.image alone builds nothing: set spec.userManaged: true to run the image as is, "
                "or add spec.conda, spec.pip or spec.dockerSteps"
            )
        return self

    @property
    def kind(self) -> EnvironmentKind:
        if self.build is not None:
            return EnvironmentKind.BUILD_CONTEXT
        if self.user_managed:
            return EnvironmentKind.BRING_YOUR_OWN
        return EnvironmentKind.SYSTEM_MANAGED


class Environment(KubeModel):
    """A whole Environment manifest."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["envkiln.dev/v1alpha1"] = "envkiln.dev/v1alpha1"
    kind: Literal["Environment"] = "Environment"
    metadata: ObjectMeta
    spec: EnvironmentSpec

    @model_validator(mode="after")
    def _named(self) -> Environment:
        if self.metadata.generate_name is not None:
            raise ValueError(
                "metadata.generateName: not allowed on an Environment; workloads and versions refer to it by "
                "name, so the name must be chosen, not generated: set metadata.name instead"
            )
        if not self.metadata.name:
            raise ValueError("metadata.name is required")
        return self

