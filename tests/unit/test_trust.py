"""envkiln.core.trust: only what the operator signed is built, and only its own records make a cache hit."""

from __future__ import annotations

import copy
from typing import Any, Protocol

import pytest

from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import (
    Signer,
    SigningKeyError,
    parse_previous_keys,
    signature_key_id,
    signer_from_secret,
    untrusted_build,
)
from harness.records import PreKeyIdSigner  # what operators before key ids wrote (a frozen copy)

KEY = b"k" * 32
HASH = "0123456789abcdef0123456789abcdef"
IMAGE = f"reg:5000/envkiln/ns/env_{HASH}:{HASH}"
DIGEST = "sha256:" + "a" * 64
SPEC: dict[str, Any] = {"hash": HASH, "image": IMAGE, "builder": "buildah",
        "plan": {"dockerfile": "FROM python:3.11\nRUN true\n", "files": [{"path": "r.txt", "content": "x"}]}}


class BuildSigner(Protocol):
    """What signs a build: envkiln's Signer, or the frozen copy of one from before key ids."""

    def sign_build(self, namespace: str, name: str, spec: dict[str, Any]) -> str: ...

    def sign_record(self, namespace: str, name: str, hash_value: str, image: str, digest: str) -> str: ...


def signed_build(signer: BuildSigner | None = None) -> dict[str, Any]:
    signer = signer or Signer(KEY)
    build = {"metadata": {"name": f"envb-{HASH}", "namespace": "ns", "annotations": {}}, "spec": copy.deepcopy(SPEC)}
    build["metadata"]["annotations"][ANNOTATION_SIGNATURE] = signer.sign_build("ns", f"envb-{HASH}", SPEC)
    build["status"] = {"phase": "Succeeded", "digest": DIGEST,
                       "recordSignature": signer.sign_record("ns", f"envb-{HASH}", HASH, IMAGE, DIGEST)}
    return build


def _set(path: str, value: Any) -> Any:
    def change(build: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = build
        for part in parents:
            node = node[part]
        node[last] = value
    return change


# (id, how the build is changed, build problem?, record trusted?)
CASES = [
    ("as-signed", lambda b: None, False, True),
    ("server-defaults-added", _set("spec.reason", "ImageMissing"), False, True),  # the model's default
    ("no-signature", lambda b: b["metadata"]["annotations"].clear(), True, True),
    ("other-destination", _set("spec.image", "evil:5000/x:1"), True, False),
    ("other-dockerfile", _set("spec.plan.dockerfile", "FROM evil\n"), True, True),
    ("other-hash", _set("spec.hash", "f" * 32), True, False),
    ("moved-namespace", _set("metadata.namespace", "other"), True, False),
    ("renamed", _set("metadata.name", "envb-other"), True, False),
    ("other-digest", _set("status.digest", "sha256:" + "b" * 64), False, False),
    ("no-record-signature", lambda b: b["status"].pop("recordSignature"), False, False),
    ("garbage-signature", lambda b: b["metadata"]["annotations"].update({ANNOTATION_SIGNATURE: "v1:00"}), True, True),
    ("invalid-spec", _set("spec.hash", "not-a-hash"), True, False),
]


@pytest.mark.parametrize(("case", "change", "problem", "record"), CASES, ids=[c[0] for c in CASES])
def test_signatures(case: str, change: Any, problem: bool, record: bool) -> None:
    build = signed_build()
    change(build)
    signer = Signer(KEY)
    assert (signer.build_problem(build, ANNOTATION_SIGNATURE) is not None) is problem
    assert signer.record_is_trusted(build) is record


def test_another_key_trusts_nothing() -> None:
    build = signed_build(Signer(b"x" * 32))
    assert Signer(KEY).build_problem(build, ANNOTATION_SIGNATURE) is not None
    assert not Signer(KEY).record_is_trusted(build)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Signer(b"short")


# --- keys have ids: rotation without rebuilding -------------------------------------------------

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 32


def tamper(build: dict[str, Any]) -> None:
    build["spec"]["hash"] = "f" * 32  # covered by both signatures


def relabel(kid: str) -> Any:
    """Keep the MAC, claim another key id."""
    def change(build: dict[str, Any]) -> None:
        holders = ((build["metadata"]["annotations"], ANNOTATION_SIGNATURE), (build["status"], "recordSignature"))
        for holder, key in holders:
            _, _, mac = holder[key].split(":")
            holder[key] = f"v2:{kid}:{mac}"
    return change


def replace_signatures(value: str) -> Any:
    def change(build: dict[str, Any]) -> None:
        build["metadata"]["annotations"][ANNOTATION_SIGNATURE] = value
        build["status"]["recordSignature"] = value
    return change


SIGNER_K1 = Signer(K1, "k1")
ROTATED = Signer(K2, "k2", {"k1": K1})  # k2 signs, k1 still verifies
K1_REMOVED = Signer(K2, "k2")
UPGRADED = Signer(K1)  # an existing cluster after the upgrade: its one key, id "key"
UPGRADED_ROTATED = Signer(K2, "k2", {"key": K1})
LEGACY = PreKeyIdSigner(K1)

# (id, who signed, the operator that verifies, how the build is changed, expected problem: None or a fragment)
ROTATION = [
    ("k1-signs-k1-verifies", SIGNER_K1, SIGNER_K1, None, None),
    ("rotated-old-still-verifies", SIGNER_K1, ROTATED, None, None),
    ("rotated-new-signed-with-k2", ROTATED, ROTATED, None, None),
    ("new-unknown-to-an-old-operator", ROTATED, SIGNER_K1, None, "key id 'k2', which is not configured"),
    ("k1-removed", SIGNER_K1, K1_REMOVED, None, "key id 'k1', which is not configured (configured: 'k2')"),
    ("k1-id-reused-for-other-material", SIGNER_K1, Signer(K3, "k1"), None, "(key id 'k1')"),
    ("tampered", SIGNER_K1, ROTATED, tamper, "(key id 'k1')"),
    ("tampered-after-rotation", ROTATED, ROTATED, tamper, "(key id 'k2')"),
    ("relabelled-to-another-configured-id", SIGNER_K1, ROTATED, relabel("k2"), "(key id 'k2')"),
    ("unknown-kid", SIGNER_K1, ROTATED, relabel("nope"), "key id 'nope', which is not configured"),
    ("malformed-kid", SIGNER_K1, ROTATED, relabel("a/b"), "not in a format the operator writes"),
    ("unknown-version", SIGNER_K1, ROTATED, replace_signatures("v9:" + "0" * 64), "not in a format"),
    ("legacy-no-kid-verifies-with-its-key", LEGACY, UPGRADED, None, None),
    ("legacy-no-kid-after-rotation", LEGACY, UPGRADED_ROTATED, None, None),
    ("legacy-no-kid-key-removed", LEGACY, K1_REMOVED,
     None, "has no key id (it was written before key ids) and matches none of the configured keys ('k2')"),
    ("legacy-no-kid-tampered", LEGACY, UPGRADED_ROTATED, tamper, "matches none of the configured keys ('k2', 'key')"),
]


@pytest.mark.parametrize(("case", "signer", "verifier", "change", "expected"), ROTATION, ids=[c[0] for c in ROTATION])
def test_key_rotation(case: str, signer: BuildSigner, verifier: Signer, change: Any, expected: str | None) -> None:
    build = signed_build(signer)
    if change is not None:
        change(build)
    for problem in (verifier.build_problem(build, ANNOTATION_SIGNATURE), verifier.record_problem(build)):
        if expected is None:
            assert problem is None
        else:
            assert problem is not None and expected in problem, problem
    assert verifier.record_is_trusted(build) is (expected is None)


def test_signatures_carry_the_current_key_id() -> None:
    build = signed_build(ROTATED)
    assert build["metadata"]["annotations"][ANNOTATION_SIGNATURE].startswith("v2:k2:")
    assert signature_key_id(build["metadata"]["annotations"][ANNOTATION_SIGNATURE]) == "k2"
    assert signature_key_id(build["status"]["recordSignature"]) == "k2"
    assert signature_key_id(signed_build(LEGACY)["status"]["recordSignature"]) is None  # written before key ids
    assert signature_key_id(None) is None


# The Secret envkiln-signing-key (data, decoded) -> (current key id, its key, previous ids) or an error fragment.
SECRETS = [
    ("created-by-the-operator", {"key": K1}, ("key", K1, ())),
    ("rotated", {"key": K1, "k2": K2, "current": b"k2"}, ("k2", K2, ("key",))),
    ("current-with-newline", {"k2": K2, "current": b"k2\n"}, ("k2", K2, ())),
    ("rotated-twice", {"key": K1, "k2": K2, "k3": K3, "current": b"k3"}, ("k3", K3, ("k2", "key"))),
    ("several-keys-no-current", {"key": K1, "k2": K2}, "holds 2 keys (k2, key) and no entry 'current'"),
    ("current-names-no-key", {"key": K1, "current": b"k3"}, "entry 'current' names key id 'k3', but no entry"),
    ("no-key", {"current": b"k2"}, "holds no key"),
    ("empty", {}, "holds no key"),
    ("short-key", {"k2": b"short"}, "'k2' must have at least 16 bytes"),
]


@pytest.mark.parametrize(("case", "data", "expected"), SECRETS, ids=[c[0] for c in SECRETS])
def test_keys_from_the_secret(case: str, data: dict[str, bytes], expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(SigningKeyError) as error:
            signer_from_secret(data)
        assert expected in str(error.value)
        return
    signer = signer_from_secret(data)
    assert (signer.key_id, signer.key, signer.key_ids[1:]) == expected


SECRET_KEY = "s3cr3t-material-that-must-never-be-printed"

# ENVKILN_PREVIOUS_SIGNING_KEYS -> {id: key} or an error fragment
PREVIOUS = [
    ("none", "", {}),
    ("two-comma-space", f"k1={SECRET_KEY}, k0=bbbbbbbbbbbbbbbbbbbb", {"k1": SECRET_KEY.encode(), "k0": b"b" * 20}),
    ("base64-padding-kept", "k1=YWFhYWFhYWFhYWFhYWFhYQ==", {"k1": b"YWFhYWFhYWFhYWFhYWFhYQ=="}),
    ("no-equals", SECRET_KEY, "entry 1 is not ID=KEY"),
    ("empty-key", "k1=", "entry 1 is not ID=KEY"),
    ("twice", f"k1={SECRET_KEY} k1={SECRET_KEY}", "key id 'k1' is given twice"),
    ("bad-id", f"a:b={SECRET_KEY}", "key id 'a:b' is not valid"),
    ("reserved-id", f"current={SECRET_KEY}", "not 'current'"),
]


@pytest.mark.parametrize(("case", "text", "expected"), PREVIOUS, ids=[c[0] for c in PREVIOUS])
def test_previous_keys_setting(case: str, text: str, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(SigningKeyError) as error:
            parse_previous_keys(text)
        assert expected in str(error.value) and SECRET_KEY not in str(error.value)
    else:
        assert parse_previous_keys(text) == expected


# ENVKILN_* -> (current id, previous ids), None (the Secret is used) or an error fragment
SETTINGS = [
    ("secret", {}, None),
    ("key-only", {"ENVKILN_SIGNING_KEY": SECRET_KEY}, ("key", ())),
    ("rotated", {"ENVKILN_SIGNING_KEY": "n" * 32, "ENVKILN_SIGNING_KEY_ID": "k2",
                 "ENVKILN_PREVIOUS_SIGNING_KEYS": f"key={SECRET_KEY}"}, ("k2", ("key",))),
    ("id-without-key", {"ENVKILN_SIGNING_KEY_ID": "k2"}, "go with ENVKILN_SIGNING_KEY"),
    ("previous-without-key", {"ENVKILN_PREVIOUS_SIGNING_KEYS": f"k1={SECRET_KEY}"}, "go with ENVKILN_SIGNING_KEY"),
    ("short-key", {"ENVKILN_SIGNING_KEY": "short"}, "ENVKILN_SIGNING_KEY: the signing key 'key' must have at least"),
    ("same-id-twice", {"ENVKILN_SIGNING_KEY": SECRET_KEY, "ENVKILN_PREVIOUS_SIGNING_KEYS": f"key={SECRET_KEY}"},
     "'key' is both the current key and a previous one"),
    ("bad-previous", {"ENVKILN_SIGNING_KEY": SECRET_KEY, "ENVKILN_PREVIOUS_SIGNING_KEYS": SECRET_KEY},
     "ENVKILN_PREVIOUS_SIGNING_KEYS: entry 1 is not ID=KEY"),
    ("bad-id", {"ENVKILN_SIGNING_KEY": SECRET_KEY, "ENVKILN_SIGNING_KEY_ID": "k 2"}, "key id 'k 2' is not valid"),
]


@pytest.mark.parametrize(("case", "environ", "expected"), SETTINGS, ids=[c[0] for c in SETTINGS])
def test_key_settings(case: str, environ: dict[str, str], expected: Any) -> None:
    from envkiln.core.settings import SettingsError

    if isinstance(expected, str):
        with pytest.raises(SettingsError) as error:
            OperatorSettings.from_env(environ)
        assert expected in str(error.value) and SECRET_KEY not in str(error.value), str(error.value)
        return
    signer = OperatorSettings.from_env(environ).signer_from_settings()
    assert (signer and (signer.key_id, signer.key_ids[1:])) == expected


# --- the curated namespace is never the operator's ----------------------------------------------

NAMESPACES = [
    ("defaults", {}, ("envkiln-curated", "envkiln-system")),
    ("both-set", {"ENVKILN_CURATED_NAMESPACE": "ml-curated", "ENVKILN_OPERATOR_NAMESPACE": "ops"},
     ("ml-curated", "ops")),
    ("curated-is-the-operators", {"ENVKILN_CURATED_NAMESPACE": "envkiln-system"},
     "ENVKILN_CURATED_NAMESPACE: 'envkiln-system' is the operator namespace"),
    ("operator-moved-onto-curated", {"ENVKILN_OPERATOR_NAMESPACE": "envkiln-curated"},
     "ENVKILN_CURATED_NAMESPACE: 'envkiln-curated' is the operator namespace"),
]


@pytest.mark.parametrize(("case", "environ", "expected"), NAMESPACES, ids=[c[0] for c in NAMESPACES])
def test_curated_namespace_is_not_the_operators(case: str, environ: dict[str, str], expected: Any) -> None:
    from envkiln.core.settings import SettingsError

    if isinstance(expected, str):
        with pytest.raises(SettingsError, match="holds the signing key and the push identities") as error:
            OperatorSettings.from_env(environ)
        assert expected in str(error.value)
        return
    settings = OperatorSettings.from_env(environ)
    assert (settings.curated_namespace, settings.operator_namespace) == expected


# (id, how the build is changed, the image the namespace expects, check the record?, what the problem says)
UNTRUSTED = [
    ("trusted", lambda b: None, IMAGE, True, None),
    ("unsigned", lambda b: b["metadata"]["annotations"].clear(), IMAGE, True, "signature"),
    ("another-namespace-s-image", lambda b: None, "reg:5000/envkiln/other/x:1", True, "not to reg:5000/envkiln/other"),
    ("record-forged", _set("status.digest", "sha256:" + "b" * 64), IMAGE, True, "record"),
    ("record-not-checked", _set("status.digest", "sha256:" + "b" * 64), IMAGE, False, None),  # the build's own sync
    ("no-digest-yet", lambda b: b["status"].pop("digest"), IMAGE, True, None),
]


@pytest.mark.parametrize(("case", "change", "image", "record", "says"), UNTRUSTED, ids=[c[0] for c in UNTRUSTED])
def test_untrusted_build(case: str, change: Any, image: str, record: bool, says: str | None) -> None:
    """The one trust check of a build (envsync for the Environment, buildsync for the build itself)."""
    build = signed_build()
    change(build)
    problem = untrusted_build(Signer(KEY), build, ANNOTATION_SIGNATURE, image, check_record=record)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem, problem
