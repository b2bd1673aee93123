"""Reading Environment manifests from YAML files (several documents per file)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from envkiln.core.decisions.curated import check_reserved_name
from envkiln.core.errors import DefinitionError, describe
from envkiln.core.models import DEFAULT_CURATED_NAMESPACE, Environment, StrictLoader
from envkiln.core.models.base import DNS_SUBDOMAIN
from envkiln.core.render import InvalidLock, pinned_lock


@dataclass
class LoadedEnvironment:
    source: str
    environment: Environment
    # ConfigMaps found in the same file, by name: their data feeds the hash of
    # environments whose build context is a ConfigMap.
    config_maps: dict[str, dict[str, str | bytes]] = field(default_factory=dict)

    def context_data(self) -> dict[str, str | bytes] | None:
        build = self.environment.spec.build
        if build is None or build.config_map is None:
            return None
        return self.config_maps.get(build.config_map.name)


@dataclass
class LoadProblem:
    source: str
    problems: list[str]


def load_documents(text: str, source: str = "<input>") -> list[Any]:
    """The YAML documents of a file, refusing duplicate keys and absurd nesting (StrictLoader)."""
    try:
        return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DefinitionError([f"not valid YAML{where}: {getattr(error, 'problem', None) or error}"]) from None


# Kubernetes' rule for ConfigMap keys: a file name, never a path.
_CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def _config_map_problems(document: dict[str, Any]) -> list[str]:
    """What Kubernetes would refuse in a ConfigMap, and what could not be hashed."""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        shown = "missing" if name is None else f"not a string ({type(name).__name__})"
        return [f"ConfigMap: metadata.name is {shown}; name the ConfigMap the build context refers to"]
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        return [f"ConfigMap: metadata.name {name!r} is not a valid resource name: lowercase letters, digits, '-' "
                "and '.', starting and ending with a letter or digit"]
    problems: list[str] = []
    seen: set[str] = set()
    for section in ("data", "binaryData"):
        entries = document.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            problems.append(f"ConfigMap {name}: {section} must be a mapping of file names to contents")
            continue
        for key, value in entries.items():
            if not isinstance(key, str) or not _CONFIG_MAP_KEY.fullmatch(key) or key in (".", "..") \
                    or key.startswith(".."):
                problems.append(f"ConfigMap {name}: {section} key {key!r} is not a ConfigMap key: a file name "
                                "of letters, digits, '-', '_' and '.', not starting with '..' (no '/')")
                continue
            if key in seen:
                problems.append(f"ConfigMap {name}: {key!r} is in both data and binaryData; keep one")
            seen.add(key)
            if not isinstance(value, str):
                problems.append(f"ConfigMap {name}: {section}.{key} is not a string ({type(value).__name__}); "
                                "values are text under data, base64 under binaryData: quote numbers and booleans")
            elif section == "binaryData":
                try:
                    base64.b64decode("".join(value.split()), validate=True)
                except binascii.Error as error:
                    problems.append(f"ConfigMap {name}: binaryData.{key} is not valid base64 ({error})")
    return problems


def document_problems(documents: list[Any]) -> list[str]:
    """What the model would not catch (or would crash on): malformed ConfigMaps, metadata that is
    not a mapping."""
    problems: list[str] = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            continue
        if document.get("kind") == "ConfigMap":
            problems += _config_map_problems(document)
        elif "metadata" in document and not isinstance(document["metadata"], dict):
            problems.append(f"document {index + 1}: metadata must be a mapping (name, namespace, labels)")
    return problems


def config_map_data(document: dict[str, Any]) -> dict[str, str | bytes]:
    data: dict[str, str | bytes] = dict(document.get("data") or {})
    for key, value in (document.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def parse_environment(
    document: Any, source: str = "<input>", curated_namespace: str = DEFAULT_CURATED_NAMESPACE
) -> Environment:
    """Validate one manifest; raise DefinitionError with field-named problems."""
    if not isinstance(document, dict):
        raise DefinitionError([f"{source}: a manifest is a mapping, not {type(document).__name__}"])
    try:
        environment = Environment.model_validate(document)
    except ValidationError as error:
        raise DefinitionError(describe(error)) from None
    name = environment.metadata.name
    if name:
        try:
            check_reserved_name(name, environment.metadata.namespace, curated_namespace)
        except ValueError as error:
            raise DefinitionError([str(error)]) from None
    try:
        pinned_lock(environment.spec)  # a pinned lock must read, and fit the definition
    except InvalidLock as error:
        raise DefinitionError([str(error)]) from None
    return environment


def load_environments(
    paths: Iterable[str | Path], curated_namespace: str = DEFAULT_CURATED_NAMESPACE,
    texts: Mapping[str, str] | None = None,
) -> tuple[list[LoadedEnvironment], list[LoadProblem]]:
    """Every Environment in the files, and every problem found (nothing stops at the first).
    `texts`: contents already read, by the name in `paths` (the CLI's standard input, `<stdin>`)."""
    loaded: list[LoadedEnvironment] = []
    problems: list[LoadProblem] = []
    for path in paths:
        path = Path(path)
        try:
            text = texts[str(path)] if texts is not None and str(path) in texts else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems.append(LoadProblem(str(path), [f"cannot read: {error}"]))
            continue
        try:
            documents = load_documents(text, str(path))
        except DefinitionError as error:
            problems.append(LoadProblem(str(path), error.problems))
            continue
        found_problems = document_problems(documents)
        if found_problems:
            problems.append(LoadProblem(str(path), found_problems))
            continue
        config_maps = {
            doc["metadata"]["name"]: config_map_data(doc)
            for doc in documents
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name")
        }
        found = 0
        for index, doc in enumerate(documents):
            if isinstance(doc, dict) and doc.get("kind") in ("ConfigMap",):
                continue
            if isinstance(doc, dict) and doc.get("kind") not in ("Environment", None):
                continue
            found += 1
            label = f"{path}#{index}"
            if isinstance(doc, dict):
                label = f"{path}: Environment {(doc.get('metadata') or {}).get('name', '?')}"
            try:
                environment = parse_environment(doc, label, curated_namespace)
            except DefinitionError as error:
                problems.append(LoadProblem(label, error.problems))
                continue
            loaded.append(LoadedEnvironment(label, environment, config_maps))
        if not found:
            problems.append(LoadProblem(str(path), ["no Environment manifest in this file"]))
    return loaded, problems
