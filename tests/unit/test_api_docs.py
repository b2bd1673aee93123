"""docs/api.md is what scripts/api_docs.py makes of crds/*.yaml (`make api-docs`), and it documents every
field of every CRD: a model change lands with its reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("envkiln_api_docs_script", ROOT / "scripts" / "api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api_docs = _load()


def test_docs_api_md_is_up_to_date_with_the_crds() -> None:
    expected = api_docs.render()
    actual = (ROOT / "docs" / "api.md").read_text()
    assert actual == expected, "docs/api.md is stale: run `make api-docs` (crds/ changed: `make crds` first)"


def _leaf_paths(schema: dict[str, Any], path: str) -> set[str]:
    paths = set()
    for name, child in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        paths.add(here)
        if child.get("type") == "array" and (child.get("items") or {}).get("properties"):
            paths |= _leaf_paths(child["items"], f"{here}[]")
        elif child.get("properties"):
            paths |= _leaf_paths(child, here)
    return paths


def test_every_field_and_column_of_every_crd_is_documented() -> None:
    text = api_docs.render()
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        assert f"## {kind} (" in text
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            for top in ("spec", "status"):
                for field in _leaf_paths(schema["properties"][top], top):
                    assert f"| `{field}` |" in text, f"{kind} {field} is missing from docs/api.md"
            for column in version.get("additionalPrinterColumns") or []:
                assert f"| {column['name']} | `{column['jsonPath']}`" in text, column


def test_a_field_shows_its_type_requirement_default_and_validation() -> None:
    crd = {"spec": {"group": "example.dev", "scope": "Namespaced",
                    "names": {"kind": "Thing", "plural": "things"},
                    "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "description": "How big."},
                            "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                            "items": {"type": "array", "items": {"type": "object", "properties": {
                                "name": {"type": "string", "minLength": 1}}}},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}}}}}]}}
    lines = "\n".join(api_docs.render_crd(crd))
    assert "| `spec.size` | integer | **required**. How big. Validation: ≥ 1. |" in lines
    assert '| `spec.mode` | string | Default `"A"`. Validation: one of `A`, `B`. |' in lines
    assert "| `spec.items[].name` | string | Validation: not empty. |" in lines
    assert "| `spec.labels` | map[string]string |" in lines
