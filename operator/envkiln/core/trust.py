"""What the operator trusts: its own EnvironmentBuilds and the digests it recorded, signed with its key.

A tag in the registry proves nothing (anyone who can push can put any image under
`env_<hash>:<hash>`, and hashes can be computed offline), and an EnvironmentBuild can be
created or edited by anyone with write access to the namespace. So the operator signs what it
writes, with an HMAC-SHA256 key only it holds (ENVKILN_SIGNING_KEY, or the Secret
`envkiln-signing-key` in its own namespace):

- the *build signature* (annotation `envkiln.dev/signature`) covers the namespace, the name and
  the whole spec (hash, destination image, builder, plan). The operator builds only
  EnvironmentBuilds whose build signature verifies;
- the *record signature* (`status.recordSignature`) covers the namespace, the name, the hash,
  the image and the digest the operator verified in the registry after the build. An
  Environment is Ready from an EnvironmentBuild only when its record signature verifies. An
  image that sits under a hash's tag without such a record is never used: it is rebuilt.

Pure: no I/O. Signatures are hex HMAC-SHA256 over canonical JSON, checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from envkiln.core.models import EnvironmentBuildSpec

SIGNATURE_VERSION = "v1"
MIN_KEY_BYTES = 16


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def normalized_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the model sees it, so server-side defaults do not change the signature."""
    return EnvironmentBuildSpec.model_validate(spec).to_kube()


@dataclass(frozen=True)
class Signer:
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise ValueError(f"the signing key must have at least {MIN_KEY_BYTES} bytes")

    def _sign(self, purpose: str, document: dict[str, Any]) -> str:
        mac = hmac.new(self.key, _canonical({"purpose": purpose, **document}), hashlib.sha256)
        return f"{SIGNATURE_VERSION}:{mac.hexdigest()}"

    def _verify(self, purpose: str, document: dict[str, Any], signature: object) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self._sign(purpose, document), signature)

    # --- the build: what to build and where to push it --------------------------------------

    def sign_build(self, namespace: str, name: str, spec: dict[str, Any]) -> str:
        return self._sign("build", {"namespace": namespace, "name": name, "spec": normalized_spec(spec)})

    def build_problem(self, build: dict[str, Any], signature_annotation: str) -> str | None:
        """None when `build` was created by this operator; else why it is not trusted."""
        meta = build.get("metadata") or {}
        signature = (meta.get("annotations") or {}).get(signature_annotation)
        if not signature:
            return "it carries no envkiln signature (it was not created by the operator)"
        try:
            document = {"namespace": meta.get("namespace"), "name": meta.get("name"),
                        "spec": normalized_spec(build.get("spec") or {})}
        except ValueError:
            return "its spec is not a valid EnvironmentBuild spec"
        if not self._verify("build", document, signature):
            return "its signature does not match its spec (it was changed, or not created by the operator)"
        return None

    # --- the record: the digest the operator verified after the build -----------------------

    def sign_record(self, namespace: str, name: str, hash_value: str, image: str, digest: str) -> str:
        return self._sign("record", {"namespace": namespace, "name": name, "hash": hash_value,
                                     "image": image, "digest": digest})

    def record_is_trusted(self, build: dict[str, Any]) -> bool:
        """The build's recorded digest was written by this operator for this build's hash and image."""
        meta, spec, status = build.get("metadata") or {}, build.get("spec") or {}, build.get("status") or {}
        digest = status.get("digest")
        if not digest:
            return False
        document = {"namespace": meta.get("namespace"), "name": meta.get("name"), "hash": spec.get("hash"),
                    "image": spec.get("image"), "digest": digest}
        return self._verify("record", document, status.get("recordSignature"))
