"""envkiln.core.decisions.environment: an Environment's outcome for every combination that matters."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from envkiln.core.conditions import get_condition, kstatus
from envkiln.core.crdgen import UNRECONCILED_STATUS
from envkiln.core.decisions.environment import Facts, Lookup, decide, from_build, new_status
from envkiln.core.models import Phase
from helpers import CONDA_ENV, PIP_ENV, spec_of

HASH = "0123456789abcdef0123456789abcdef"
DIGEST = "sha256:" + "a" * 64
PUSH = f"reg.svc:5000/envkiln/ns/env_{HASH}:{HASH}"
PULL = f"localhost:5000/envkiln/ns/env_{HASH}:{HASH}"
BYO = {**PIP_ENV, "spec": {"image": "ghcr.io/org/trainer:2.1", "userManaged": True}}


def facts(**changes: Any) -> Facts:
    base = Facts(spec=spec_of(PIP_ENV), hash=HASH, namespace="ns", push_image=PUSH, pull_image=PULL,
                 push_registry="reg.svc:5000", pull_registry="localhost:5000", build_name=f"envb-{HASH}",
                 retry_seconds=15.0)
    return replace(base, **changes)


def build(phase: str | None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"envb-{HASH}"}, "spec": {"hash": HASH, "image": PUSH},
            "status": {"phase": phase, **status} if phase else {}}


# status.imageRef is not signed, so it is never read: the reference comes from the signed image and digest.
SUCCEEDED = build("Succeeded", digest=DIGEST, imageRef="evil.example/x@sha256:" + "b" * 64)
FAILED = build("Failed", message="attempt 3 failed (BuildFailed)")

# (id, facts, phase, Ready condition (status, reason), create_build, records_hash, retry_in)
CASES = [
    ("invalid", facts(spec=None, problems=("spec.pip[0]: bad",), hash=None),
     Phase.FAILED, (False, "InvalidDefinition"), False, True, None),
    ("byo-found", facts(spec=spec_of(BYO), lookup=Lookup(found=True, digest=DIGEST)),
     Phase.READY, (True, "ImageReady"), False, True, None),
    ("byo-missing", facts(spec=spec_of(BYO), lookup=Lookup(found=False)),
     Phase.FAILED, (False, "ImageNotFound"), False, True, 60.0),
    ("byo-registry-down", facts(spec=spec_of(BYO), lookup=Lookup(unavailable="registry r unavailable: 503")),
     Phase.PENDING, (False, "RegistryUnavailable"), False, False, 15.0),
    ("context-configmap-missing", facts(missing_context="ctx"),
     Phase.PENDING, (False, "ContextNotFound"), False, False, 30.0),
    # An image under the hash's tag is no cache hit without the operator's record: it is rebuilt.
    ("tag-in-registry-without-record-is-rebuilt", facts(lookup=Lookup(found=True, digest=DIGEST)),
     Phase.BUILDING, (False, "Building"), True, True, None),
    ("no-record-creates-build", facts(),
     Phase.BUILDING, (False, "Building"), True, True, None),
    ("registry-down-does-not-matter-for-builds", facts(lookup=Lookup(unavailable="registry r unavailable: timeout")),
     Phase.BUILDING, (False, "Building"), True, True, None),
    ("untrusted-succeeded-build", facts(build=SUCCEEDED, build_problem="it carries no envkiln signature"),
     Phase.FAILED, (False, "UntrustedBuild"), False, True, None),
    ("untrusted-running-build", facts(build=build("Building"), build_problem="its signature does not match"),
     Phase.FAILED, (False, "UntrustedBuild"), False, True, None),
    ("adopts-running-build", facts(build=build("Building")),
     Phase.BUILDING, (False, "Building"), False, True, None),
    ("adopts-new-build", facts(build=build(None)),
     Phase.BUILDING, (False, "Building"), False, True, None),
    ("adopts-succeeded-build", facts(build=SUCCEEDED),
     Phase.READY, (True, "ImageReady"), False, True, None),
    ("adopts-failed-build", facts(build=FAILED),
     Phase.FAILED, (False, "BuildFailed"), False, True, None),
    ("build-wins-over-registry", facts(build=build("Building"), lookup=Lookup(found=True, digest=DIGEST)),
     Phase.BUILDING, (False, "Building"), False, True, None),
]


@pytest.mark.parametrize(("case", "given", "phase", "ready", "create", "records", "retry"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(case: str, given: Facts, phase: Phase, ready: tuple[bool, str], create: bool, records: bool,
                retry: float | None) -> None:
    outcome = decide(given)
    assert outcome.phase is phase
    assert outcome.conditions["Ready"][:2] == ready
    assert outcome.create_build is create
    assert outcome.records_hash is records
    assert outcome.retry_in == retry
    # Every outcome can be told in an Event, but a cache hit (Ready with no build waited for) is one status write.
    if outcome.fields.get("cacheHit") is True:
        assert outcome.event is None and outcome.conditions["ImageAvailable"][1] == "CacheHit"
    else:
        assert outcome.event is not None and outcome.event[1]


def test_ready_outcomes_name_the_pull_registry_and_digest() -> None:
    built = decide(facts(build=SUCCEEDED))
    assert built.fields["imageRef"] == f"localhost:5000/envkiln/ns/env_{HASH}@{DIGEST}"
    assert built.fields["image"] == PULL and built.fields["cacheHit"] is True
    byo = decide(facts(spec=spec_of(BYO), lookup=Lookup(found=True, digest=DIGEST)))
    assert byo.fields["imageRef"] == f"ghcr.io/org/trainer@{DIGEST}" and byo.fields["build"] is None


def test_untrusted_build_says_what_to_do() -> None:
    outcome = decide(facts(build=SUCCEEDED, build_problem="it carries no envkiln signature"))
    assert f"kubectl delete envbuild -n ns envb-{HASH}" in outcome.message
    assert outcome.fields["imageRef"] is None and outcome.fields["imageDigest"] is None


@pytest.mark.parametrize(("previous", "cache_hit"), [
    ({}, True),  # found a finished build at first sight: nothing was built for this Environment
    ({"hash": HASH, "cacheHit": False}, False),  # it waited for the build
    ({"hash": "f" * 32, "cacheHit": False}, True),  # waited for another definition's build
    (UNRECONCILED_STATUS, True),  # the API server's default: as good as no status
])
def test_adoption_cache_hit(previous: dict[str, Any], cache_hit: bool) -> None:
    outcome = decide(facts(build=SUCCEEDED, previous_status=previous))
    assert outcome.fields["cacheHit"] is cache_hit
    assert outcome.conditions["ImageAvailable"][1] == ("CacheHit" if cache_hit else "Built")


def test_from_build_needs_a_digest() -> None:
    assert from_build(build("Succeeded"), PULL, "b", True) is None
    assert from_build(build("Pending"), PULL, "b", True) is None


def test_other_kinds_need_no_registry() -> None:
    conda = decide(facts(spec=spec_of(CONDA_ENV), lookup=Lookup(unavailable="down")))
    assert conda.records_hash and conda.phase is Phase.BUILDING and conda.create_build


def test_new_status_history_and_conditions() -> None:
    env = {"metadata": {"generation": 3}, "spec": PIP_ENV["spec"], "status": {"phase": "Building"}}
    ready = decide(facts(build=SUCCEEDED))
    status = new_status(env, ready, HASH, "2026-01-01T00:00:00Z")
    assert status["phase"] == "Ready" and status["hash"] == HASH and status["shortHash"] == HASH[:12]
    assert status["observedGeneration"] == 3 and status["kind"] == "SystemManaged"
    assert status["versions"] == [{"version": "1", "hash": HASH, "when": "2026-01-01T00:00:00Z",
                                   "imageRef": ready.fields["imageRef"]}]
    assert {c["type"] for c in status["conditions"]} == {"Valid", "ImageAvailable", "Ready"}
    again = new_status({**env, "status": status}, ready, HASH, "2026-01-02T00:00:00Z")
    assert again == status  # idempotent: nothing to write the second time
    missing = new_status({**env, "status": status}, decide(facts(missing_context="c")), None, "t")
    assert "ImageAvailable" not in {c["type"] for c in missing["conditions"]}
    # The first status over the API server's default is the same as over no status at all.
    first = new_status({**env, "status": dict(UNRECONCILED_STATUS)}, ready, HASH, "2026-01-01T00:00:00Z")
    assert first == new_status({**env, "status": {}}, ready, HASH, "2026-01-01T00:00:00Z")
    assert first["observedGeneration"] == 3


# What Flux (kstatus) and `kubectl wait --for=condition=...` read from each phase.
KSTATUS = {Phase.READY: ("Current", None), Phase.FAILED: ("Failed", "Stalled"),
           Phase.BUILDING: ("InProgress", "Reconciling"), Phase.PENDING: ("InProgress", "Reconciling")}


@pytest.mark.parametrize(("case", "given", "phase"), [c[:3] for c in CASES], ids=[c[0] for c in CASES])
def test_kstatus_reads_every_outcome(case: str, given: Facts, phase: Phase) -> None:
    env = {"kind": "Environment", "metadata": {"generation": 2}, "spec": PIP_ENV["spec"]}
    outcome = decide(given)
    status = new_status(env, outcome, HASH, "2026-01-01T00:00:00Z")
    expected, abnormal = KSTATUS[phase]
    assert kstatus({**env, "status": status}) == (expected, outcome.message if abnormal else "Resource is Ready")
    present = {c["type"] for c in status["conditions"]} & {"Reconciling", "Stalled"}
    assert present == ({abnormal} if abnormal else set()), "only the abnormal condition that applies is present"
    ready = get_condition(status["conditions"], "Ready")
    assert ready is not None and ready["status"] == ("True" if phase is Phase.READY else "False")
    if abnormal:
        condition = get_condition(status["conditions"], abnormal)
        assert condition is not None and condition["reason"] == outcome.conditions["Ready"][1]
        assert condition["observedGeneration"] == 2


def test_kstatus_follows_an_environment_through_its_life() -> None:
    env: dict[str, Any] = {"kind": "Environment", "metadata": {"generation": 1}, "spec": PIP_ENV["spec"],
                           "status": dict(UNRECONCILED_STATUS)}  # as the API server shows it before the operator
    assert kstatus(env)[0] == "InProgress"
    steps = [(decide(facts()), "InProgress"), (decide(facts(build=build("Building"))), "InProgress"),
             (decide(facts(build=FAILED)), "Failed"), (decide(facts(build=SUCCEEDED)), "Current")]
    for number, (outcome, expected) in enumerate(steps):
        env["status"] = new_status(env, outcome, HASH, f"2026-01-01T00:00:0{number}Z")
        assert kstatus(env)[0] == expected
    assert {c["type"] for c in env["status"]["conditions"]} == {"Valid", "ImageAvailable", "Ready"}
    env["metadata"]["generation"] = 2  # a new version applied: not observed yet, so not Current any more
    assert kstatus(env)[0] == "InProgress"
    again = new_status(env, decide(facts(build=SUCCEEDED)), HASH, "2026-01-01T00:00:09Z")
    assert again["observedGeneration"] == 2 and kstatus({**env, "status": again})[0] == "Current"
