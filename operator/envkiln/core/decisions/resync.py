"""When an object is reconciled: on which watch events, and which ones the periodic resync revisits.

The operator reacts to watch events itself (Kopf's `on.event`), so Kopf writes nothing onto the
objects (no progress or diff-base annotations, no finalizer): a cache hit costs one status write.
What used to be per-object timers is one periodic resync over in-memory indexes of the
unfinished objects (envkiln.runtime.handlers). `event_type` is the watch event's type, or None for
objects seen in the initial listing (the operator started, or its watch was restarted).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from envkiln.core.decisions.build import TERMINAL
from envkiln.core.models import Phase

SETTLED = frozenset({Phase.READY.value, Phase.FAILED.value})


def _gone(event_type: str | None, metadata: Mapping[str, Any]) -> bool:
    return event_type == "DELETED" or bool(metadata.get("deletionTimestamp"))


def environment_needs_sync(event_type: str | None, metadata: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Reconcile an Environment on this event?

    Yes for a generation its status has not observed (it is new, or its spec changed) and for
    every Environment of the initial listing (checked once against its build; nothing is written
    when nothing changed). No for its own status writes and other edits: unsettled ones are
    revisited by the periodic resync, and a build that finishes tells its Environments.
    """
    if _gone(event_type, metadata):
        return False
    if event_type is None:
        return True
    return status.get("observedGeneration") is None or status.get("observedGeneration") != metadata.get("generation")


def environment_unsettled(status: Mapping[str, Any]) -> bool:
    """Revisited by the periodic resync: neither Ready nor Failed."""
    return status.get("phase") not in SETTLED


def build_needs_sync(event_type: str | None, metadata: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Advance an EnvironmentBuild on this event? Yes when it is unfinished and new, seen in the
    initial listing (resume after a restart), or changed in its spec. Later progress comes from
    its Job's events and the periodic resync."""
    if _gone(event_type, metadata) or status.get("phase") in TERMINAL:
        return False
    return (event_type is None or not status.get("phase")
            or status.get("observedGeneration") != metadata.get("generation"))


def build_unsettled(status: Mapping[str, Any]) -> bool:
    return status.get("phase") not in TERMINAL


def build_finished_event(event_type: str | None, status: Mapping[str, Any]) -> bool:
    """Tell the build's Environments? On a change that shows it finished; not in the initial
    listing, where every Environment checks itself."""
    return event_type in ("ADDED", "MODIFIED") and status.get("phase") in TERMINAL


def due(schedule: Mapping[Any, float], now: float) -> list[Any]:
    """The keys whose time has come, earliest first."""
    return sorted((key for key, when in schedule.items() if when <= now), key=lambda key: schedule[key])


def watched_base(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str | None:
    """The base image reference the base-update watcher checks for this Environment: one it was
    built on a known digest of, unless its policy is Ignore (None: nothing to watch)."""
    if spec.get("baseImageUpdates") == "Ignore" or spec.get("userManaged") or spec.get("build"):
        return None
    base = status.get("baseImage")
    return str(base) if base and status.get("baseImageDigest") and "@" not in str(base) else None


def follows_git_ref(spec: Mapping[str, Any]) -> bool:
    """A git context on a branch or tag (not a commit): checked for new commits every git TTL."""
    git = (spec.get("build") or {}).get("git") or {}
    ref = str(git.get("ref") or "")
    return bool(ref) and not re.fullmatch(r"[0-9a-fA-F]{40}", ref)


def base_moved(status: Mapping[str, Any], latest: str | None) -> bool:
    """The watcher saw a digest other than the one this Environment's image was built on."""
    return latest is not None and status.get("baseImageDigest") not in (None, latest)


def dispatchable(work: Sequence[tuple[str, str, str]], in_flight: Collection[tuple[str, str, str]],
                 per_namespace: int, free: int) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(to start now, to keep for the next tick) of the resync's `work` items (kind, namespace, name).

    An item already running is dropped (it is not queued twice); at most `per_namespace` items of
    one namespace run at once, counting those in flight, so one tenant's slow items never take
    every thread; at most `free` start in all. Items of one namespace keep their order; namespaces
    take turns (round robin), so the first namespace in the list does not go first every time."""
    running: dict[str, int] = {}
    for _, namespace, _ in in_flight:
        running[namespace] = running.get(namespace, 0) + 1
    queues: dict[str, list[tuple[str, str, str]]] = {}
    for item in dict.fromkeys(work):
        if item not in in_flight:
            queues.setdefault(item[1], []).append(item)
    start: list[tuple[str, str, str]] = []
    progress = True
    while progress and len(start) < free:
        progress = False
        for namespace, queue in queues.items():
            if queue and running.get(namespace, 0) < per_namespace and len(start) < free:
                start.append(queue.pop(0))
                running[namespace] = running.get(namespace, 0) + 1
                progress = True
    chosen = set(start)
    later = [item for queue in queues.values() for item in queue if item not in chosen]
    return start, later
