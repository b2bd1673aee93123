"""The chart's README is generated from its values.yaml (scripts/chart_docs.py, `make chart-docs`)
and is up to date."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "envkiln"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_docs", ROOT / "scripts" / "chart_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_chart_readme_is_up_to_date() -> None:
    expected = _generator().render((CHART / "values.yaml").read_text())
    assert (CHART / "README.md").read_text() == expected, "charts/envkiln/README.md is stale: run `make chart-docs`"


def test_every_value_is_in_the_readme_with_its_default() -> None:
    """Each leaf of values.yaml has a row, in order, with its default as YAML reads it."""
    docs = _generator()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = {v.path: v for v in docs.values_of((CHART / "values.yaml").read_text())}

    def leaves(tree: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out += leaves(value, path + ".") if isinstance(value, dict) and value and path in rows and rows[
                path].section else [path]
        return out

    for path in leaves(values):
        assert path in rows, f"{path} has no row"
        assert not rows[path].section
    assert rows["replicas"].default == 2 and "Kopf" in rows["replicas"].description
    assert rows["crds.keep"].default is True and "resource-policy: keep" in rows["crds.keep"].description
    assert rows["image.tag"].description == "Default: the chart's appVersion."


def test_the_generator_follows_comments_nesting_and_lists() -> None:
    docs = _generator()
    text = (
        "# Top comment\n"
        "# on two lines.\n"
        "top:\n"
        "  # Inner.\n"
        "  inner: 3   # trailing, with a '#' in quotes: \"a # b\"\n"
        "  flow: {a: 1}\n"
        "  items:\n"
        "    - name: x\n"
        "      value: y\n"
        "\n"
        "# Not attached to anything: a blank line follows.\n"
        "\n"
        "other: \"v # not a comment\"\n"
    )
    rows = {v.path: v for v in docs.values_of(text)}
    assert list(rows) == ["top", "top.inner", "top.flow", "top.items", "other"]
    assert rows["top"].section and rows["top"].description == "Top comment on two lines."
    assert rows["top.inner"].description == "Inner. trailing, with a '#' in quotes: \"a # b\""
    assert rows["top.flow"].default == {"a": 1} and not rows["top.flow"].section
    assert rows["top.items"].default == [{"name": "x", "value": "y"}]
    assert rows["other"].default == "v # not a comment" and rows["other"].description == ""
    rendered = docs.render(text)
    assert "| `top.inner` | `3` | Inner. trailing" in rendered
    assert '| `other` | `"v # not a comment"` |  |' in rendered
