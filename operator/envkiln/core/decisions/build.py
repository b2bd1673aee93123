"""An EnvironmentBuild's next step, from its status and what its builder reports.

One attempt at a time: queue while the concurrency limit is reached, start attempt 1, follow
it, restart an attempt whose runner vanished (once its backoff is over), verify a success in
the registry, retry a failure with exponential backoff until the retry limit, then fail.
Every step is a `Step`: the status changes and the condition to write, whether to start the
attempt, when to look again. `build_conditions` turns a step's Succeeded condition into the whole
condition list: Succeeded, plus Ready and kstatus's Reconciling/Stalled, so that Flux and
`kubectl wait --for=condition=Ready` read a build like any other resource.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from envkiln.core.conditions import Progress, from_iso, set_condition, set_progress, to_iso
from envkiln.core.models import BuildPhase
from envkiln.core.names import (
    CONDITION_READY,
    CONDITION_SUCCEEDED,
    REASON_BUILD_FAILED,
    REASON_BUILD_SUCCEEDED,
    REASON_BUILDING,
    REASON_IMAGE_NOT_IN_REGISTRY,
    REASON_QUEUED,
    REASON_RETRYING,
)

TERMINAL = frozenset({BuildPhase.SUCCEEDED.value, BuildPhase.FAILED.value})
MAX_BACKOFF_SECONDS = 3600  # however many retries are allowed, no wait is longer than an hour
QUEUE_RETRY_SECONDS = 10.0
# What a builder reports for an attempt (the values of envkiln.adapters.builders.AttemptState).
MISSING, RUNNING, SUCCEEDED, FAILED = "Missing", "Running", "Succeeded", "Failed"

Action = Literal["none", "queue", "start", "wait", "verify", "retry", "fail", "succeed"]
ConditionValue = tuple[bool | None, str, str]  # the Succeeded condition: (status, reason, message)
# kstatus's reading of each build phase (envkiln.core.conditions.set_progress).
PROGRESS: dict[str, Progress] = {BuildPhase.PENDING.value: "reconciling", BuildPhase.BUILDING.value: "reconciling",
                                 BuildPhase.FAILED.value: "stalled", BuildPhase.SUCCEEDED.value: "done"}


@dataclass(frozen=True)
class Limits:
    max_concurrent: int = 4
    max_per_namespace: int = 2  # fairness: no namespace takes every slot
    retry_limit: int = 2  # retries after the first failed attempt
    backoff_seconds: int = 30  # the first retry's wait; doubles each time


@dataclass(frozen=True)
class Step:
    action: Action
    attempt: int = 0
    phase: str | None = None  # the phase after this step (None: unchanged)
    changes: dict[str, Any] = field(default_factory=dict)  # status fields to write (None deletes)
    condition: ConditionValue | None = None
    retry_in: float | None = None  # look again after this many seconds
    event: tuple[str, str, str] | None = None  # (type, reason, message) to post
    terminal: bool = False  # the build just finished (its Environments must hear of it)


def backoff_delay(attempt: int, base_seconds: int, cap_seconds: int = MAX_BACKOFF_SECONDS) -> int:
    """The wait after failed attempt number `attempt` (1-based): base, 2 * base, 4 * base... capped."""
    return min(cap_seconds, base_seconds << max(0, attempt - 1))


def holds_slot(status: dict[str, Any]) -> bool:
    """A build holds a slot while its current attempt's Job exists: not while it waits to retry,
    and not when its Job was refused."""
    return status.get("phase") == BuildPhase.BUILDING.value and bool(status.get("job"))


def slots_in_use(holding: Iterable[tuple[str, str]], claimed: Iterable[tuple[str, str]],
                 asking: tuple[str, str] | None = None) -> Counter[str]:
    """Build slots taken, by namespace. `holding`: the (namespace, name) of builds whose status, as
    last seen, holds a slot (`holds_slot`); `claimed`: builds this process has just given a slot,
    whose status write the watch may not show yet. Each build counts once; `asking`, the build that
    wants a slot, not at all (a restart of its own attempt takes the slot it holds)."""
    taken = (set(holding) | set(claimed)) - ({asking} if asking else set())
    return Counter(namespace for namespace, _ in taken)


def _queued(attempt: int, limits: Limits, running: int | None, running_in_namespace: int,
            namespace: str) -> Step | None:
    """Wait for a slot (None: one is free, or the builder has no shared limit). Before the first
    attempt the build is Pending; a retry waiting for its slot stays Building, holding none."""
    if running is None:
        return None
    if running >= limits.max_concurrent:
        message, why = "waiting for a free build slot", f"{limits.max_concurrent} builds are already running"
    elif running_in_namespace >= limits.max_per_namespace:
        message = "waiting for a free build slot in the namespace"
        why = (f"namespace {namespace} already runs {running_in_namespace} builds, its share "
               f"(ENVKILN_MAX_CONCURRENT_BUILDS_PER_NAMESPACE={limits.max_per_namespace})")
    else:
        return None
    if attempt == 0:
        return Step("queue", 0, BuildPhase.PENDING.value, {"phase": BuildPhase.PENDING.value, "message": message},
                    (None, REASON_QUEUED, why), retry_in=QUEUE_RETRY_SECONDS)
    return Step("queue", attempt, BuildPhase.BUILDING.value,
                {"phase": BuildPhase.BUILDING.value, "job": None, "retryAfter": None,
                 "message": f"attempt {attempt} is {message}"},
                (None, REASON_QUEUED, f"attempt {attempt}: {why}"), retry_in=QUEUE_RETRY_SECONDS)


def next_step(status: dict[str, Any], limits: Limits, now: datetime, instance: str,
              running: int | None = None, state: str | None = None, reason: str | None = None,
              log_tail: str | None = None, running_in_namespace: int = 0, namespace: str = "") -> Step:
    """The next step of a build with `status`.

    Before the first attempt, `running` is how many builds run now (None: the builder has no
    shared limit) and `running_in_namespace` how many of them in this build's namespace. After
    it, `state` (and `reason`, `log_tail` on failure) is what the builder
    reports for the current attempt; an attempt that must be (re)started (Missing) waits for a
    slot like a first one, so retries never exceed the limits either.
    """
    if status.get("phase") in TERMINAL:
        return Step("none")
    attempt = int(status.get("attempts") or 0)
    if attempt == 0:
        queued = _queued(0, limits, running, running_in_namespace, namespace)
        if queued is not None:
            return queued
        return Step("start", 1, BuildPhase.BUILDING.value,
                    {"phase": BuildPhase.BUILDING.value, "attempts": 1, "startTime": to_iso(now),
                     "builderInstance": instance, "message": "attempt 1 started"},
                    (None, REASON_BUILDING, "attempt 1 started"))
    if state == RUNNING or state is None:
        return Step("wait", attempt)
    if state == MISSING:
        retry_after = from_iso(status.get("retryAfter"))
        wait = (retry_after - now).total_seconds() if retry_after else 0.0
        if wait > 0:
            return Step("wait", attempt, retry_in=wait)
        # Never started (crash after the status write, or backoff over), or its runner died.
        queued = _queued(attempt, limits, running, running_in_namespace, namespace)
        if queued is not None:
            return queued
        return Step("start", attempt, BuildPhase.BUILDING.value,
                    {"phase": BuildPhase.BUILDING.value, "retryAfter": None, "builderInstance": instance,
                     "message": f"attempt {attempt} started"},
                    (None, REASON_BUILDING, f"attempt {attempt} started"))
    if state == SUCCEEDED:
        return Step("verify", attempt)
    return after_failure(attempt, reason, log_tail, limits, now)


EVENT_TAIL = 500  # characters of a failed attempt's log tail in its Warning Event


def event_tail(log_tail: str | None, limit: int = EVENT_TAIL) -> str:
    """The end of a log tail for an Event, keeping the `[container] ` that names where it failed
    (a long tail cut at its end lost it: "[push] ..." of a push cut by a registry outage read as a
    bare URL)."""
    text = log_tail or ""
    if len(text) <= limit:
        return text
    head = ""
    if text.startswith("[") and "] " in text[:64]:
        head = text[:text.index("] ") + 2] + "…"
    return head + text[-(limit - len(head)):]


def after_failure(attempt: int, reason: str | None, log_tail: str | None, limits: Limits, now: datetime) -> Step:
    """Retry with backoff while retries are left, else fail for good."""
    reason = reason if reason and reason[:1].isalpha() else REASON_BUILD_FAILED
    summary = f"attempt {attempt} failed ({reason})"
    event = ("Warning", REASON_BUILD_FAILED, f"{summary}: {event_tail(log_tail)}")
    if attempt <= limits.retry_limit:
        delay = backoff_delay(attempt, limits.backoff_seconds)
        retry_after = now + timedelta(seconds=delay)
        return Step("retry", attempt + 1, BuildPhase.BUILDING.value, {
            "phase": BuildPhase.BUILDING.value, "attempts": attempt + 1, "logTail": log_tail,
            "retryAfter": to_iso(retry_after), "job": None,
            "message": f"{summary}; retrying in {delay}s ({attempt}/{limits.retry_limit} retries)",
        }, (None, REASON_RETRYING, f"{summary}; retry {attempt} of {limits.retry_limit} in {delay}s"),
            retry_in=float(delay), event=event)
    return Step("fail", attempt, BuildPhase.FAILED.value, {
        "phase": BuildPhase.FAILED.value, "logTail": log_tail, "completionTime": to_iso(now),
        "message": f"{summary}; no retries left", "retryAfter": None,
    }, (False, reason, f"{summary} after {attempt} attempts; see status.logTail"), event=event, terminal=True)


def refuse(reason: str, message: str, now: datetime) -> Step:
    """Fail a build that must not run at all (nothing was started)."""
    return Step("fail", 0, BuildPhase.FAILED.value, {
        "phase": BuildPhase.FAILED.value, "message": message, "completionTime": to_iso(now), "retryAfter": None,
    }, (False, reason, message), event=("Warning", reason, message), terminal=True)


def after_verification(attempt: int, digest: str, found: bool, image_ref: str, repository: str,
                       limits: Limits, now: datetime) -> Step:
    """A reported success, once the registry was asked for `repository@digest`."""
    if not found:
        return after_failure(attempt, REASON_IMAGE_NOT_IN_REGISTRY,
                             f"the build reported {digest}, but {repository} has no such manifest", limits, now)
    message = f"attempt {attempt} pushed {image_ref}"
    return Step("succeed", attempt, BuildPhase.SUCCEEDED.value, {
        "phase": BuildPhase.SUCCEEDED.value, "digest": digest, "imageRef": image_ref,
        "completionTime": to_iso(now), "message": f"pushed {image_ref}", "retryAfter": None,
    }, (True, REASON_BUILD_SUCCEEDED, message), event=("Normal", REASON_BUILD_SUCCEEDED, message), terminal=True)


def build_conditions(conditions: list[dict[str, Any]] | None, phase: str | None, succeeded: ConditionValue,
                     generation: int | None = None, now: str | None = None) -> list[dict[str, Any]]:
    """The conditions of a build in `phase` after a step whose Succeeded condition is `succeeded`.

    Succeeded keeps its meaning (Unknown while running, then True or False). Ready says the same
    in kstatus's terms: True once Succeeded, False otherwise, with the same reason and message.
    Reconciling is True while Pending or Building, Stalled is True once Failed.
    """
    state, reason, message = succeeded
    result = set_condition(conditions, CONDITION_SUCCEEDED, state, reason, message, generation, now)
    result = set_condition(result, CONDITION_READY, phase == BuildPhase.SUCCEEDED.value, reason, message,
                           generation, now)
    return set_progress(result, PROGRESS.get(phase or "", "reconciling"), reason, message, generation, now)
