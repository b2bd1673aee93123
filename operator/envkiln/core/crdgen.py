"""Generate the CustomResourceDefinitions from the pydantic models.

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references are
inlined, `Optional` unions collapse to their type, mixed unions become
`x-kubernetes-preserve-unknown-fields` (validated by the operator instead), and the
Kubernetes extensions (list-map conditions, CEL immutability rule) are added. Every field
carries its model's description (`kubectl explain`); the printer columns are for `kubectl get`
(priority 1: only with `-o wide`). `status` has a default (UNRECONCILED_STATUS) so that an object
the operator has not written yet reads as InProgress to kstatus, never as Current.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from envkiln import GROUP, VERSION
from envkiln.core.models import (
    EnvironmentBuildSpec,
    EnvironmentBuildStatus,
    EnvironmentSpec,
    EnvironmentStatus,
)

# The spec fields that shape the image. Kept next to the hash's own list (definition.py);
# a unit test checks the two agree.
IMAGE_AFFECTING_FIELDS = ("image", "userManaged", "conda", "pip", "dockerSteps", "build", "lock")

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


# What the API server fills in as `status` while the operator has not written one (an operator
# that is down, a namespace it does not watch). Structural-schema defaulting applies it on every
# read from etcd, so every GET, LIST and watch event carries it. metadata.generation starts at 1,
# so observedGeneration 0 is behind it: kstatus (Flux's `wait: true`, `kubectl wait`-style gates)
# says InProgress ("generation is 1, but latest observed generation is 0") instead of Current, the
# verdict of an object without status. The operator reads it as "generation not observed yet" too.
UNRECONCILED_STATUS: dict[str, Any] = {"observedGeneration": 0}


def _with_conditions(status: dict[str, Any]) -> dict[str, Any]:
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["maxItems"] = 16
    conditions["items"]["required"] = ["type", "status", "reason", "lastTransitionTime"]
    status["default"] = dict(UNRECONCILED_STATUS)
    return status


# The standard fields' descriptions, as Kubernetes' own types word them (shortened).
_API_VERSION = ("APIVersion defines the versioned schema of this representation of an object; servers convert "
                "recognized schemas to the latest internal value.")
_KIND = "Kind is a string value representing the REST resource this object represents."


def _crd(
    kind: str, plural: str, short: str, spec: dict[str, Any], status: dict[str, Any], columns: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    schema = {
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": _API_VERSION, "type": "string"},
            "kind": {"description": _KIND, "type": "string"},
            "metadata": {"type": "object"},  # the API server allows nothing else here, not even a description
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


def _column(name: str, type_: str, path: str, description: str, wide: bool = False) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, "description": description,
            **({"priority": 1} if wide else {})}


# The Ready condition's reason: one CamelCase word, a short printable "why" next to the phase.
_READY_REASON = '.status.conditions[?(@.type=="Ready")].reason'
# The Ready condition's status (True, False, Unknown): what kstatus and `kubectl wait` read; empty
# until the operator has written a status.
_READY = '.status.conditions[?(@.type=="Ready")].status'


def environment_crd() -> dict[str, Any]:
    spec = model_schema(EnvironmentSpec)
    spec["description"] = ("The definition: a base image with conda/pip packages and docker steps, a build context "
                           "you bring, or a ready image (userManaged). The image-affecting fields are immutable "
                           "while spec.version stays the same.")
    spec["x-kubernetes-validations"] = [immutability_rule()]
    status = _with_conditions(model_schema(EnvironmentStatus, mode="serialization"))
    status["description"] = ("What the operator made of the definition: phase, hash, image, conditions, history. "
                             "Until the operator has written it: {observedGeneration: 0}, from the API server.")
    columns = [
        _column("Version", "string", ".spec.version", "spec.version: the definition's label"),
        _column("Hash", "string", ".status.shortHash", "The definition hash (first 12 characters)"),
        _column("Phase", "string", ".status.phase", "Pending, Building, Ready or Failed"),
        _column("Ready", "string", _READY, "The Ready condition: True, False or Unknown (empty: not reconciled yet)"),
        _column("Image", "string", ".status.image", "The image built for the definition (repository:tag)"),
        _column("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
        _column("Message", "string", ".status.message", "The phase in words; on failure, why and what to do"),
        _column("Kind", "string", ".status.kind", "SystemManaged, BuildContext or BringYourOwnContainer", wide=True),
        _column("Reason", "string", _READY_REASON, "Why it is (not) Ready, in one word", wide=True),
        _column("Cache Hit", "boolean", ".status.cacheHit", "true when this Environment caused no build", wide=True),
        _column("Image Ref", "string", ".status.imageRef", "The digest reference workloads run", wide=True),
    ]
    return _crd("Environment", "environments", "env", spec, status, columns,
                "An Azure ML-style environment: a versioned, reproducible definition of where training runs, built "
                "into a container image once per definition hash. Workloads labelled envkiln.dev/environment run "
                "status.imageRef.")


def environment_build_crd() -> dict[str, Any]:
    spec = model_schema(EnvironmentBuildSpec)
    spec["x-kubernetes-validations"] = [
        {
            "rule": "self == oldSelf",
            "message": "an EnvironmentBuild's spec is immutable",
            "reason": "FieldValueForbidden",
        }
    ]
    spec["description"] = ("What to build, rendered by the operator from an Environment's definition (immutable; "
                           "signed by the operator).")
    status = _with_conditions(model_schema(EnvironmentBuildStatus, mode="serialization"))
    status["description"] = ("The build's attempts and result. Until the operator has written it: "
                             "{observedGeneration: 0}, from the API server.")
    columns = [
        _column("Hash", "string", ".spec.hash", "The definition hash this build makes the image of"),
        _column("Builder", "string", ".spec.builder", "kaniko, buildah or local"),
        _column("Phase", "string", ".status.phase", "Pending, Building, Succeeded or Failed"),
        _column("Ready", "string", _READY, "The Ready condition: True once Succeeded (empty: not reconciled yet)"),
        _column("Attempts", "integer", ".status.attempts", "Attempts started so far"),
        _column("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
        _column("Message", "string", ".status.message", "The phase in words; on failure, why"),
        _column("Reason", "string", '.status.conditions[?(@.type=="Succeeded")].reason',
                "Why it has (not) succeeded, in one word", wide=True),
        _column("Job", "string", ".status.job", "The Job of the current attempt", wide=True),
        _column("Image Ref", "string", ".status.imageRef", "The pushed image (repository@sha256:...)", wide=True),
    ]
    return _crd("EnvironmentBuild", "environmentbuilds", "envbuild", spec, status, columns,
                "One build of one Environment definition hash in a namespace, created and signed by the envkiln "
                "operator. Every Environment with that hash in the namespace follows it; delete a Failed one to "
                "build again.")


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
