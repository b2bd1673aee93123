"""Reconcile one Environment: observe (definition, hash, its build, the registry), decide, write status.

The status is computed from the server's current state every time (the Environment, its
EnvironmentBuild; the registry only for bring-your-own images), so running this twice, concurrently or after a restart
gives the same answer and never starts a second build. What to do is decided by
envkiln.core.decisions.environment; this module only reads and writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from envkiln.adapters.gitrefs import GitRefError
from envkiln.adapters.kube import ApiError, api_message
from envkiln.adapters.registryclient import RegistryUnavailable
from envkiln.core.buildspec import build_manifest
from envkiln.core.conditions import get_condition, now_iso
from envkiln.core.decisions.collect import build_facts, builds_to_collect, environment_facts
from envkiln.core.decisions.environment import Facts, Lookup, Outcome, decide, invalid, new_status
from envkiln.core.decisions.parent import Candidate
from envkiln.core.decisions.resync import base_moved
from envkiln.core.definition import MissingContextContent, context_digest, definition_hash
from envkiln.core.errors import DefinitionError
from envkiln.core.imageref import parse_image_reference
from envkiln.core.manifests import config_map_data, parse_environment
from envkiln.core.models import BaseImageUpdates, EnvironmentKind, EnvironmentSpec
from envkiln.core.names import (
    ANNOTATION_SIGNATURE,
    BUILDS,
    CONDITION_BASE_IMAGE_UPDATED,
    ENVIRONMENTS,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    build_name,
    image_key,
)
from envkiln.core.render import RenderError
from envkiln.core.trust import untrusted_build
from envkiln.reconcile.context import OperatorContext

log = logging.getLogger(__name__)
# (namespace, name) -> the EnvironmentBuild as last seen (an in-memory index), or None if unknown.
FindBuild = Callable[[str, str], dict[str, Any] | None]


@dataclass
class EnvSyncResult:
    phase: str | None
    retry_in: float | None = None
    hash: str | None = None


def _lookup(ctx: OperatorContext, image: str) -> Lookup:
    try:
        found = ctx.registry.lookup(image)
    except RegistryUnavailable as error:
        return Lookup(unavailable=str(error))
    return Lookup(found=found.found, digest=found.digest)


def _context_data(ctx: OperatorContext, namespace: str, spec: EnvironmentSpec) -> dict[str, str | bytes] | None:
    if spec.build is None or spec.build.config_map is None:
        return None
    configmap = ctx.kube.read_configmap(namespace, spec.build.config_map.name)
    if configmap is None:
        return None
    return config_map_data({"data": configmap.data, "binaryData": configmap.binary_data})


def build_problem(ctx: OperatorContext, build: dict[str, Any], push_image: str) -> str | None:
    """Why the EnvironmentBuild for a hash cannot be trusted (None: the operator created it, and any
    digest it records was recorded by the operator)."""
    return untrusted_build(ctx.signer, build, ANNOTATION_SIGNATURE, push_image)


def observe(ctx: OperatorContext, env: dict[str, Any], find_build: FindBuild | None = None) -> Facts:
    """What `decide` needs. Asks the registry only for bring-your-own images (and git remotes for a
    git context's ref, cached); reads the EnvironmentBuilds from `find_build` when given (an index
    the watch keeps current), else from the API server."""
    namespace = env["metadata"]["namespace"]
    settings = ctx.settings
    previous = env.get("status") or {}
    base = Facts(spec=None, namespace=namespace, previous_status=previous,
                 push_registry=settings.registry, pull_registry=settings.effective_pull_registry,
                 retry_seconds=float(settings.registry_retry_seconds), generation=env["metadata"].get("generation"))
    try:
        spec = parse_environment(env, f"Environment {env['metadata']['name']}", settings.curated_namespace).spec
    except DefinitionError as error:
        return replace(base, problems=tuple(error.problems))
    foreign = settings.foreign_image_problem(spec.image, namespace)
    if foreign is not None:  # never looked up: the answer would tell another namespace's digest
        return replace(base, problems=(foreign,))
    if spec.kind is EnvironmentKind.BRING_YOUR_OWN:
        assert spec.image is not None
        return replace(base, spec=spec, hash=definition_hash(spec), lookup=_lookup(ctx, spec.image))
    commit, git_problem = _resolve_git(ctx, spec, previous, base.generation)
    if spec.build is not None and spec.build.git is not None and commit is None:
        return replace(base, spec=spec, git_problem=git_problem)
    data = _context_data(ctx, namespace, spec)
    try:
        value = definition_hash(spec, data, commit=commit)
    except MissingContextContent:
        assert spec.build is not None and spec.build.config_map is not None
        return replace(base, spec=spec, missing_context=spec.build.config_map.name)
    find = find_build or _get_build(ctx)
    # The build the Environment follows: the one its status names when it is one of this hash's
    # (a rebuild on a newer base), else the hash's own.
    name = build_name(value)
    followed = previous.get("build")
    if (previous.get("hash") == value and isinstance(followed, str) and followed.startswith(name + "-b")
            and find(namespace, followed) is not None):
        name = followed
    build = find(namespace, name)
    key = name.removeprefix("envb-")
    policy = spec.base_image_updates or (BaseImageUpdates.REBUILD if namespace == settings.curated_namespace
                                         else BaseImageUpdates.NOTIFY)
    facts = replace(base, spec=spec, hash=value, build_name=name,
                    context_digest=context_digest(data) if data is not None else None,
                    push_image=settings.push_image(value, namespace, key),
                    pull_image=settings.pull_image(value, namespace, key),
                    build=build, base_policy=policy.value, resolved_commit=commit, git_problem=git_problem)
    if build is not None:
        facts = replace(facts, build_problem=build_problem(ctx, build, facts.push_image))
    latest = ctx.latest_bases.get(spec.image) if spec.kind is EnvironmentKind.SYSTEM_MANAGED else None
    if latest is not None and policy is BaseImageUpdates.REBUILD:
        rebuild = find(namespace, build_name(value, latest))
        facts = replace(facts, latest_base_digest=latest, rebuild=rebuild)
        if rebuild is not None:
            facts = replace(facts, rebuild_problem=build_problem(
                ctx, rebuild, settings.push_image(value, namespace, image_key(value, latest))))
    elif latest is not None:
        facts = replace(facts, latest_base_digest=latest)
    return facts


def _resolve_git(ctx: OperatorContext, spec: EnvironmentSpec, previous: dict[str, Any],
                 generation: int | None) -> tuple[str | None, str | None]:
    """(the commit of a git context's ref, why it could not be resolved now). When the remote cannot
    be asked, the commit the status recorded for this same spec is kept (and the problem told)."""
    git = spec.build.git if spec.build is not None else None
    if git is None:
        return None, None
    try:
        return ctx.git_resolver.resolve(git.url, git.ref), None
    except GitRefError as error:
        kept = previous.get("resolvedCommit")
        if kept and previous.get("observedGeneration") == generation:
            return str(kept), str(error)
        return None, str(error)


def _get_build(ctx: OperatorContext) -> FindBuild:
    return lambda namespace, name: ctx.kube.get(BUILDS, namespace, name)


def base_digest(ctx: OperatorContext, spec: EnvironmentSpec) -> str | None:
    """The digest of a system-managed definition's base image now, which its build is pinned to
    (and records). None when the registry cannot say: the build then uses the tag as written."""
    if spec.kind is not EnvironmentKind.SYSTEM_MANAGED or spec.image is None:
        return None
    reference = parse_image_reference(spec.image)
    if reference.digest:
        return reference.digest
    if not ctx.settings.resolves_base(reference.resolved_registry()):
        return None
    try:
        found = ctx.registry.lookup(spec.image)
    except RegistryUnavailable as error:
        log.warning("base image %s: digest unknown (%s); the build uses the tag as written", spec.image, error)
        return None
    if found.found and found.digest:
        ctx.latest_bases.set(spec.image, found.digest)
        return found.digest
    return None


def base_user(ctx: OperatorContext, spec: EnvironmentSpec, digest: str | None) -> str | None:
    """The User of the base image's config at `digest`, for a one-stage render (None: not asked, or the
    registry cannot say; the render then keeps the base's user with stages)."""
    if digest is None or spec.image is None or not ctx.settings.render_settings().tool_mounts:
        return None
    if spec.kind is not EnvironmentKind.SYSTEM_MANAGED or not (spec.conda is not None or spec.pip):
        return None
    reference = parse_image_reference(spec.image)
    try:
        return ctx.registry.image_user(f"{reference.name}@{digest}")
    except (RegistryUnavailable, ValueError) as error:
        log.warning("base image %s: its config is unknown (%s); the build uses stages", spec.image, error)
        return None


def earlier_builds(ctx: OperatorContext, facts: Facts) -> list[Candidate]:
    """The namespace's succeeded builds a new in-cluster buildah build of `facts` may start from
    (ENVKILN_BUILD_ON_EARLIER_IMAGES); only pip-only definitions are ever built on one."""
    spec = facts.spec
    if (not ctx.settings.starts_from_earlier_images or ctx.earlier_builds is None
            or spec is None or not spec.pip or spec.conda is not None or spec.lock is not None):
        return []
    return list(ctx.earlier_builds(facts.namespace))


def create_or_adopt_build(ctx: OperatorContext, facts: Facts, rebuild_on: str | None = None) -> dict[str, Any]:
    """Create the EnvironmentBuild for the facts' hash (or, with `rebuild_on`, its rebuild on that
    base digest), or adopt the one someone else created meanwhile."""
    assert facts.spec is not None and facts.hash is not None
    digest = rebuild_on or base_digest(ctx, facts.spec)
    body = build_manifest(ctx.signer, ctx.settings, facts.namespace, facts.spec, facts.hash, facts.context_digest,
                          base_digest=digest, rebuild=rebuild_on is not None, commit=facts.resolved_commit,
                          base_user=base_user(ctx, facts.spec, digest), earlier=earlier_builds(ctx, facts))
    build, created = ctx.kube.create_or_get(BUILDS, facts.namespace, body)
    if created:
        log.info("created EnvironmentBuild %s/%s for %s", facts.namespace, body["metadata"]["name"],
                 body["spec"]["image"])
        ctx.metrics.build_created()
    return build


def reconcile(ctx: OperatorContext, env: dict[str, Any],
              find_build: FindBuild | None = None) -> tuple[Outcome, str | None]:
    """The outcome for an Environment, plus the hash its status records. May create its build."""
    facts = observe(ctx, env, find_build)
    outcome = decide(facts)
    try:
        if outcome.create_build:
            # Someone may have created it meanwhile (and even finished it): adopt theirs.
            build = create_or_adopt_build(ctx, facts)
            outcome = decide(replace(facts, build=build, build_problem=build_problem(ctx, build, facts.push_image)))
        elif outcome.create_rebuild is not None and facts.hash is not None:
            latest = outcome.create_rebuild
            rebuild = create_or_adopt_build(ctx, facts, rebuild_on=latest)
            image = ctx.settings.push_image(facts.hash, facts.namespace, image_key(facts.hash, latest))
            outcome = decide(replace(facts, rebuild=rebuild, rebuild_problem=build_problem(ctx, rebuild, image)))
    except RenderError as error:  # validation should make this impossible; never build something else
        return invalid(f"spec: {error}"), None
    return outcome, (facts.hash if outcome.records_hash else None)


def sync_environment(ctx: OperatorContext, namespace: str, name: str, env: dict[str, Any] | None = None,
                     find_build: FindBuild | None = None) -> EnvSyncResult:
    """Reconcile one Environment and write its status. `env`: the object as a watch event brought
    it (else it is read); the status write is guarded by its resourceVersion, and a conflict reads
    the object again and recomputes, so a stale `env` costs one request, never a wrong status."""
    started = time.perf_counter()
    if env is None:
        env = ctx.kube.get(ENVIRONMENTS, namespace, name)
    if env is None:
        return EnvSyncResult(None)
    if env["metadata"].get("deletionTimestamp"):
        return EnvSyncResult(None)
    read = time.perf_counter()
    outcome, value = reconcile(ctx, env, find_build)
    decided = time.perf_counter()
    transition: dict[str, Any] = {}

    def compute(current: dict[str, Any]) -> dict[str, Any] | None:
        old = current.get("status") or {}
        new = new_status(current, outcome, value, now_iso())
        transition["old"], transition["current"] = old.get("phase"), current
        transition["conditions"] = old.get("conditions")
        transition["moved_on"] = bool(old.get("build")) and old.get("build") != new.get("build")
        if new == old:
            return None
        return {**{k: None for k in old if k not in new}, **new}

    written = ctx.kube.patch_status(ENVIRONMENTS, namespace, name, compute, current=env)
    patched = time.perf_counter()
    old_phase = transition.get("old")
    if outcome.event and old_phase != outcome.phase.value:
        type_, reason = outcome.event
        ctx.kube.event(written or transition.get("current") or env, type_, reason, outcome.message)
    for type_, reason, message in outcome.notices:  # drift news, told once per change of the condition
        previous = get_condition(transition.get("conditions"), CONDITION_BASE_IMAGE_UPDATED) or {}
        if previous.get("reason") != reason:
            ctx.kube.event(written or transition.get("current") or env, type_, reason, message)
    if written is not None and transition.get("moved_on"):  # it follows another build now: old ones may go
        collect_builds(ctx, namespace)
    ctx.metrics.environment_synced(old_phase, outcome.phase.value, outcome.fields.get("cacheHit"))
    if log.isEnabledFor(logging.DEBUG):  # the per-phase cost of a reconcile (docs/benchmarks.md)
        log.debug("synced Environment %s/%s: %s -> %s; read %.1f ms, observe+decide %.1f ms, status %.1f ms, "
                  "event %.1f ms", namespace, name, old_phase, outcome.phase.value, (read - started) * 1000,
                  (decided - read) * 1000, (patched - decided) * 1000, (time.perf_counter() - patched) * 1000)
    return EnvSyncResult(outcome.phase.value, outcome.retry_in, value)


def collect_builds(ctx: OperatorContext, namespace: str) -> list[str]:
    """Delete the namespace's finished EnvironmentBuilds that no Environment keeps
    (envkiln.core.decisions.collect; ENVKILN_BUILD_HISTORY_LIMIT). Only the operator's own, signed
    builds are considered. Idempotent (a build already gone is fine); a failure is logged and left for
    the next time an Environment of the namespace moves to another build."""
    try:
        builds = [b for b in ctx.kube.list(BUILDS, namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")
                  if ctx.signer.build_problem(b, ANNOTATION_SIGNATURE) is None]
        environments = ctx.kube.list(ENVIRONMENTS, namespace) if builds else []
        doomed = builds_to_collect([build_facts(b) for b in builds], [environment_facts(e) for e in environments],
                                   ctx.settings.build_history_limit)
        for name in doomed:
            ctx.kube.delete(BUILDS, namespace, name)
    except ApiError as error:
        log.warning("namespace %s: old EnvironmentBuilds not collected: %s", namespace, api_message(error))
        return []
    if doomed:
        log.info("namespace %s: collected %d old EnvironmentBuild(s): %s", namespace, len(doomed), ", ".join(doomed))
    return doomed


def check_bases(ctx: OperatorContext, bases: dict[str, list[tuple[str, str, str | None]]]) -> list[tuple[str, str]]:
    """The base-update watcher's pass: one registry HEAD per distinct base reference in use, however
    many Environments share it; returns the Environments whose base moved (to be reconciled)."""
    moved: list[tuple[str, str]] = []
    for reference, users in sorted(bases.items()):
        parsed = parse_image_reference(reference)
        if not ctx.settings.resolves_base(parsed.resolved_registry()):
            continue
        try:
            found = ctx.registry.lookup(reference, use_cache=False)
        except RegistryUnavailable as error:
            log.warning("base image %s: cannot check for a new digest: %s", reference, error)
            continue
        if not found.found or not found.digest:
            log.warning("base image %s: not found in its registry any more; its Environments keep their images",
                        reference)
            continue
        ctx.latest_bases.set(reference, found.digest)
        moved += [(namespace, name) for namespace, name, digest in users
                  if base_moved({"baseImageDigest": digest}, found.digest)]
    if bases:
        log.info("checked %d base image(s); %d Environment(s) on a base that moved", len(bases), len(moved))
    return moved
