"""Build slots: counted from the builds the operator already holds (no list request), signed ones only;
and claimed atomically, so that syncs running at once never start more builds than the limits allow
(issue #22: 8 Jobs started in one namespace under limits of 4 / 2 per namespace)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from envkiln.adapters.builders import AttemptResult, AttemptState, Builder
from envkiln.adapters.keyedlocks import KeyedLocks
from envkiln.adapters.registryclient import RegistryClient
from envkiln.core.decisions.build import holds_slot
from envkiln.core.names import ANNOTATION_SIGNATURE, BUILDS
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.reconcile.buildsync import running_builds, sync_build
from envkiln.reconcile.context import OperatorContext
from fakes import FakeKube, Intercept

KEY = b"k" * 32
SPEC = {"hash": "0" * 32, "image": "r/envkiln/a/env_x:x", "plan": {"dockerfile": "FROM x\n"}}


def build(namespace: str, status: dict[str, Any], signed: bool = True) -> dict[str, Any]:
    name = f"envb-{namespace}-{len(status)}"
    annotations = {ANNOTATION_SIGNATURE: Signer(KEY).sign_build(namespace, name, SPEC)} if signed else {}
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": copy.deepcopy(SPEC), "status": status}


def no_listing(why: str) -> Intercept:
    """A FakeKube intercept failing the test on any list request."""
    def refuse(verb: str, kind: str, namespace: str, name: str) -> None:
        if verb == "list":
            raise AssertionError(why)
    return refuse


def context(kube: FakeKube, builder: Builder, settings: OperatorSettings) -> OperatorContext:
    return OperatorContext(settings=settings, kube=kube, registry=RegistryClient(), builder=builder,
                           signer=Signer(KEY), instance_id="i")


def test_slots_come_from_the_known_builds_and_only_signed_ones_count() -> None:
    kube = FakeKube()
    kube.intercept = no_listing("the slot count must not list builds when the operator holds them")
    ctx = context(kube, Jobs(), OperatorSettings())
    running = {"phase": "Building", "job": "envkiln-x-1"}
    known = [build("a", running), build("a", {"phase": "Succeeded", "job": "j"}), build("b", running),
             build("b", running, signed=False), build("c", {"phase": "Building"})]
    assert running_builds(ctx, known) == {"a": 1, "b": 1}


class CountingGets:
    """A FakeKube intercept: each read of a build stays busy for a moment; records how many reads were
    inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.guard = threading.Lock()

    def __call__(self, verb: str, kind: str, namespace: str, name: str) -> None:
        if (verb, kind) != ("get", BUILDS):
            return
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
        kube, gets = FakeKube(), CountingGets()
        kube.intercept = gets
        ctx = context(kube, Jobs(), OperatorSettings())
        threads = [threading.Thread(target=sync_build, args=(ctx, "a", n)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert gets.most == expected, names
        assert len(ctx.build_locks) == 0  # nothing kept once no one holds a key


# --- slots are claimed atomically -------------------------------------------------------------------

SETTINGS = OperatorSettings(registry="reg.local:5000", max_concurrent_builds=4, max_concurrent_builds_per_namespace=2,
                            build_retry_backoff_seconds=0)


def signed_build(namespace: str, index: int) -> dict[str, Any]:
    value = f"{namespace}-{index}".encode().hex().ljust(32, "0")[:32]
    name = f"envb-{value}"
    spec = {"hash": value, "image": SETTINGS.push_image(value, namespace), "plan": {"dockerfile": "FROM x\n"}}
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                         "annotations": {ANNOTATION_SIGNATURE: Signer(KEY).sign_build(namespace, name, spec)}},
            "spec": spec, "status": {}}


def store(builds: list[dict[str, Any]]) -> FakeKube:
    """The API server holding `builds`. A status write takes a moment (the window in which the old
    count-then-start let every sync see the same free slots); listing builds fails the test (they come
    from the operator's index)."""
    kube = FakeKube()
    for body in builds:
        kube.put(BUILDS, body["metadata"]["namespace"], body)
    listing = no_listing("the builds come from the operator's index")

    def slow_writes(verb: str, kind: str, namespace: str, name: str) -> None:
        listing(verb, kind, namespace, name)
        if verb == "patch":
            time.sleep(0.01)
    kube.intercept = slow_writes
    return kube


def stored(kube: FakeKube) -> dict[tuple[str, str], dict[str, Any]]:
    """The builds the API server holds, by (namespace, name). (One list() call copies the store whole while
    syncs in other threads write to it.)"""
    return {(namespace, name): body for (kind, namespace, name), body in list(kube.objects.items()) if kind == BUILDS}


def finish(kube: FakeKube, namespace: str, name: str) -> None:
    kube.objects[(BUILDS, namespace, name)]["status"]["phase"] = "Succeeded"


class Jobs:
    """A Job builder whose Jobs run until the test says otherwise; records the most that ran at once."""

    name = "jobs"
    uses_cluster_slots = True

    def __init__(self) -> None:
        self.running: set[tuple[str, str]] = set()
        self.failed: set[tuple[str, str]] = set()
        self.most = 0
        self.most_in: dict[str, int] = {}
        self.guard = threading.Lock()

    def start(self, build: dict[str, Any], attempt: int) -> str:
        key = (build["metadata"]["namespace"], build["metadata"]["name"])
        with self.guard:
            self.running.add(key)
            self.most = max(self.most, len(self.running))
            for namespace in {n for n, _ in self.running}:
                in_namespace = sum(1 for n, _ in self.running if n == namespace)
                self.most_in[namespace] = max(self.most_in.get(namespace, 0), in_namespace)
        return f"envkiln-{build['spec']['hash']}-{attempt}"

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        key = (build["metadata"]["namespace"], build["metadata"]["name"])
        with self.guard:
            if key in self.failed:
                self.failed.discard(key)
                return AttemptResult(AttemptState.FAILED, reason="Error", log_tail="it broke")
            if key in self.running:
                return AttemptResult(AttemptState.RUNNING)
        return AttemptResult(AttemptState.MISSING)

    def stop(self, key: tuple[str, str], failed: bool = False) -> None:
        with self.guard:
            self.running.discard(key)
            if failed:
                self.failed.add(key)


def sync_all_at_once(ctx: OperatorContext, keys: list[tuple[str, str]],
                     known: Callable[[], Iterable[dict[str, Any]]]) -> None:
    barrier = threading.Barrier(len(keys))
    errors: list[BaseException] = []

    def sync(namespace: str, name: str) -> None:
        barrier.wait()
        try:
            sync_build(ctx, namespace, name, known)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=sync, args=key) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.timeout(60)
def test_builds_synced_at_once_never_exceed_the_limits() -> None:
    builds = [signed_build("a", i) for i in range(8)] + [signed_build(n, i) for n in ("b", "c") for i in range(4)]
    kube, jobs = store(builds), Jobs()
    ctx = context(kube, jobs, SETTINGS)
    keys = list(stored(kube))
    listed = copy.deepcopy(builds)  # the watch has not brought any status write back yet
    sync_all_at_once(ctx, keys, lambda: listed)
    assert jobs.most <= 4 and max(jobs.most_in.values()) <= 2, (jobs.most, jobs.most_in)
    assert len(jobs.running) == 4, "every free slot was used"
    # The statuses hold the slots from their first write: the Job's name is there before the Job.
    started = [key for key, b in stored(kube).items() if holds_slot(b["status"])]
    assert sorted(started) == sorted(jobs.running)
    queued = [key for key, b in stored(kube).items() if b["status"].get("phase") == "Pending"]
    assert len(queued) == 12

    # Later syncs, with the watch caught up or not, start nothing more while all four run.
    for known in (lambda: listed, lambda: list(stored(kube).values())):
        sync_all_at_once(ctx, keys, known)
        assert len(jobs.running) == 4 and jobs.most == 4 and max(jobs.most_in.values()) <= 2

    # Two finish: their syncs give the slots back, and exactly two queued builds take them.
    done = sorted(jobs.running)[:2]
    for key in done:
        jobs.stop(key)
        finish(kube, *key)
    sync_all_at_once(ctx, done, lambda: listed)
    sync_all_at_once(ctx, keys, lambda: listed)
    assert len(jobs.running) == 4 and jobs.most == 4 and max(jobs.most_in.values()) <= 2


def test_a_retry_waits_for_a_slot_like_a_first_attempt() -> None:
    """A failed attempt gives its slot back; when its backoff is over it needs a slot again."""
    builds = [signed_build("a", i) for i in range(3)]
    kube, jobs = store(builds), Jobs()
    ctx = context(kube, jobs, SETTINGS)
    first, second, third = list(stored(kube))

    def known() -> list[dict[str, Any]]:
        return list(stored(kube).values())

    for key in (first, second, third):
        sync_build(ctx, *key, known)
    assert jobs.running == {first, second}
    # The first one's attempt fails (its sync reads a stale index): it will retry, no backoff here, and gives
    # its slot back; the third takes it.
    stale = copy.deepcopy(known())
    jobs.stop(first, failed=True)
    sync_build(ctx, *first, lambda: stale)
    assert stored(kube)[first]["status"]["attempts"] == 2 and "job" not in stored(kube)[first]["status"]
    sync_build(ctx, *third, known)
    assert jobs.running == {second, third}
    sync_build(ctx, *first, known)
    assert jobs.running == {second, third}, "the retry waits: the namespace's two slots are taken"
    status = stored(kube)[first]["status"]
    assert status["phase"] == "Building" and status["attempts"] == 2 and "job" not in status
    assert status["conditions"][0]["reason"] == "Queued"


def test_keyed_locks_wait_is_bounded_and_nothing_stays_behind() -> None:
    import threading

    locks = KeyedLocks()
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold("k"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(5)
    with locks.hold("k", wait=0.05) as acquired:
        assert acquired is False
    with locks.hold("other", wait=0.05) as acquired:
        assert acquired is True
    release.set()
    thread.join(5)
    with locks.hold("k", wait=0.05) as acquired:
        assert acquired is True
    assert len(locks) == 0
