"""Earlier builds, as the operator would have left them: for tests and benches of cache hits.

A cache hit trusts only the operator's signed record of a build (envkiln.core.trust), never an image
that merely sits under the hash's tag. To start a test from "this definition was built before",
the harness does what the operator did then, with the key the harness gives every operator it
starts (TEST_SIGNING_KEY): push the image, create the signed EnvironmentBuild, and write its
signed record through the status subresource.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from envkiln.core.definition import pull_reference
from envkiln.core.models import EnvironmentSpec
from envkiln.core.names import BUILDS, GROUP, VERSION
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from envkiln.reconcile.envsync import build_manifest
from harness.buildah import base_image_archive, push_archive

TEST_SIGNING_KEY = "envkiln-test-signing-key-0123456789abcdef"


def seed_build(api: client.ApiClient, namespace: str, spec: dict[str, Any], registry_host: str,
               archive: Path | None = None, key: str = TEST_SIGNING_KEY) -> tuple[str, str]:
    """(digest, image pushed) of a finished, signed build of `spec` in `namespace`."""
    from envkiln.core.definition import definition_hash

    settings = OperatorSettings(registry=registry_host, insecure_registry=True)
    model = EnvironmentSpec.model_validate(spec)
    value = definition_hash(model)
    signer = Signer(key.encode())
    body = build_manifest(signer, settings, namespace, model, value)
    image = body["spec"]["image"]
    digest = push_archive(archive or base_image_archive(), image)
    custom = client.CustomObjectsApi(api)
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS, body)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, BUILDS, name, {"status": {
        "phase": "Succeeded", "attempts": 1, "digest": digest,
        "imageRef": pull_reference(image, digest, registry_host, registry_host),
        "recordSignature": signer.sign_record(namespace, name, value, image, digest),
        "message": "seeded by the test harness"}})
    return digest, image
