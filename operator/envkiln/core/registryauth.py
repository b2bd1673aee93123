"""Registry credentials as docker config documents (dockerconfigjson), pure: merging the pull
credentials of builds, and reading which registries use a credential helper.

A docker config has `auths` (host -> {auth | username/password | identitytoken}) and
`credHelpers` (host -> helper name: the program `docker-credential-<name>` answers for that host).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class DockerConfigError(ValueError):
    pass


def _document(raw: bytes | str, source: str) -> dict[str, object]:
    try:
        document = json.loads(raw)
    except ValueError:
        raise DockerConfigError(f"{source}: .dockerconfigjson is not JSON; recreate it with "
                                "`kubectl create secret docker-registry`") from None
    if not isinstance(document, dict):
        raise DockerConfigError(f"{source}: .dockerconfigjson is not a JSON object")
    return document


def merge_auths(documents: Iterable[tuple[str, bytes | str]]) -> str:
    """One compact `{"auths": {...}}` of the (source, dockerconfigjson) documents; for a registry that
    several name, the first one's entry is kept. Other keys (credHelpers...) are not pull
    credentials a build can use and are left out. Errors name the source, never a value."""
    auths: dict[str, object] = {}
    for source, raw in documents:
        entries = _document(raw, source).get("auths", {})
        if not isinstance(entries, dict):
            raise DockerConfigError(f"{source}: .dockerconfigjson `auths` is not an object")
        for host, entry in entries.items():
            if not isinstance(entry, dict):
                raise DockerConfigError(f"{source}: .dockerconfigjson auths[{host!r}] is not an object")
            auths.setdefault(host, entry)
    return json.dumps({"auths": auths}, separators=(",", ":"), sort_keys=True)


def credential_helpers(raw: bytes | str, source: str = "the registry Secret") -> dict[str, str]:
    """Registry host -> credential helper name, from a docker config's `credHelpers`."""
    helpers = _document(raw, source).get("credHelpers", {})
    if not isinstance(helpers, dict):
        raise DockerConfigError(f"{source}: .dockerconfigjson `credHelpers` is not an object")
    out: dict[str, str] = {}
    for host, name in helpers.items():
        if not isinstance(name, str) or not HELPER_NAME.fullmatch(name):
            raise DockerConfigError(f"{source}: credHelpers[{host!r}] must be a helper name such as ecr-login "
                                    "(the program docker-credential-<name>)")
        out[normalize_host(host)] = name
    return out


def normalize_host(host: str) -> str:
    """The registry host of a docker config key (`https://index.docker.io/v1/` -> docker.io)."""
    host = re.sub(r"^https?://", "", host).rstrip("/")
    if host.endswith("/v1") or host.endswith("/v2"):
        host = host.rsplit("/", 1)[0]
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    return host
