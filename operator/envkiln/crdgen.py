"""Generate the CustomResourceDefinitions from the pydantic models.

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references are
inlined, `Optional` unions collapse to their type, mixed unions become
`x-kubernetes-preserve-unknown-fields` (validated by the operator instead), and the
Kubernetes extensions (list-map conditions, CEL immutability rule) are added.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from envkiln import GROUP, VERSION
from envkiln.models import (
    EnvironmentBuildSpec,
    EnvironmentBuildStatus,
    EnvironmentSpec,
    EnvironmentStatus,
)

# The spec fields that shape the image. Kept next to the hash's own list (definition.py);
# a unit test checks the two agree.
IMAGE_AFFECTING_FIELDS = ("image", "userManaged", "conda", "pip", "dockerSteps", "build")

_KEEP = {
    "type", "description", "properties", "items", "required", "additionalProperties", "enum",
    "pattern", "maxLength", "minLength", "maxItems", "minItems", "maximum", "minimum",
    "maxProperties", "format", "default",
}


def _resolve(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            target.update(extra)
            return _resolve(target, defs)
        return {k: _resolve(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, defs) for v in schema]
    return schema


def _structural(schema: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node -> one structural-schema node."""
    schema = dict(schema)
    for union_key in ("anyOf", "oneOf"):
        if union_key in schema:
            options = [o for o in schema.pop(union_key) if o.get("type") != "null"]
            outer = {k: v for k, v in schema.items() if k in ("description", "default")}
            if len(options) == 1:
                merged = {**options[0], **outer}
                return _structural(merged)
            # A real union (e.g. conda dependency: a string or a pip block): Kubernetes
            # schemas cannot say that, so accept any value here and validate in the operator.
            node: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
            if "description" in outer:
                node["description"] = outer["description"]
            return node
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    if schema.get("default") == []:
        del schema["default"]
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in _KEEP}
    if "properties" in out:
        out["properties"] = {name: _structural(sub) for name, sub in out["properties"].items()}
        out.pop("additionalProperties", None)
        out["type"] = "object"
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    elif "additionalProperties" in out:
        out.pop("additionalProperties")
    if "items" in out:
        out["items"] = _structural(out["items"])
    if out.get("type") == "integer":
        out.setdefault("format", "int64")
    return out


def model_schema(model: type, mode: str = "validation") -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[attr-defined]
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _unchanged(field: str) -> str:
    return (
        f"(has(self.{field}) == has(oldSelf.{field}) && "
        f"(!has(self.{field}) || self.{field} == oldSelf.{field}))"
    )


def immutability_rule() -> dict[str, str]:
    fields = " && ".join(_unchanged(f) for f in IMAGE_AFFECTING_FIELDS)
    return {
        "rule": f"self.version != oldSelf.version || ({fields})",
        "message": (
            "the image-affecting fields (" + ", ".join(f"spec.{f}" for f in IMAGE_AFFECTING_FIELDS)
            + ") are immutable while spec.version stays the same; bump spec.version to change the definition"
        ),
        "reason": "FieldValueForbidden",
    }


def _with_conditions(status: dict[str, Any]) -> dict[str, Any]:
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    conditions["items"]["required"] = ["type", "status", "reason", "lastTransitionTime"]
    return status


def _crd(
    kind: str, plural: str, short: str, spec: dict[str, Any], status: dict[str, Any], columns: list[dict[str, Any]]
) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["envkiln"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def environment_crd() -> dict[str, Any]:
    spec = model_schema(EnvironmentSpec)
    spec["x-kubernetes-validations"] = [immutability_rule()]
    status = _with_conditions(model_schema(EnvironmentStatus, mode="serialization"))
    columns = [
        {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
        {"name": "Hash", "type": "string", "jsonPath": ".status.shortHash"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Image", "type": "string", "jsonPath": ".status.image"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd("Environment", "environments", "env", spec, status, columns)


def environment_build_crd() -> dict[str, Any]:
    spec = model_schema(EnvironmentBuildSpec)
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self == oldSelf",
            "message": "an EnvironmentBuild's spec is immutable",
            "reason": "FieldValueForbidden",
        }
    ]
    status = _with_conditions(model_schema(EnvironmentBuildStatus, mode="serialization"))
    columns = [
        {"name": "Hash", "type": "string", "jsonPath": ".spec.hash"},
        {"name": "Builder", "type": "string", "jsonPath": ".spec.builder"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd("EnvironmentBuild", "environmentbuilds", "envbuild", spec, status, columns)


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest."""
    return {
        "envkiln.dev_environments.yaml": environment_crd(),
        "envkiln.dev_environmentbuilds.yaml": environment_build_crd(),
    }


HEADER = "# Generated by `envkiln crds` from operator/envkiln/models.py. Do not edit by hand.\n"


def render_crds() -> dict[str, str]:
    return {name: HEADER + yaml.safe_dump(crd, sort_keys=False, width=120) for name, crd in all_crds().items()}


def write_crds(directories: list[Path]) -> list[Path]:
    written = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in render_crds().items():
            path = directory / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
