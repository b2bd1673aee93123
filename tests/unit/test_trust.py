"""envkiln.core.trust: only what the operator signed is built, and only its own records make a cache hit."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.core.trust import Signer

KEY = b"k" * 32
HASH = "0123456789abcdef0123456789abcdef"
IMAGE = f"reg:5000/envkiln/ns/env_{HASH}:{HASH}"
DIGEST = "sha256:" + "a" * 64
SPEC = {"hash": HASH, "image": IMAGE, "builder": "buildah",
        "plan": {"dockerfile": "FROM python:3.11\nRUN true\n", "files": [{"path": "r.txt", "content": "x"}]}}


def signed_build(signer: Signer | None = None) -> dict[str, Any]:
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
