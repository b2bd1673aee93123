"""Earlier builds, as the operator would have left them: for tests and benches of cache hits.

A cache hit trusts only the operator's signed record of a build (envkiln.core.trust), never an image
that merely sits under the hash's tag. To start a test from "this definition was built before",
the harness does what the operator did then, with the key the harness gives every operator it
starts (TEST_SIGNING_KEY): push the image, create the signed EnvironmentBuild, and write its
signed record through the status subresource.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from kubernetes import client

from envkiln.core.buildspec import build_manifest
from envkiln.core.definition import pull_reference
from envkiln.core.models import EnvironmentSpec
from envkiln.core.names import BUILDS, GROUP, VERSION
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer, normalized_spec
from harness.buildah import base_image_archive, push_archive

TEST_SIGNING_KEY = "envkiln-test-signing-key-0123456789abcdef"


class PreKeyIdSigner:
    """The operator's signer as it was before key ids (a frozen copy of that code): signatures
    `v1:<hex>`, with no key id. EnvironmentBuilds in existing clusters carry these, and must keep
    verifying while the key that made them is configured."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _sign(self, purpose: str, document: dict[str, Any]) -> str:
        body = json.dumps({"purpose": purpose, **document}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
        return "v1:" + hmac.new(self.key, body, hashlib.sha256).hexdigest()

    def sign_build(self, namespace: str, name: str, spec: dict[str, Any]) -> str:
        return self._sign("build", {"namespace": namespace, "name": name, "spec": normalized_spec(spec)})

    def sign_record(self, namespace: str, name: str, hash_value: str, image: str, digest: str) -> str:
        return self._sign("record", {"namespace": namespace, "name": name, "hash": hash_value, "image": image,
                                     "digest": digest})


def seed_build(api: client.ApiClient, namespace: str, spec: dict[str, Any], registry_host: str,
               archive: Path | None = None, key: str = TEST_SIGNING_KEY,
               signer: Signer | PreKeyIdSigner | None = None) -> tuple[str, str]:
    """(digest, image pushed) of a finished, signed build of `spec` in `namespace` (signed with
    `signer`, default: `key` with the default key id)."""
    from envkiln.core.definition import definition_hash

    settings = OperatorSettings(registry=registry_host, insecure_registry=True)
    model = EnvironmentSpec.model_validate(spec)
    value = definition_hash(model)
    signer = signer or Signer(key.encode())
    body = build_manifest(signer, settings, namespace, model, value)  # type: ignore[arg-type]  # duck-typed
    image = body["spec"]["image"]
    digest = push_archive(archive or base_image_archive(), image)
    custom = client.CustomObjectsApi(api)
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS, body)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, BUILDS, name, {"status": {
        "phase": "Succeeded", "attempts": 1, "digest": digest,
        "imageRef": pull_reference(image, digest, registry_host, registry_host),
        "recordSignature": signer.sign_record(namespace, name, value, image, digest),
        "message": "seeded by the test harness", "observedGeneration": 1}})  # as the operator writes it
    return digest, image
