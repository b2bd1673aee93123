"""An Environment's outcome, from what was observed: its definition, the registry, its build.

`decide(facts)` answers what the status should say and whether the EnvironmentBuild must be
created; `from_build` is the adoption rule (the EnvironmentBuild for the hash in the namespace is
followed, never duplicated, but only when the operator signed it: envkiln.core.trust); `new_status`
turns an outcome into the full status, with kstatus's Reconciling/Stalled conditions beside Ready
(PROGRESS). An image under the hash's tag in the registry is never a cache hit by itself: only the
operator's signed record of a build is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envkiln.core.conditions import Progress, get_condition, set_condition, set_progress
from envkiln.core.definition import pull_reference
from envkiln.core.imageref import parse_image_reference
from envkiln.core.models import BaseImageUpdates, BuildPhase, EnvironmentKind, EnvironmentSpec, Phase
from envkiln.core.names import (
    CONDITION_BASE_IMAGE_UPDATED,
    CONDITION_GIT_REF_RESOLVED,
    CONDITION_IMAGE_AVAILABLE,
    CONDITION_READY,
    CONDITION_VALID,
    REASON_BASE_IMAGE_UPDATED,
    REASON_BASE_UP_TO_DATE,
    REASON_BUILD_FAILED,
    REASON_BUILDING,
    REASON_BUILT,
    REASON_CACHE_HIT,
    REASON_CONTEXT_NOT_FOUND,
    REASON_GIT_REF_RESOLVED,
    REASON_GIT_UNREACHABLE,
    REASON_IMAGE_NOT_FOUND,
    REASON_IMAGE_READY,
    REASON_INVALID_DEFINITION,
    REASON_READY,
    REASON_REBUILD_FAILED,
    REASON_REBUILDING,
    REASON_REBUILT,
    REASON_REGISTRY_UNAVAILABLE,
    REASON_UNTRUSTED_BUILD,
    REASON_VALID,
    build_name,
)

MAX_HISTORY = 50
# kstatus's reading of each phase (envkiln.core.conditions.set_progress): Flux, `kubectl wait` and Argo CD
# see Pending and Building as in progress, Failed as stalled (a definition, registry or build
# problem that needs a change), Ready as done.
PROGRESS: dict[Phase, Progress] = {Phase.PENDING: "reconciling", Phase.BUILDING: "reconciling",
                                   Phase.FAILED: "stalled", Phase.READY: "done"}
ConditionValue = tuple[bool | None, str, str]  # (status, reason, message)
_VALID: ConditionValue = (True, REASON_VALID, "definition is valid")


@dataclass
class Outcome:
    """What the status should say. Conditions: type -> (status, reason, message)."""

    phase: Phase
    message: str
    conditions: dict[str, ConditionValue] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    retry_in: float | None = None
    event: tuple[str, str] | None = None  # (type, reason) posted when the phase changes
    create_build: bool = False  # the EnvironmentBuild for the hash must be created (or adopted)
    records_hash: bool = True  # the status records the definition hash (when there is one)
    create_rebuild: str | None = None  # create (or adopt) the rebuild on this base digest
    notices: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message) when a drift
    # condition changes (posted by the reconciler when the condition's reason changed)
    history: dict[str, Any] = field(default_factory=dict)  # reason/baseImageDigest of a new history entry


@dataclass(frozen=True)
class Lookup:
    """What the registry said about an image: found (with digest), not found, or unavailable (why)."""

    found: bool = False
    digest: str | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class Facts:
    """Everything `decide` needs, observed by the reconciler (envkiln.reconcile.envsync)."""

    spec: EnvironmentSpec | None  # None: the definition is invalid (see problems)
    problems: tuple[str, ...] = ()
    hash: str | None = None
    missing_context: str | None = None  # the ConfigMap build context that does not exist
    context_digest: str | None = None  # digest of the ConfigMap context's files that were hashed
    namespace: str = ""
    push_image: str = ""  # repository:tag builds push to
    pull_image: str = ""  # the same image as kubelets pull it
    push_registry: str = ""
    pull_registry: str = ""
    build_name: str = ""
    build: dict[str, Any] | None = None  # the EnvironmentBuild for the hash, when it exists
    build_problem: str | None = None  # why that EnvironmentBuild is not trusted (None: the operator signed it)
    lookup: Lookup | None = None  # the registry's answer (bring-your-own images only); None when not asked
    previous_status: dict[str, Any] = field(default_factory=dict)
    retry_seconds: float = 15.0
    generation: int | None = None  # the Environment's metadata.generation
    # Drift (envkiln.core.decisions.drift): the base-update policy and what the watcher last saw.
    base_policy: str = BaseImageUpdates.NOTIFY.value
    latest_base_digest: str | None = None  # the base tag's digest at the watcher's last look (None: not known)
    rebuild: dict[str, Any] | None = None  # the EnvironmentBuild on latest_base_digest, when it exists
    rebuild_problem: str | None = None  # why that EnvironmentBuild is not trusted
    resolved_commit: str | None = None  # a git context's ref, resolved (part of the hash)
    git_problem: str | None = None  # why the git ref could not be resolved now


def invalid(message: str, reason: str = REASON_INVALID_DEFINITION) -> Outcome:
    return Outcome(Phase.FAILED, message, {
        CONDITION_VALID: (False, reason, message), CONDITION_READY: (False, reason, message)},
        fields={"hash": None, "shortHash": None, "image": None, "imageDigest": None, "imageRef": None,
                "cacheHit": None, "build": None}, event=("Warning", reason))


def ready(image: str, digest: str, image_ref: str, cache_hit: bool, build: str | None, why: str) -> Outcome:
    return Outcome(Phase.READY, why, {
        CONDITION_VALID: _VALID,
        CONDITION_IMAGE_AVAILABLE: (True, REASON_CACHE_HIT if cache_hit else REASON_BUILT, why),
        CONDITION_READY: (True, REASON_IMAGE_READY, f"workloads run {image_ref}"),
    }, fields={"image": image, "imageDigest": digest, "imageRef": image_ref, "cacheHit": cache_hit, "build": build},
        # A cache hit is one write, its status (the ImageAvailable condition says CacheHit); a built image's
        # readiness is news worth an Event.
        event=None if cache_hit else ("Normal", REASON_READY))


def registry_down(reason: str, retry: float, phase: Phase = Phase.PENDING) -> Outcome:
    message = f"{reason}; retrying every {retry:.0f}s"
    return Outcome(phase, message, {
        CONDITION_VALID: _VALID,
        CONDITION_IMAGE_AVAILABLE: (None, REASON_REGISTRY_UNAVAILABLE, message),
        CONDITION_READY: (False, REASON_REGISTRY_UNAVAILABLE, message),
    }, retry_in=retry, event=("Warning", REASON_REGISTRY_UNAVAILABLE))


def building(push_image: str, pull_image: str, build_name: str, create_build: bool = False) -> Outcome:
    return Outcome(Phase.BUILDING, f"building {push_image} (EnvironmentBuild {build_name})", {
        CONDITION_VALID: _VALID,
        CONDITION_IMAGE_AVAILABLE: (False, REASON_BUILDING, f"EnvironmentBuild {build_name} is building the image"),
        CONDITION_READY: (False, REASON_BUILDING, f"waiting for EnvironmentBuild {build_name}"),
    }, fields={"image": pull_image, "build": build_name, "cacheHit": False, "baseImageDigest": None, "lock": None,
               "latestBaseImageDigest": None}, event=("Normal", REASON_BUILDING), create_build=create_build)


def from_build(build: dict[str, Any], pull_image: str, build_name: str, cache_hit: bool,
               push_registry: str = "", pull_registry: str = "") -> Outcome | None:
    """Adoption: the outcome a trusted EnvironmentBuild decides (None while it is still running).

    Whoever asked for it (this Environment, another one with the same definition, another replica),
    its result is this Environment's result: one build per hash and namespace. The reference
    workloads run is made from the signed image and digest, never from other status fields.
    """
    status = build.get("status") or {}
    phase = status.get("phase")
    if phase == BuildPhase.SUCCEEDED.value and status.get("digest"):
        image_ref = pull_reference(build["spec"]["image"], status["digest"], push_registry, pull_registry)
        outcome = ready(pull_image, status["digest"], image_ref, cache_hit, build_name,
                        f"built by EnvironmentBuild {build_name}")
        lock = status.get("lock") or {}
        outcome.fields.update({
            "baseImageDigest": build["spec"].get("baseImageDigest") or status.get("baseImageDigest"),
            "lock": {"digest": lock["digest"], "packages": lock["packages"]} if lock.get("digest") else None})
        return outcome
    if phase == BuildPhase.FAILED.value:
        message = (f"EnvironmentBuild {build_name} failed: {status.get('message', '')}; see "
                   f"`kubectl get envbuild {build_name} -o yaml` (status.logTail). Delete the EnvironmentBuild "
                   "to try again")
        return Outcome(Phase.FAILED, message, {
            CONDITION_VALID: _VALID,
            CONDITION_IMAGE_AVAILABLE: (False, REASON_BUILD_FAILED, message),
            CONDITION_READY: (False, REASON_BUILD_FAILED, message),
        }, fields={"image": pull_image, "build": build_name, "cacheHit": False},
            event=("Warning", REASON_BUILD_FAILED))
    return None


def untrusted(build_name: str, namespace: str, problem: str, pull_image: str) -> Outcome:
    message = (f"EnvironmentBuild {build_name} is not trusted: {problem}. envkiln never uses it; delete it "
               f"(`kubectl delete envbuild -n {namespace} {build_name}`) and envkiln builds the image itself")
    return Outcome(Phase.FAILED, message, {
        CONDITION_VALID: _VALID,
        CONDITION_IMAGE_AVAILABLE: (False, REASON_UNTRUSTED_BUILD, message),
        CONDITION_READY: (False, REASON_UNTRUSTED_BUILD, message),
    }, fields={"image": pull_image, "build": build_name, "cacheHit": False, "imageDigest": None, "imageRef": None},
        event=("Warning", REASON_UNTRUSTED_BUILD))


def decide(facts: Facts) -> Outcome:
    """The outcome for an Environment. `create_build` asks the caller to create-or-adopt its build."""
    spec, retry = facts.spec, facts.retry_seconds
    if spec is None:
        return invalid("; ".join(facts.problems))

    if spec.kind is EnvironmentKind.BRING_YOUR_OWN:
        assert spec.image is not None
        answer = facts.lookup or Lookup(unavailable="registry not asked")
        if answer.unavailable is not None:
            outcome = registry_down(answer.unavailable, retry)
            outcome.records_hash = False
            return outcome
        if not answer.found or answer.digest is None:
            outcome = invalid(f"spec.image: {spec.image} was not found in its registry; push it or fix the reference",
                              REASON_IMAGE_NOT_FOUND)
            outcome.conditions[CONDITION_VALID] = _VALID
            outcome.retry_in = retry * 4
            return outcome
        name = parse_image_reference(spec.image).name
        outcome = ready(spec.image, answer.digest, f"{name}@{answer.digest}", True, None,
                        "bring-your-own-container image resolved; nothing to build")
        outcome.fields.update({"baseImage": spec.image, "baseImageDigest": answer.digest})
        return outcome

    if facts.missing_context is not None:
        message = (f"spec.build.configMap: ConfigMap {facts.missing_context!r} not found in namespace "
                   f"{facts.namespace}; create it (its content is part of the definition)")
        return Outcome(Phase.PENDING, message, {CONDITION_VALID: (False, REASON_CONTEXT_NOT_FOUND, message),
                                                CONDITION_READY: (False, REASON_CONTEXT_NOT_FOUND, message)},
                       retry_in=retry * 2, event=("Warning", REASON_CONTEXT_NOT_FOUND), records_hash=False)

    git = spec.build.git if spec.build is not None else None
    if git is not None and facts.resolved_commit is None:
        message = facts.git_problem or f"spec.build.git: ref {git.ref!r} is not resolved yet"
        return Outcome(Phase.PENDING, message, {
            CONDITION_VALID: _VALID, CONDITION_GIT_REF_RESOLVED: (False, REASON_GIT_UNREACHABLE, message),
            CONDITION_READY: (False, REASON_GIT_UNREACHABLE, message)},
            retry_in=retry * 2, event=("Warning", REASON_GIT_UNREACHABLE), records_hash=False)

    # cacheHit means "this Environment caused no build": false once it has waited for one.
    previous = facts.previous_status
    waited = previous.get("hash") == facts.hash and previous.get("cacheHit") is False
    if facts.build is None:
        outcome = building(facts.push_image, facts.pull_image, facts.build_name, create_build=True)
    elif facts.build_problem is not None:  # server-side state is the truth; no registry request needed
        outcome = untrusted(facts.build_name, facts.namespace, facts.build_problem, facts.pull_image)
    else:
        outcome = from_build(facts.build, facts.pull_image, facts.build_name, cache_hit=not waited,
                             push_registry=facts.push_registry, pull_registry=facts.pull_registry
                             ) or building(facts.push_image, facts.pull_image, facts.build_name)
        if outcome.phase is Phase.READY and spec.kind is EnvironmentKind.SYSTEM_MANAGED:
            outcome = base_update(outcome, facts)
    if spec.kind is EnvironmentKind.SYSTEM_MANAGED:
        outcome.fields["baseImage"] = spec.image
    if git is not None and facts.resolved_commit is not None:
        outcome.fields["resolvedCommit"] = facts.resolved_commit
        if facts.git_problem is not None:
            outcome.conditions[CONDITION_GIT_REF_RESOLVED] = (
                False, REASON_GIT_UNREACHABLE, f"{facts.git_problem}; keeping commit {facts.resolved_commit}")
        else:
            outcome.conditions[CONDITION_GIT_REF_RESOLVED] = (
                True, REASON_GIT_REF_RESOLVED, f"ref {git.ref} is commit {facts.resolved_commit}")
    return outcome


def base_update(current: Outcome, facts: Facts) -> Outcome:
    """A Ready system-managed Environment, and what the base-update watcher last saw of its base.

    - nothing known, or the same digest the image was built on: no news (UpToDate when known);
    - Ignore: nothing;
    - Notify: condition BaseImageUpdated (and an Event when it appears);
    - Rebuild: a build on the new digest (`<hash>-b<digest>`); until it succeeds the Environment
      stays Ready on its image; then it moves to the new image, with a history entry
      (reason BaseImageUpdated). A failed rebuild leaves the previous image in place and says so.
    """
    assert facts.spec is not None
    built_on, latest = current.fields.get("baseImageDigest"), facts.latest_base_digest
    image = facts.spec.image
    if latest is None or built_on is None or facts.base_policy == BaseImageUpdates.IGNORE.value:
        return current
    if latest == built_on:
        current.fields["latestBaseImageDigest"] = None
        said = get_condition((facts.previous_status or {}).get("conditions"), CONDITION_BASE_IMAGE_UPDATED) or {}
        if said.get("reason") == REASON_REBUILT and latest in str(said.get("message") or ""):
            # The move to the rebuild on this digest stays what the condition says (no flip to UpToDate
            # on the next sync): it is the last thing that happened to the image.
            current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (False, REASON_REBUILT, str(said["message"]))
            return current
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (
            False, REASON_BASE_UP_TO_DATE, f"built on the current digest of {image} ({latest})")
        return current
    current.fields["latestBaseImageDigest"] = latest
    moved = f"spec.image {image} moved to {latest}; the image was built on {built_on}"
    if facts.base_policy == BaseImageUpdates.NOTIFY.value:
        message = (f"{moved}. Set spec.baseImageUpdates: Rebuild to rebuild on it automatically (the definition "
                   "hash stays the same)")
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (True, REASON_BASE_IMAGE_UPDATED, message)
        current.notices.append(("Normal", REASON_BASE_IMAGE_UPDATED, message))
        return current
    name = build_name(facts.hash or "", latest)
    if facts.rebuild is None:
        message = f"{moved}; rebuilding on it (EnvironmentBuild {name}); workloads keep the current image until then"
        current.create_rebuild = latest
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (True, REASON_REBUILDING, message)
        current.notices.append(("Normal", REASON_REBUILDING, message))
        return current
    if facts.rebuild_problem is not None:
        message = f"{moved}; EnvironmentBuild {name} is not trusted ({facts.rebuild_problem}); delete it to rebuild"
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (True, REASON_REBUILD_FAILED, message)
        current.notices.append(("Warning", REASON_REBUILD_FAILED, message))
        return current
    rebuilt = from_build(facts.rebuild, facts.pull_image.rsplit(":", 1)[0] + ":" + name.removeprefix("envb-"), name,
                         cache_hit=False, push_registry=facts.push_registry, pull_registry=facts.pull_registry)
    if rebuilt is None:
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (
            True, REASON_REBUILDING, f"{moved}; EnvironmentBuild {name} is rebuilding on it")
        return current
    if rebuilt.phase is Phase.FAILED:
        message = (f"{moved}; the rebuild failed (EnvironmentBuild {name}: "
                   f"{(facts.rebuild.get('status') or {}).get('message', '')}); workloads keep the current image. "
                   "Delete the EnvironmentBuild to try again")
        current.conditions[CONDITION_BASE_IMAGE_UPDATED] = (True, REASON_REBUILD_FAILED, message)
        current.notices.append(("Warning", REASON_REBUILD_FAILED, message))
        return current
    message = f"rebuilt on {latest}, the new digest of {image} (EnvironmentBuild {name})"
    rebuilt.fields["cacheHit"] = current.fields.get("cacheHit")
    rebuilt.fields["latestBaseImageDigest"] = None
    rebuilt.conditions[CONDITION_BASE_IMAGE_UPDATED] = (False, REASON_REBUILT, message)
    rebuilt.notices.append(("Normal", REASON_REBUILT, message))
    rebuilt.history = {"reason": REASON_BASE_IMAGE_UPDATED, "baseImageDigest": latest}
    return rebuilt


def _history(status: dict[str, Any], version: str, value: str | None, image_ref: str | None,
             now: str, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """status.versions after this outcome. A rebuild on a new base image (`extra` carries its reason
    and base digest) adds an entry for the same version and hash, so the image it replaced stays in
    the history; any other new image of the current entry replaces its imageRef."""
    versions = [dict(v) for v in status.get("versions") or []]
    if value is None:
        return versions
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    last = versions[-1] if versions else None
    if last is not None and last.get("version") == version and last.get("hash") == value:
        if image_ref and last.get("imageRef") != image_ref:
            if last.get("imageRef") and extra.get("reason") == REASON_BASE_IMAGE_UPDATED:
                versions.append({"version": version, "hash": value, "when": now, "imageRef": image_ref, **extra})
                return versions[-MAX_HISTORY:]
            last["imageRef"] = image_ref
            if extra.get("baseImageDigest"):
                last["baseImageDigest"] = extra["baseImageDigest"]
        return versions
    record = {"version": version, "hash": value, "when": now}
    if image_ref:
        record["imageRef"] = image_ref
        if extra.get("baseImageDigest"):
            record["baseImageDigest"] = extra["baseImageDigest"]
    versions.append(record)
    return versions[-MAX_HISTORY:]


def new_status(current: dict[str, Any], outcome: Outcome, value: str | None, now: str) -> dict[str, Any]:
    """The whole status of `current` (an Environment) after `outcome`; `now` stamps transitions and history."""
    status = dict(current.get("status") or {})
    generation = current["metadata"].get("generation")
    conditions = status.get("conditions")
    for type_, (state, reason, message) in outcome.conditions.items():
        conditions = set_condition(conditions, type_, state, reason, message, generation, now=now)
    if CONDITION_IMAGE_AVAILABLE not in outcome.conditions and get_condition(
            conditions, CONDITION_IMAGE_AVAILABLE) is not None:
        conditions = [c for c in conditions or [] if c.get("type") != CONDITION_IMAGE_AVAILABLE]
    reason = outcome.conditions.get(CONDITION_READY, (None, outcome.phase.value, ""))[1]
    conditions = set_progress(conditions, PROGRESS[outcome.phase], reason, outcome.message, generation, now=now)
    new = {**status, **outcome.fields, "phase": outcome.phase.value, "message": outcome.message,
           "conditions": conditions, "observedGeneration": generation}
    if outcome.phase is not Phase.FAILED or value is not None:
        try:
            new["kind"] = EnvironmentSpec.model_validate(current.get("spec") or {}).kind.value
        except ValueError:  # pydantic's ValidationError is a ValueError
            new["kind"] = None
    if value is not None:
        new["hash"], new["shortHash"] = value, value[:12]
        version = (current.get("spec") or {}).get("version", "1")
        ready_now = outcome.phase is Phase.READY
        extra = {"baseImageDigest": outcome.fields.get("baseImageDigest") if ready_now else None, **outcome.history}
        new["versions"] = _history(status, version, value, outcome.fields.get("imageRef") if ready_now else None,
                                   now, extra)
    return {k: v for k, v in new.items() if v is not None}
