"""What a cache hit asks of the API server (envkiln.reconcile.envsync with the event's body and the in-memory
build index): no reads, one status write, one Event. Counts calls, never times them."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from envkiln.core.definition import definition_hash, pull_reference
from envkiln.core.models import EnvironmentSpec
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.reconcile.context import OperatorContext
from envkiln.reconcile.envsync import build_manifest, sync_environment

NAMESPACE = "team"
SPEC = {"image": "python:3.11-slim", "pip": ["numpy==2.1.3"]}
DIGEST = "sha256:" + "ab" * 32


class CountingKube:
    """The Kube methods a reconcile may call, counted; writes answer like the API server."""

    def __init__(self, stored: dict[str, Any]) -> None:
        self.calls: Counter[str] = Counter()
        self.stored = stored

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls[f"get {plural}"] += 1
        return copy.deepcopy(self.stored) if plural == "environments" else None

    def patch_status(self, plural: str, namespace: str, name: str,
                     compute: Callable[[dict[str, Any]], dict[str, Any] | None], attempts: int = 8,
                     current: dict[str, Any] | None = None) -> dict[str, Any] | None:
        current = current if current is not None else self.get(plural, namespace, name)
        assert current is not None
        patch = compute(current)
        if patch is None:
            return current
        self.calls[f"patch {plural}/status"] += 1
        status = {k: v for k, v in {**(current.get("status") or {}), **patch}.items() if v is not None}
        self.stored = {**current, "status": status}
        return copy.deepcopy(self.stored)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls[f"create events {reason}"] += 1

    def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.calls[f"create {plural}"] += 1
        return body, True


def _setup() -> tuple[OperatorContext, CountingKube, dict[str, Any], dict[str, Any]]:
    settings = OperatorSettings(registry="registry.test:5000", insecure_registry=True,
                                base_image_registries=["registry.test:5000"])  # no base lookup: no registry here
    signer = Signer(b"k" * 32)
    model = EnvironmentSpec.model_validate(SPEC)
    value = definition_hash(model)
    build = build_manifest(signer, settings, NAMESPACE, model, value)
    image = build["spec"]["image"]
    build["status"] = {"phase": "Succeeded", "digest": DIGEST,
                       "imageRef": pull_reference(image, DIGEST, settings.registry, settings.registry),
                       "recordSignature": signer.sign_record(NAMESPACE, build["metadata"]["name"], value, image,
                                                             DIGEST)}
    env = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
           "metadata": {"name": "hit", "namespace": NAMESPACE, "generation": 1, "resourceVersion": "1",
                        "uid": "u"}, "spec": dict(SPEC)}
    kube = CountingKube(env)
    ctx = OperatorContext(settings=settings, kube=cast(Any, kube), registry=cast(Any, None),
                          builder=cast(Any, None), signer=signer)
    return ctx, kube, env, build


def test_a_cache_hit_reads_nothing_and_writes_status_and_one_event() -> None:
    ctx, kube, env, build = _setup()
    builds = {(NAMESPACE, build["metadata"]["name"]): build}
    result = sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: builds.get((namespace, name)))
    assert result.phase == "Ready"
    assert kube.calls == Counter({"patch environments/status": 1, "create events Ready": 1})
    assert kube.stored["status"]["cacheHit"] is True and kube.stored["status"]["imageDigest"] == DIGEST


def test_seen_again_it_writes_nothing() -> None:
    """The event of its own status write, or the check of every Environment at start."""
    ctx, kube, env, build = _setup()
    builds = {(NAMESPACE, build["metadata"]["name"]): build}
    sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: builds.get((namespace, name)))
    kube.calls.clear()
    again = sync_environment(ctx, NAMESPACE, "hit", copy.deepcopy(kube.stored),
                             lambda namespace, name: builds.get((namespace, name)))
    assert again.phase == "Ready" and kube.calls == Counter()


def test_an_untrusted_build_in_the_index_is_refused() -> None:
    ctx, kube, env, build = _setup()
    forged = copy.deepcopy(build)
    forged["status"]["recordSignature"] = "v1:" + "0" * 64
    result = sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: forged)
    assert result.phase == "Failed"
    assert kube.stored["status"].get("imageDigest") is None


def test_without_an_index_it_reads_as_before() -> None:
    ctx, kube, _env, _build = _setup()
    result = sync_environment(ctx, NAMESPACE, "hit", None, None)
    assert result.phase == "Building"  # no build yet (the counting Kube has none): created
    assert kube.calls["get environments"] == 1 and kube.calls["get environmentbuilds"] == 1
    assert kube.calls["create environmentbuilds"] == 1
