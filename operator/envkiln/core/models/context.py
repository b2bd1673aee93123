"""A Docker build context the user brings: a ConfigMap, a git repository or an https tarball."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from envkiln.core.models.base import DNS_SUBDOMAIN, KubeModel
from envkiln.core.models.lines import SHELL_META, check_line


class ConfigMapContext(KubeModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Name of the ConfigMap, in the Environment's namespace."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not DNS_SUBDOMAIN.fullmatch(name):
            raise ValueError(f"{name!r} is not a ConfigMap name (lowercase letters, digits, '-' and '.')")
        return name


class GitContext(KubeModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="Repository URL: https://, git://, ssh:// or git@host:org/repo.git."
    )
    ref: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        description="A branch, tag or commit. Pin a commit for reproducible builds: the hash covers the ref as written."
    )
    path: Annotated[str, StringConstraints(max_length=1024)] = Field(
        default="", description="Directory inside the repository to use as the context (default: its root)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        check_line(url, "url")
        if not re.fullmatch(r"(https://|git://|ssh://|git@)[^\s]+", url):
            raise ValueError(f"{url!r} is not a git URL; use https://host/org/repo.git")
        return url

    @field_validator("ref")
    @classmethod
    def _ref(cls, ref: str) -> str:
        # A ref starting with '-' would be read as an option by git; '..' is a revision range.
        if not re.fullmatch(r"[A-Za-z0-9._/+-]+", ref) or ref.startswith(("-", "/", ".")) or ".." in ref:
            raise ValueError(
                f"{ref!r} is not a branch, tag or commit: letters, digits and . _ / + -, not starting with "
                "'-', '/' or '.', and no '..'"
            )
        return ref

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if path and (
            not re.fullmatch(r"[A-Za-z0-9._/+-]+", path)
            or path.startswith(("/", "-"))
            or ".." in path.split("/")
        ):
            raise ValueError(
                f"{path!r} is not a directory inside the repository: a relative path of letters, digits and "
                ". _ / + -, not starting with '/' or '-', without '..'"
            )
        return path


class TarballContext(KubeModel):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)] = Field(
        description="https URL of a (gzipped) tar archive holding the context."
    )
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="Expected SHA-256 of the tarball; part of the definition hash when given."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        check_line(url, "url")
        if not re.fullmatch(r"https://[^\s]+", url):
            raise ValueError(f"{url!r} is not an https URL; tarball contexts are fetched over https")
        return url


class BuildContext(KubeModel):
    """A Docker build context the user brings: exactly one source, plus the Dockerfile path in it."""

    config_map: ConfigMapContext | None = Field(
        default=None, description="A ConfigMap whose keys are the context's files; their content is part of the hash."
    )
    git: GitContext | None = Field(
        default=None, description="A git repository, at a ref, optionally a directory in it.")
    tarball: TarballContext | None = Field(default=None, description="A tar archive fetched over https.")
    dockerfile_path: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        default="Dockerfile", description="Path of the Dockerfile inside the context."
    )

    @field_validator("dockerfile_path")
    @classmethod
    def _dockerfile_path(cls, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/") or any(ch in SHELL_META or ch.isspace() for ch in path):
            raise ValueError(f"{path!r} must be a relative path inside the context, without '..' or spaces")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> BuildContext:
        given = [n for n in ("configMap", "git", "tarball") if getattr(self, _snake(n)) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one build context source: configMap, git or tarball"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def source(self) -> Literal["configMap", "git", "tarball"]:
        if self.config_map is not None:
            return "configMap"
        return "git" if self.git is not None else "tarball"


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)

