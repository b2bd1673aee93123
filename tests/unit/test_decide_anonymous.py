"""Anonymous Environments: when the operator makes one for a gated pod, and the per-namespace rate: tables."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from envkiln.core.decisions.anonymous import anonymous_target, plan_anonymous, rate_limit, waiting_inline_pod
from envkiln.core.models import EnvironmentSpec
from envkiln.core.workloads import ANNOTATION, GATE, LABEL, SPEC_ANNOTATION, anonymous_environment

SPEC = {"image": "python:3.11-slim", "pip": ["numpy==2.1.0"]}
BODY = anonymous_environment(EnvironmentSpec.model_validate(SPEC), "team-a")
NAME = BODY["metadata"]["name"]
RESERVED = {"envkiln-system", "envkiln-curated"}
OK, LIMITED = (True, 0.0), (False, 12.5)


def pod(spec: Any = SPEC, gated: bool = True, deleting: bool = False, label: str = "inline",
        reference: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "labels": {LABEL: label}, "annotations": {}}
    if reference is not None:  # what the webhook records on an admitted pod
        metadata["annotations"][ANNOTATION] = reference
    if spec is not None:
        metadata["annotations"][SPEC_ANNOTATION] = spec if isinstance(spec, str) else yaml.safe_dump(spec)
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": metadata, "spec": {"schedulingGates": [{"name": GATE}] if gated else [],
                                           "containers": [{"name": "c", "image": "x"}]}}


def other_spec() -> dict[str, Any]:
    return {**BODY, "spec": {**BODY["spec"], "pip": ["evil==6.6.6"]}}


@pytest.mark.parametrize(("the_pod", "namespace", "existing", "allowed", "action", "says"), [
    (pod(), "team-a", None, OK, "create", ""),  # the first gated pod: made in its own namespace
    (pod(label=NAME, reference=NAME), "team-a", None, OK, "create", ""),  # as admitted: label and reference set
    (pod(), "team-a", BODY, OK, "none", ""),  # already there, same spec
    (pod(), "team-a", other_spec(), OK, "refuse", "is not the pod's inline spec"),  # pre-created by someone else
    (pod(), "team-a", None, LIMITED, "wait", ""),  # the namespace's rate is used up
    (pod(), "envkiln-system", None, OK, "refuse", "not made in namespace envkiln-system"),  # the operator's own
    (pod(), "envkiln-curated", None, OK, "refuse", "not made in namespace envkiln-curated"),  # the curated one
    (pod(gated=False), "team-a", None, OK, "none", ""),  # admitted with an image: nothing to make
    (pod(deleting=True), "team-a", None, OK, "none", ""),
    (pod(spec=None), "team-a", None, OK, "none", ""),  # no inline spec
    (pod(spec="image: [unclosed"), "team-a", None, OK, "refuse", "not valid YAML"),
    (pod(spec={"image": "python:3.11", "unknown": 1}), "team-a", None, OK, "refuse", "unknown"),
])
def test_plan_anonymous(the_pod: dict[str, Any], namespace: str, existing: dict[str, Any] | None,
                        allowed: tuple[bool, float], action: str, says: str) -> None:
    plan = plan_anonymous(the_pod, namespace, RESERVED, existing, allowed)
    assert plan.action == action
    assert says in plan.message
    if action == "create":
        assert plan.environment is not None
        assert plan.environment["metadata"]["namespace"] == namespace and plan.environment["metadata"]["name"] == NAME
    if action == "wait":
        assert plan.retry_in == 12.5


@pytest.mark.parametrize(("the_pod", "target"), [
    (pod(), NAME),
    (pod(label="someone-else"), NAME),
    (pod(label=NAME, reference="someone-else"), NAME),  # the name follows from the spec, never from the pod's label
    (pod(gated=False), None),
    (pod(spec="image: [unclosed"), None),
    (pod(spec=None), None),
])
def test_anonymous_target(the_pod: dict[str, Any], target: str | None) -> None:
    assert anonymous_target(the_pod) == target


def test_waiting_inline_pod_needs_the_gate_and_the_annotation() -> None:
    assert waiting_inline_pod(pod()) and not waiting_inline_pod(pod(gated=False))
    assert not waiting_inline_pod(pod(spec=None)) and not waiting_inline_pod(pod(deleting=True))


@pytest.mark.parametrize(("recent", "now", "limit", "window", "expected"), [
    ([], 100.0, 3, 60.0, (True, 0.0)),
    ([90.0, 95.0], 100.0, 3, 60.0, (True, 0.0)),
    ([90.0, 95.0, 99.0], 100.0, 3, 60.0, (False, 50.0)),  # the oldest of the last 3 leaves the window at 150
    ([10.0, 95.0, 99.0], 100.0, 3, 60.0, (True, 0.0)),  # 10 is out of the window
    ([99.0, 41.0, 95.0], 100.0, 2, 60.0, (False, 55.0)),  # order does not matter
    ([100.0], 100.0, 1, 60.0, (False, 60.0)),
])
def test_rate_limit(recent: list[float], now: float, limit: int, window: float, expected: tuple[bool, float]) -> None:
    assert rate_limit(recent, now, limit, window) == expected
