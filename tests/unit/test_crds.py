"""The committed CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envkiln.crdgen import all_crds, render_crds

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


def _walk(node: object, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("properties",):
                for name, sub in value.items():
                    yield from _walk(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                yield from _walk(value, f"{path}[]")


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
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Version", "Hash", "Phase", "Image", "Age"]
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
    assert yaml.safe_dump(crd)  # serialisable
