"""Reconcile one Environment: observe (definition, hash, its build, the registry), decide, write status.

The status is computed from the server's current state every time (the Environment, its
EnvironmentBuild; the registry only for bring-your-own images), so running this twice, concurrently or after a restart
gives the same answer and never starts a second build. What to do is decided by
envkiln.decisions.environment; this module only reads and writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from envkiln.conditions import now_iso
from envkiln.context import OperatorContext
from envkiln.decisions.environment import Facts, Lookup, Outcome, decide, invalid, new_status
from envkiln.definition import MissingContextContent, context_digest, definition_hash
from envkiln.errors import DefinitionError
from envkiln.manifests import config_map_data, parse_environment
from envkiln.models import BuildReason, EnvironmentBuildSpec, EnvironmentKind, EnvironmentSpec
from envkiln.names import (
    ANNOTATION_SIGNATURE,
    API_VERSION,
    BUILDS,
    ENVIRONMENTS,
    KIND_BUILD,
    LABEL_HASH,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    build_name,
)
from envkiln.registryclient import RegistryUnavailable
from envkiln.render import RenderError, render
from envkiln.settings import OperatorSettings
from envkiln.trust import Signer

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
    problem = ctx.signer.build_problem(build, ANNOTATION_SIGNATURE)
    if problem is not None:
        return problem
    if (build.get("spec") or {}).get("image") != push_image:
        return f"it pushes to {build['spec'].get('image')}, not to {push_image} where this namespace's images go"
    status = build.get("status") or {}
    if status.get("digest") and not ctx.signer.record_is_trusted(build):
        return "its recorded digest was not recorded by the operator"
    return None


def observe(ctx: OperatorContext, env: dict[str, Any], find_build: FindBuild | None = None) -> Facts:
    """What `decide` needs. Asks the registry only for bring-your-own images; reads the
    EnvironmentBuild from `find_build` when given (an index the watch keeps current), else from
    the API server."""
    namespace = env["metadata"]["namespace"]
    settings = ctx.settings
    base = Facts(spec=None, namespace=namespace, previous_status=env.get("status") or {},
                 push_registry=settings.registry, pull_registry=settings.effective_pull_registry,
                 retry_seconds=float(settings.registry_retry_seconds))
    try:
        spec = parse_environment(env, f"Environment {env['metadata']['name']}", settings.curated_namespace).spec
    except DefinitionError as error:
        return replace(base, problems=tuple(error.problems))
    if spec.kind is EnvironmentKind.BRING_YOUR_OWN:
        assert spec.image is not None
        return replace(base, spec=spec, hash=definition_hash(spec), lookup=_lookup(ctx, spec.image))
    data = _context_data(ctx, namespace, spec)
    try:
        value = definition_hash(spec, data)
    except MissingContextContent:
        assert spec.build is not None and spec.build.config_map is not None
        return replace(base, spec=spec, missing_context=spec.build.config_map.name)
    facts = replace(base, spec=spec, hash=value, build_name=build_name(value),
                    context_digest=context_digest(data) if data is not None else None,
                    push_image=settings.push_image(value, namespace),
                    pull_image=settings.pull_image(value, namespace),
                    build=(find_build or _get_build(ctx))(namespace, build_name(value)))
    if facts.build is not None:
        facts = replace(facts, build_problem=build_problem(ctx, facts.build, facts.push_image))
    return facts


def _get_build(ctx: OperatorContext) -> FindBuild:
    return lambda namespace, name: ctx.kube.get(BUILDS, namespace, name)


def build_manifest(signer: Signer, settings: OperatorSettings, namespace: str, spec: EnvironmentSpec,
                   hash_value: str, digest_of_context: str | None = None) -> dict[str, Any]:
    """The EnvironmentBuild for a definition in a namespace, signed (envkiln.trust). Pure."""
    plan = render(spec, hash_value, settings.render_settings())
    if digest_of_context is not None:  # the build checks it gets the bytes that were hashed
        plan = plan.model_copy(update={"context_digest": digest_of_context})
    name = build_name(hash_value)
    build_spec = EnvironmentBuildSpec(hash=hash_value, image=settings.push_image(hash_value, namespace),
                                      builder=settings.builder, plan=plan, reason=BuildReason.IMAGE_MISSING).to_kube()
    return {
        "apiVersion": API_VERSION, "kind": KIND_BUILD,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {LABEL_HASH: hash_value, LABEL_MANAGED_BY: MANAGED_BY_VALUE},
                     "annotations": {ANNOTATION_SIGNATURE: signer.sign_build(namespace, name, build_spec)}},
        "spec": build_spec,
    }


def create_or_adopt_build(ctx: OperatorContext, facts: Facts) -> dict[str, Any]:
    assert facts.spec is not None and facts.hash is not None
    body = build_manifest(ctx.signer, ctx.settings, facts.namespace, facts.spec, facts.hash, facts.context_digest)
    build, created = ctx.kube.create_or_get(BUILDS, facts.namespace, body)
    if created:
        log.info("created EnvironmentBuild %s/%s for %s", facts.namespace, facts.build_name, facts.push_image)
        ctx.metrics.build_created()
    return build


def reconcile(ctx: OperatorContext, env: dict[str, Any],
              find_build: FindBuild | None = None) -> tuple[Outcome, str | None]:
    """The outcome for an Environment, plus the hash its status records. May create its build."""
    facts = observe(ctx, env, find_build)
    outcome = decide(facts)
    if outcome.create_build:
        # Someone may have created it meanwhile (and even finished it): adopt theirs.
        try:
            build = create_or_adopt_build(ctx, facts)
        except RenderError as error:  # validation should make this impossible; never build something else
            return invalid(f"spec: {error}"), None
        outcome = decide(replace(facts, build=build, build_problem=build_problem(ctx, build, facts.push_image)))
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
        if new == old:
            return None
        return {**{k: None for k in old if k not in new}, **new}

    written = ctx.kube.patch_status(ENVIRONMENTS, namespace, name, compute, current=env)
    patched = time.perf_counter()
    old_phase = transition.get("old")
    if outcome.event and old_phase != outcome.phase.value:
        type_, reason = outcome.event
        ctx.kube.event(written or transition.get("current") or env, type_, reason, outcome.message)
    ctx.metrics.environment_synced(old_phase, outcome.phase.value, outcome.fields.get("cacheHit"))
    if log.isEnabledFor(logging.DEBUG):  # the per-phase cost of a reconcile (docs/benchmarks.md)
        log.debug("synced Environment %s/%s: %s -> %s; read %.1f ms, observe+decide %.1f ms, status %.1f ms, "
                  "event %.1f ms", namespace, name, old_phase, outcome.phase.value, (read - started) * 1000,
                  (decided - read) * 1000, (patched - decided) * 1000, (time.perf_counter() - patched) * 1000)
    return EnvSyncResult(outcome.phase.value, outcome.retry_in, value)
