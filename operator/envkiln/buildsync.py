"""Reconcile one EnvironmentBuild: start attempts, follow them, retry with backoff, record the result.

Every step reads the server's state first and is safe to repeat: the status is written
before a Job is created (so a crash in between re-creates the same Job by name), and a
Job that already exists is adopted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from envkiln.builders import AttemptResult, AttemptState
from envkiln.conditions import now_iso, set_condition
from envkiln.context import OperatorContext
from envkiln.imageref import parse_image_reference
from envkiln.kube import BUILDS
from envkiln.models import BuildPhase
from envkiln.registryclient import RegistryUnavailable

log = logging.getLogger(__name__)
TERMINAL = {BuildPhase.SUCCEEDED.value, BuildPhase.FAILED.value}


def build_name(definition_hash: str) -> str:
    return f"envb-{definition_hash}"


@dataclass
class BuildSyncResult:
    phase: str | None
    changed_to_terminal: bool = False
    retry_in: float | None = None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pull_reference(ctx: OperatorContext, image: str, digest: str) -> str:
    """repository@digest under the name kubelets pull from."""
    push_registry, pull_registry = ctx.settings.registry, ctx.settings.effective_pull_registry
    repository = image.rsplit(":", 1)[0]
    if repository.startswith(push_registry + "/") and pull_registry != push_registry:
        repository = pull_registry + repository[len(push_registry):]
    return f"{repository}@{digest}"


def _write(ctx: OperatorContext, build: dict[str, Any], changes: dict[str, Any],
           condition: tuple[bool | None, str, str] | None = None) -> dict[str, Any] | None:
    namespace, name = build["metadata"]["namespace"], build["metadata"]["name"]

    def compute(current: dict[str, Any]) -> dict[str, Any] | None:
        status = dict(current.get("status") or {})
        new = {**status, **changes, "observedGeneration": current["metadata"].get("generation")}
        if condition is not None:
            new["conditions"] = set_condition(status.get("conditions"), "Succeeded", condition[0], condition[1],
                                              condition[2], current["metadata"].get("generation"))
        new = {k: v for k, v in new.items() if v is not None}
        return None if new == status else {**{k: None for k in status if k not in new}, **new}

    return ctx.kube.patch_status(BUILDS, namespace, name, compute)


def sync_build(ctx: OperatorContext, namespace: str, name: str) -> BuildSyncResult:
    build = ctx.kube.get(BUILDS, namespace, name)
    if build is None:
        return BuildSyncResult(None)
    status = build.get("status") or {}
    phase = status.get("phase")
    if phase in TERMINAL:
        return BuildSyncResult(phase)
    attempt = int(status.get("attempts") or 0)
    builder = ctx.builder

    if attempt == 0:
        running = getattr(builder, "running_builds", None)  # Job builders; the local one has its own pool
        if running is not None and running() >= ctx.settings.max_concurrent_builds:
            _write(ctx, build, {"phase": BuildPhase.PENDING.value, "message": "waiting for a free build slot"},
                   (None, "Queued", f"{ctx.settings.max_concurrent_builds} builds are already running"))
            return BuildSyncResult(BuildPhase.PENDING.value, retry_in=10)
        attempt = 1
        build = _write(ctx, build, {"phase": BuildPhase.BUILDING.value, "attempts": 1, "startTime": now_iso(),
                                    "builderInstance": ctx.instance_id, "message": "attempt 1 started"},
                       (None, "Building", "attempt 1 started")) or build
        job = builder.start(build, attempt)
        if job:
            _write(ctx, build, {"job": job})
        return BuildSyncResult(BuildPhase.BUILDING.value)

    result = builder.observe(build, attempt)
    if result.state is AttemptState.RUNNING:
        return BuildSyncResult(phase)
    if result.state is AttemptState.MISSING:
        retry_after = _parse_time(status.get("retryAfter"))
        wait = (retry_after - datetime.now(UTC)).total_seconds() if retry_after else 0
        if wait > 0:
            return BuildSyncResult(phase, retry_in=wait)
        # Never started (crash after the status write, or backoff over), or its runner died.
        _write(ctx, build, {"phase": BuildPhase.BUILDING.value, "retryAfter": None,
                            "builderInstance": ctx.instance_id, "message": f"attempt {attempt} started"},
               (None, "Building", f"attempt {attempt} started"))
        job = builder.start(build, attempt)
        if job:
            _write(ctx, build, {"job": job})
        return BuildSyncResult(BuildPhase.BUILDING.value)
    if result.state is AttemptState.SUCCEEDED:
        return _succeeded(ctx, build, attempt, result)
    return _failed(ctx, build, attempt, result)


def _succeeded(ctx: OperatorContext, build: dict[str, Any], attempt: int, result: AttemptResult) -> BuildSyncResult:
    image = build["spec"]["image"]
    assert result.digest is not None
    reference = parse_image_reference(image)
    try:
        lookup = ctx.registry.lookup(f"{reference.name}@{result.digest}", use_cache=False)
    except RegistryUnavailable as error:
        _write(ctx, build, {"message": f"build finished; cannot verify the image yet: {error}"})
        return BuildSyncResult(build.get("status", {}).get("phase"), retry_in=ctx.settings.registry_retry_seconds)
    if not lookup.found:
        return _failed(ctx, build, attempt, AttemptResult(
            AttemptState.FAILED, reason="ImageNotInRegistry",
            log_tail=f"the build reported {result.digest}, but {reference.name} has no such manifest"))
    image_ref = pull_reference(ctx, image, result.digest)
    _write(ctx, build, {"phase": BuildPhase.SUCCEEDED.value, "digest": result.digest, "imageRef": image_ref,
                        "completionTime": now_iso(), "message": f"pushed {image_ref}", "retryAfter": None},
           (True, "BuildSucceeded", f"attempt {attempt} pushed {image_ref}"))
    ctx.kube.event(build, "Normal", "BuildSucceeded", f"attempt {attempt} pushed {image_ref}")
    return BuildSyncResult(BuildPhase.SUCCEEDED.value, changed_to_terminal=True)


def _failed(ctx: OperatorContext, build: dict[str, Any], attempt: int, result: AttemptResult) -> BuildSyncResult:
    reason = result.reason or "BuildFailed"
    reason = reason if reason[:1].isalpha() else "BuildFailed"
    summary = f"attempt {attempt} failed ({reason})"
    ctx.kube.event(build, "Warning", "BuildFailed", f"{summary}: {(result.log_tail or '')[-500:]}")
    if attempt <= ctx.settings.build_retry_limit:
        delay = ctx.settings.build_retry_backoff_seconds * (2 ** (attempt - 1))
        retry_after = (datetime.now(UTC) + timedelta(seconds=delay)).replace(microsecond=0)
        _write(ctx, build, {
            "phase": BuildPhase.BUILDING.value, "attempts": attempt + 1, "logTail": result.log_tail,
            "retryAfter": retry_after.isoformat().replace("+00:00", "Z"), "job": None,
            "message": f"{summary}; retrying in {delay}s ({attempt}/{ctx.settings.build_retry_limit} retries)",
        }, (None, "Retrying", f"{summary}; retry {attempt} of {ctx.settings.build_retry_limit} in {delay}s"))
        return BuildSyncResult(BuildPhase.BUILDING.value, retry_in=delay)
    _write(ctx, build, {"phase": BuildPhase.FAILED.value, "logTail": result.log_tail, "completionTime": now_iso(),
                        "message": f"{summary}; no retries left", "retryAfter": None},
           (False, reason, f"{summary} after {attempt} attempts; see status.logTail"))
    return BuildSyncResult(BuildPhase.FAILED.value, changed_to_terminal=True)


def is_api_conflict(error: Exception) -> bool:
    return isinstance(error, client.ApiException) and error.status == 409
