"""Reconcile one EnvironmentBuild: start attempts, follow them, retry with backoff, record the result.

Only EnvironmentBuilds the operator created are built: the signature (envkiln.core.trust) must
verify and `spec.image` must be where this namespace's images of the hash go; anything else is
marked Failed (UntrustedBuild) and nothing runs. Every step reads the server's state first and is
safe to repeat: the status (with the Job's name, which holds the build slot) is written
before a Job is created (so a crash in between re-creates the same Job by name), and a
Job that already exists is followed only if it is this build's (envkiln.core.decisions.adoption).
What to do is decided by envkiln.core.decisions.build; this module only reads and writes.

Build slots: counting the builds that hold one and claiming one for a build that starts happen
under one lock (`OperatorContext.build_slots`), and a claim counts from that moment until the
build's own sync sees it give the slot back. The watch's copy of the builds (`known_builds`)
shows a claim only once the status write comes back; without the claims, syncs running at the
same time all counted the same free slots and all started.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from envkiln.adapters.builders import BuildCannotStart
from envkiln.adapters.registryclient import RegistryUnavailable
from envkiln.core.decisions.build import (
    TERMINAL,
    Limits,
    Step,
    after_failure,
    after_verification,
    build_conditions,
    holds_slot,
    next_step,
    refuse,
    slots_in_use,
)
from envkiln.core.definition import pull_reference
from envkiln.core.imageref import parse_image_reference
from envkiln.core.locks import LockError, lock_digest, package_count, parse_lock
from envkiln.core.names import (
    ANNOTATION_SIGNATURE,
    BUILDS,
    LABEL_MANAGED_BY,
    LOCK_FILE,
    MANAGED_BY_VALUE,
    REASON_UNTRUSTED_BUILD,
    build_key,
    job_name,
    lock_tag,
)
from envkiln.core.render import LockLocation, lock_location
from envkiln.core.trust import untrusted_build
from envkiln.reconcile.context import OperatorContext

__all__ = ["TERMINAL", "BuildSyncResult", "sync_build"]

log = logging.getLogger(__name__)


@dataclass
class BuildSyncResult:
    phase: str | None
    changed_to_terminal: bool = False
    retry_in: float | None = None


def limits(ctx: OperatorContext) -> Limits:
    settings = ctx.settings
    return Limits(max_concurrent=settings.max_concurrent_builds,
                  max_per_namespace=settings.max_concurrent_builds_per_namespace,
                  retry_limit=settings.build_retry_limit, backoff_seconds=settings.build_retry_backoff_seconds)


def running_builds(ctx: OperatorContext, builds: Iterable[dict[str, Any]] | None = None,
                   claimed: Iterable[tuple[str, str]] = (), asking: tuple[str, str] | None = None) -> Counter[str]:
    """Builds holding a slot, by namespace: only the operator's own (signed) EnvironmentBuilds count,
    so Jobs or objects made to look like builds take no slot. `builds` are the ones the operator
    already holds from its watch; without them they are listed. `claimed`: builds this process just
    gave a slot (counted even before their status shows it); `asking`: the build that wants one."""
    if builds is None:
        builds = ctx.kube.list_in(BUILDS, ctx.settings.namespaces, f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")
    holding = [(b["metadata"]["namespace"], b["metadata"]["name"]) for b in builds
               if holds_slot(b.get("status") or {}) and ctx.signer.build_problem(b, ANNOTATION_SIGNATURE) is None]
    return slots_in_use(holding, claimed, asking)


def _step_with_slot(ctx: OperatorContext, build: dict[str, Any], status: dict[str, Any], now: datetime,
                    known_builds: Callable[[], Iterable[dict[str, Any]]] | None,
                    **reported: Any) -> Step:
    """The next step of a build that needs a slot to go on (its first attempt, or one to restart):
    count and claim under the slot lock, so that no two syncs take the same slot. The claim is
    recorded before anything is written; the start step also writes the Job's name, so the status
    holds the slot from its first write on."""
    namespace, name = build["metadata"]["namespace"], build["metadata"]["name"]
    slots = ctx.build_slots
    with slots.lock:
        builds = list(known_builds()) if known_builds else None
        if builds is None:
            builds = ctx.kube.list_in(BUILDS, ctx.settings.namespaces, f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")
        slots.forget_missing({(b["metadata"]["namespace"], b["metadata"]["name"]) for b in builds} | {
            (namespace, name)})
        counts = running_builds(ctx, builds, slots.claimed(), asking=(namespace, name))
        step = next_step(status, limits(ctx), now, ctx.instance_id, running=sum(counts.values()),
                         running_in_namespace=counts[namespace], namespace=namespace, **reported)
        if step.action == "start":
            slots.claim((namespace, name))
            step.changes["job"] = job_name(build_key(build["spec"]), step.attempt)
    return step


def _write(ctx: OperatorContext, build: dict[str, Any], changes: dict[str, Any],
           condition: tuple[bool | None, str, str] | None = None) -> dict[str, Any] | None:
    namespace, name = build["metadata"]["namespace"], build["metadata"]["name"]

    def compute(current: dict[str, Any]) -> dict[str, Any] | None:
        status = dict(current.get("status") or {})
        new = {**status, **changes, "observedGeneration": current["metadata"].get("generation")}
        if condition is not None:
            # Succeeded, plus kstatus's Ready / Reconciling / Stalled (Flux, kubectl wait, Argo CD).
            new["conditions"] = build_conditions(status.get("conditions"), new.get("phase"), condition,
                                                 current["metadata"].get("generation"))
        new = {k: v for k, v in new.items() if v is not None}
        return None if new == status else {**{k: None for k in status if k not in new}, **new}

    return ctx.kube.patch_status(BUILDS, namespace, name, compute)


def _verify(ctx: OperatorContext, build: dict[str, Any], attempt: int, digest: str | None) -> Step:
    """Ask the registry for the digest a build reported, then decide."""
    assert digest is not None
    image = build["spec"]["image"]
    repository = parse_image_reference(image).name
    try:
        lookup = ctx.registry.lookup(f"{repository}@{digest}", use_cache=False)
    except RegistryUnavailable as error:
        return Step("wait", attempt, changes={"message": f"build finished; cannot verify the image yet: {error}"},
                    retry_in=ctx.settings.registry_retry_seconds)
    image_ref = pull_reference(image, digest, ctx.settings.registry, ctx.settings.effective_pull_registry)
    step = after_verification(attempt, digest, lookup.found, image_ref, repository, limits(ctx), datetime.now(UTC))
    if step.action == "succeed":  # the record a cache hit trusts, signed by the operator alone
        meta = build["metadata"]
        step.changes["recordSignature"] = ctx.signer.sign_record(meta["namespace"], meta["name"],
                                                                 build["spec"]["hash"], image, digest)
        step.changes["baseImageDigest"] = build["spec"].get("baseImageDigest")
        step.changes["lock"] = _read_lock(ctx, build, repository, digest)
    return step


def _read_lock(ctx: OperatorContext, build: dict[str, Any], repository: str, digest: str) -> dict[str, Any] | None:
    """The lock the build wrote (names.LOCK_FILE), when its plan writes one: from the image's last
    layer, or from the lock image the builder pushed beside it (envkiln.core.render.lock_location).
    A lock that cannot be read is logged and left out: the image is good either way."""
    where = lock_location((build["spec"].get("plan") or {}).get("dockerfile", ""))
    if where is None:
        return None
    image = f"{repository}@{digest}" if where is LockLocation.LAST_LAYER else f"{repository}:{lock_tag(digest)}"
    try:
        raw = ctx.registry.read_last_layer_file(image, LOCK_FILE)
        if raw is None:
            raise LockError(f"{where.value} ({image}) holds no {LOCK_FILE} in its last layer")
        text = raw.decode("utf-8")
        lock = parse_lock(text)
    except (RegistryUnavailable, LockError, UnicodeDecodeError) as error:
        log.warning("build %s/%s: lock not recorded: %s", build["metadata"]["namespace"], build["metadata"]["name"],
                    error)
        return None
    return {"digest": lock_digest(text), "packages": package_count(lock), "text": text}


def untrusted_reason(ctx: OperatorContext, build: dict[str, Any]) -> str | None:
    """Why this EnvironmentBuild must not be built (None: the operator created it, for this namespace)."""
    spec, namespace = build["spec"], build["metadata"]["namespace"]
    expected = ctx.settings.push_image(spec["hash"], namespace, build_key(spec))
    # Its record is what this sync writes: the build itself is checked, not a record it may not have yet.
    return untrusted_build(ctx.signer, build, ANNOTATION_SIGNATURE, expected, check_record=False)


def sync_build(ctx: OperatorContext, namespace: str, name: str,
               known_builds: Callable[[], Iterable[dict[str, Any]]] | None = None) -> BuildSyncResult:
    """`known_builds`: every EnvironmentBuild as the watch last saw it (for the slot count, instead of
    a list request per queued build). Syncs of one build are serialized, so a step (a Job started,
    a result recorded, a metric observed) is taken once even when several events arrive together."""
    with ctx.build_locks.hold((namespace, name)):
        return _sync_build(ctx, namespace, name, known_builds)


def _sync_build(ctx: OperatorContext, namespace: str, name: str,
                known_builds: Callable[[], Iterable[dict[str, Any]]] | None) -> BuildSyncResult:
    build = ctx.kube.get(BUILDS, namespace, name)
    if build is None:
        ctx.build_slots.release((namespace, name))
        return BuildSyncResult(None)
    status = build.get("status") or {}
    phase = status.get("phase")
    if phase in TERMINAL:
        ctx.build_slots.release((namespace, name))
        return BuildSyncResult(phase)
    problem = untrusted_reason(ctx, build)
    if problem is not None:
        return _apply(ctx, build, refuse(REASON_UNTRUSTED_BUILD, f"not built: {problem}", datetime.now(UTC)))
    attempt = int(status.get("attempts") or 0)
    builder = ctx.builder
    now = datetime.now(UTC)
    slotted = bool(getattr(builder, "uses_cluster_slots", False))  # Job builders; the local one has its own pool
    digest = None
    if attempt == 0:
        if slotted:
            step = _step_with_slot(ctx, build, status, now, known_builds)
        else:
            step = next_step(status, limits(ctx), now, ctx.instance_id)
    else:
        result = builder.observe(build, attempt)
        reported: dict[str, Any] = {"state": str(result.state), "reason": result.reason, "log_tail": result.log_tail}
        step = next_step(status, limits(ctx), now, ctx.instance_id, **reported)
        if slotted and step.action == "start":  # a restart (backoff over, or its Job vanished): a slot first
            step = _step_with_slot(ctx, build, status, now, known_builds, **reported)
        digest = result.digest
    if step.action == "verify":
        step = _verify(ctx, build, step.attempt, digest)
    return _apply(ctx, build, step)


def _apply(ctx: OperatorContext, build: dict[str, Any], step: Step) -> BuildSyncResult:
    if step.action not in ("start", "wait"):  # queued, retrying, finished: it holds no slot now
        ctx.build_slots.release((build["metadata"]["namespace"], build["metadata"]["name"]))
    failed = step.event is not None and step.event[0] == "Warning"
    if failed and step.event is not None:  # a failure is told before anything else happens
        ctx.kube.event(build, *step.event)
    if step.changes or step.condition:
        build = _write(ctx, build, step.changes, step.condition) or build
    if not failed and step.event is not None:
        ctx.kube.event(build, *step.event)
    if step.action == "start":
        try:
            job = ctx.builder.start(build, step.attempt)
        except BuildCannotStart as error:  # a clear condition now, no slot held, retried with backoff
            log.info("build %s/%s cannot start: %s", build["metadata"]["namespace"], build["metadata"]["name"],
                     error.message)
            return _apply(ctx, build, after_failure(step.attempt, error.reason, error.message, limits(ctx),
                                                    datetime.now(UTC)))
        if job and job != (build.get("status") or {}).get("job"):
            _write(ctx, build, {"job": job})
    phase = step.phase or (build.get("status") or {}).get("phase")
    ctx.metrics.build_progress(build, phase, step.terminal)
    return BuildSyncResult(phase, changed_to_terminal=step.terminal, retry_in=step.retry_in)
