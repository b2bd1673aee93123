"""Drift decisions: the base-update policy (Notify, Rebuild, Ignore), history entries of rebuilds,
git refs that cannot be resolved, and what the watcher checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from envkiln.core.decisions.environment import Facts, decide, new_status
from envkiln.core.decisions.resync import base_moved, follows_git_ref, watched_base
from envkiln.core.models import Phase
from helpers import PIP_ENV, spec_of

HASH = "0123456789abcdef0123456789abcdef"
OLD, NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64
IMAGE_OLD, IMAGE_NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
REPO = "reg:5000/envkiln/ns/env_" + HASH
REBUILD_NAME = f"envb-{HASH}-b{'2' * 12}"


def build(phase: str | None, base: str | None = OLD, name: str = f"envb-{HASH}", digest: str | None = IMAGE_OLD,
          **status: Any) -> dict[str, Any]:
    tag = name.removeprefix("envb-")
    return {"metadata": {"name": name}, "spec": {"hash": HASH, "image": f"{REPO}:{tag}", "baseImageDigest": base},
            "status": {"phase": phase, **({"digest": digest} if phase == "Succeeded" else {}), **status}}


def facts(**changes: Any) -> Facts:
    base = Facts(spec=spec_of(PIP_ENV), hash=HASH, namespace="ns", push_image=f"{REPO}:{HASH}",
                 pull_image=f"{REPO}:{HASH}", push_registry="reg:5000", pull_registry="reg:5000",
                 build_name=f"envb-{HASH}", build=build("Succeeded"))
    return replace(base, **changes)


REBUILT = build("Succeeded", base=NEW, name=REBUILD_NAME, digest=IMAGE_NEW)

# (id, facts, phase, imageRef digest, BaseImageUpdated (status, reason) or None, create_rebuild, notice reason)
CASES = [
    ("nothing-known", facts(), Phase.READY, IMAGE_OLD, None, None, None),
    ("same-digest", facts(latest_base_digest=OLD), Phase.READY, IMAGE_OLD, (False, "UpToDate"), None, None),
    ("unpinned-build-is-never-compared", facts(build=build("Succeeded", base=None), latest_base_digest=NEW),
     Phase.READY, IMAGE_OLD, None, None, None),
    ("ignore", facts(latest_base_digest=NEW, base_policy="Ignore"), Phase.READY, IMAGE_OLD, None, None, None),
    ("notify", facts(latest_base_digest=NEW), Phase.READY, IMAGE_OLD, (True, "BaseImageUpdated"), None,
     "BaseImageUpdated"),
    ("rebuild-starts", facts(latest_base_digest=NEW, base_policy="Rebuild"), Phase.READY, IMAGE_OLD,
     (True, "Rebuilding"), NEW, "Rebuilding"),
    ("rebuild-running-keeps-the-image", facts(latest_base_digest=NEW, base_policy="Rebuild",
                                              rebuild=build("Building", base=NEW, name=REBUILD_NAME)),
     Phase.READY, IMAGE_OLD, (True, "Rebuilding"), None, None),
    ("rebuild-failed-keeps-the-image", facts(latest_base_digest=NEW, base_policy="Rebuild",
                                             rebuild=build("Failed", base=NEW, name=REBUILD_NAME, message="boom")),
     Phase.READY, IMAGE_OLD, (True, "RebuildFailed"), None, "RebuildFailed"),
    ("rebuild-untrusted", facts(latest_base_digest=NEW, base_policy="Rebuild", rebuild=REBUILT,
                                rebuild_problem="it carries no envkiln signature"),
     Phase.READY, IMAGE_OLD, (True, "RebuildFailed"), None, "RebuildFailed"),
    ("rebuild-succeeded-moves-the-image", facts(latest_base_digest=NEW, base_policy="Rebuild", rebuild=REBUILT),
     Phase.READY, IMAGE_NEW, (False, "Rebuilt"), None, "Rebuilt"),
    ("following-the-rebuild-is-up-to-date", facts(build=REBUILT, build_name=REBUILD_NAME, latest_base_digest=NEW,
                                                  base_policy="Rebuild"),
     Phase.READY, IMAGE_NEW, (False, "UpToDate"), None, None),
    ("following-the-rebuild-keeps-saying-rebuilt", facts(
        build=REBUILT, build_name=REBUILD_NAME, latest_base_digest=NEW, base_policy="Rebuild",
        previous_status={"conditions": [{"type": "BaseImageUpdated", "status": "False", "reason": "Rebuilt",
                                         "message": f"rebuilt on {NEW}, the new digest of python:3.11-slim"}]}),
     Phase.READY, IMAGE_NEW, (False, "Rebuilt"), None, None),
    ("an-older-rebuilt-gives-way-to-up-to-date", facts(
        build=REBUILT, build_name=REBUILD_NAME, latest_base_digest=NEW, base_policy="Rebuild",
        previous_status={"conditions": [{"type": "BaseImageUpdated", "status": "False", "reason": "Rebuilt",
                                         "message": f"rebuilt on {OLD}, the new digest of python:3.11-slim"}]}),
     Phase.READY, IMAGE_NEW, (False, "UpToDate"), None, None),
    ("building-is-never-touched", facts(build=build("Building"), latest_base_digest=NEW, base_policy="Rebuild"),
     Phase.BUILDING, None, None, None, None),
]


@pytest.mark.parametrize(("case", "given", "phase", "image", "condition", "rebuild", "notice"), CASES,
                         ids=[c[0] for c in CASES])
def test_base_update_policy(case: str, given: Facts, phase: Phase, image: str | None,
                            condition: tuple[bool, str] | None, rebuild: str | None, notice: str | None) -> None:
    outcome = decide(given)
    assert outcome.phase is phase
    if image is None:
        assert "imageRef" not in outcome.fields or outcome.fields["imageRef"] is None
    else:
        assert outcome.fields["imageRef"] == f"{REPO}@{image}"
    assert (outcome.conditions["BaseImageUpdated"][:2] if "BaseImageUpdated" in outcome.conditions
            else None) == condition
    assert outcome.create_rebuild == rebuild
    assert [n[1] for n in outcome.notices] == ([notice] if notice else [])
    assert outcome.fields.get("baseImage") == "python:3.11-slim"


def test_a_rebuild_adds_a_history_entry_and_keeps_the_old_image() -> None:
    env = {"metadata": {"generation": 1}, "spec": PIP_ENV["spec"], "status": {}}
    first = new_status(env, decide(facts()), HASH, "t1")
    assert [(v["imageRef"], v.get("reason"), v.get("baseImageDigest")) for v in first["versions"]] == [
        (f"{REPO}@{IMAGE_OLD}", None, OLD)]
    assert first["baseImageDigest"] == OLD
    env["status"] = first
    notified = new_status(env, decide(facts(latest_base_digest=NEW)), HASH, "t2")
    assert notified["latestBaseImageDigest"] == NEW and notified["versions"] == first["versions"]
    env["status"] = new_status(env, decide(facts(latest_base_digest=NEW, base_policy="Rebuild")), HASH, "t3")
    moved = new_status(env, decide(facts(latest_base_digest=NEW, base_policy="Rebuild", rebuild=REBUILT)), HASH, "t4")
    assert moved["imageRef"] == f"{REPO}@{IMAGE_NEW}" and moved["build"] == REBUILD_NAME
    assert moved["baseImageDigest"] == NEW and "latestBaseImageDigest" not in moved
    assert [(v["version"], v["imageRef"], v.get("reason")) for v in moved["versions"]] == [
        ("1", f"{REPO}@{IMAGE_OLD}", None), ("1", f"{REPO}@{IMAGE_NEW}", "BaseImageUpdated")]
    env["status"] = moved
    again = new_status(env, decide(facts(build=REBUILT, build_name=REBUILD_NAME, latest_base_digest=NEW)), HASH, "t5")
    assert again["versions"] == moved["versions"]  # nothing more on later syncs


GIT_ENV = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "g"},
           "spec": {"build": {"git": {"url": "git://127.0.0.1:1/r.git", "ref": "main"}}}}
COMMIT = "c" * 40


@pytest.mark.parametrize(("case", "commit", "problem", "phase", "git_condition"), [
    ("resolved", COMMIT, None, Phase.READY, (True, "Resolved")),
    ("unreachable-keeps-the-last-commit", COMMIT, "cannot reach", Phase.READY, (False, "GitUnreachable")),
    ("unreachable-without-a-commit", None, "cannot reach", Phase.PENDING, (False, "GitUnreachable")),
], ids=lambda c: c if isinstance(c, str) else "")
def test_git_refs(case: str, commit: str | None, problem: str | None, phase: Phase,
                  git_condition: tuple[bool, str]) -> None:
    outcome = decide(facts(spec=spec_of(GIT_ENV), resolved_commit=commit, git_problem=problem))
    assert outcome.phase is phase
    assert outcome.conditions["GitRefResolved"][:2] == git_condition
    if commit:
        assert outcome.fields["resolvedCommit"] == commit
    else:
        assert outcome.records_hash is False and outcome.retry_in is not None
    if problem:
        assert problem in outcome.conditions["GitRefResolved"][2]


@pytest.mark.parametrize(("spec", "status", "watched"), [
    ({"image": "python:3.11"}, {"baseImage": "python:3.11", "baseImageDigest": OLD}, "python:3.11"),
    ({"image": "python:3.11"}, {"baseImage": "python:3.11"}, None),  # never pinned: nothing to compare with
    ({"image": "python:3.11", "baseImageUpdates": "Ignore"}, {"baseImage": "python:3.11", "baseImageDigest": OLD},
     None),
    ({"image": "python@" + OLD}, {"baseImage": "python@" + OLD, "baseImageDigest": OLD}, None),  # pinned by hand
    ({"image": "r/x:1", "userManaged": True}, {"baseImage": "r/x:1", "baseImageDigest": OLD}, None),
])
def test_what_the_base_watcher_checks(spec: dict[str, Any], status: dict[str, Any], watched: str | None) -> None:
    assert watched_base(spec, status) == watched


@pytest.mark.parametrize(("ref", "follows"), [("main", True), ("v1.2", True), ("A" * 40, False), ("a" * 40, False),
                                              ("a" * 39, True)])
def test_which_git_refs_are_followed(ref: str, follows: bool) -> None:
    assert follows_git_ref({"build": {"git": {"url": "git://h/r", "ref": ref}}}) is follows
    assert follows_git_ref({"image": "x"}) is False


@pytest.mark.parametrize(("built_on", "latest", "moved"), [(OLD, NEW, True), (OLD, OLD, False), (None, NEW, False),
                                                           (OLD, None, False)])
def test_base_moved(built_on: str | None, latest: str | None, moved: bool) -> None:
    assert base_moved({"baseImageDigest": built_on}, latest) is moved
