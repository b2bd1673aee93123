"""The work the handlers and the periodic resync do: sync one Environment, one EnvironmentBuild,
one gated pod, with their failures logged and retried; and the periodic resync loop itself.

The resync starts each item on its own thread of the resync pool, at most `resync_per_namespace`
per namespace at once and never an item that is still running, waits at most `resync_item_seconds`
for it and moves on (envkiln.core.decisions.resync.dispatchable): one tenant's slow git or
registry call never holds up another tenant's objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from envkiln.adapters.kube import ApiError, api_message, unreachable
from envkiln.core.decisions.resync import SETTLED, dispatchable
from envkiln.core.names import ENVIRONMENTS
from envkiln.reconcile.buildsync import sync_build
from envkiln.reconcile.envsync import check_bases, sync_environment
from envkiln.reconcile.webhook import ensure_anonymous, release_pods
from envkiln.runtime.state import Runtime

log = logging.getLogger("envkiln")
Item = tuple[str, str, str]  # (kind: env | build | pod, namespace, name)
KINDS = {"env": "Environment", "build": "EnvironmentBuild", "pod": "Pod"}


def _guarded(rt: Runtime, kind: str, namespace: str, name: str, retry: float,
             work: Callable[[], float | None]) -> None:
    """Run `work` (which returns when to look again, or None); on a failure log it, count it and
    retry after `retry` seconds (as Kopf retried a handler's errors). When the namespace already has
    its share of objects being synced, the object waits a second instead (NamespaceShare)."""
    if not rt.share.try_enter(namespace):
        rt.resync.retry(kind, namespace, name, 1.0)
        return
    try:
        again = work()
    except Exception as error:
        what = KINDS[kind]
        if isinstance(error, ApiError):
            log.warning("%s %s/%s: %s; retrying in %.0fs", what, namespace, name, api_message(error), retry)
        elif (cause := unreachable(error)) is not None:
            log.warning("%s %s/%s: the API server did not answer (%s); retrying in %.0fs", what, namespace, name,
                        cause, retry)
        else:
            log.exception("%s %s/%s failed; retrying in %.0fs", what, namespace, name, retry)
        rt.ctx.metrics.reconcile_error(what, error)
        rt.resync.retry(kind, namespace, name, retry)
        return
    finally:
        rt.share.leave(namespace)
    if again is not None:
        rt.resync.retry(kind, namespace, name, again)


def environment(rt: Runtime, namespace: str, name: str, env: dict[str, Any] | None = None) -> None:
    """Sync one Environment; release the pods waiting for it once it is settled."""
    def work() -> float | None:
        result = sync_environment(rt.ctx, namespace, name, env, rt.indexes.build)
        if result.phase in SETTLED:
            _release(rt, namespace, name)
        return result.retry_in

    _guarded(rt, "env", namespace, name, float(rt.settings.registry_retry_seconds), work)


def build(rt: Runtime, namespace: str, name: str) -> None:
    def work() -> float | None:
        return sync_build(rt.ctx, namespace, name, rt.indexes.builds).retry_in

    _guarded(rt, "build", namespace, name, float(rt.settings.build_sync_seconds), work)


def gated_pod(rt: Runtime, namespace: str, name: str, pod: dict[str, Any] | None = None) -> None:
    """A pod waiting behind the gate with an inline spec: its anonymous Environment (in its own namespace)."""
    def work() -> float | None:
        body = pod if pod is not None else rt.ctx.kube.get_pod(namespace, name)
        return None if body is None else ensure_anonymous(rt.ctx, rt.rates, body)

    _guarded(rt, "pod", namespace, name, float(rt.settings.registry_retry_seconds), work)


def notify_environments(rt: Runtime, namespace: str, definition_hash: str) -> None:
    names = rt.indexes.environments_with(namespace, definition_hash)
    if not names:
        names = [e["metadata"]["name"] for e in rt.ctx.kube.list(ENVIRONMENTS, namespace)
                 if (e.get("status") or {}).get("hash") == definition_hash]
    for name in names:
        environment(rt, namespace, name)


def _release(rt: Runtime, namespace: str, name: str) -> None:
    # Only the webhook gates pods: without it, skip the pod listing on every Environment sync.
    if not rt.settings.webhook_enabled:
        return
    try:
        release_pods(rt.ctx, namespace, name)
    except ApiError as error:
        log.warning("could not release pods waiting for %s/%s: %s", namespace, name, error.reason)


def run_item(rt: Runtime, item: Item) -> None:
    kind, namespace, name = item
    if kind == "env":
        environment(rt, namespace, name)
    elif kind == "build":
        build(rt, namespace, name)
    else:
        gated_pod(rt, namespace, name)


class Dispatcher:
    """Starts resync items on the resync pool, fairly per namespace, each with a time budget.
    `wake` is called (from the pool's thread) when an item ends while others wait for their
    namespace's turn, so that the next starts at once rather than at the next tick: a burst in one
    namespace (1,000 Environments applied at once, most of them waiting out the namespace's share)
    drains at the speed of its syncs, not `resync_per_namespace` a second."""

    def __init__(self, rt: Runtime, wake: Callable[[], None] | None = None) -> None:
        self.rt = rt
        self.running: dict[Item, concurrent.futures.Future[None]] = {}
        self.pending: list[Item] = []
        self.wake = wake

    def _ended(self, _: concurrent.futures.Future[None]) -> None:
        if self.pending and self.wake is not None:
            self.wake()

    def tick(self, work: list[Item]) -> list[Item]:
        """Start what may start now; returns the items started."""
        self.running = {item: f for item, f in self.running.items() if not f.done()}
        options = self.rt.settings
        free = max(0, options.resync_workers - len(self.running))
        start, self.pending = dispatchable([*self.pending, *work], self.running.keys(),
                                           options.resync_per_namespace, free)
        for item in start:
            future = self.rt.resync_pool.submit(run_item, self.rt, item)
            future.add_done_callback(_log_overrun(item, time.monotonic(), options.resync_item_seconds))
            self.running[item] = future
            future.add_done_callback(self._ended)
        return start


def _log_overrun(item: Item, started: float, budget: float) -> Callable[[concurrent.futures.Future[None]], None]:
    def done(future: concurrent.futures.Future[None]) -> None:
        took = time.monotonic() - started
        if took > budget:
            log.warning("resync of %s %s/%s took %.0fs (budget %.0fs)", KINDS[item[0]], item[1], item[2], took, budget)
    return done


async def resync_forever(rt: Runtime) -> None:
    """Every `env_sync_seconds` the unsettled Environments, every `build_sync_seconds` the
    unfinished EnvironmentBuilds, and at any tick the retries that are due. The indexes are read
    here, on the event loop Kopf updates them on; the work runs on the resync pool."""
    options = rt.settings
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # from a resync thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the operator is stopping
            loop.call_soon_threadsafe(woken.set)

    dispatcher = Dispatcher(rt, wake)
    now = time.monotonic()
    next_envs, next_builds = now + options.env_sync_seconds, now + options.build_sync_seconds
    # The first base check soon after start (the latest digests live in memory only).
    next_bases, next_git = now + min(options.base_check_seconds, 5.0), now + options.git_ref_ttl_seconds
    tick = min(1.0, options.env_sync_seconds, options.build_sync_seconds)
    bases: asyncio.Future[list[tuple[str, str]]] | None = None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), tick)
        woken.clear()
        if rt.peering.paused:  # another replica acts (Kopf stopped this one's watches and timers too)
            continue
        now = time.monotonic()
        work = rt.resync.take_due(now)
        indexes = rt.indexes
        if now >= next_envs:
            next_envs = now + options.env_sync_seconds
            work += [("env", namespace, name) for namespace, name in indexes.unsettled_environments()]
        if now >= next_builds:
            next_builds = now + options.build_sync_seconds
            work += [("build", namespace, name) for namespace, name in indexes.unsettled_builds()]
        if now >= next_git and options.git_ref_ttl_seconds > 0:
            next_git = now + options.git_ref_ttl_seconds
            work += [("env", namespace, name) for namespace, name in indexes.git_environments()]
        if bases is not None and bases.done():
            try:
                work += [("env", namespace, name) for namespace, name in bases.result()]
            except Exception:
                log.exception("base image check failed")
            bases = None
        if now >= next_bases and bases is None:
            next_bases = now + options.base_check_seconds
            bases = loop.run_in_executor(rt.resync_pool, check_bases, rt.ctx, indexes.base_images())
        try:
            dispatcher.tick(work)
        except Exception:  # never end the loop: the next pass tries again
            log.exception("periodic resync failed")
