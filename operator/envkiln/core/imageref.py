"""Container image references: parse and check them the way the distribution spec does.

The grammar follows github.com/distribution/reference (reference.go): an optional
registry host[:port], slash-separated lowercase path components, an optional tag and an
optional digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_NAME_LENGTH = 255

DOCKER_HUB = "docker.io"


class InvalidImageReference(ValueError):
    """The text is not a valid container image reference."""


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference. `registry` is empty when the reference names none."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def resolved_registry(self) -> str:
        """The registry a client contacts: Docker Hub when the reference names none."""
        return self.registry or DOCKER_HUB

    def resolved_repository(self) -> str:
        """The repository path on that registry (Docker Hub puts official images under library/)."""
        if not self.registry and "/" not in self.repository:
            return f"library/{self.repository}"
        return self.repository

    def manifest_reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag (default `latest`)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _looks_like_registry(component: str) -> bool:
    # Same rule as Docker: the first component is a host when it has a dot or a port,
    # or is localhost; otherwise it is part of the repository path.
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


def parse_image_reference(text: str) -> ImageReference:
    """Parse `text` or raise InvalidImageReference with a reason a user can act on."""
    if not isinstance(text, str) or not text:
        raise InvalidImageReference("an image reference must be a non-empty string")
    if text != text.strip():
        raise InvalidImageReference("an image reference must not have leading or trailing spaces")
    if any(ch.isspace() for ch in text):
        raise InvalidImageReference("an image reference must not contain spaces or line breaks")
    if not text.isascii():
        raise InvalidImageReference("an image reference must be ASCII (look for look-alike characters)")
    match = _REFERENCE.match(text)
    if not match:
        path = text.split("@", 1)[0]
        path = path.rsplit(":", 1)[0] if ":" in path.rsplit("/", 1)[-1] else path
        repository_part = path.split("/", 1)[1] if "/" in path and _looks_like_registry(path.split("/")[0]) else path
        hint = " (repository names are lowercase)" if repository_part != repository_part.lower() else ""
        raise InvalidImageReference(
            f"{text!r} is not a valid image reference; expected [registry[:port]/]repository[:tag][@sha256:...]"
            + hint
        )
    name = match.group("name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidImageReference(f"image name is longer than {MAX_NAME_LENGTH} characters")
    digest = match.group("digest")
    if digest and digest.startswith("sha256:") and not _SHA256_DIGEST.match(digest):
        raise InvalidImageReference("a sha256 digest has exactly 64 lowercase hex characters")
    first, _, rest = name.partition("/")
    if rest and _looks_like_registry(first):
        registry, repository = first, rest
    else:
        registry, repository = "", name
    return ImageReference(registry=registry, repository=repository, tag=match.group("tag"), digest=digest)
