"""`-o json|yaml|name` and the tables of the `envkiln` command: what each prints, and that it reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from envkiln.cli.cluster import image_verdict, list_rows
from envkiln.cli.errors import NotFound, NotReady
from envkiln.cli.output import as_list, dump, dump_items, resource_name, table

ENV: dict[str, Any] = {
    "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
    "metadata": {"name": "torch", "namespace": "team", "generation": 2},
    "spec": {"version": "2", "image": "python:3.11-slim", "pip": ["numpy==2.1.0"]},
    "status": {"phase": "Ready", "observedGeneration": 2, "shortHash": "0123456789ab", "imageRef": "r@sha256:a",
               "versions": [{"version": "1", "imageRef": "r@sha256:old"}, {"version": "0"}],
               "message": "ünïcode 中文"}}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("value", [ENV, [ENV, ENV], {"a": None, "b": [1, "2", True]}, "text: with colon"])
def test_structured_output_reads_back(fmt: str, value: Any) -> None:
    text = dump(value, fmt)
    assert text.endswith("\n")
    assert (json.loads(text) if fmt == "json" else yaml.safe_load(text)) == value
    assert "中文" in text or "中文" not in json.dumps(value, ensure_ascii=False)  # not escaped


def test_json_keeps_the_key_order_of_the_object() -> None:
    assert list(json.loads(dump(ENV, "json"))) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert dump({"b": 1, "a": 2}, "yaml") == "b: 1\na: 2\n"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        dump(ENV, "xml")


@pytest.mark.parametrize(("items", "single", "kind"), [
    ([ENV], True, "Environment"),  # one item: itself, as `kubectl get x NAME -o json`
    ([ENV], False, "List"),  # a listing is always a List, as `kubectl get x -o json`
    ([ENV, ENV], True, "List"),
    ([], False, "List"),
])
def test_one_item_or_a_list(items: list[dict[str, Any]], single: bool, kind: str) -> None:
    printed = json.loads(dump_items(items, "json", single))
    assert printed["kind"] == kind
    if kind == "List":
        assert printed == as_list(items) and printed["apiVersion"] == "v1" and printed["items"] == items


def test_name_output_is_kubectls() -> None:
    assert resource_name(ENV) == "environment.envkiln.dev/torch"


@pytest.mark.parametrize(("rows", "expected"), [
    ([("NAME", "X"), ("a", "1")], "NAME  X\na     1\n"),
    ([("N", "VERSION", "REF"), ("long-name", "1", "r@sha256:a"), ("b", "22", "")], "N          VERSION  REF\n"
     "long-name  1        r@sha256:a\nb          22\n"),
    ([], ""),
])
def test_table_columns(rows: list[tuple[str, ...]], expected: str) -> None:
    assert table(rows) == expected


@pytest.mark.parametrize(("all_namespaces", "expected"), [
    (False, [("NAME", "VERSION", "HASH", "PHASE", "IMAGE REF"), ("torch", "2", "0123456789ab", "Ready", "r@sha256:a")]),
    (True, [("NAMESPACE", "NAME", "VERSION", "HASH", "PHASE", "IMAGE REF"),
            ("team", "torch", "2", "0123456789ab", "Ready", "r@sha256:a")]),
])
def test_list_rows(all_namespaces: bool, expected: list[tuple[str, ...]]) -> None:
    assert list_rows([ENV], all_namespaces) == expected
    bare = {"metadata": {"name": "new"}, "spec": {}}
    assert list_rows([bare], False)[1] == ("new", "1", "", "", "")


def pending(**status: Any) -> dict[str, Any]:
    return {**ENV, "status": {**ENV["status"], "phase": "Building", "imageRef": None, **status}}


# (id, environment, version, image, error type, words)
IMAGE_CASES: list[tuple[str, dict[str, Any], str | None, str | None, type | None, str]] = [
    ("ready", ENV, None, "r@sha256:a", None, ""),
    ("ready-named-version", ENV, "2", "r@sha256:a", None, ""),
    ("earlier-version", ENV, "1", "r@sha256:old", None, ""),
    ("earlier-version-never-built", ENV, "0", None, NotReady, "version 0 was never built"),
    ("no-such-version", ENV, "7", None, NotFound, "has no version '7'; known versions: 0, 1, 2"),
    ("building", pending(message="building"), None, None, NotReady, "is not Ready (phase Building): building"),
    ("ready-for-an-older-generation", {**ENV, "metadata": {**ENV["metadata"], "generation": 3}}, None, None,
     NotReady, "is not Ready"),
]


@pytest.mark.parametrize(("case", "environment", "version", "image", "error", "words"), IMAGE_CASES,
                         ids=[c[0] for c in IMAGE_CASES])
def test_image_verdict(case: str, environment: dict[str, Any], version: str | None, image: str | None,
                       error: type | None, words: str) -> None:
    found, problem = image_verdict(environment, version)
    assert found == image
    assert (type(problem) if problem else None) is error
    assert words in str(problem or "")
