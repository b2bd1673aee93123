"""The definition hash: what it covers, what it ignores, order rules, and pinned golden values."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from envkiln.core.crdgen import IMAGE_AFFECTING_FIELDS
from envkiln.core.definition import (
    MissingContextContent,
    UnresolvedGitRef,
    definition_document,
    definition_hash,
    image_name,
    image_repository,
    is_commit,
)
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of

CONFIGMAP_ENV = {
    "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "ctx"},
    "spec": {"build": {"configMap": {"name": "ctx"}}},
}
BYOC_ENV = {
    "apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "byoc"},
    "spec": {"image": "ghcr.io/org/trainer:1.0", "userManaged": True},
}


COMMIT_A = "0123456789abcdef0123456789abcdef01234567"
COMMIT_B = "89abcdef0123456789abcdef0123456789abcdef"


def git_env(ref: str = "main", path: str = "", url: str = "https://g/r.git", **build: str) -> dict[str, Any]:
    return {**CONFIGMAP_ENV, "spec": {"build": {"git": {"url": url, "ref": ref, "path": path}, **build}}}


def h(doc: dict[str, Any], context: dict[str, Any] | None = None, commit: str | None = None) -> str:
    return definition_hash(spec_of(doc), context, commit=commit)


# Pinned: a change here means every user's images get rebuilt. Bump HASH_SCHEMA instead.
# v3 (the render pins the base by digest and writes the lock layer; v2: install stage, base user kept, LD_LIBRARY_PATH).
GOLDEN = [
    (PIP_ENV, None, "66f923b2cccc222a44c4690e3b154018"),
    (CONDA_ENV, None, "582b8c0fab100f6f2b409645abe68f16"),
    (BYOC_ENV, None, "75f19ce071c0d48522fdb423571cc0d4"),
    (CONFIGMAP_ENV, {"Dockerfile": "FROM python:3.11\n"}, "3adaed4523c00aca24824ddf45fec158"),
]


@pytest.mark.parametrize(("doc", "context", "expected"), GOLDEN, ids=["pip", "conda", "byoc", "configmap"])
def test_golden_hashes(doc: dict[str, Any], context: dict[str, Any] | None, expected: str) -> None:
    assert h(doc, context) == expected


def test_golden_pip_hash_matches_an_independent_computation() -> None:
    # The README's algorithm, written out by hand, gives the pinned value.
    import hashlib
    import json

    document = {"image": "python:3.11-slim", "userManaged": False, "dockerSteps": [], "conda": None,
                "pip": ["numpy==2.1.3", "pandas==2.2.3"], "build": None}
    payload = "envkiln.dev/definition/v3\n" + json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(payload.encode()).hexdigest()[:32] == GOLDEN[0][2]


def test_hash_shape() -> None:
    value = h(PIP_ENV)
    assert len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@pytest.mark.parametrize("change", [
    {"version": "7"},
    {"description": "another description"},
    {"tags": {"team": "x"}},
    {"environmentVariables": {"OMP_NUM_THREADS": "4"}},
    {"inference": {"port": 8080, "scoringRoute": "/score"}},
])
def test_runtime_metadata_is_excluded(change: dict[str, Any]) -> None:
    assert h(manifest(**change)) == h(PIP_ENV)


def test_name_and_namespace_are_excluded() -> None:
    other = copy.deepcopy(PIP_ENV)
    other["metadata"] = {"name": "something-else", "namespace": "team-b", "labels": {"a": "b"}}
    assert h(other) == h(PIP_ENV)


@pytest.mark.parametrize(("base", "change"), [
    (PIP_ENV, {"image": "python:3.12-slim"}),
    (PIP_ENV, {"image": "docker.io/library/python:3.11-slim"}),  # as written: no normalisation
    (PIP_ENV, {"pip": ["numpy==2.1.3"]}),
    (PIP_ENV, {"pip": ["numpy==2.1.3", "pandas==2.2.2"]}),
    (PIP_ENV, {"dockerSteps": ["RUN true"]}),
    (CONDA_ENV, {"conda": {"channels": ["conda-forge"], "dependencies": ["python=3.11"]}}),
    (CONDA_ENV, {"dockerSteps": ["ENV A=1"]}),
    (CONDA_ENV, {"pip": None}),
    (BYOC_ENV, {"image": "ghcr.io/org/trainer:1.1"}),
])
def test_image_affecting_changes_change_the_hash(base: dict[str, Any], change: dict[str, Any]) -> None:
    assert h(manifest(base, **change)) != h(base)


def test_user_managed_flag_is_included() -> None:
    system = manifest(PIP_ENV, pip=None, dockerSteps=["RUN true"])
    assert spec_of(system).user_managed is False
    byoc = manifest(PIP_ENV, pip=None, userManaged=True)
    plain = definition_document(spec_of(byoc))
    assert plain["userManaged"] is True
    assert h(byoc) != h(manifest(byoc, image="python:3.11-slim", userManaged=None, dockerSteps=["RUN true"]))


def test_list_order_matters() -> None:
    assert h(manifest(pip=["pandas==2.2.3", "numpy==2.1.3"])) != h(PIP_ENV)
    conda = copy.deepcopy(CONDA_ENV)
    conda["spec"]["conda"]["channels"].reverse()
    assert h(conda) != h(CONDA_ENV)
    steps = copy.deepcopy(CONDA_ENV)
    steps["spec"]["dockerSteps"].reverse()
    assert h(steps) != h(CONDA_ENV)


def test_mapping_key_order_does_not_matter() -> None:
    reordered = copy.deepcopy(CONDA_ENV)
    reordered["spec"] = dict(reversed(list(reordered["spec"].items())))
    reordered["spec"]["conda"] = dict(reversed(list(reordered["spec"]["conda"].items())))
    assert list(reordered["spec"]) != list(CONDA_ENV["spec"])
    assert h(reordered) == h(CONDA_ENV)
    # ConfigMap data keys too.
    a = {"Dockerfile": "FROM x\n", "train.py": "print(1)\n"}
    b = dict(reversed(list(a.items())))
    assert h(CONFIGMAP_ENV, a) == h(CONFIGMAP_ENV, b)


def test_conda_name_is_not_part_of_the_hash() -> None:
    named = copy.deepcopy(CONDA_ENV)
    named["spec"]["conda"]["name"] = "my-env"
    assert h(named) == h(CONDA_ENV)


def test_configmap_context_content_is_hashed_not_its_name_only() -> None:
    base = h(CONFIGMAP_ENV, {"Dockerfile": "FROM python:3.11\n"})
    assert h(CONFIGMAP_ENV, {"Dockerfile": "FROM python:3.12\n"}) != base
    assert h(CONFIGMAP_ENV, {"Dockerfile": "FROM python:3.11\n", "extra.txt": ""}) != base
    with pytest.raises(MissingContextContent, match=r"spec\.build\.configMap"):
        h(CONFIGMAP_ENV)


def test_git_and_tarball_identity() -> None:
    git = git_env("v1", "a")
    assert h(git, commit=COMMIT_A) != h(git_env("v1", "b"), commit=COMMIT_A)
    assert h(git, commit=COMMIT_A) != h(git_env("v1", "a", url="https://g/other.git"), commit=COMMIT_A)
    assert h(git, commit=COMMIT_A) != h(git_env("v1", "a", dockerfilePath="Dockerfile.gpu"), commit=COMMIT_A)
    tar = {**CONFIGMAP_ENV, "spec": {"build": {"tarball": {"url": "https://x/c.tgz"}}}}
    assert h(tar) != h({**tar, "spec": {"build": {"tarball": {"url": "https://x/c.tgz", "sha256": "a" * 64}}}})


def test_hash_covers_exactly_the_fields_the_crd_freezes() -> None:
    document = definition_document(spec_of(PIP_ENV))
    assert set(document) == {"image", "userManaged", "dockerSteps", "conda", "pip", "build"}
    lock = "numpy==2.1.3\npandas==2.2.3\n"
    pinned = definition_document(spec_of({**PIP_ENV, "spec": {**PIP_ENV["spec"], "lock": lock}}))
    assert set(pinned) == set(document) | {"lock"}  # a lock is hashed only when pinned
    assert set(IMAGE_AFFECTING_FIELDS) == set(pinned)


def test_image_names() -> None:
    value = "0123456789abcdef0123456789abcdef"
    assert image_name(value, "localhost:5000") == f"localhost:5000/envkiln/default/env_{value}:{value}"
    assert image_name(value, "localhost:5000", namespace="team-a") == (
        f"localhost:5000/envkiln/team-a/env_{value}:{value}")
    assert image_repository(value, "registry.example.com/", "{registry}/ml/envs/{hash}") == (
        f"registry.example.com/ml/envs/{value}")
    with pytest.raises(ValueError, match="must contain"):
        image_name(value, "r", "{registry}/fixed")
    with pytest.raises(ValueError, match="unknown field"):
        image_name(value, "r", "{registry}/{team}/{hash}")


# --- git contexts: hashed by the commit their ref points at ------------------------------------


def test_a_git_context_is_hashed_by_its_commit() -> None:
    assert h(git_env("main"), commit=COMMIT_A) == h(git_env("main"), commit=COMMIT_A)
    assert h(git_env("main"), commit=COMMIT_A) != h(git_env("main"), commit=COMMIT_B), "a new commit, a new hash"
    document = definition_document(spec_of(git_env("main", "img")), commit=COMMIT_A)
    assert document["build"]["git"] == {"url": "https://g/r.git", "path": "img", "commit": COMMIT_A}


def test_the_ref_as_written_is_not_hashed() -> None:
    # Two names for the same commit are the same definition: a branch, a tag, the commit itself.
    assert h(git_env("main"), commit=COMMIT_A) == h(git_env("v1"), commit=COMMIT_A) == h(git_env(COMMIT_A))


def test_a_full_commit_ref_needs_no_commit_argument() -> None:
    assert h(git_env(COMMIT_A)) == h(git_env(COMMIT_A), commit=COMMIT_A)
    assert h(git_env(COMMIT_A.upper())) == h(git_env(COMMIT_A)), "commits are compared lowercased"
    assert h(git_env("main"), commit=COMMIT_A.upper()) == h(git_env(COMMIT_A))
    assert definition_document(spec_of(git_env(COMMIT_A.upper())))["build"]["git"]["commit"] == COMMIT_A


@pytest.mark.parametrize("ref", ["main", "v1.2", "release/2025", "0123456", "0123456789abcdef0123456789abcdef0123456"])
def test_a_branch_or_tag_without_its_commit_is_refused(ref: str) -> None:
    with pytest.raises(UnresolvedGitRef, match=r"spec\.build\.git: the ref .* resolve it first") as raised:
        h(git_env(ref))
    assert isinstance(raised.value, MissingContextContent), "callers that catch MissingContextContent catch it too"
    with pytest.raises(UnresolvedGitRef):
        definition_document(spec_of(git_env(ref)))


def test_a_malformed_commit_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="not a full commit"):
        h(git_env("main"), commit="main")


def test_the_commit_argument_does_not_touch_other_definitions() -> None:
    for doc, context, expected in GOLDEN:
        assert h(doc, context, commit=COMMIT_A) == expected


@pytest.mark.parametrize(("ref", "expected"), [
    (COMMIT_A, True), (COMMIT_A.upper(), True), ("main", False), (COMMIT_A[:-1], False), (COMMIT_A + "0", False),
    ("g" * 40, False), ("", False),
])
def test_is_commit(ref: str, expected: bool) -> None:
    assert is_commit(ref) is expected


def test_a_pinned_lock_is_part_of_the_hash_and_absent_otherwise() -> None:
    lock = "# envkiln lock v1\n[pip]\nnumpy==2.1.3\npandas==2.2.3\n"
    plain = spec_of(PIP_ENV)
    pinned = spec_of({**PIP_ENV, "spec": {**PIP_ENV["spec"], "lock": lock}})
    other = spec_of({**PIP_ENV, "spec": {**PIP_ENV["spec"], "lock": lock.replace("2.1.3", "2.1.4")}})
    assert "lock" not in definition_document(plain) and definition_document(pinned)["lock"] == lock
    assert len({definition_hash(plain), definition_hash(pinned), definition_hash(other)}) == 3
