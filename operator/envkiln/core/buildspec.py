"""The EnvironmentBuild for a definition in a namespace: its rendered plan, image, name and the
operator's signature. Pure: the reconciler (envkiln.reconcile.envsync) creates what this returns,
and the test harness seeds earlier builds with it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envkiln.core.decisions.parent import Candidate, choose_parent, reuse_facts
from envkiln.core.models import BuildReason, EnvironmentBuildSpec, EnvironmentSpec, ParentImage
from envkiln.core.names import (
    ANNOTATION_SIGNATURE,
    API_VERSION,
    KIND_BUILD,
    LABEL_HASH,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    build_name,
    image_key,
)
from envkiln.core.render import render, render_on_parent
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer


def build_manifest(signer: Signer, settings: OperatorSettings, namespace: str, spec: EnvironmentSpec,
                   hash_value: str, digest_of_context: str | None = None, base_digest: str | None = None,
                   rebuild: bool = False, commit: str | None = None, base_user: str | None = None,
                   earlier: Iterable[Candidate] = ()) -> dict[str, Any]:
    """The EnvironmentBuild for a definition in a namespace, signed (envkiln.core.trust).

    `base_digest`: the base image's digest the FROM is pinned to; `rebuild`: this is the rebuild
    on that (newer) base, named and tagged `<hash>-b<digest>`; `commit`: a git context's ref
    resolved, which the builder fetches instead of the ref; `base_user`: the User of the base image's
    config ("" root; None unknown: envkiln.core.render renders stages then); `earlier`: the namespace's
    succeeded builds that it may start from (envkiln.core.decisions.parent; empty: from the base)."""
    if commit is not None and spec.build is not None and spec.build.git is not None:
        pinned = spec.build.model_copy(update={"git": spec.build.git.model_copy(update={"ref": commit})})
        spec = spec.model_copy(update={"build": pinned})
    plan = render(spec, hash_value, settings.render_settings(), base_digest=base_digest, base_user=base_user)
    parent = choose_parent(reuse_facts(plan.to_kube()), earlier) if base_user is not None else None
    if parent is not None and base_user is not None:
        dockerfile = render_on_parent(spec, hash_value, settings.render_settings(), base_digest, base_user,
                                      parent.image)
        plan = plan.model_copy(update={"parent": ParentImage(build=parent.name, image=parent.image,
                                                             dockerfile=dockerfile)})
    if digest_of_context is not None:  # the build checks it gets the bytes that were hashed
        plan = plan.model_copy(update={"context_digest": digest_of_context})
    name = build_name(hash_value, base_digest if rebuild else None)
    key = image_key(hash_value, base_digest if rebuild else None)
    build_spec = EnvironmentBuildSpec(
        hash=hash_value, image=settings.push_image(hash_value, namespace, key), builder=settings.builder, plan=plan,
        reason=BuildReason.BASE_IMAGE_UPDATED if rebuild else BuildReason.IMAGE_MISSING,
        base_image_digest=base_digest).to_kube()
    return {
        "apiVersion": API_VERSION, "kind": KIND_BUILD,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {LABEL_HASH: hash_value, LABEL_MANAGED_BY: MANAGED_BY_VALUE},
                     "annotations": {ANNOTATION_SIGNATURE: signer.sign_build(namespace, name, build_spec)}},
        "spec": build_spec,
    }
