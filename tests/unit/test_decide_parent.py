"""Building on an earlier image of the namespace (envkiln.core.decisions.parent): which plans can be
parent and child, which earlier build is chosen, the Dockerfile FROM it, the index that offers the
candidates, and the build script's use of it (with a stand-in buildah)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest

from envkiln.core.buildspec import build_manifest
from envkiln.core.decisions.environment import Facts
from envkiln.core.decisions.parent import Candidate, ReuseFacts, choose_parent, reuse_facts
from envkiln.core.models import Environment, EnvironmentSpec
from envkiln.core.render import RenderSettings, render, render_on_parent
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.reconcile.context import OperatorContext
from envkiln.reconcile.envsync import earlier_builds
from envkiln.runtime.indexes import Indexes

BASE_DIGEST = "sha256:" + "b" * 64
ONE_STAGE = RenderSettings(tool_mounts=True)
SETTINGS = OperatorSettings(registry="reg.local:5000", insecure_registry=True, builder="buildah",
                            build_on_earlier_images=True)
SIGNER = Signer(b"k" * 32)
A = ["numpy==2.1.3", "pandas==2.2.3"]


def spec(pip: list[str] | None = A, **fields: Any) -> EnvironmentSpec:
    body = {"version": "1", "image": "python:3.11-slim", **({"pip": pip} if pip is not None else {}), **fields}
    return Environment.model_validate({"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
                                       "metadata": {"name": "e"}, "spec": body}).spec


def facts_of(definition: EnvironmentSpec, settings: RenderSettings = ONE_STAGE, base_user: str | None = "",
             digest: str | None = BASE_DIGEST, value: str = "a" * 32) -> ReuseFacts | None:
    return reuse_facts(render(definition, value, settings, base_digest=digest, base_user=base_user).to_kube())


def candidate(name: str, lines: list[str], **kwargs: Any) -> Candidate:
    facts = facts_of(spec(lines, **kwargs.pop("fields", {})), **kwargs)
    assert facts is not None
    return Candidate(name=name, repository="reg.local:5000/ns/env", digest="sha256:" + name[-1] * 64, facts=facts)


@pytest.mark.parametrize(("definition", "settings", "base_user", "reusable"), [
    (spec(), ONE_STAGE, "", True),
    (spec(), ONE_STAGE, "1000", True),  # a non-root base: installed as root, its user back
    (spec(), RenderSettings(), None, False),  # Kaniko's multi-stage render
    (spec(), ONE_STAGE, None, False),  # the base's user unknown: stages
    (spec(None, conda={"dependencies": ["python=3.11"]}), ONE_STAGE, "", False),
    (spec(["numpy"], conda={"dependencies": ["python=3.11", {"pip": ["six"]}]}), ONE_STAGE, "", False),
    (spec(None, dockerSteps=["RUN true"]), ONE_STAGE, "", False),  # nothing installed
    (spec(lock="# envkiln lock v1\n[pip]\nnumpy==2.1.3\npandas==2.2.3\n"), ONE_STAGE, "", False),  # pinned
], ids=["one-stage", "non-root-base", "multi-stage", "user-unknown", "conda", "conda-and-pip", "no-packages",
        "pinned-lock"])
def test_which_plans_can_be_parent_or_child(definition: EnvironmentSpec, settings: RenderSettings,
                                            base_user: str | None, reusable: bool) -> None:
    assert (facts_of(definition, settings, base_user) is not None) is reusable


def test_user_contexts_and_plans_on_a_parent_are_neither() -> None:
    assert reuse_facts({"dockerfile": "", "files": [], "context": {"git": {"url": "https://x", "ref": "main"}}}) is None
    plan = render(spec(), "a" * 32, ONE_STAGE, base_digest=BASE_DIGEST, base_user="").to_kube()
    assert reuse_facts({**plan, "parent": {"build": "envb-x", "image": "r@sha256:1", "dockerfile": "FROM r"}}) is None
    assert reuse_facts({**plan, "dockerfile": "FROM x\n"}) is None  # not rendered by envkiln


def test_the_shape_is_the_same_for_two_hashes_and_the_requirements_are_the_lines() -> None:
    one, two = facts_of(spec(), value="a" * 32), facts_of(spec([*A, "tqdm==4.67.1"]), value="c" * 32)
    assert one is not None and two is not None
    assert one.shape == two.shape
    assert one.requirements == frozenset(A) and two.requirements == frozenset([*A, "tqdm==4.67.1"])


CHILD = [*A, "tqdm==4.67.1", "seaborn==0.13.2"]


@pytest.mark.parametrize(("candidates", "chosen"), [
    ([], None),
    ([candidate("envb-1", A)], "envb-1"),
    ([candidate("envb-1", A), candidate("envb-2", [*A, "tqdm==4.67.1"])], "envb-2"),  # the most shared lines
    ([candidate("envb-2", A), candidate("envb-1", A)], "envb-1"),  # a tie: the first name
    ([candidate("envb-1", CHILD)], None),  # the same requirements: not a strict subset
    ([candidate("envb-1", [*A, "scipy==1.14.1"])], None),  # has a line the child lacks
    ([candidate("envb-1", ["numpy==2.1.2", "pandas==2.2.3"])], None),  # another version is another line
    ([candidate("envb-1", A, digest="sha256:" + "c" * 64)], None),  # another base digest
    ([candidate("envb-1", A, base_user="1000")], None),  # another user
    ([candidate("envb-1", A, settings=RenderSettings(tool_mounts=True, uv_image="r/uv:1"))], None),  # another uv
    ([candidate("envb-1", A, fields={"dockerSteps": ["RUN true"]})], None),  # other steps
    ([candidate("envb-1", A, fields={"image": "python:3.12-slim"})], None),  # another base
], ids=["none", "subset", "largest-subset", "tie-by-name", "same-lines", "extra-line", "other-version",
        "other-base-digest", "other-user", "other-uv", "other-steps", "other-base"])
def test_the_parent_chosen(candidates: list[Candidate], chosen: str | None) -> None:
    found = choose_parent(facts_of(spec(CHILD)), candidates)
    assert (found.name if found else None) == chosen


def test_no_child_facts_no_parent() -> None:
    assert choose_parent(None, [candidate("envb-1", A)]) is None


@pytest.mark.parametrize("base_user", ["", "1000"], ids=["root-base", "non-root-base"])
def test_the_dockerfile_on_a_parent_installs_on_it_and_writes_the_whole_lock(base_user: str) -> None:
    image = "reg.local:5000/ns/env@sha256:" + "e" * 64
    dockerfile = render_on_parent(spec(CHILD), "d" * 32, ONE_STAGE, BASE_DIGEST, base_user, image)
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith((" ", "#"))]
    assert lines[0] == f"FROM {image} AS envkiln-image"
    assert ("USER 0:0" in lines) is (base_user == "1000")
    assert lines[-1].startswith('LABEL dev.envkiln.definition-hash="' + "d" * 32 + '"')
    assert f'org.opencontainers.image.base.digest="{BASE_DIGEST}"' in lines[-1]
    assert f'dev.envkiln.parent="{image}"' in lines[-1]
    if base_user == "1000":
        assert lines[-2] == "USER 1000"
    assert "-m venv" not in dockerfile, "the parent's venv is used as it is"
    assert "ENV PATH" not in dockerfile, "the parent's environment is inherited, not repeated"
    assert "pip install --no-cache --python /opt/envkiln/venv/bin/python --requirement " \
        "/tmp/envkiln/requirements.txt" in dockerfile
    assert "cp /envkiln-lock/envkiln-lock.txt /opt/envkiln/envkiln-lock.txt" in dockerfile
    assert dockerfile.splitlines()[0].endswith(f"{'d' * 32}, on {image}")


def test_the_manifest_carries_the_parent_only_when_one_fits() -> None:
    child = spec(CHILD)
    alone = build_manifest(SIGNER, SETTINGS, "ns", child, "d" * 32, base_digest=BASE_DIGEST, base_user="")
    assert "parent" not in alone["spec"]["plan"]
    fitting = candidate("envb-1", A)
    on = build_manifest(SIGNER, SETTINGS, "ns", child, "d" * 32, base_digest=BASE_DIGEST, base_user="",
                        earlier=[fitting, candidate("envb-2", [*A, "scipy==1.14.1"])])
    parent = on["spec"]["plan"]["parent"]
    assert parent["build"] == "envb-1" and parent["image"] == fitting.image
    assert parent["dockerfile"].startswith("# Rendered by envkiln") and f"FROM {fitting.image}" in parent["dockerfile"]
    assert on["spec"]["plan"]["dockerfile"] == alone["spec"]["plan"]["dockerfile"], "the base plan stays"
    assert on["metadata"]["annotations"] != alone["metadata"]["annotations"], "the signature covers the parent"
    unknown_user = build_manifest(SIGNER, SETTINGS, "ns", child, "d" * 32, base_digest=BASE_DIGEST, base_user=None,
                                  earlier=[fitting])
    assert "parent" not in unknown_user["spec"]["plan"]


def succeeded(manifest: dict[str, Any], digest: str, phase: str = "Succeeded", recorded: bool = True
              ) -> dict[str, Any]:
    meta, build_spec = manifest["metadata"], manifest["spec"]
    record = SIGNER.sign_record(meta["namespace"], meta["name"], build_spec["hash"], build_spec["image"], digest)
    return {**manifest, "metadata": {**meta, "uid": "u"},
            "status": {"phase": phase, "digest": digest, **({"recordSignature": record} if recorded else {})}}


def signed_indexes(verified: bool = True, offers_earlier: bool = True) -> Indexes:
    return Indexes(verify=lambda build: None if verified else "not signed",
                   verify_record=(lambda build: SIGNER.record_problem(dict(build))) if offers_earlier else None)


@pytest.mark.parametrize(("phase", "verified", "recorded", "offered"), [
    ("Succeeded", True, True, True),
    ("Building", True, True, False),
    ("Failed", True, True, False),
    ("Succeeded", False, True, False),  # its spec not signed by this operator
    ("Succeeded", True, False, False),  # its digest not recorded by this operator
], ids=["succeeded", "building", "failed", "unverified", "record-unsigned"])
def test_the_index_offers_verified_succeeded_builds_of_the_namespace(phase: str, verified: bool, recorded: bool,
                                                                     offered: bool) -> None:
    indexes = signed_indexes(verified)
    manifest = build_manifest(SIGNER, SETTINGS, "ns", spec(), "a" * 32, base_digest=BASE_DIGEST, base_user="")
    indexes.note_build("ns", manifest["metadata"]["name"], succeeded(manifest, "sha256:" + "f" * 64, phase,
                                                                     recorded))
    found = indexes.earlier_builds("ns")
    assert bool(found) is offered
    assert indexes.earlier_builds("other") == []
    if offered:
        assert found[0].image == manifest["spec"]["image"].rsplit(":", 1)[0] + "@sha256:" + "f" * 64
        assert found[0].facts.requirements == frozenset(A)
        indexes.note_build("ns", manifest["metadata"]["name"], None)  # deleted
        assert indexes.earlier_builds("ns") == []


@pytest.mark.parametrize(("settings", "definition", "asked"), [
    (SETTINGS, spec(), True),
    (SETTINGS.model_copy(update={"build_on_earlier_images": False}), spec(), False),  # turned off
    (SETTINGS.model_copy(update={"builder": "kaniko"}), spec(), False),
    (SETTINGS.model_copy(update={"builder": "local"}), spec(), False),
    (SETTINGS, spec(["numpy"], conda={"dependencies": ["python=3.11"]}), False),
    (SETTINGS, spec(lock="# envkiln lock v1\n[pip]\nnumpy==2.1.3\npandas==2.2.3\n"), False),
    (SETTINGS, spec(None, dockerSteps=["RUN true"]), False),
], ids=["buildah", "off", "kaniko", "local", "conda", "pinned", "no-pip"])
def test_the_index_is_asked_only_for_in_cluster_buildah_pip_only_builds(
        settings: OperatorSettings, definition: EnvironmentSpec, asked: bool) -> None:
    asked_for: list[str] = []

    def earlier(namespace: str) -> list[Candidate]:
        asked_for.append(namespace)
        return [candidate("envb-1", A)]

    ctx = OperatorContext(settings=settings, kube=cast(Any, None), registry=cast(Any, None),
                          builder=cast(Any, None), signer=SIGNER, earlier_builds=earlier)
    found = earlier_builds(ctx, Facts(spec=definition, namespace="ns"))
    assert (asked_for == ["ns"]) is asked and bool(found) is asked
    assert earlier_builds(replace(ctx, earlier_builds=None), Facts(spec=definition, namespace="ns")) == []


def test_the_index_keeps_nothing_for_it_when_builds_never_start_from_an_earlier_image() -> None:
    indexes = signed_indexes(offers_earlier=False)
    manifest = build_manifest(SIGNER, SETTINGS, "ns", spec(), "a" * 32, base_digest=BASE_DIGEST, base_user="")
    indexes.note_build("ns", manifest["metadata"]["name"], succeeded(manifest, "sha256:" + "f" * 64))
    assert indexes.earlier_builds("ns") == []
    assert indexes.build("ns", manifest["metadata"]["name"]) is not None
