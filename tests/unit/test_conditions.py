"""envkiln.core.conditions: metav1.Condition lists, kstatus's Reconciling/Stalled pair and its reading of a status."""

from __future__ import annotations

from typing import Any

import pytest

from envkiln.core.conditions import get_condition, kstatus, remove_condition, set_condition, set_progress
from helpers import condition


def test_transition_time_changes_only_when_status_flips() -> None:
    first = set_condition(None, "Ready", False, "Building", "wait", 1, now="t1")
    same = set_condition(first, "Ready", False, "Building", "still waiting", 2, now="t2")
    assert get_condition(same, "Ready") == {"type": "Ready", "status": "False", "reason": "Building",
                                            "message": "still waiting", "lastTransitionTime": "t1",
                                            "observedGeneration": 2}
    flipped = set_condition(same, "Ready", True, "ImageReady", "ok", 2, now="t3")
    assert condition(flipped, "Ready")["lastTransitionTime"] == "t3"
    both = set_condition(flipped, "Valid", True, "Valid", "", 2, now="t4")
    assert [c["type"] for c in both] == ["Ready", "Valid"]
    assert first is not same  # new lists: merge patches replace lists whole


# --- kstatus: the Reconciling/Stalled pair, and what kstatus concludes -----------------------


def test_progress_sets_one_abnormal_condition_and_removes_the_other() -> None:
    building = set_progress(None, "reconciling", "Building", "attempt 1", 2, now="t1")
    assert building == [{"type": "Reconciling", "status": "True", "reason": "Building", "message": "attempt 1",
                         "lastTransitionTime": "t1", "observedGeneration": 2}]
    still = set_progress(building, "reconciling", "Retrying", "attempt 2", 2, now="t2")
    assert condition(still, "Reconciling")["lastTransitionTime"] == "t1"  # still True: no transition
    failed = set_progress(still, "stalled", "BuildFailed", "no retries left", 2, now="t3")
    assert [c["type"] for c in failed] == ["Stalled"] and failed[0]["status"] == "True"
    assert set_progress(failed, "done", "ImageReady", "", 3) == []
    ready = set_condition(None, "Ready", True, "ImageReady", "ok", 3, now="t4")
    assert set_progress(ready, "done", "ImageReady") == ready  # other conditions are kept as they are
    assert remove_condition(ready, "Ready") == [] and remove_condition(None, "Ready") == []


def _obj(status: dict[str, Any] | None = None, generation: int | None = 2, **metadata: str) -> dict[str, Any]:
    meta: dict[str, object] = {"name": "x", **metadata}
    if generation is not None:
        meta["generation"] = generation
    return {"kind": "Environment", "metadata": meta, **({"status": status} if status is not None else {})}


def _c(type_: str, status: str, message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": "R", "message": message}


# (id, object, kstatus) — cli-utils' generic rules, in their order.
KSTATUS_CASES = [
    ("no-status-is-current", _obj(), "Current"),  # kstatus cannot tell before the controller wrote a status
    ("deleting", _obj({"observedGeneration": 2}, deletionTimestamp="2026-01-01T00:00:00Z"), "Terminating"),
    ("generation-not-observed", _obj({"observedGeneration": 1, "conditions": [_c("Ready", "True")]}), "InProgress"),
    ("no-generation-skips-the-check", _obj({"observedGeneration": 1}, generation=None), "Current"),
    ("reconciling", _obj({"observedGeneration": 2, "conditions": [_c("Ready", "False"), _c("Reconciling", "True")]}),
     "InProgress"),
    ("stalled", _obj({"observedGeneration": 2, "conditions": [_c("Ready", "False"), _c("Stalled", "True")]}),
     "Failed"),
    ("first-abnormal-condition-wins", _obj({"conditions": [_c("Stalled", "True"), _c("Reconciling", "True")]}),
     "Failed"),
    ("false-abnormal-conditions-are-normal", _obj({"conditions": [_c("Stalled", "False"), _c("Ready", "True")]}),
     "Current"),
    ("ready-true", _obj({"observedGeneration": 2, "conditions": [_c("Ready", "True")]}), "Current"),
    ("ready-false-alone-looks-in-progress-forever", _obj({"conditions": [_c("Ready", "False")]}), "InProgress"),
    ("ready-unknown", _obj({"conditions": [_c("Ready", "Unknown")]}), "InProgress"),
    ("other-conditions-only", _obj({"conditions": [_c("Succeeded", "Unknown")]}), "Current"),
]


@pytest.mark.parametrize(("case", "obj", "expected"), KSTATUS_CASES, ids=[c[0] for c in KSTATUS_CASES])
def test_kstatus(case: str, obj: dict[str, Any], expected: str) -> None:
    assert kstatus(obj)[0] == expected


def test_kstatus_messages() -> None:
    assert kstatus(_obj({"observedGeneration": 1}))[1] == (
        "Environment generation is 2, but latest observed generation is 1")
    assert kstatus(_obj({"conditions": [_c("Stalled", "True", "build failed")]})) == ("Failed", "build failed")
