"""Which watch events make the operator reconcile, and what the periodic resync revisits: table tests."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.core.crdgen import UNRECONCILED_STATUS
from envkiln.core.decisions.resync import (
    build_finished_event,
    build_needs_sync,
    build_unsettled,
    dispatchable,
    due,
    environment_needs_sync,
    environment_unsettled,
)

META = {"name": "e", "generation": 2}
DELETING = {**META, "deletionTimestamp": "2026-01-01T00:00:00Z"}
OBSERVED_READY = {"phase": "Ready", "observedGeneration": 2}
OBSERVED_BUILDING = {"phase": "Building", "observedGeneration": 2}
OLD_GENERATION = {"phase": "Ready", "observedGeneration": 1}
# The status the API server fills in (the CRD's default) until the operator writes one.
UNRECONCILED = UNRECONCILED_STATUS


@pytest.mark.parametrize(("event", "meta", "status", "expected"), [
    ("ADDED", META, {}, True),  # new: no status yet
    ("ADDED", META, UNRECONCILED, True),  # new, as the API server shows it: the defaulted status
    (None, META, {}, True),  # listed at start, never reconciled
    (None, META, UNRECONCILED, True),
    ("MODIFIED", META, UNRECONCILED, True),  # e.g. labelled before the operator saw it
    (None, META, OBSERVED_READY, True),  # listed at start: checked once (from memory, no write if unchanged)
    ("MODIFIED", META, OLD_GENERATION, True),  # the spec changed
    ("MODIFIED", META, OBSERVED_READY, False),  # its own status write
    ("MODIFIED", META, OBSERVED_BUILDING, False),  # unsettled: the build tells it, or the resync revisits it
    ("MODIFIED", META, {"phase": "Ready"}, True),  # a status without observedGeneration: not from this operator
    ("DELETED", META, {}, False),
    ("MODIFIED", DELETING, {}, False),
    (None, DELETING, OLD_GENERATION, False),
])
def test_environment_needs_sync(event: str | None, meta: dict[str, Any], status: dict[str, Any],
                                expected: bool) -> None:
    assert environment_needs_sync(event, meta, status) is expected


@pytest.mark.parametrize(("status", "expected"), [
    ({}, True), (UNRECONCILED, True), ({"phase": "Pending"}, True), ({"phase": "Building"}, True),
    ({"phase": "Ready"}, False), ({"phase": "Failed"}, False),
])
def test_environment_unsettled(status: dict[str, Any], expected: bool) -> None:
    assert environment_unsettled(status) is expected


@pytest.mark.parametrize(("event", "meta", "status", "expected"), [
    ("ADDED", META, {}, True),  # created by an Environment: start it
    ("ADDED", META, UNRECONCILED, True),  # the same, with the API server's defaulted status
    (None, META, {}, True),
    (None, META, UNRECONCILED, True),
    ("MODIFIED", META, UNRECONCILED, True),
    (None, META, {"phase": "Building", "observedGeneration": 2}, True),  # resume after a restart
    ("MODIFIED", META, {"phase": "Building", "observedGeneration": 2}, False),  # its own write: Job events follow
    ("MODIFIED", META, {"phase": "Building", "observedGeneration": 1}, True),  # its spec was edited
    ("MODIFIED", META, {"phase": "Pending", "observedGeneration": 2}, False),  # queued: the resync retries
    (None, META, {"phase": "Succeeded", "observedGeneration": 2}, False),  # finished builds stay as they are
    ("MODIFIED", META, {"phase": "Failed"}, False),
    ("DELETED", META, {}, False),
    ("ADDED", DELETING, {}, False),
])
def test_build_needs_sync(event: str | None, meta: dict[str, Any], status: dict[str, Any], expected: bool) -> None:
    assert build_needs_sync(event, meta, status) is expected


@pytest.mark.parametrize(("event", "status", "expected"), [
    ("MODIFIED", {"phase": "Succeeded"}, True),
    ("MODIFIED", {"phase": "Failed"}, True),
    ("ADDED", {"phase": "Succeeded"}, True),  # recorded elsewhere (another replica, a restore)
    (None, {"phase": "Succeeded"}, False),  # at start every Environment checks itself
    ("DELETED", {"phase": "Succeeded"}, False),
    ("MODIFIED", {"phase": "Building"}, False),
])
def test_build_finished_event(event: str | None, status: dict[str, Any], expected: bool) -> None:
    assert build_finished_event(event, status) is expected


@pytest.mark.parametrize(("status", "expected"), [
    ({}, True), (UNRECONCILED, True), ({"phase": "Pending"}, True), ({"phase": "Building"}, True),
    ({"phase": "Succeeded"}, False), ({"phase": "Failed"}, False),
])
def test_build_unsettled(status: dict[str, Any], expected: bool) -> None:
    assert build_unsettled(status) is expected


@pytest.mark.parametrize(("schedule", "now", "expected"), [
    ({}, 10.0, []),
    ({"a": 5.0, "b": 15.0}, 10.0, ["a"]),
    ({"a": 9.0, "b": 3.0, "c": 10.0}, 10.0, ["b", "a", "c"]),  # earliest first; due at exactly now
    ({"a": 11.0}, 10.0, []),
])
def test_due(schedule: dict[str, float], now: float, expected: list[str]) -> None:
    assert due(schedule, now) == expected


A1, A2, A3 = ("env", "a", "1"), ("env", "a", "2"), ("env", "a", "3")
B1, B2 = ("build", "b", "1"), ("env", "b", "2")


@pytest.mark.parametrize(("work", "in_flight", "per_namespace", "free", "start", "later"), [
    ([], [], 2, 8, [], []),
    ([A1, A2, A3], [], 2, 8, [A1, A2], [A3]),  # at most 2 of namespace a at once
    ([A1, A2, A3, B1], [], 2, 8, [A1, B1, A2], [A3]),  # namespaces take turns
    ([A1, A2, B1, B2], [A3], 2, 8, [A1, B1, B2], [A2]),  # a's running item counts against its share
    ([A1, A2, B1, B2], [A3, ("env", "a", "9")], 2, 8, [B1, B2], [A1, A2]),  # a is full: b is not held up
    ([A1, A2], [A1], 2, 8, [A2], []),  # an item still running is not started (or kept) twice
    ([A1, A1, A2], [], 2, 8, [A1, A2], []),  # duplicates once
    ([A1, B1, A2, B2], [], 2, 1, [A1], [A2, B1, B2]),  # only as many as there are free threads
    ([A1, B1], [], 2, 0, [], [A1, B1]),
    ([A1, A2, A3], [], 1, 8, [A1], [A2, A3]),
])
def test_dispatchable(work: list[tuple[str, str, str]], in_flight: list[tuple[str, str, str]], per_namespace: int,
                      free: int, start: list[tuple[str, str, str]], later: list[tuple[str, str, str]]) -> None:
    assert dispatchable(work, in_flight, per_namespace, free) == (start, later)
