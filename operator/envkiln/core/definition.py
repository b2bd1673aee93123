"""The definition hash: the cache key that decides whether an image must be built.

Algorithm (schema v3 — v2's document plus a pinned `lock`; the prefix changed with the render; README.md):

1. Take the image-affecting parts of the spec and nothing else:
   `image` (as written, no resolution), `userManaged`, `dockerSteps`, `conda`
   (channels and dependencies; its `name` is ignored), `pip`, and `build` (source kind,
   its identity: ConfigMap name + the SHA-256 of every data entry, git url/path + the commit,
   or tarball url/sha256, and `dockerfilePath`), and `lock` (the pinned lock's text) when it is
   set. Absent lists are empty lists.
   A git context is hashed by the commit its ref points at, never by the ref as written: the
   caller resolves a branch or tag first (envkiln.adapters.gitrefs) and passes the commit in; a ref that
   is itself a full commit (40 hex) is that commit, lowercased. The ref is not in the document,
   so a branch at commit C and the commit C are the same definition, and a new commit on the
   branch is a new one.
2. Serialise as canonical JSON: keys sorted, separators `,` and `:`, UTF-8, no ASCII
   escaping. Mapping key order therefore never matters; list order always does.
3. SHA-256 over `envkiln.dev/definition/v3` + a newline + that JSON; the hash is the first
   32 hex characters of the digest.

Excluded: metadata (name, namespace, labels), `version`, `description`, `tags`,
`environmentVariables`, `inference`.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from envkiln.core.models import CondaPipBlock, EnvironmentSpec

# v2: the render changed for every system-managed definition (install stage run as root with the base's user
# kept, pip-only venvs see the base's packages, conda LD_LIBRARY_PATH), so no v1 image may be reused.
# v3: the render pins the base by digest and writes the lock into the image's last layer (a v2 image has
# neither), a pinned `lock` is hashed, and a git context is hashed by its commit.
HASH_SCHEMA = "envkiln.dev/definition/v3"
HASH_LENGTH = 32
# Each namespace pushes under its own path, so a registry can give each one a push identity limited
# to it (see docs/security.md).
DEFAULT_IMAGE_TEMPLATE = "{registry}/envkiln/{namespace}/env_{hash}"


COMMIT = re.compile(r"[0-9a-fA-F]{40}")


class MissingContextContent(ValueError):
    """A ConfigMap build context's content is part of the hash but was not supplied."""


class UnresolvedGitRef(MissingContextContent):
    """A git build context's ref is a branch or tag and no commit was supplied: it must be resolved
    first (envkiln.adapters.gitrefs), so a branch name is never hashed by accident."""


def is_commit(ref: str) -> bool:
    """A full commit id (40 hex, either case), which names the same content forever."""
    return COMMIT.fullmatch(ref) is not None


def _conda_document(spec: EnvironmentSpec) -> dict[str, Any] | None:
    if spec.conda is None:
        return None
    dependencies: list[Any] = []
    for dep in spec.conda.dependencies:
        dependencies.append({"pip": list(dep.pip)} if isinstance(dep, CondaPipBlock) else dep)
    return {"channels": list(spec.conda.channels), "dependencies": dependencies}


class InvalidContextContent(MissingContextContent):
    """A ConfigMap build context's content is not text or bytes (so there is nothing to hash)."""


def content_digests(data: Mapping[str, str | bytes]) -> dict[str, str]:
    """SHA-256 of each context file, keyed by its name (contents, never just names)."""
    digests = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str | bytes):
            raise InvalidContextContent(
                f"spec.build.configMap: the ConfigMap entry {key!r} is {type(value).__name__}; a ConfigMap holds "
                "text under data and base64 under binaryData (quote numbers and booleans)"
            )
        raw = value.encode() if isinstance(value, str) else value
        digests[key] = hashlib.sha256(raw).hexdigest()
    return digests


def _git_commit(ref: str, commit: str | None) -> str:
    if commit is not None:
        if not is_commit(commit):
            raise ValueError(f"{commit!r} is not a full commit (40 hex)")
        return commit.lower()
    if is_commit(ref):
        return ref.lower()
    raise UnresolvedGitRef(
        f"spec.build.git: the ref {ref!r} is a branch or tag; the commit it points at is part of the hash, so "
        "resolve it first (or pin a commit, 40 hex, in spec.build.git.ref)"
    )


def _build_document(spec: EnvironmentSpec, context_data: Mapping[str, str | bytes] | None,
                    commit: str | None) -> dict[str, Any] | None:
    build = spec.build
    if build is None:
        return None
    document: dict[str, Any] = {"source": build.source, "dockerfilePath": build.dockerfile_path}
    if build.config_map is not None:
        if context_data is None:
            raise MissingContextContent(
                f"spec.build.configMap: the content of ConfigMap {build.config_map.name!r} is part of the hash; "
                "supply it (put the ConfigMap in the same file, or pass --context-dir)"
            )
        document["configMap"] = {"name": build.config_map.name, "content": content_digests(context_data)}
    elif build.git is not None:
        document["git"] = {"url": build.git.url, "commit": _git_commit(build.git.ref, commit), "path": build.git.path}
    elif build.tarball is not None:
        document["tarball"] = {"url": build.tarball.url, "sha256": build.tarball.sha256}
    return document


def definition_document(
    spec: EnvironmentSpec, context_data: Mapping[str, str | bytes] | None = None, commit: str | None = None
) -> dict[str, Any]:
    """The exact structure that is hashed (useful to explain why two hashes differ). `commit`: what a
    git context's ref points at (ignored for other definitions)."""
    document = {
        "image": spec.image,
        "userManaged": spec.user_managed,
        "dockerSteps": list(spec.docker_steps or []),
        "conda": _conda_document(spec),
        "pip": list(spec.pip or []),
        "build": _build_document(spec, context_data, commit),
    }
    if spec.lock is not None:  # only when pinned, so unpinned documents keep their shape
        document["lock"] = spec.lock
    return document


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_hash(spec: EnvironmentSpec, context_data: Mapping[str, str | bytes] | None = None,
                    commit: str | None = None) -> str:
    payload = HASH_SCHEMA + "\n" + canonical_json(definition_document(spec, context_data, commit))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def context_digest(files: Mapping[str, str | bytes]) -> str:
    """The digest of a flat set of context files, exactly as the build pod recomputes it in shell:
    `find -L . -maxdepth 1 -type f ! -name '..*' | LC_ALL=C sort | xargs -r sha256sum | sha256sum`."""
    listing = "".join(
        f"{hashlib.sha256(content.encode('utf-8') if isinstance(content, str) else content).hexdigest()}  ./{name}\n"
        for name, content in sorted(files.items(), key=lambda item: item[0].encode("utf-8"))
    )
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def image_repository(definition_hash_value: str, registry: str, template: str = DEFAULT_IMAGE_TEMPLATE,
                     namespace: str = "default") -> str:
    """The repository (no tag) for a hash built in `namespace`, from the configured template."""
    try:
        name = template.format(registry=registry.rstrip("/"), hash=definition_hash_value, namespace=namespace)
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"image template {template!r} uses an unknown field {error}; only {{registry}}, {{namespace}} and "
            "{hash} exist"
        ) from None
    if "{hash}" not in template:
        raise ValueError(f"image template {template!r} must contain {{hash}} so each definition gets its own image")
    return name.lstrip("/")


def envkiln_image_namespace(image: str, registries: Iterable[str],
                            template: str = DEFAULT_IMAGE_TEMPLATE) -> str | None:
    """The namespace whose envkiln image `image` is (repository:tag or @digest), when it lies under
    the image template in one of envkiln's own `registries`; None otherwise (or when the template
    has no {namespace}: images are not kept apart by namespace then)."""
    if "{namespace}" not in template:
        return None
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository = repository[: len(repository) - len(last)] + last.split(":", 1)[0]
    for registry in registries:
        pattern = ""
        for literal, field, _, _ in string.Formatter().parse(template):
            pattern += re.escape(literal)
            if field == "registry":
                pattern += re.escape(registry.rstrip("/"))
            elif field == "namespace":
                pattern += "(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
            elif field == "hash":
                pattern += "[0-9a-f]{32}"
            elif field is not None:
                return None
        found = re.fullmatch(pattern, repository.lstrip("/"))
        if found is not None:
            return found.group("namespace")
    return None


def image_name(definition_hash_value: str, registry: str, template: str = DEFAULT_IMAGE_TEMPLATE,
               namespace: str = "default") -> str:
    """repository:tag, the tag being the hash (envkiln also pushes `latest`)."""
    return f"{image_repository(definition_hash_value, registry, template, namespace)}:{definition_hash_value}"


def pull_reference(image: str, digest: str, push_registry: str, pull_registry: str) -> str:
    """repository@digest of a pushed `image` (repository:tag), under the name kubelets pull from."""
    repository = image.rsplit(":", 1)[0]
    if repository.startswith(push_registry + "/") and pull_registry != push_registry:
        repository = pull_registry + repository[len(push_registry):]
    return f"{repository}@{digest}"
