from envkiln.conditions import get_condition, set_condition


def test_transition_time_changes_only_when_status_flips() -> None:
    first = set_condition(None, "Ready", False, "Building", "wait", 1, now="t1")
    same = set_condition(first, "Ready", False, "Building", "still waiting", 2, now="t2")
    assert get_condition(same, "Ready") == {"type": "Ready", "status": "False", "reason": "Building",
                                            "message": "still waiting", "lastTransitionTime": "t1",
                                            "observedGeneration": 2}
    flipped = set_condition(same, "Ready", True, "ImageReady", "ok", 2, now="t3")
    assert get_condition(flipped, "Ready")["lastTransitionTime"] == "t3"
    both = set_condition(flipped, "Valid", True, "Valid", "", 2, now="t4")
    assert [c["type"] for c in both] == ["Ready", "Valid"]
    assert first is not same  # new lists: merge patches replace lists whole
