"""What a cache hit asks of the API server (envkiln.reconcile.envsync with the event's body and the in-memory
build index): no reads, one status write, one Event. Counts calls (to the unit tests' FakeKube), never times them."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, cast

from envkiln.core.buildspec import build_manifest
from envkiln.core.definition import definition_hash, pull_reference
from envkiln.core.models import EnvironmentSpec
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.reconcile.context import OperatorContext
from envkiln.reconcile.envsync import sync_environment
from fakes import FakeKube

NAMESPACE = "team"
SPEC = {"image": "python:3.11-slim", "pip": ["numpy==2.1.3"]}
DIGEST = "sha256:" + "ab" * 32


def requests(kube: FakeKube) -> Counter[str]:
    """What the reconcile asked of the API server: 'verb kind' counted (an Event by its reason)."""
    events = {name: body["reason"] for (kind, _, name), body in kube.objects.items() if kind == "Event"}
    return Counter(f"{verb} {kind}" + (f" {events[name]}" if kind == "Event" and name in events else "")
                   for verb, kind, _, name in kube.calls)


def stored(kube: FakeKube) -> dict[str, Any]:
    return kube.objects[("environments", NAMESPACE, "hit")]


def _setup() -> tuple[OperatorContext, FakeKube, dict[str, Any], dict[str, Any]]:
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
    kube = FakeKube()
    env = kube.put("environments", NAMESPACE, {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
                                               "metadata": {"name": "hit", "generation": 1, "uid": "u"},
                                               "spec": dict(SPEC)})
    ctx = OperatorContext(settings=settings, kube=kube, registry=cast(Any, None),
                          builder=cast(Any, None), signer=signer)
    return ctx, kube, env, build


def test_a_cache_hit_reads_nothing_and_writes_only_its_status() -> None:
    ctx, kube, env, build = _setup()
    builds = {(NAMESPACE, build["metadata"]["name"]): build}
    result = sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: builds.get((namespace, name)))
    assert result.phase == "Ready"
    assert requests(kube) == Counter({"patch environments": 1})  # no Event for a hit (issue #25)
    assert stored(kube)["status"]["cacheHit"] is True and stored(kube)["status"]["imageDigest"] == DIGEST


def test_seen_again_it_writes_nothing() -> None:
    """The event of its own status write, or the check of every Environment at start."""
    ctx, kube, env, build = _setup()
    builds = {(NAMESPACE, build["metadata"]["name"]): build}
    sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: builds.get((namespace, name)))
    kube.calls.clear()
    again = sync_environment(ctx, NAMESPACE, "hit", copy.deepcopy(stored(kube)),
                             lambda namespace, name: builds.get((namespace, name)))
    assert again.phase == "Ready" and kube.calls == []


def test_an_untrusted_build_in_the_index_is_refused() -> None:
    ctx, kube, env, build = _setup()
    forged = copy.deepcopy(build)
    forged["status"]["recordSignature"] = "v1:" + "0" * 64
    result = sync_environment(ctx, NAMESPACE, "hit", env, lambda namespace, name: forged)
    assert result.phase == "Failed"
    assert stored(kube)["status"].get("imageDigest") is None


def test_without_an_index_it_reads_as_before() -> None:
    ctx, kube, _env, _build = _setup()
    result = sync_environment(ctx, NAMESPACE, "hit", None, None)
    assert result.phase == "Building"  # no build yet (the cluster has none): created
    calls = requests(kube)
    assert calls["get environments"] == 1 and calls["get environmentbuilds"] == 1
    assert calls["create environmentbuilds"] == 1
