"""The operator's in-memory indexes and retry schedule (envkiln.runtime.indexes and .state): what the
periodic resync and the Environments' build lookups read instead of the API server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.runtime.indexes import Indexes
from envkiln.runtime.state import PeeringState, Resync


def _build(phase: str | None, name: str = "envb-1") -> dict[str, Any]:
    return {"apiVersion": "envkiln.dev/v1alpha1", "kind": "EnvironmentBuild",
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "resourceVersion": "7", "generation": 1,
                         "labels": {"a": "b"}, "managedFields": [{"big": "x" * 1000}],
                         "annotations": {ANNOTATION_SIGNATURE: "v1:sig", "kopf.zalando.org/x": "y" * 1000}},
            "spec": {"hash": "1", "image": "r/x:1", "plan": {"dockerfile": "FROM x\n"}},
            "status": {"phase": phase} if phase else {}}


def test_builds_are_kept_trimmed_and_follow_events() -> None:
    indexes = Indexes()
    indexes.note_build("ns", "envb-1", _build(None))
    kept = indexes.build("ns", "envb-1")
    assert kept is not None
    assert kept["metadata"]["annotations"] == {ANNOTATION_SIGNATURE: "v1:sig"}  # what the trust check reads
    assert "managedFields" not in kept["metadata"] and kept["spec"]["image"] == "r/x:1"
    assert indexes.unsettled_builds() == [("ns", "envb-1")]
    indexes.note_build("ns", "envb-1", _build("Succeeded"))
    kept = indexes.build("ns", "envb-1")
    assert indexes.unsettled_builds() == [] and kept is not None and kept["status"]["phase"] == "Succeeded"
    indexes.note_build("ns", "envb-1", None)
    assert indexes.build("ns", "envb-1") is None and indexes.build("other", "envb-1") is None


def test_environments_by_hash_and_unsettled() -> None:
    indexes = Indexes()
    indexes.note_environment("ns", "a", {})  # new: no hash yet, unsettled
    indexes.note_environment("ns", "b", {"hash": "h1", "phase": "Building"})
    indexes.note_environment("ns", "c", {"hash": "h1", "phase": "Ready"})
    assert indexes.environments_with("ns", "h1") == ["b", "c"]
    assert indexes.unsettled_environments() == [("ns", "a"), ("ns", "b")]
    indexes.note_environment("ns", "c", {"hash": "h2", "phase": "Building"})  # a new version
    assert indexes.environments_with("ns", "h1") == ["b"] and indexes.environments_with("ns", "h2") == ["c"]
    indexes.note_environment("ns", "b", None)  # deleted
    indexes.note_environment("ns", "a", {"phase": "Failed"})  # invalid: settled, no hash
    assert indexes.environments_with("ns", "h1") == [] and indexes.unsettled_environments() == [("ns", "c")]
    assert indexes.environments_with("other", "h2") == []


def test_indexes_are_safe_to_read_while_written() -> None:
    """A writer thread moves 500 Environments between 7 hashes while this thread reads. Every read
    is a consistent answer (sorted, no duplicates), the writer raised nothing, and at the end each
    Environment is under exactly the hash it was last given."""
    indexes, stop, failures = Indexes(), threading.Event(), []
    written = [0]

    def write() -> None:
        try:
            i = 0
            while not stop.is_set() or i < 2000:
                indexes.note_environment("ns", f"e{i % 500}", {"hash": f"h{i % 7}", "phase": "Building"})
                indexes.note_build("ns", f"envb-{i % 50}", _build("Building", f"envb-{i % 50}"))
                i += 1
            written[0] = i
        except BaseException as error:  # reaches the test below
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(300):
            names = indexes.environments_with("ns", "h1")
            assert names == sorted(set(names))
            assert len(indexes.unsettled_builds()) <= 50
    finally:
        stop.set()
        writer.join()
    assert failures == []
    last = {f"e{i % 500}": f"h{i % 7}" for i in range(written[0])}
    for value in {f"h{k}" for k in range(7)}:
        assert indexes.environments_with("ns", value) == sorted(n for n, h in last.items() if h == value)


def test_retries_come_due_once_earliest_first() -> None:
    resync = Resync()
    resync.retry("env", "ns", "late", 60)
    resync.retry("env", "ns", "soon", 0)
    resync.retry("build", "ns", "b", 0)
    resync.retry("env", "ns", "soon", 30)  # a later request does not postpone an earlier one
    assert sorted(resync.take_due(time.monotonic() + 1)) == [("build", "ns", "b"), ("env", "ns", "soon")]
    assert resync.take_due(time.monotonic() + 1) == [] and len(resync) == 1
    assert resync.take_due(time.monotonic() + 61) == [("env", "ns", "late")]


def test_the_resync_follows_kopfs_peering_pauses() -> None:
    """The periodic resync is envkiln's own task: it must stop when Kopf pauses this replica."""
    state = PeeringState.attach()
    peering = logging.getLogger("kopf._core.engines.peering")

    def paused() -> bool:  # read afresh after each log line (an attribute read would stay narrowed)
        return state.paused

    try:
        assert not paused()
        peering.info("Pausing operations in favour of [Peer(identity='other', priority=200)].")
        assert paused()
        peering.info("Resuming operations after the pause. Conflicting operators with the same priority are gone.")
        assert not paused()
        peering.warning("Pausing all operators, including self: []")
        assert paused()
    finally:
        peering.removeFilter(state)


def test_a_namespace_over_its_share_waits_and_others_run() -> None:
    """Two slow syncs of namespace a hold its share (2): a third object of a waits (a retry in a
    second), while namespace b's object runs at once; when a's syncs end, its share is free again."""
    from types import SimpleNamespace

    from envkiln.runtime.resync import _guarded
    from envkiln.runtime.state import NamespaceShare

    rt: Any = SimpleNamespace(share=NamespaceShare(2), resync=Resync(), ctx=None)
    release, ran = threading.Event(), []

    def slow() -> float | None:
        ran.append("a")
        release.wait(10)
        return None

    def note(label: str) -> Callable[[], float | None]:
        """Work that records it ran and asks for no later look."""
        def work() -> float | None:
            ran.append(label)
            return None
        return work

    threads = [threading.Thread(target=_guarded, args=(rt, "env", "a", f"slow{i}", 1.0, slow)) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    _guarded(rt, "env", "a", "third", 1.0, note("third"))
    _guarded(rt, "env", "b", "other", 1.0, note("b"))
    assert ran == ["a", "a", "b"]
    assert rt.resync.take_due(time.monotonic() + 1.5) == [("env", "a", "third")]
    release.set()
    for thread in threads:
        thread.join()
    _guarded(rt, "env", "a", "third", 1.0, note("third"))
    assert ran[-1] == "third"


def test_builds_are_kept_without_their_plan_and_with_the_verdict_on_their_whole_spec() -> None:
    """The index keeps no rendered Dockerfile or files (up to hundreds of KiB a build): each build is
    verified whole when it arrives, and the trust check of the kept copy answers that verdict."""
    from envkiln.core.trust import Signer, untrusted_build

    signer = Signer(b"k" * 32)
    spec: dict[str, Any] = {"hash": "0" * 32, "image": "reg/envkiln/ns/env_x:1", "builder": "buildah",
            "plan": {"dockerfile": "FROM x\n" + "RUN true\n" * 1000, "files": [{"path": "a", "content": "b" * 5000}]}}
    signed = {**_build("Building"), "spec": spec}
    signed["metadata"]["annotations"] = {ANNOTATION_SIGNATURE: signer.sign_build("ns", "envb-1", spec)}
    forged = {**signed, "spec": {**spec, "plan": {"dockerfile": "FROM evil\n"}}}
    indexes = Indexes(verify=lambda build: signer.build_problem(dict(build), ANNOTATION_SIGNATURE))
    indexes.note_build("ns", "envb-1", signed)
    indexes.note_build("ns", "envb-2", {**forged, "metadata": {**signed["metadata"], "name": "envb-2"}})
    kept, planted = indexes.build("ns", "envb-1"), indexes.build("ns", "envb-2")
    assert kept is not None and planted is not None
    assert "plan" not in kept["spec"] and kept["spec"]["image"] == spec["image"]
    assert signer.build_problem(kept, ANNOTATION_SIGNATURE) is None
    assert untrusted_build(signer, kept, ANNOTATION_SIGNATURE, spec["image"]) is None
    assert "does not match" in str(signer.build_problem(planted, ANNOTATION_SIGNATURE))
    # Without the verdict, a copy without its plan would not verify: the verdict is what stands in.
    assert signer.build_problem({k: v for k, v in kept.items() if k != "envkiln.verified"},
                                ANNOTATION_SIGNATURE) is not None


def test_a_burst_in_one_namespace_drains_at_the_speed_of_its_syncs_not_two_a_tick() -> None:
    """300 retries of one namespace due at once (what a burst of applies leaves after waiting out the
    namespace's share), two at a time per namespace, a tick of a second: each ending item starts the
    next at once, so all ran within the first ticks; starting only on ticks took 150 s (two a tick)."""
    import asyncio
    import concurrent.futures
    from types import SimpleNamespace

    import pytest

    from envkiln.runtime import resync

    ran: list[tuple[str, str, str]] = []
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()

    def fake_run_item(rt: Any, item: tuple[str, str, str]) -> None:
        with lock:
            running[item[1]] = running.get(item[1], 0) + 1
            most[item[1]] = max(most.get(item[1], 0), running[item[1]])
        time.sleep(0.002)  # a cache hit's sync
        with lock:
            running[item[1]] -= 1
            ran.append(item)

    settings = SimpleNamespace(env_sync_seconds=1.0, build_sync_seconds=1.0, base_check_seconds=3600.0,
                               git_ref_ttl_seconds=0, resync_workers=8, resync_per_namespace=2,
                               resync_item_seconds=30.0)
    indexes = SimpleNamespace(unsettled_environments=list, unsettled_builds=list, git_environments=list,
                              base_images=list)
    pool = concurrent.futures.ThreadPoolExecutor(8)
    rt: Any = SimpleNamespace(settings=settings, resync=Resync(), indexes=indexes, resync_pool=pool,
                              peering=SimpleNamespace(paused=False), ctx=None)
    for index in range(300):
        rt.resync.retry("env", "burst", f"e{index}", 0.0)
    rt.resync.retry("env", "quiet", "other", 0.0)

    async def run_for(seconds: float) -> None:
        task = asyncio.ensure_future(resync.resync_forever(rt))
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resync, "run_item", fake_run_item)
        asyncio.run(run_for(3.5))
    pool.shutdown(wait=True)
    assert len(ran) == 301, f"{len(ran)} of 301 ran in 3.5 s (3 ticks)"
    assert most == {"burst": 2, "quiet": 1}, "the per-namespace bound holds"
    assert ("env", "quiet", "other") in ran[:3], "the other namespace is not queued behind the burst"
