"""A Docker build context the user brings: a ConfigMap, a git repository or an https tarball."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from envkiln.core.models.base import DNS_SUBDOMAIN, KubeModel
from envkiln.core.models.hosts import is_hostname, is_ip_literal
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


# Characters a git URL may hold: RFC 3986's unreserved ones, '%' escapes, and the delimiters of
# user@host:port/path ('[' and ']' around an IPv6 address). No '#', '?', quotes, '\\' or shell syntax.
_GIT_URL_CHARS = re.compile(r"[A-Za-z0-9._~%+=,:/@\[\]-]+")
_USER = re.compile(r"[A-Za-z0-9._~%+=,-]+")
_GIT_URL_FORMS = "https://host/org/repo.git, git://host/repo.git, ssh://git@host/org/repo.git or git@host:org/repo.git"


def check_git_url(url: str) -> None:
    """A git URL that git, ssh and the builders read the same way; ValueError says what is wrong.
    Refused: other schemes, a fragment or a query (builders read `#ref:dir` from it), characters
    outside a plain URL, and a host, user or scp-like path starting with '-' (an ssh or git option)."""
    if "#" in url:
        raise ValueError(f"{url!r} has a fragment ('#...'); give the ref in spec.build.git.ref and the directory "
                         "in spec.build.git.path")
    if "?" in url:
        raise ValueError(f"{url!r} has a query ('?...'), which a git URL does not have; remove it")
    if not _GIT_URL_CHARS.fullmatch(url):
        raise ValueError(f"{url!r} is not a git URL: only letters, digits and . _ ~ % + = , : / @ - are allowed; "
                         f"use {_GIT_URL_FORMS}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        if not url.startswith("git@"):
            raise ValueError(f"{url!r} is not a git URL; use {_GIT_URL_FORMS}")
        _check_scp_like(url, url[len("git@"):])
    elif scheme in ("https", "git", "ssh"):
        _check_authority(url, rest)
    else:
        raise ValueError(f"{url!r} is not a git URL (scheme {scheme}://); use {_GIT_URL_FORMS}")


def _check_host(url: str, host: str) -> None:
    if host.startswith("-"):
        raise ValueError(f"{url!r}: the host starts with '-', which ssh and git would read as an option")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else None
    if bare is not None and is_ip_literal(bare) and ":" in bare:
        return
    if not host or not is_hostname(host):
        raise ValueError(f"{url!r} names no valid host (letters, digits, '.', '-', or [IPv6]); use {_GIT_URL_FORMS}")


def _check_user(url: str, user: str) -> None:
    if user.startswith("-"):
        raise ValueError(f"{url!r}: the user starts with '-', which ssh would read as an option")
    name, _, secret = user.partition(":")
    if not _USER.fullmatch(name) or (secret and not _USER.fullmatch(secret)) or "@" in user:
        raise ValueError(f"{url!r} has a malformed user part; percent-encode special characters")


def _check_authority(url: str, rest: str) -> None:
    authority, slash, path = rest.partition("/")
    if not slash or not path.strip("/"):
        raise ValueError(f"{url!r} names no repository path; use {_GIT_URL_FORMS}")
    user, at, hostport = authority.rpartition("@")
    if at:
        _check_user(url, user)
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, after = hostport.partition("]")
        host += "]"
        port = after[1:] if after.startswith(":") else after
        if after and not after.startswith(":"):
            raise ValueError(f"{url!r} names no valid host; use {_GIT_URL_FORMS}")
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
    _check_host(url, host)
    if (port and (not port.isdigit() or not 0 < int(port) < 65536)) or (not port and hostport.endswith(":")):
        raise ValueError(f"{url!r} has an invalid port; give a number from 1 to 65535")


def _check_scp_like(url: str, rest: str) -> None:
    host, colon, path = rest.partition(":")
    _check_host(url, host)
    if not colon or not path.strip("/"):
        raise ValueError(f"{url!r} names no repository path; use git@host:org/repo.git")
    if path.startswith("-"):
        raise ValueError(f"{url!r}: the path starts with '-', which git would read as an option")


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
        check_git_url(url)
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

