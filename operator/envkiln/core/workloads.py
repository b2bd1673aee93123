"""Workloads that name an environment: which image and variables a pod gets, and when.

Pure functions; the admission webhook (envkiln.reconcile.webhook) and the gate release use them.

A pod opts in with the label `envkiln.dev/environment` (it scopes the webhook's object
selector, so other pods never reach it). Its value is the Environment name, or `inline` for an
anonymous environment defined in the annotation `envkiln.dev/environment-spec`. The annotation
`envkiln.dev/environment` may give `name`, `name:version` or `name@latest` (the newest version that was
built); `envkiln.dev/container` picks the container (default: the first).

Curated environments live in the curated namespace and are usable from every namespace: the annotation
`curated/NAME`, `curated/NAME:VERSION` or `curated/NAME@latest`, or the label `curated_NAME` (a label
value cannot hold '/').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from envkiln.core.definition import definition_hash, is_commit
from envkiln.core.errors import describe
from envkiln.core.models import EnvironmentSpec, StrictLoader
from envkiln.core.names import (
    ANNOTATION_CONTAINER,
    ANNOTATION_ENVIRONMENT,
    ANNOTATION_SPEC,
    ANNOTATION_VERSION,
    API_VERSION,
    CURATED_LABEL_PREFIX,
    CURATED_REFERENCE_PREFIX,
    INLINE,
    KIND_ENVIRONMENT,
    LABEL_ANONYMOUS,
    LABEL_ENVIRONMENT,
    LABEL_HASH,
    LATEST,
    POD_CONDITION,
    SCHEDULING_GATE,
    anonymous_environment_name,
)

# The names under which the rest of the code (and the tests) know them.
LABEL = LABEL_ENVIRONMENT
ANNOTATION = ANNOTATION_ENVIRONMENT
VERSION_ANNOTATION = ANNOTATION_VERSION
CONTAINER_ANNOTATION = ANNOTATION_CONTAINER
SPEC_ANNOTATION = ANNOTATION_SPEC
GATE = SCHEDULING_GATE
ANONYMOUS_LABEL = LABEL_ANONYMOUS
__all__ = ["ANNOTATION", "ANONYMOUS_LABEL", "CONTAINER_ANNOTATION", "GATE", "INLINE", "LABEL", "MAX_INLINE_SPEC_BYTES",
           "POD_CONDITION", "SPEC_ANNOTATION", "VERSION_ANNOTATION", "EnvironmentRequest", "WorkloadError",
           "anonymous_environment", "anonymous_name", "container_index", "image_for_version", "latest_version",
           "parse_inline_spec", "parse_request", "with_environment_variables"]
# Matched whole (re.fullmatch): `$` would also match before a trailing line feed.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_MAX_NAME = 253
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # models' VERSION_PATTERN
# The largest inline spec the webhook reads (UTF-8 bytes of the annotation). Reading YAML costs about 1.5 us a
# byte and the webhook answers every pod of the namespace: 16 KiB (a few hundred requirements) is read, validated
# and hashed in a few tens of milliseconds; a larger environment is a named Environment (docs/security.md).
MAX_INLINE_SPEC_BYTES = 16 * 1024


class WorkloadError(ValueError):
    """The pod cannot be admitted; the message says what to change."""


@dataclass(frozen=True)
class EnvironmentRequest:
    name: str | None  # None: anonymous (inline spec)
    version: str | None
    container: str | None
    inline_spec: EnvironmentSpec | None = None
    curated: bool = False  # the Environment `name` in the curated namespace, not the pod's
    latest: bool = False  # NAME@latest: the newest version that was built

    @property
    def reference(self) -> str:
        """How the request is written in the annotation (`curated/` for curated ones)."""
        prefix = CURATED_REFERENCE_PREFIX if self.curated else ""
        suffix = f":{self.version}" if self.version else f"@{LATEST}" if self.latest else ""
        return f"{prefix}{self.name}{suffix}"

    @property
    def label(self) -> str:
        """The label value that records the request (`curated_NAME` for curated ones)."""
        return f"{CURATED_LABEL_PREFIX}{self.name}" if self.curated else str(self.name)


def parse_request(labels: dict[str, str], annotations: dict[str, str]) -> EnvironmentRequest:
    label = labels.get(LABEL, "")
    reference = annotations.get(ANNOTATION) or label
    container = annotations.get(CONTAINER_ANNOTATION) or None
    if label == INLINE or (SPEC_ANNOTATION in annotations and not annotations.get(ANNOTATION)):
        return EnvironmentRequest(None, None, container, parse_inline_spec(annotations.get(SPEC_ANNOTATION, "")))
    prefix = next((p for p in (CURATED_REFERENCE_PREFIX, CURATED_LABEL_PREFIX) if reference.startswith(p)), "")
    curated = bool(prefix)
    bare, at, tag = reference[len(prefix):].partition("@")
    name, _, written = bare.partition(":")
    if at and (tag != LATEST or written):
        raise WorkloadError(f"{ANNOTATION}: {reference!r}: after '@' only {LATEST!r} is known (NAME@{LATEST}, the "
                            "newest version that was built); write NAME:VERSION for a given version")
    version = written or (None if at else annotations.get(VERSION_ANNOTATION)) or None
    if not name or len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise WorkloadError(f"{ANNOTATION}: {reference!r} is not an Environment name (optionally name:version or "
                            f"name@{LATEST}; {CURATED_REFERENCE_PREFIX}name for a curated one)")
    if version is not None and not _VERSION.fullmatch(version):
        source = ANNOTATION if written else VERSION_ANNOTATION
        raise WorkloadError(f"{source}: version {version!r} is not a version label (letters, digits, '.', '_', "
                            "'-', at most 63 characters)")
    return EnvironmentRequest(name, version, container, curated=curated, latest=bool(at))


def parse_inline_spec(text: str) -> EnvironmentSpec:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INLINE_SPEC_BYTES:
        raise WorkloadError(f"annotation {SPEC_ANNOTATION} holds {size} bytes, more than the {MAX_INLINE_SPEC_BYTES} "
                            f"an inline spec may hold; create a named Environment and label the pod {LABEL}=NAME")
    if not text.strip():
        raise WorkloadError(f"annotation {SPEC_ANNOTATION} is empty; put the environment spec there (YAML or JSON)")
    try:
        # StrictLoader (a SafeLoader) refuses duplicate keys and absurd nesting, as for manifests.
        # ValueError: a scalar that resolves to a type but cannot be built, e.g. the date 2024-13-01.
        document = yaml.load(text, Loader=StrictLoader)
    except (yaml.YAMLError, ValueError, OverflowError) as error:
        raise WorkloadError(f"annotation {SPEC_ANNOTATION} is not valid YAML/JSON: {error}") from None
    if not isinstance(document, dict):
        raise WorkloadError(f"annotation {SPEC_ANNOTATION} must be a mapping (an Environment spec)")
    try:
        spec = EnvironmentSpec.model_validate(document)
    except ValidationError as error:
        raise WorkloadError(f"annotation {SPEC_ANNOTATION}: " + "; ".join(describe(error, "spec"))) from None
    if spec.build is not None and spec.build.config_map is not None:
        raise WorkloadError(f"annotation {SPEC_ANNOTATION}: spec.build.configMap is not supported in anonymous "
                            "environments; create a named Environment")
    if spec.build is not None and spec.build.git is not None and not is_commit(spec.build.git.ref):
        raise WorkloadError(f"annotation {SPEC_ANNOTATION}: spec.build.git.ref must be a full commit (40 hex) in "
                            "an anonymous environment, whose name is its hash; pin the commit, or create a named "
                            "Environment to follow a branch")
    return spec


def anonymous_name(spec: EnvironmentSpec) -> str:
    return anonymous_environment_name(definition_hash(spec))


def anonymous_environment(spec: EnvironmentSpec, namespace: str) -> dict[str, Any]:
    value = definition_hash(spec)
    return {
        "apiVersion": API_VERSION, "kind": KIND_ENVIRONMENT,
        "metadata": {"name": anonymous_environment_name(value), "namespace": namespace,
                     "labels": {ANONYMOUS_LABEL: "true", LABEL_HASH: value}},
        "spec": spec.to_kube(),
    }


def anonymous_mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why an existing anonymous Environment cannot stand for the inline spec (None: it can).

    Its name follows from the hash of the inline spec, so anyone who can create Environments can
    create it first with another spec; pods must never get that one's image."""
    try:
        spec = EnvironmentSpec.model_validate(existing.get("spec") or {}).to_kube()
    except ValueError:
        spec = None
    if spec == wanted["spec"]:
        return None
    name = wanted["metadata"]["name"]
    return (f"Environment {name} exists but its spec is not the pod's inline spec (it was changed, or created "
            f"by someone else); delete it (kubectl delete environment -n {wanted['metadata']['namespace']} {name}) "
            "and envkiln recreates it from the inline spec")


def latest_version(environment: dict[str, Any]) -> str | None:
    """NAME@latest: the newest entry of status.versions that was built (has an image); None when none was
    built yet (the current version is then the one to wait for)."""
    for record in reversed((environment.get("status") or {}).get("versions") or []):
        if record.get("imageRef") and record.get("version"):
            return str(record["version"])
    return None


def image_for_version(environment: dict[str, Any], version: str | None) -> str | None:
    """The digest reference for the wanted version; None while it is not built yet.

    Raises WorkloadError when the version is neither current nor in the history.
    """
    spec, status = environment.get("spec") or {}, environment.get("status") or {}
    current = spec.get("version", "1")
    if version is None or version == current:
        if status.get("phase") == "Ready" and status.get("observedGeneration") == environment["metadata"].get(
                "generation"):
            return status.get("imageRef")
        return None
    for record in reversed(status.get("versions") or []):
        if record.get("version") == version:
            if record.get("imageRef"):
                return str(record["imageRef"])
            raise WorkloadError(f"Environment {environment['metadata']['name']} version {version} was never built; "
                                f"use version {current} or another one from status.versions")
    known = sorted({r.get("version") for r in status.get("versions") or []} | {current})
    raise WorkloadError(f"Environment {environment['metadata']['name']} has no version {version!r}; "
                        f"known versions: {', '.join(known)}")


def container_index(pod: dict[str, Any], wanted: str | None) -> int:
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        raise WorkloadError("the pod has no containers")
    if wanted is None:
        return 0
    for index, container in enumerate(containers):
        if container.get("name") == wanted:
            return index
    names = ", ".join(c.get("name", "?") for c in containers)
    raise WorkloadError(f"{CONTAINER_ANNOTATION}: no container named {wanted!r} (containers: {names})")


def with_environment_variables(container: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """The container with the environment's variables added; the pod's own values win."""
    existing = list(container.get("env") or [])
    names = {item.get("name") for item in existing}
    added = [{"name": key, "value": value} for key, value in sorted(variables.items()) if key not in names]
    return {**container, "env": existing + added}
