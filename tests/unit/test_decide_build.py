"""envkiln.core.decisions.build: the next step of an EnvironmentBuild, and the retry backoff."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from envkiln.core.conditions import kstatus
from envkiln.core.decisions.build import (
    MAX_BACKOFF_SECONDS,
    Limits,
    after_failure,
    after_verification,
    backoff_delay,
    build_conditions,
    holds_slot,
    next_step,
    refuse,
    slots_in_use,
)
from helpers import condition

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits(max_concurrent=2, max_per_namespace=1, retry_limit=2, backoff_seconds=30)

# (id, status, kwargs, action, attempt, phase, retry_in, terminal)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, int, str | None, float | None, bool]] = [
    ("succeeded-is-settled", {"phase": "Succeeded", "attempts": 1}, {}, "none", 0, None, None, False),
    ("failed-is-settled", {"phase": "Failed", "attempts": 3}, {}, "none", 0, None, None, False),
    ("first-attempt", {}, {}, "start", 1, "Building", None, False),
    ("first-attempt-under-limit", {}, {"running": 1}, "start", 1, "Building", None, False),
    ("queued-at-limit", {}, {"running": 2}, "queue", 0, "Pending", 10.0, False),
    ("queued-again", {"phase": "Pending"}, {"running": 5}, "queue", 0, "Pending", 10.0, False),
    # Fairness: a namespace that already runs its share waits, while others may start.
    ("queued-namespace-share-used", {}, {"running": 1, "running_in_namespace": 1}, "queue", 0, "Pending", 10.0,
     False),
    ("other-namespace-starts", {}, {"running": 1, "running_in_namespace": 0}, "start", 1, "Building", None, False),
    ("local-builder-has-no-slots", {}, {"running_in_namespace": 9}, "start", 1, "Building", None, False),
    ("running", {"phase": "Building", "attempts": 1}, {"state": "Running"}, "wait", 1, None, None, False),
    ("vanished-restarts", {"phase": "Building", "attempts": 1}, {"state": "Missing"}, "start", 1, "Building",
     None, False),
    ("in-backoff-waits", {"phase": "Building", "attempts": 2, "retryAfter": "2026-01-01T12:00:45Z"},
     {"state": "Missing"}, "wait", 2, None, 45.0, False),
    ("backoff-over-starts", {"phase": "Building", "attempts": 2, "retryAfter": "2026-01-01T11:59:00Z"},
     {"state": "Missing"}, "start", 2, "Building", None, False),
    # A restarted attempt needs a slot like a first one (issue #22: retries never exceed the limits).
    ("restart-waits-at-limit", {"phase": "Building", "attempts": 2, "retryAfter": "2026-01-01T11:59:00Z"},
     {"state": "Missing", "running": 2}, "queue", 2, "Building", 10.0, False),
    ("restart-waits-for-namespace-share", {"phase": "Building", "attempts": 2},
     {"state": "Missing", "running": 1, "running_in_namespace": 1}, "queue", 2, "Building", 10.0, False),
    ("restart-with-a-free-slot", {"phase": "Building", "attempts": 2},
     {"state": "Missing", "running": 1, "running_in_namespace": 0}, "start", 2, "Building", None, False),
    ("in-backoff-waits-whatever-the-slots", {"phase": "Building", "attempts": 2, "retryAfter": "2026-01-01T12:00:45Z"},
     {"state": "Missing", "running": 9}, "wait", 2, None, 45.0, False),
    ("success-is-verified", {"phase": "Building", "attempts": 1}, {"state": "Succeeded"}, "verify", 1, None,
     None, False),
    ("first-failure-retries", {"phase": "Building", "attempts": 1}, {"state": "Failed", "reason": "Error"},
     "retry", 2, "Building", 30.0, False),
    ("second-failure-retries-later", {"phase": "Building", "attempts": 2}, {"state": "Failed"},
     "retry", 3, "Building", 60.0, False),
    ("last-failure-fails", {"phase": "Building", "attempts": 3}, {"state": "Failed", "reason": "OOMKilled"},
     "fail", 3, "Failed", None, True),
]


@pytest.mark.parametrize(("case", "status", "kwargs", "action", "attempt", "phase", "retry_in", "terminal"), CASES,
                         ids=[c[0] for c in CASES])
def test_next_step(case: str, status: dict[str, Any], kwargs: dict[str, Any], action: str, attempt: int,
                   phase: str | None, retry_in: float | None, terminal: bool) -> None:
    step = next_step(status, LIMITS, NOW, "instance-1", **kwargs)
    assert (step.action, step.attempt, step.phase, step.retry_in, step.terminal) == (
        action, attempt, phase, retry_in, terminal)
    if step.phase is not None:
        assert step.changes["phase"] == step.phase and step.condition is not None


def test_start_records_the_attempt_and_instance() -> None:
    step = next_step({}, LIMITS, NOW, "instance-1")
    assert step.changes == {"phase": "Building", "attempts": 1, "startTime": "2026-01-01T12:00:00Z",
                            "builderInstance": "instance-1", "message": "attempt 1 started"}
    restart = next_step({"attempts": 2, "retryAfter": "2026-01-01T11:00:00Z"}, LIMITS, NOW, "i2", state="Missing")
    assert restart.changes["retryAfter"] is None  # cleared: the backoff is over


def test_retry_writes_when_and_why() -> None:
    step = after_failure(1, "Error", "pip: no matching distribution", LIMITS, NOW)
    assert step.changes["retryAfter"] == "2026-01-01T12:00:30Z"
    assert step.changes["attempts"] == 2 and step.changes["job"] is None
    assert step.changes["logTail"] == "pip: no matching distribution"
    assert step.condition == (None, "Retrying", "attempt 1 failed (Error); retry 1 of 2 in 30s")
    assert step.event is not None and step.event[:2] == ("Warning", "BuildFailed")


@pytest.mark.parametrize(("tail", "expected"), [
    (None, ""),
    ("[push] short", "[push] short"),
    ("[push] " + "x" * 493, "[push] " + "x" * 493),  # exactly the limit: whole
    ("[push] " + "a" * 300 + "b" * 400, "[push] …" + "a" * 92 + "b" * 400),  # cut: the container stays named
    ("[build] " + "y" * 1000, "[build] …" + "y" * 491),
    ("z" * 800, "z" * 500),  # no container named: the end only
    ("[" + "w" * 900, "w" * 500),  # not a container prefix
])
def test_event_keeps_the_failed_container_of_a_long_tail(tail: str | None, expected: str) -> None:
    """A push cut by a registry outage left a long skopeo URL; the Event's 500 characters kept only
    its end and lost "[push]" (found by tests/integration/node/test_faults.py)."""
    step = after_failure(1, "Error", tail, LIMITS, NOW)
    assert step.event is not None
    message = step.event[2]
    assert message == f"attempt 1 failed (Error): {expected}"
    assert len(message) - len("attempt 1 failed (Error): ") <= 500
    assert step.changes["logTail"] == tail, "the status keeps the whole tail"


@pytest.mark.parametrize(("reason", "expected"), [
    ("OOMKilled", "OOMKilled"), (None, "BuildFailed"), ("", "BuildFailed"), ("137", "BuildFailed"),
])
def test_failure_reason_is_a_condition_reason(reason: str | None, expected: str) -> None:
    step = after_failure(1, reason, None, Limits(retry_limit=0), NOW)
    assert step.action == "fail" and step.condition is not None and step.condition[1] == expected


@pytest.mark.parametrize(("attempt", "base", "delay"), [
    (1, 30, 30), (2, 30, 60), (3, 30, 120), (4, 30, 240), (0, 30, 30),
    (1, 0, 0), (3, 0, 0),  # no backoff configured
    (20, 30, MAX_BACKOFF_SECONDS),  # capped however many retries are allowed
])
def test_backoff_delay(attempt: int, base: int, delay: int) -> None:
    assert backoff_delay(attempt, base) == delay


@pytest.mark.parametrize(("found", "action", "phase"), [(True, "succeed", "Succeeded"), (False, "retry", "Building")])
def test_after_verification(found: bool, action: str, phase: str) -> None:
    digest = "sha256:" + "b" * 64
    step = after_verification(1, digest, found, f"pull/env@{digest}", "push/env", LIMITS, NOW)
    assert (step.action, step.phase) == (action, phase)
    if found:
        assert step.terminal and step.changes["digest"] == digest and step.changes["imageRef"] == f"pull/env@{digest}"
    else:
        assert step.condition is not None and "ImageNotInRegistry" in step.condition[2]


@pytest.mark.parametrize(("status", "holds"), [
    ({"phase": "Building", "attempts": 1, "job": "envkiln-x-1"}, True),
    ({"phase": "Building", "attempts": 2, "retryAfter": "t"}, False),  # waiting to retry: its Job is gone
    ({"phase": "Building", "attempts": 1}, False),  # its Job was refused (quota, admission)
    ({"phase": "Pending"}, False),
    ({"phase": "Succeeded", "job": "envkiln-x-1"}, False),
])
def test_holds_slot(status: dict[str, Any], holds: bool) -> None:
    assert holds_slot(status) is holds


def test_refuse_fails_without_starting() -> None:
    step = refuse("UntrustedBuild", "not built: it carries no envkiln signature", NOW)
    assert (step.action, step.phase, step.terminal) == ("fail", "Failed", True)
    assert step.condition == (False, "UntrustedBuild", "not built: it carries no envkiln signature")
    assert step.event is not None and step.event[0] == "Warning"


# (id, step, Succeeded, Ready, abnormal condition, kstatus): every step that writes a condition.
CONDITION_CASES = [
    ("queued", next_step({}, LIMITS, NOW, "i", running=2), "Unknown", "False", "Reconciling", "InProgress"),
    ("started", next_step({}, LIMITS, NOW, "i"), "Unknown", "False", "Reconciling", "InProgress"),
    ("retrying", after_failure(1, "Error", "tail", LIMITS, NOW), "Unknown", "False", "Reconciling", "InProgress"),
    ("failed", after_failure(3, "OOMKilled", "tail", LIMITS, NOW), "False", "False", "Stalled", "Failed"),
    ("refused", refuse("UntrustedBuild", "not built", NOW), "False", "False", "Stalled", "Failed"),
    ("succeeded", after_verification(1, "sha256:" + "b" * 64, True, "pull/env@sha256:b", "push/env", LIMITS, NOW),
     "True", "True", None, "Current"),
]


@pytest.mark.parametrize(("case", "step", "succeeded", "ready", "abnormal", "expected"), CONDITION_CASES,
                         ids=[c[0] for c in CONDITION_CASES])
def test_build_conditions_for_kstatus(case: str, step: Any, succeeded: str, ready: str, abnormal: str | None,
                                      expected: str) -> None:
    assert step.condition is not None and step.phase is not None
    conditions = build_conditions(None, step.phase, step.condition, 4, now="t")
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Succeeded"]["status"] == succeeded and by_type["Ready"]["status"] == ready
    assert set(by_type) == {"Succeeded", "Ready", *([abnormal] if abnormal else [])}
    assert {c["reason"] for c in conditions} == {step.condition[1]}
    assert {c["observedGeneration"] for c in conditions} == {4}
    build = {"kind": "EnvironmentBuild", "metadata": {"generation": 4},
             "status": {"phase": step.phase, "observedGeneration": 4, "conditions": conditions}}
    assert kstatus(build)[0] == expected


def test_build_conditions_through_retries() -> None:
    first = build_conditions(None, "Building", (None, "Building", "attempt 1 started"), 1, now="t1")
    retry = build_conditions(first, "Building", (None, "Retrying", "attempt 1 failed"), 1, now="t2")
    assert condition(retry, "Reconciling")["lastTransitionTime"] == "t1"  # still reconciling: no transition
    done = build_conditions(retry, "Succeeded", (True, "BuildSucceeded", "pushed"), 1, now="t3")
    assert [c["type"] for c in done] == ["Succeeded", "Ready"]
    assert condition(done, "Ready")["lastTransitionTime"] == "t3"
    assert build_conditions(done, "Succeeded", (True, "BuildSucceeded", "pushed"), 1, now="t4") == done


def test_a_restart_waiting_for_a_slot_holds_none() -> None:
    step = next_step({"phase": "Building", "attempts": 2, "job": "envkiln-x-1"}, LIMITS, NOW, "i", state="Missing",
                     running=2, running_in_namespace=1, namespace="team")
    assert step.changes["job"] is None and step.changes["retryAfter"] is None
    assert not holds_slot({**{"phase": "Building", "attempts": 2}, **step.changes})
    assert step.condition == (None, "Queued", "attempt 2: 2 builds are already running")


A1, A2, B1 = ("a", "envb-1"), ("a", "envb-2"), ("b", "envb-1")


@pytest.mark.parametrize(("case", "holding", "claimed", "asking", "expected"), [
    ("none", [], [], None, {}),
    ("from-status", [A1, B1], [], None, {"a": 1, "b": 1}),
    ("claimed-before-the-watch-shows-it", [A1], [A2], None, {"a": 2}),
    ("each-build-once", [A1, A2], [A1, A2], None, {"a": 2}),
    ("the-asking-build-is-not-counted", [A1, A2], [], A1, {"a": 1}),
    ("nor-its-claim", [], [A1, B1], A1, {"b": 1}),
])
def test_slots_in_use(case: str, holding: list[tuple[str, str]], claimed: list[tuple[str, str]],
                      asking: tuple[str, str] | None, expected: dict[str, int]) -> None:
    assert dict(slots_in_use(holding, claimed, asking)) == expected
