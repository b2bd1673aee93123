"""Reading Environment manifests from YAML files (several documents per file)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from envkiln.decisions.curated import check_reserved_name
from envkiln.errors import DefinitionError, describe
from envkiln.models import DEFAULT_CURATED_NAMESPACE, Environment


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
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DefinitionError([f"{source}: not valid YAML{where}: {getattr(error, 'problem', error)}"]) from None


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
    return environment


def load_environments(
    paths: Iterable[str | Path], curated_namespace: str = DEFAULT_CURATED_NAMESPACE
) -> tuple[list[LoadedEnvironment], list[LoadProblem]]:
    """Every Environment in the files, and every problem found (nothing stops at the first)."""
    loaded: list[LoadedEnvironment] = []
    problems: list[LoadProblem] = []
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems.append(LoadProblem(str(path), [f"cannot read: {error}"]))
            continue
        try:
            documents = load_documents(text, str(path))
        except DefinitionError as error:
            problems.append(LoadProblem(str(path), error.problems))
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
