"""The largest Environments the models accept, built from the models' own limits.

`limits()` reads every size constraint (maxLength, maxItems, maxProperties) of EnvironmentSpec's JSON
schema, the one the CRD is generated from; the builders take every list and map to its maximum number of
entries and every string to its maximum length, each entry valid and shaped to cost the validators the
most (long single-line docker steps, requirement lines full of specifiers, markers and URL fragments).
A new cap in the models is a new path in `limits()`, which `test_size_caps` requires a builder to use.

`largest_inline_spec()` is a pod's inline spec at the webhook's cap, of what costs most to read.

Used by tests/unit/test_size_caps.py and bench/hash_render.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from envkiln.core.crdgen import _resolve
from envkiln.core.imageref import MAX_NAME_LENGTH as MAX_IMAGE_NAME
from envkiln.core.models import EnvironmentSpec
from envkiln.core.workloads import MAX_INLINE_SPEC_BYTES

Limits = dict[str, int]
INLINE = {"envkiln.dev/environment": "inline"}  # the label of a pod whose environment is its inline spec
SIZE_KEYWORDS = ("maxLength", "maxItems", "maxProperties")


def limits() -> Limits:
    """`path:keyword` -> value for every size constraint of EnvironmentSpec. Paths: `.field`, `[]` for a
    list's items, `{}` for a map's values, `{key}` for its keys, `|N` for the N-th member of a union
    (pydantic's JSON schema; the CRD has the same constraints, but none on keys or inside unions)."""
    raw = EnvironmentSpec.model_json_schema(by_alias=True)
    schema = _resolve(raw, raw.pop("$defs", {}))
    found: Limits = {}

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for keyword in SIZE_KEYWORDS:
            if keyword in node:
                found[f"{path}:{keyword}"] = int(node[keyword])
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        walk(node.get("items"), path + "[]")
        walk(node.get("additionalProperties"), path + "{}")
        walk(node.get("propertyNames"), path + "{key}")
        for index, member in enumerate(node.get("anyOf") or ()):
            walk(member, f"{path}|{index}")

    walk(schema, "")
    return found


class _Reader:
    """Limits by path, remembering which were used (so a test can require all of them to be)."""

    def __init__(self, table: Limits) -> None:
        self.table = table
        self.used: set[str] = set()

    def __call__(self, key: str) -> int:
        self.used.add(key)
        return self.table[key]


def _fill(head: str, unit: str, length: int, tail: str = "", pad: str = "") -> str:
    """head + `pad` characters + whole units + tail: exactly `length` characters (the pad makes up the rest)."""
    room = length - len(head) - len(tail)
    assert room >= 0, (head, length)
    units, rest = divmod(room, len(unit))
    if rest and not pad:
        raise ValueError(f"{length} characters need a pad character after {head!r}")
    return _exact(head + pad * rest + unit * units + tail, length)


def _exact(text: str, length: int) -> str:
    assert len(text) == length, (len(text), length, text[:60])
    return text


def pip_line(index: int, length: int) -> str:
    """A valid requirement of exactly `length` characters, in three shapes in turn: specifiers, an
    environment marker, a direct URL with a fragment."""
    name = f"pkg-{index}"
    if index % 3 == 0:
        return _fill(f"{name}[extra-a,extra-b]>=1.", ",!=1.5.*", length, ",<9.0", pad="0")
    if index % 3 == 1:
        return _fill(f"{name}==1.0 ; python_version >= '3.8'", " and platform_system != 'Windows'", length,
                     pad=" ")
    return _fill(f"{name} @ https://files.example.com/packages/a", "b/a", length,
                 f"/{name}.whl#sha256={'0' * 64}&subdirectory=src", pad="a")


def conda_dependency(index: int, length: int) -> str:
    return _fill(f"conda-forge::dep-{index} >=1.", ",<2.0a0,!=1.5.*", length, pad="0")


def docker_step(index: int, length: int) -> str:
    """One instruction on one line: BuildKit's parser takes longest over a long line."""
    if index % 2:
        return _fill(f'ENV STEP_{index}="', "value ", length, '"', pad="v")
    return _fill(f"RUN echo step-{index} ", "x", length)


def image(length: int) -> str:
    """The longest valid reference of at most `length` characters: a 255-character name (the distribution
    spec's limit), a 128-character tag and a digest of the rest (at least 32 hex characters)."""
    text = _fill("registry.example.com:5000/", "p", MAX_IMAGE_NAME) + ":" + "t" * 128 + "@sha512:"
    return text + "0" * max(32, length - len(text))


def lock(length: int) -> str:
    """A lock of exactly `length` characters: a [conda] and a [pip] section, half the text each."""
    lines = ["# envkiln lock v1", "[conda]", "@EXPLICIT"]
    size = sum(len(line) + 1 for line in lines)
    index = 0
    while size < length // 2:
        line = (f"https://conda.anaconda.org/conda-forge/linux-64/package-{index}-1.{index}.0-"
                f"py311h{index:08d}_0.conda#{hashlib.md5(str(index).encode()).hexdigest()}")
        lines.append(line)
        size += len(line) + 1
        index += 1
    lines.append("[pip]")
    size += len("[pip]") + 1
    while True:
        line = f"pip-package-{index}==1.{index}.0"
        if size + len(line) + 1 > length:
            break
        lines.append(line)
        size += len(line) + 1
        index += 1
    lines[-1] += "0" * (length - len("\n".join(lines)))  # a longer version of the last package
    return _exact("\n".join(lines), length)


def maximal_spec(table: Limits | None = None) -> tuple[dict[str, Any], set[str]]:
    """A system-managed spec at every limit (everything but spec.build, which excludes the packages),
    and the limits it used."""
    at = _Reader(table or limits())
    pip_length = at(".pip|0[]:maxLength")
    spec: dict[str, Any] = {
        "version": "1" * at(".version:maxLength"),
        "description": "d" * at(".description|0:maxLength"),
        "tags": {_fill(f"tag-{i}-", "k", at(".tags|0{key}:maxLength")): "v" * at(".tags|0{}:maxLength")
                 for i in range(at(".tags|0:maxProperties"))},
        "image": image(at(".image|0:maxLength")),
        "conda": {
            "name": "n" * at(".conda|0.name|0:maxLength"),
            "channels": [_fill(f"https://conda.example.com/channel-{i}/", "c", at(".conda|0.channels[]:maxLength"))
                         for i in range(at(".conda|0.channels:maxItems"))],
            "dependencies": [
                *(conda_dependency(i, at(".conda|0.dependencies[]|0:maxLength"))
                  for i in range(at(".conda|0.dependencies:maxItems") - 1)),
                {"pip": [pip_line(i, at(".conda|0.dependencies[]|1.pip[]:maxLength"))
                         for i in range(at(".conda|0.dependencies[]|1.pip:maxItems"))]},
            ],
        },
        "pip": [pip_line(i, pip_length) for i in range(at(".pip|0:maxItems"))],
        "dockerSteps": [docker_step(i, at(".dockerSteps|0[]:maxLength")) for i in range(at(".dockerSteps|0:maxItems"))],
        "lock": lock(at(".lock|0:maxLength")),
        "environmentVariables": {
            _fill(f"VARIABLE_{i}_", "V", at(".environmentVariables|0{key}:maxLength")):
                "v" * at(".environmentVariables|0{}:maxLength")
            for i in range(at(".environmentVariables|0:maxProperties"))},
        "inference": {
            "livenessRoute": _fill("/live/", "l", at(".inference|0.livenessRoute|0:maxLength")),
            "readinessRoute": _fill("/ready/", "r", at(".inference|0.readinessRoute|0:maxLength")),
            "scoringRoute": _fill("/score/", "s", at(".inference|0.scoringRoute|0:maxLength")),
            "port": 65535,
        },
    }
    return spec, at.used


def maximal_build_specs(table: Limits | None = None) -> tuple[list[dict[str, Any]], set[str]]:
    """Build-context specs at every limit of spec.build (one per source), and the limits they used."""
    at = _Reader(table or limits())
    dockerfile = _fill("docker/", "/d", at(".build|0.dockerfilePath:maxLength"), "/Dockerfile", pad="d")
    git = {"url": _fill("https://git.example.com/o", "/o", at(".build|0.git|0.url:maxLength"), "/repo.git", pad="o"),
           "ref": _fill("release/", "r", at(".build|0.git|0.ref:maxLength")),
           "path": _fill("context/p", "/p", at(".build|0.git|0.path:maxLength"), pad="p")}
    tarball = {"url": _fill("https://files.example.com/t", "/t", at(".build|0.tarball|0.url:maxLength"), ".tgz",
                            pad="t"),
               "sha256": "0" * 64}
    config_map = {"name": _fill("context-", "c", at(".build|0.configMap|0.name:maxLength"))}
    specs = [{"build": {source: value, "dockerfilePath": dockerfile}}
             for source, value in (("git", git), ("tarball", tarball), ("configMap", config_map))]
    return specs, at.used


def manifest(spec: dict[str, Any], name: str = "maximal") -> dict[str, Any]:
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": name}, "spec": spec}


def largest_inline_spec() -> str:
    """An inline spec at MAX_INLINE_SPEC_BYTES, of what costs most to read: long single-line docker steps,
    then requirement lines, as YAML."""
    table = limits()
    spec: dict[str, Any] = {"image": "python:3.11-slim", "dockerSteps": [], "pip": []}
    for index in range(table[".dockerSteps|0:maxItems"]):
        spec["dockerSteps"].append(docker_step(index, table[".dockerSteps|0[]:maxLength"]))
        if len(yaml.safe_dump(spec, width=10**6)) > MAX_INLINE_SPEC_BYTES // 2:
            spec["dockerSteps"].pop()
            break
    for index in range(table[".pip|0:maxItems"]):
        spec["pip"].append(pip_line(index, table[".pip|0[]:maxLength"]))
        if len(yaml.safe_dump(spec, width=10**6)) > MAX_INLINE_SPEC_BYTES:
            spec["pip"].pop()
            break
    text = yaml.safe_dump(spec, width=10**6)
    return text + "#" * (MAX_INLINE_SPEC_BYTES - len(text.encode()))  # a comment makes up the rest
