"""Build slots are counted from the builds the operator already holds (no list request), signed ones only."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace
from typing import Any

from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.core.trust import Signer
from envkiln.reconcile.buildsync import running_builds, sync_build
from envkiln.reconcile.context import KeyedLocks

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


class CountingGet:
    """A `get` that stays busy for a moment and records how many callers were inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.guard = threading.Lock()

    def get(self, *args: Any) -> None:
        with self.guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.05)
        with self.guard:
            self.inside -= 1


def test_syncs_of_one_build_are_serialized_and_of_two_builds_are_not() -> None:
    # Seen in CI: a build's watch event and its Job's event synced it at once; both saw the same
    # finished Job and the build's duration was observed twice.
    for names, expected in ((["x", "x", "x"], 1), (["x", "y"], 2)):
        kube = CountingGet()
        ctx = SimpleNamespace(kube=kube, build_locks=KeyedLocks())
        threads = [threading.Thread(target=sync_build, args=(ctx, "a", n)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert kube.most == expected, names
        assert len(ctx.build_locks) == 0  # nothing kept once no one holds a key
