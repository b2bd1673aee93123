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

Keys have ids, so the key can be rotated without rebuilding anything. A signature is
`v2:<key id>:<hex>`: the current key signs, and a signature verifies with the key its id names,
the current one or a previous one still configured. Signatures written before key ids existed
(`v1:<hex>`) verify with any configured key, so the key that wrote them keeps them valid as long as
it is configured (current or previous). Where the keys come from (docs/security.md, "Rotating the
signing key"):

- the Secret `envkiln-signing-key`: entry `current` holds the id of the key that signs; every other
  entry is a key (at least 16 bytes), named by its id. With a single key entry, `current` may be
  left out (the operator creates the Secret as `key: <32 random bytes>`);
- or ENVKILN_SIGNING_KEY (id ENVKILN_SIGNING_KEY_ID, default `key`) with ENVKILN_PREVIOUS_SIGNING_KEYS
  (`ID=KEY` entries, separated by commas or spaces).

Pure: no I/O. Signatures are hex HMAC-SHA256 over canonical JSON, checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envkiln.core.models import EnvironmentBuildSpec

LEGACY_SIGNATURE_VERSION = "v1"  # v1:<hex>, written before key ids: no key id, verified with any configured key
SIGNATURE_VERSION = "v2"  # v2:<key id>:<hex>
MIN_KEY_BYTES = 16
DEFAULT_KEY_ID = "key"  # the id of ENVKILN_SIGNING_KEY, and the entry of the Secret the operator creates
CURRENT_ENTRY = "current"  # the Secret's entry naming the key that signs
# A Secret's data keys are [-._a-zA-Z0-9]+; no ':' (the signature's separator).
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


# Where a build kept in memory without its plan holds the signature verdict of its whole spec.
VERIFIED = "envkiln.verified"


class SigningKeyError(ValueError):
    """The signing keys are not configured as they must be (the message says what to do)."""


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def normalized_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the model sees it, so server-side defaults do not change the signature."""
    return EnvironmentBuildSpec.model_validate(spec).to_kube()


def check_key_id(key_id: str) -> str:
    if key_id == CURRENT_ENTRY or not KEY_ID.match(key_id):
        raise SigningKeyError(f"key id {key_id[:64]!r} is not valid: use 1 to 63 letters, digits, '.', '_' or '-' "
                              f"(starting with a letter or digit), not {CURRENT_ENTRY!r}")
    return key_id


def signature_key_id(signature: object) -> str | None:
    """The key id a signature names (None: no signature, or one written before key ids)."""
    if not isinstance(signature, str):
        return None
    parts = signature.split(":")
    return parts[1] if len(parts) == 3 and parts[0] == SIGNATURE_VERSION else None


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class Signer:
    """The operator's keys: `key` (id `key_id`) signs; it and the `previous` ones (id -> key) verify."""

    key: bytes
    key_id: str = DEFAULT_KEY_ID
    previous: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key_id, key in ((self.key_id, self.key), *self.previous.items()):
            check_key_id(key_id)
            if len(key) < MIN_KEY_BYTES:
                raise SigningKeyError(f"the signing key {key_id!r} must have at least {MIN_KEY_BYTES} bytes")
        if self.key_id in self.previous:
            raise SigningKeyError(f"key id {self.key_id!r} is both the current key and a previous one; "
                                  "give each key its own id")

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every configured key id, the current one first."""
        return (self.key_id, *sorted(self.previous))

    @property
    def keys(self) -> dict[str, bytes]:
        """key id -> key, every configured one."""
        return {self.key_id: self.key, **self.previous}

    @staticmethod
    def _mac(key: bytes, purpose: str, document: dict[str, Any], key_id: str | None) -> str:
        signed = {"purpose": purpose, **document} if key_id is None else {"purpose": purpose, "kid": key_id, **document}
        return hmac.new(key, _canonical(signed), hashlib.sha256).hexdigest()

    def _sign(self, purpose: str, document: dict[str, Any]) -> str:
        return f"{SIGNATURE_VERSION}:{self.key_id}:{self._mac(self.key, purpose, document, self.key_id)}"

    def _problem(self, purpose: str, document: dict[str, Any], signature: str, mismatch: str) -> str | None:
        """None when `signature` is this document's, made with a configured key; else why not."""
        configured = ", ".join(repr(k) for k in self.key_ids)
        parts = signature.split(":")
        if len(parts) == 2 and parts[0] == LEGACY_SIGNATURE_VERSION:  # before key ids: any configured key
            if any(_equal(self._mac(key, purpose, document, None), parts[1]) for key in self.keys.values()):
                return None
            return (f"its signature has no key id (it was written before key ids) and matches none of the configured "
                    f"keys ({configured}): it was changed or not written by the operator, or the key that signed it "
                    "was removed (configure that key again as a previous key)")
        if len(parts) == 3 and parts[0] == SIGNATURE_VERSION and KEY_ID.match(parts[1]):
            key = self.keys.get(parts[1])
            if key is None:
                return (f"it is signed with key id {parts[1]!r}, which is not configured (configured: {configured}): "
                        "if that key was removed, configure it again as a previous key")
            if _equal(self._mac(key, purpose, document, parts[1]), parts[2]):
                return None
            return f"{mismatch} (key id {parts[1]!r})"
        return "its signature is not in a format the operator writes (v2:<key id>:<hex>)"

    # --- the build: what to build and where to push it --------------------------------------

    def sign_build(self, namespace: str, name: str, spec: dict[str, Any]) -> str:
        return self._sign("build", {"namespace": namespace, "name": name, "spec": normalized_spec(spec)})

    def build_problem(self, build: dict[str, Any], signature_annotation: str) -> str | None:
        """None when `build` was created by this operator; else why it is not trusted.

        A build kept in the operator's memory without its plan (envkiln.runtime.indexes) carries the
        verdict computed over its whole spec when it arrived, under VERIFIED (a key the API server
        never sends: the index builds that dict itself)."""
        verdict = build.get(VERIFIED)
        if isinstance(verdict, Mapping) and "problem" in verdict:
            problem = verdict["problem"]
            return None if problem is None else str(problem)
        meta = build.get("metadata") or {}
        signature = (meta.get("annotations") or {}).get(signature_annotation)
        if not signature or not isinstance(signature, str):
            return "it carries no envkiln signature (it was not created by the operator)"
        try:
            document = {"namespace": meta.get("namespace"), "name": meta.get("name"),
                        "spec": normalized_spec(build.get("spec") or {})}
        except ValueError:
            return "its spec is not a valid EnvironmentBuild spec"
        return self._problem("build", document, signature,
                             "its signature does not match its spec (it was changed, or not created by the operator)")

    # --- the record: the digest the operator verified after the build -----------------------

    def sign_record(self, namespace: str, name: str, hash_value: str, image: str, digest: str) -> str:
        return self._sign("record", {"namespace": namespace, "name": name, "hash": hash_value,
                                     "image": image, "digest": digest})

    def record_problem(self, build: dict[str, Any]) -> str | None:
        """None when the build's recorded digest was written by this operator for this build's hash
        and image; else why it is not trusted."""
        meta, spec, status = build.get("metadata") or {}, build.get("spec") or {}, build.get("status") or {}
        digest = status.get("digest")
        if not digest:
            return "it records no digest"
        signature = status.get("recordSignature")
        if not signature or not isinstance(signature, str):
            return "its recorded digest carries no signature (it was not recorded by the operator)"
        document = {"namespace": meta.get("namespace"), "name": meta.get("name"), "hash": spec.get("hash"),
                    "image": spec.get("image"), "digest": digest}
        return self._problem("record", document, signature,
                             "its recorded digest was not recorded by the operator for this build")

    def record_is_trusted(self, build: dict[str, Any]) -> bool:
        """The build's recorded digest was written by this operator for this build's hash and image."""
        return self.record_problem(build) is None


# --- where the keys come from -------------------------------------------------------------------

def untrusted_build(signer: Signer, build: dict[str, Any], signature_annotation: str, push_image: str,
                    check_record: bool = True) -> str | None:
    """Why an EnvironmentBuild must not be trusted (None: the operator created it for this namespace).

    The one trust check of a build, for the Environment that would follow it and for the build's own
    sync: the operator's signature over its spec, the image it pushes to being `push_image` (the
    namespace's image of that hash), and, when it records a digest and `check_record`, the
    operator's signature over that record."""
    problem = signer.build_problem(build, signature_annotation)
    if problem is not None:
        return problem
    image = (build.get("spec") or {}).get("image")
    if image != push_image:
        return f"it pushes to {image}, not to {push_image} where this namespace's images go"
    if check_record and (build.get("status") or {}).get("digest"):
        return signer.record_problem(build)
    return None


def signer_from_secret(data: Mapping[str, bytes]) -> Signer:
    """The keys of the Secret envkiln-signing-key (its data, decoded): entry `current` is the id of
    the key that signs, every other entry a key named by its id. One key needs no `current`."""
    keys = {entry: value for entry, value in data.items() if entry != CURRENT_ENTRY}
    if not keys:
        raise SigningKeyError("it holds no key: add an entry named by the key's id, e.g. `key`, with at least "
                              f"{MIN_KEY_BYTES} random bytes")
    current = data.get(CURRENT_ENTRY)
    if current is None:
        if len(keys) > 1:
            raise SigningKeyError(f"it holds {len(keys)} keys ({', '.join(sorted(keys))}) and no entry "
                                  f"{CURRENT_ENTRY!r}: add `{CURRENT_ENTRY}` with the id of the key that signs")
        current_id = next(iter(keys))
    else:
        current_id = current.decode("utf-8", "replace").strip()
        if current_id not in keys:
            raise SigningKeyError(f"entry {CURRENT_ENTRY!r} names key id {current_id[:64]!r}, but no entry has that "
                                  f"name (entries: {', '.join(sorted(keys))}): add the key, or name one of them")
    return Signer(keys[current_id], current_id, {k: v for k, v in keys.items() if k != current_id})


def parse_previous_keys(text: str) -> dict[str, bytes]:
    """ENVKILN_PREVIOUS_SIGNING_KEYS: `ID=KEY` entries separated by commas or spaces (KEY is text, as
    ENVKILN_SIGNING_KEY). Messages never repeat a key."""
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(text.replace(",", " ").split(), start=1):
        key_id, separator, key = entry.partition("=")
        if not separator or not key:
            raise SigningKeyError(f"entry {number} is not ID=KEY")
        check_key_id(key_id)
        if key_id in keys:
            raise SigningKeyError(f"key id {key_id!r} is given twice")
        keys[key_id] = key.encode("utf-8")
    return keys
