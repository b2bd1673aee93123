"""The committed CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.core.conditions import kstatus
from envkiln.core.crdgen import UNRECONCILED_STATUS, all_crds, render_crds
from envkiln.core.models import EnvironmentBuildStatus, EnvironmentStatus

ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = [ROOT / "crds", ROOT / "charts" / "envkiln" / "crds"]


@pytest.mark.parametrize(
    "directory", [d for d in CRD_DIRS if d.parent.exists()], ids=lambda d: str(d.relative_to(ROOT))
)
def test_committed_crds_match_the_models(directory: Path) -> None:
    for name, text in render_crds().items():
        path = directory / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == text, f"{path} differs from the models: run `make crds` and commit"
    others = {p.name for p in directory.glob("*.yaml")} - set(render_crds())
    assert others <= {"kopf.dev_peerings.yaml"}, f"unexpected CRD files {others}"


def _walk(node: object, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("properties",):
                for name, sub in value.items():
                    yield from _walk(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                yield from _walk(value, f"{path}[]")


def test_metadata_is_only_typed() -> None:
    """The API server refuses a CRD whose metadata schema says more than its type."""
    for crd in all_crds().values():
        assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {"type": "object"}


def test_schemas_are_structural() -> None:
    for crd in all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
            for forbidden in ("anyOf", "oneOf", "$ref", "allOf", "title"):
                assert forbidden not in node, f"{path} has {forbidden}"
            assert not ("properties" in node and "additionalProperties" in node), path


def test_environment_crd_shape() -> None:
    crd = all_crds()["envkiln.dev_environments.yaml"]
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["env"] and names["categories"] == ["envkiln"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Version", "Hash", "Phase", "Ready", "Image", "Age", "Message"]
    assert [c["name"] for c in columns if c.get("priority") == 1] == [
        "Kind", "Reason", "Cache Hit", "Image Ref"]  # `kubectl get -o wide`
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = spec["x-kubernetes-validations"][0]["rule"]
    for field in ("image", "userManaged", "conda", "pip", "dockerSteps", "build"):
        assert f"self.{field} == oldSelf.{field}" in rule
    assert "description" not in rule and "environmentVariables" not in rule
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_build_crd_shape() -> None:
    crd = all_crds()["envkiln.dev_environmentbuilds.yaml"]
    assert crd["spec"]["names"]["shortNames"] == ["envbuild"]
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Hash", "Builder", "Phase", "Ready", "Attempts", "Age", "Message"]
    assert [c["name"] for c in columns if c.get("priority") == 1] == ["Reason", "Job", "Image Ref"]
    assert yaml.safe_dump(crd)  # serialisable


def _properties(node: object, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every named field, however deep."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{path}.{name}", sub
            yield from _properties(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _properties(node[key], f"{path}[]")


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_every_field_is_described(name: str) -> None:
    """`kubectl explain environment.spec --recursive` reads as documentation."""
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert len(schema.get("description", "")) > 40
    fields = list(_properties(schema))
    assert len(fields) > 30
    # The API server refuses anything but a type on metadata; kubectl explains it from ObjectMeta.
    missing = [path for path, sub in fields if path != ".metadata" and not sub.get("description", "").strip()]
    assert not missing, f"fields without a description: {missing}"
    for path, sub in fields:
        assert "envkiln." not in sub.get("description", "").replace("envkiln.dev", ""), f"{path}: a module name"


def _resolves(schema: dict[str, Any], json_path: str) -> bool:
    node: dict[str, Any] = schema
    for part in re.sub(r"\[[^\]]*\]", "", json_path).lstrip(".").split("."):
        if part == "metadata" and node is schema:
            return True
        node = node.get("properties", {}).get(part) or {}
        if not node:
            return False
        if node.get("type") == "array":
            node = node["items"]
    return True


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_printer_columns(name: str) -> None:
    version = all_crds()[name]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        assert _resolves(schema, column["jsonPath"]), column
        assert column["description"] and column.get("priority", 0) in (0, 1)
        assert column["type"] in ("string", "integer", "boolean", "date")
    default_view = [c for c in version["additionalPrinterColumns"] if not c.get("priority")]
    # Ready and its words in the default view, as Flux's own resources show them; the message, the
    # one long cell, last (after Age) so that it pushes no other column aside.
    assert default_view[-2]["name"] == "Age" and default_view[-1]["name"] == "Message"
    ready = next(c for c in default_view if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_status_defaults_to_not_reconciled(name: str) -> None:
    """The API server fills in this status on an object the operator has not written yet: it must be
    a valid status (the API server refuses a CRD whose default does not validate, and the operator
    reads it), and kstatus must read it as InProgress at every generation, never Current."""
    schema = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]
    assert status["default"] == UNRECONCILED_STATUS == {"observedGeneration": 0}
    assert "required" not in status and set(UNRECONCILED_STATUS) <= set(status["properties"])
    assert status["properties"]["observedGeneration"]["type"] == "integer"
    model = EnvironmentStatus if name == "envkiln.dev_environments.yaml" else EnvironmentBuildStatus
    assert model.model_validate(UNRECONCILED_STATUS).model_dump(by_alias=True, exclude_none=True) == UNRECONCILED_STATUS
    kind = all_crds()[name]["spec"]["names"]["kind"]
    for generation in (1, 2, 7):
        obj = {"kind": kind, "metadata": {"name": "x", "generation": generation}, "status": dict(UNRECONCILED_STATUS)}
        assert kstatus(obj) == ("InProgress", f"{kind} generation is {generation}, but latest observed "
                                              "generation is 0")
    assert kstatus({"kind": kind, "metadata": {"name": "x", "generation": 1}})[0] == "Current"  # without it
