"""Reconcile one Environment: validate, hash, registry check, create-or-adopt its build, status.

The status is computed from the server's current state every time (the Environment, its
EnvironmentBuild, the registry), so running this twice, concurrently or after a restart
gives the same answer and never starts a second build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from envkiln import API_VERSION
from envkiln.buildsync import build_name, pull_reference
from envkiln.conditions import get_condition, now_iso, set_condition
from envkiln.context import OperatorContext
from envkiln.definition import MissingContextContent, definition_hash, image_name
from envkiln.errors import DefinitionError
from envkiln.imageref import parse_image_reference
from envkiln.kube import BUILDS, ENVIRONMENTS
from envkiln.manifests import config_map_data, parse_environment
from envkiln.models import (
    BuildPhase,
    BuildReason,
    EnvironmentBuildSpec,
    EnvironmentKind,
    EnvironmentSpec,
    Phase,
)
from envkiln.registryclient import RegistryUnavailable
from envkiln.render import render

log = logging.getLogger(__name__)
MAX_HISTORY = 50
LABEL_HASH = "envkiln.dev/hash"


@dataclass
class Outcome:
    """What the status should say. Conditions: type -> (status, reason, message)."""

    phase: Phase
    message: str
    conditions: dict[str, tuple[bool | None, str, str]] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    retry_in: float | None = None
    event: tuple[str, str] | None = None  # (type, reason) posted when the phase changes


@dataclass
class EnvSyncResult:
    phase: str | None
    retry_in: float | None = None
    hash: str | None = None


def _invalid(message: str, reason: str = "InvalidDefinition") -> Outcome:
    return Outcome(Phase.FAILED, message, {
        "Valid": (False, reason, message), "Ready": (False, reason, message)},
        fields={"hash": None, "shortHash": None, "image": None, "imageDigest": None, "imageRef": None,
                "cacheHit": None, "build": None}, event=("Warning", reason))


def _context_data(ctx: OperatorContext, namespace: str, spec: EnvironmentSpec) -> dict | None:
    if spec.build is None or spec.build.config_map is None:
        return None
    configmap = ctx.kube.read_configmap(namespace, spec.build.config_map.name)
    if configmap is None:
        return None
    return config_map_data({"data": configmap.data, "binaryData": configmap.binary_data})


def _ready(image: str, digest: str, image_ref: str, cache_hit: bool, build: str | None, why: str) -> Outcome:
    return Outcome(Phase.READY, why, {
        "Valid": (True, "Valid", "definition is valid"),
        "ImageAvailable": (True, "CacheHit" if cache_hit else "Built", why),
        "Ready": (True, "ImageReady", f"workloads run {image_ref}"),
    }, fields={"image": image, "imageDigest": digest, "imageRef": image_ref, "cacheHit": cache_hit, "build": build},
        event=("Normal", "Ready"))


def _registry_down(error: RegistryUnavailable, retry: float, phase: Phase = Phase.PENDING) -> Outcome:
    message = f"{error}; retrying every {retry:.0f}s"
    return Outcome(phase, message, {
        "Valid": (True, "Valid", "definition is valid"),
        "ImageAvailable": (None, "RegistryUnavailable", message),
        "Ready": (False, "RegistryUnavailable", message),
    }, retry_in=retry, event=("Warning", "RegistryUnavailable"))


def decide(ctx: OperatorContext, env: dict[str, Any]) -> tuple[Outcome, str | None]:
    """The outcome for an Environment, plus its hash when it has one. May create its build."""
    metadata = env["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    try:
        environment = parse_environment(env, f"Environment {name}", ctx.settings.curated_namespace)
    except DefinitionError as error:
        return _invalid("; ".join(error.problems)), None
    spec = environment.spec
    retry = float(ctx.settings.registry_retry_seconds)

    if spec.kind is EnvironmentKind.BRING_YOUR_OWN:
        assert spec.image is not None
        try:
            lookup = ctx.registry.lookup(spec.image)
        except RegistryUnavailable as error:
            return _registry_down(error, retry), None
        value = definition_hash(spec)
        if not lookup.found:
            message = f"spec.image: {spec.image} was not found in its registry; push it or fix the reference"
            outcome = _invalid(message, "ImageNotFound")
            outcome.conditions["Valid"] = (True, "Valid", "definition is valid")
            outcome.retry_in = retry * 4
            return outcome, value
        assert lookup.digest is not None
        ref = parse_image_reference(spec.image)
        return _ready(spec.image, lookup.digest, f"{ref.name}@{lookup.digest}", True, None,
                      "bring-your-own-container image resolved; nothing to build"), value

    try:
        value = definition_hash(spec, _context_data(ctx, namespace, spec))
    except MissingContextContent:
        assert spec.build is not None and spec.build.config_map is not None
        message = (f"spec.build.configMap: ConfigMap {spec.build.config_map.name!r} not found in namespace "
                   f"{namespace}; create it (its content is part of the definition)")
        return Outcome(Phase.PENDING, message, {"Valid": (False, "ContextNotFound", message),
                                                "Ready": (False, "ContextNotFound", message)},
                       retry_in=retry * 2, event=("Warning", "ContextNotFound")), None
    push_image = image_name(value, ctx.settings.registry, ctx.settings.image_template)
    pull_image = image_name(value, ctx.settings.effective_pull_registry, ctx.settings.image_template)
    build_id = build_name(value)

    # A build of ours already decided (server-side state is the truth; no registry request needed).
    # cacheHit means "this Environment caused no build": false once it has waited for one.
    previous = env.get("status") or {}
    waited = previous.get("hash") == value and previous.get("cacheHit") is False
    build = ctx.kube.get(BUILDS, namespace, build_id)
    if build is not None:
        outcome = _from_build(build, pull_image, build_id, cache_hit=not waited)
        if outcome is not None:
            return outcome, value

    if build is None:
        try:
            lookup = ctx.registry.lookup(push_image)
        except RegistryUnavailable as error:
            return _registry_down(error, retry), value
        if lookup.found:
            assert lookup.digest is not None
            return _ready(pull_image, lookup.digest, pull_reference(ctx, push_image, lookup.digest), True, None,
                          f"image {push_image} already in the registry; no build needed"), value
        build = create_or_adopt_build(ctx, namespace, spec, value, push_image)
        outcome = _from_build(build, pull_image, build_id, cache_hit=not waited)
        if outcome is not None:
            return outcome, value

    return Outcome(Phase.BUILDING, f"building {push_image} (EnvironmentBuild {build_id})", {
        "Valid": (True, "Valid", "definition is valid"),
        "ImageAvailable": (False, "Building", f"EnvironmentBuild {build_id} is building the image"),
        "Ready": (False, "Building", f"waiting for EnvironmentBuild {build_id}"),
    }, fields={"image": pull_image, "build": build_id, "cacheHit": False}, event=("Normal", "Building")), value


def _from_build(build: dict[str, Any], pull_image: str, build_id: str, cache_hit: bool) -> Outcome | None:
    status = build.get("status") or {}
    phase = status.get("phase")
    if phase == BuildPhase.SUCCEEDED.value and status.get("digest") and status.get("imageRef"):
        return _ready(pull_image, status["digest"], status["imageRef"], cache_hit, build_id,
                      f"built by EnvironmentBuild {build_id}")
    if phase == BuildPhase.FAILED.value:
        message = (f"EnvironmentBuild {build_id} failed: {status.get('message', '')}; see "
                   f"`kubectl get envbuild {build_id} -o yaml` (status.logTail). Delete the EnvironmentBuild "
                   "to try again")
        return Outcome(Phase.FAILED, message, {
            "Valid": (True, "Valid", "definition is valid"),
            "ImageAvailable": (False, "BuildFailed", message),
            "Ready": (False, "BuildFailed", message),
        }, fields={"image": pull_image, "build": build_id, "cacheHit": False}, event=("Warning", "BuildFailed"))
    return None


def create_or_adopt_build(ctx: OperatorContext, namespace: str, spec: EnvironmentSpec, value: str,
                          push_image: str) -> dict[str, Any]:
    plan = render(spec, value, ctx.settings.render_settings())
    build_spec = EnvironmentBuildSpec(hash=value, image=push_image, builder=ctx.settings.builder, plan=plan,
                                      reason=BuildReason.IMAGE_MISSING)
    body = {
        "apiVersion": API_VERSION, "kind": "EnvironmentBuild",
        "metadata": {"name": build_name(value), "namespace": namespace,
                     "labels": {LABEL_HASH: value, "app.kubernetes.io/managed-by": "envkiln"}},
        "spec": build_spec.to_kube(),
    }
    build, created = ctx.kube.create_or_get(BUILDS, namespace, body)
    if created:
        log.info("created EnvironmentBuild %s/%s for %s", namespace, build_name(value), push_image)
    return build


def _history(status: dict[str, Any], version: str, value: str | None, image_ref: str | None) -> list[dict[str, Any]]:
    versions = [dict(v) for v in status.get("versions") or []]
    if value is None:
        return versions
    if versions and versions[-1].get("version") == version and versions[-1].get("hash") == value:
        if image_ref and versions[-1].get("imageRef") != image_ref:
            versions[-1]["imageRef"] = image_ref
        return versions
    record = {"version": version, "hash": value, "when": now_iso()}
    if image_ref:
        record["imageRef"] = image_ref
    versions.append(record)
    return versions[-MAX_HISTORY:]


def new_status(current: dict[str, Any], outcome: Outcome, value: str | None) -> dict[str, Any]:
    status = dict(current.get("status") or {})
    generation = current["metadata"].get("generation")
    conditions = status.get("conditions")
    for type_, (state, reason, message) in outcome.conditions.items():
        conditions = set_condition(conditions, type_, state, reason, message, generation)
    if "ImageAvailable" not in outcome.conditions and get_condition(conditions, "ImageAvailable") is not None:
        conditions = [c for c in conditions or [] if c.get("type") != "ImageAvailable"]
    new = {**status, **outcome.fields, "phase": outcome.phase.value, "message": outcome.message,
           "conditions": conditions, "observedGeneration": generation}
    if outcome.phase is not Phase.FAILED or value is not None:
        spec_kind = None
        try:
            spec_kind = EnvironmentSpec.model_validate(current.get("spec") or {}).kind.value
        except Exception:
            spec_kind = None
        new["kind"] = spec_kind
    if value is not None:
        new["hash"], new["shortHash"] = value, value[:12]
        version = (current.get("spec") or {}).get("version", "1")
        new["versions"] = _history(status, version, value,
                                   outcome.fields.get("imageRef") if outcome.phase is Phase.READY else None)
    return {k: v for k, v in new.items() if v is not None}


def sync_environment(ctx: OperatorContext, namespace: str, name: str) -> EnvSyncResult:
    env = ctx.kube.get(ENVIRONMENTS, namespace, name)
    if env is None:
        return EnvSyncResult(None)
    if env["metadata"].get("deletionTimestamp"):
        return EnvSyncResult(None)
    outcome, value = decide(ctx, env)
    transition: dict[str, Any] = {}

    def compute(current: dict[str, Any]) -> dict[str, Any] | None:
        old = current.get("status") or {}
        new = new_status(current, outcome, value)
        transition["old"], transition["current"] = old.get("phase"), current
        if new == old:
            return None
        return {**{k: None for k in old if k not in new}, **new}

    ctx.kube.patch_status(ENVIRONMENTS, namespace, name, compute)
    old_phase = transition.get("old")
    if outcome.event and old_phase != outcome.phase.value:
        type_, reason = outcome.event
        ctx.kube.event(transition.get("current") or env, type_, reason, outcome.message)
    return EnvSyncResult(outcome.phase.value, outcome.retry_in, value)
