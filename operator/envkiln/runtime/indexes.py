"""What the operator keeps in memory from its watch events (not Kopf indexes; see `Indexes`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from envkiln.core.decisions.parent import Candidate, reuse_facts
from envkiln.core.decisions.resync import build_unsettled, environment_unsettled, follows_git_ref, watched_base
from envkiln.core.imageref import InvalidImageReference, parse_image_reference
from envkiln.core.names import ANNOTATION_SIGNATURE
from envkiln.core.trust import VERIFIED


class Indexes:
    """What the handlers keep in memory from the watch events: every EnvironmentBuild (as the API
    server last sent it: its signature, spec and status, which is all an Environment needs to
    follow it), and of the Environments their hash and whether they are unsettled.

    Not Kopf indexes: Kopf holds back every handler until each listed object is indexed, inside
    the object's worker, so with fewer workers than listed objects (`worker_limit`) it never
    starts. Written on the event loop (async handlers), read from handler threads: one lock.
    """

    def __init__(self, verify: Callable[[Mapping[str, Any]], str | None] | None = None,
                 verify_record: Callable[[Mapping[str, Any]], str | None] | None = None) -> None:
        # `verify`: why a build (whole, as the API server sent it) is not trusted, None if it is;
        # with it, builds are kept without their plan (the rendered Dockerfile and files: up to
        # hundreds of KiB each), and with the verdict instead (envkiln.core.trust.VERIFIED).
        self._verify = verify
        # `verify_record`: why a build's recorded digest is not trusted (None: the operator signed it);
        # with it (and `verify`), succeeded builds are kept as earlier images later builds may start
        # from; without it nothing is kept for that (ENVKILN_BUILD_ON_EARLIER_IMAGES off).
        self._verify_record = verify_record if verify is not None else None
        self._lock = threading.Lock()
        self._builds: dict[tuple[str, str], dict[str, Any]] = {}
        self._hash_of: dict[tuple[str, str], str] = {}
        self._by_hash: dict[tuple[str, str], set[str]] = {}
        self._unsettled: set[tuple[str, str]] = set()
        self._bases: dict[tuple[str, str], tuple[str, str | None]] = {}  # -> (base reference, built-on digest)
        self._git: set[tuple[str, str]] = set()  # Environments following a git branch or tag
        # namespace -> name -> a verified, succeeded build a new one may start from (decisions.parent)
        self._earlier: dict[str, dict[str, Candidate]] = {}

    def note_build(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """The build as seen in an event (None: deleted)."""
        kept = None if body is None else _trimmed_build(body, self._verify)  # verified outside the lock
        earlier = None
        if body is not None and kept is not None and self._verify_record is not None:
            earlier = _candidate(body, kept, self._verify_record)
        with self._lock:
            if kept is None:
                self._builds.pop((namespace, name), None)
            else:
                self._builds[(namespace, name)] = kept
            if earlier is not None:
                self._earlier.setdefault(namespace, {})[name] = earlier
            elif name in self._earlier.get(namespace, {}):
                del self._earlier[namespace][name]
                if not self._earlier[namespace]:
                    del self._earlier[namespace]

    def earlier_builds(self, namespace: str) -> list[Candidate]:
        """The namespace's verified, succeeded builds that a new build may start from."""
        with self._lock:
            return list(self._earlier.get(namespace, {}).values())

    def build(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._builds.get((namespace, name))

    def builds(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._builds.values())

    def unsettled_builds(self) -> list[tuple[str, str]]:
        with self._lock:
            return [key for key, build in self._builds.items() if build_unsettled(build["status"])]

    def note_environment(self, namespace: str, name: str, status: Mapping[str, Any] | None,
                         spec: Mapping[str, Any] | None = None) -> None:
        """The Environment's status (and spec) as seen in an event (None: deleted)."""
        key = (namespace, name)
        value = (status or {}).get("hash")
        base = watched_base(spec or {}, status or {}) if status is not None else None
        with self._lock:
            if base is not None and status is not None:
                self._bases[key] = (base, status.get("baseImageDigest"))
            else:
                self._bases.pop(key, None)
            if status is not None and spec is not None and follows_git_ref(spec):
                self._git.add(key)
            else:
                self._git.discard(key)
            old = self._hash_of.get(key)
            if old != value and old is not None:
                names = self._by_hash.get((namespace, old))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._by_hash[(namespace, old)]
                del self._hash_of[key]
            if value and status is not None:
                self._hash_of[key] = value
                self._by_hash.setdefault((namespace, value), set()).add(name)
            if status is not None and environment_unsettled(status):
                self._unsettled.add(key)
            else:
                self._unsettled.discard(key)

    def environments_with(self, namespace: str, definition_hash: str) -> list[str]:
        with self._lock:
            return sorted(self._by_hash.get((namespace, definition_hash), ()))

    def unsettled_environments(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._unsettled)

    def base_images(self) -> dict[str, list[tuple[str, str, str | None]]]:
        """base reference -> the Environments built on it: (namespace, name, the digest built on)."""
        with self._lock:
            found: dict[str, list[tuple[str, str, str | None]]] = {}
            for (namespace, name), (base, digest) in self._bases.items():
                found.setdefault(base, []).append((namespace, name, digest))
            return found

    def git_environments(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._git)


def _trimmed_build(body: Mapping[str, Any],
                   verify: Callable[[Mapping[str, Any]], str | None] | None = None) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = dict(body.get("spec") or {})
    kept: dict[str, Any] = {}
    if verify is not None:
        whole = {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                              "annotations": dict(annotations)}, "spec": dict(spec)}
        kept[VERIFIED] = {"problem": verify(whole)}
        spec.pop("plan", None)
    return {**kept,
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "generation": meta.get("generation"),
                     "labels": dict(meta.get("labels") or {}),
                     "annotations": {k: v for k, v in annotations.items() if k == ANNOTATION_SIGNATURE}},
        "spec": spec, "status": _without_lock_text(body.get("status") or {}),
    }


def _candidate(body: Mapping[str, Any], kept: Mapping[str, Any],
               verify_record: Callable[[Mapping[str, Any]], str | None]) -> Candidate | None:
    """The build as a parent for later ones: verified (signed by this operator), succeeded, its digest
    recorded by this operator (the record's signature), its plan one that can be built on (None otherwise)."""
    status, spec = kept.get("status") or {}, body.get("spec") or {}
    verdict = kept.get(VERIFIED) or {}
    digest, image, plan = status.get("digest"), spec.get("image"), spec.get("plan")
    if (verdict.get("problem") is not None or status.get("phase") != "Succeeded" or not isinstance(digest, str)
            or not isinstance(image, str) or not isinstance(plan, Mapping)):
        return None
    facts = reuse_facts(plan)
    if facts is None or verify_record(body) is not None:
        return None
    try:
        repository = parse_image_reference(image).name
    except InvalidImageReference:
        return None
    return Candidate(name=str((body.get("metadata") or {}).get("name")), repository=repository, digest=digest,
                     facts=facts)


def _without_lock_text(status: Mapping[str, Any]) -> dict[str, Any]:
    """A build's status without the lock's text (kilobytes per build; Environments need its summary)."""
    lock = status.get("lock")
    if not isinstance(lock, Mapping) or "text" not in lock:
        return dict(status)
    return {**status, "lock": {k: v for k, v in lock.items() if k != "text"}}
