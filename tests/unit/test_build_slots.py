"""Build slots are counted from the builds the operator already holds (no list request), signed ones only."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from envkiln.buildsync import running_builds
from envkiln.names import ANNOTATION_SIGNATURE
from envkiln.trust import Signer

KEY = b"k" * 32
SPEC = {"hash": "0" * 32, "image": "r/envkiln/a/env_x:x", "plan": {"dockerfile": "FROM x\n"}}


def build(namespace: str, status: dict[str, Any], signed: bool = True) -> dict[str, Any]:
    name = f"envb-{namespace}-{len(status)}"
    annotations = {ANNOTATION_SIGNATURE: Signer(KEY).sign_build(namespace, name, SPEC)} if signed else {}
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": copy.deepcopy(SPEC), "status": status}


class NoListing:
    def list_in(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the slot count must not list builds when the operator holds them")


def test_slots_come_from_the_known_builds_and_only_signed_ones_count() -> None:
    ctx = SimpleNamespace(kube=NoListing(), signer=Signer(KEY), settings=SimpleNamespace(namespaces=[]))
    running = {"phase": "Building", "job": "envkiln-x-1"}
    known = [build("a", running), build("a", {"phase": "Succeeded", "job": "j"}), build("b", running),
             build("b", running, signed=False), build("c", {"phase": "Building"})]
    assert running_builds(ctx, known) == {"a": 1, "b": 1}  # type: ignore[arg-type]
