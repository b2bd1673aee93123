"""Python packages of a system-managed environment: the conda specification."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from envkiln.core.models.base import KubeModel
from envkiln.core.models.lines import MAX_CHANNELS, MAX_PACKAGES, ChannelLine, CondaDependency, PipLine


class CondaPipBlock(KubeModel):
    """The `- pip: [...]` entry inside conda dependencies."""

    pip: list[PipLine] = Field(max_length=MAX_PACKAGES)


class CondaSpec(KubeModel):
    """A conda environment specification, as in a conda environment.yml."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Ignored for the build (the prefix is fixed); kept for round-tripping."
    )
    channels: list[ChannelLine] = Field(
        default_factory=list, max_length=MAX_CHANNELS,
        description="Conda channels, highest priority first (e.g. conda-forge)."
    )
    dependencies: list[CondaDependency | CondaPipBlock] = Field(
        max_length=MAX_PACKAGES, description="Conda packages (e.g. python=3.11), and at most one entry "
        "`pip: [requirement, ...]` for packages installed with pip in the conda environment."
    )

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, deps: list[str | CondaPipBlock]) -> list[str | CondaPipBlock]:
        if not deps:
            raise ValueError("dependencies is empty; list at least one package (e.g. python=3.11)")
        pip_blocks = 0
        for dep in deps:
            if isinstance(dep, CondaPipBlock):
                pip_blocks += 1
        if pip_blocks > 1:
            raise ValueError("dependencies has more than one pip block; merge them into one '- pip: [...]'")
        # A pip block without a 'pip' dependency is what conda itself accepts (it adds pip, with a
        # warning); envkiln's render adds it the same way (envkiln.core.render.conda_file).
        return deps

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a conda specification is a mapping with 'dependencies' (and optionally 'channels'), "
                f"not {type(data).__name__}"
            )
        if "dependencies" not in data:
            raise ValueError("a conda specification needs 'dependencies' (a list of packages)")
        return data

