"""EnvironmentBuilds are collected (issue #22): the newest N per Environment stay, and every one a
version still points to, the one an Environment follows and every unfinished one; the rest go.
envkiln.core.decisions.collect as a table; then the settings that go with it."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.core.decisions.collect import (
    BuildFacts,
    EnvironmentFacts,
    build_facts,
    builds_to_collect,
    environment_facts,
)
from envkiln.core.settings import OperatorSettings, SettingsError


def b(name: str, hash_: str, day: int, phase_done: bool = True, ref: str | None = None) -> BuildFacts:
    return BuildFacts(name=name, hash=hash_, finished=phase_done, image_ref=ref, created=f"2026-01-{day:02d}T00:00:00Z")


def env(*hashes: str, refs: tuple[str, ...] = (), build: str | None = None) -> EnvironmentFacts:
    return EnvironmentFacts(hashes=frozenset(hashes), image_refs=frozenset(refs), build=build)


# Five edits of one Environment: h1 built (its version points to the image), h2 and h3 failed,
# h4 built, h5 building now.
HISTORY = [b("envb-h1", "h1", 1, ref="r@1"), b("envb-h2", "h2", 2), b("envb-h3", "h3", 3),
           b("envb-h4", "h4", 4, ref="r@4"), b("envb-h5", "h5", 5, phase_done=False)]
EDITED = env("h1", "h2", "h3", "h4", "h5", refs=("r@1", "r@4"), build="envb-h5")

# (id, builds, environments, keep, collected)
CASES: list[tuple[str, list[BuildFacts], list[EnvironmentFacts], int, list[str]]] = [
    ("nothing", [], [], 5, []),
    ("within-the-limit", HISTORY, [EDITED], 5, []),
    # keep 1: the newest (h5, unfinished anyway); h1 and h4 are pointed to by versions: only failures go.
    ("newest-plus-referenced", HISTORY, [EDITED], 1, ["envb-h2", "envb-h3"]),
    ("keep-2", HISTORY, [EDITED], 2, ["envb-h2", "envb-h3"]),
    ("keep-3-keeps-a-recent-failure", HISTORY, [EDITED], 3, ["envb-h2"]),
    # Unfinished builds are never collected, whoever mentions them.
    ("unfinished-kept", [b("envb-x", "x", 1, phase_done=False)], [], 1, []),
    # The build an Environment follows stays (a failure's log), though older than the newest N.
    ("followed-kept", [b("envb-old", "o", 1), b("envb-new", "n", 2)], [env("o", "n", build="envb-old")], 1, []),
    # No Environment mentions it any more (deleted, or its history moved on): it goes.
    ("orphan-collected", [b("envb-gone", "g", 1, ref="r@g")], [env("other", refs=("r@o",))], 5, ["envb-gone"]),
    # A version of another Environment (same hash, a cache hit) points to it: it stays.
    ("shared-by-hash", [b("envb-s", "s", 1, ref="r@s"), b("envb-t", "t", 2)],
     [env("t", build="envb-t"), env("s", refs=("r@s",))], 1, []),
    # Pointing to is by image: a build of the same hash whose record is not the version's image (a
    # rebuild that failed, or a superseded one) is not kept by that version.
    ("by-image-not-by-hash", [b("envb-h", "h", 1, ref="r@old"), b("envb-h-b1", "h", 2, ref="r@new"),
                              b("envb-k", "k", 3, phase_done=False)],
     [env("h", "k", refs=("r@new",), build="envb-k")], 1, ["envb-h"]),
    # Each Environment keeps its own newest N; a build goes only when none keeps it.
    ("per-environment", [b("envb-a1", "a1", 1), b("envb-a2", "a2", 2), b("envb-b1", "b1", 3), b("envb-b2", "b2", 4)],
     [env("a1", "a2"), env("b1", "b2")], 1, ["envb-a1", "envb-b1"]),
    ("same-day-by-name", [b("envb-a", "a", 1), b("envb-b", "b", 1)], [env("a", "b")], 1, ["envb-a"]),
]


@pytest.mark.parametrize(("case", "builds", "environments", "keep", "collected"), CASES, ids=[c[0] for c in CASES])
def test_builds_to_collect(case: str, builds: list[BuildFacts], environments: list[EnvironmentFacts], keep: int,
                           collected: list[str]) -> None:
    assert builds_to_collect(builds, environments, keep) == collected
    assert builds_to_collect(reversed(builds), reversed(environments), keep) == collected  # order does not matter


def test_facts_from_objects() -> None:
    build: dict[str, Any] = {"metadata": {"name": "envb-h", "creationTimestamp": "2026-01-01T00:00:00Z"},
                             "spec": {"hash": "h"}, "status": {"phase": "Succeeded", "imageRef": "r@1"}}
    assert build_facts(build) == BuildFacts("envb-h", "h", True, "r@1", "2026-01-01T00:00:00Z")
    assert build_facts({"metadata": {"name": "envb-p"}, "spec": {"hash": "p"}}).finished is False
    environment = {"status": {"hash": "h3", "imageRef": "r@3", "build": "envb-h3", "versions": [
        {"version": "1", "hash": "h1", "imageRef": "r@1"}, {"version": "2", "hash": "h2"}, "junk"]}}
    assert environment_facts(environment) == EnvironmentFacts(frozenset({"h1", "h2", "h3"}),
                                                              frozenset({"r@1", "r@3"}), "envb-h3")
    assert environment_facts({}) == EnvironmentFacts(frozenset(), frozenset(), None)


def test_build_history_limit_setting() -> None:
    assert OperatorSettings().build_history_limit == 5
    assert OperatorSettings.from_env({"ENVKILN_BUILD_HISTORY_LIMIT": "2"}).build_history_limit == 2
    with pytest.raises(SettingsError, match="ENVKILN_BUILD_HISTORY_LIMIT"):
        OperatorSettings.from_env({"ENVKILN_BUILD_HISTORY_LIMIT": "0"})


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_the_shared_push_credential_is_refused_with_what_to_do(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        OperatorSettings.from_env({"ENVKILN_SHARED_PUSH_CREDENTIAL": value})
    message = str(refused.value)
    assert message.startswith("ENVKILN_SHARED_PUSH_CREDENTIAL: removed")
    assert "own push identity" in message and "ENVKILN_PUSH_SECRET_TEMPLATE" in message


@pytest.mark.parametrize("value", ["false", "False", "0", ""])
def test_the_shared_push_credential_off_changes_nothing(value: str) -> None:
    assert OperatorSettings.from_env({"ENVKILN_SHARED_PUSH_CREDENTIAL": value}) == OperatorSettings()
    with pytest.raises(ValueError):
        OperatorSettings.model_validate({"shared_push_credential": True})  # removed: an unknown field
