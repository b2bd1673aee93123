"""Which EnvironmentBuilds of a namespace are collected (deleted), so that they do not pile up.

An EnvironmentBuild is kept when any of these holds, and collected otherwise:

- it has not finished (Pending, Building, or no phase yet);
- a version in some Environment's `status.versions` (or its current `status.imageRef`) points to the
  image it recorded: that record is what makes going back to the version a cache hit;
- some Environment follows it (`status.build`);
- it is one of the `keep` newest builds (by creation) of some Environment: those whose hash is the
  Environment's current hash or one in its history (failed builds among them, for their logs).

A build is shared by every Environment of its hash in the namespace, so it goes only when no
Environment keeps it (builds that no Environment mentions any more go too). Only the
operator's own, signed builds are ever passed in. Pure: the caller lists, decides, deletes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envkiln.core.decisions.build import TERMINAL


@dataclass(frozen=True)
class BuildFacts:
    name: str
    hash: str
    finished: bool
    image_ref: str | None = None  # status.imageRef: the image the signed record is for
    created: str = ""  # metadata.creationTimestamp (RFC 3339 in UTC: sorts in time order)


@dataclass(frozen=True)
class EnvironmentFacts:
    hashes: frozenset[str]  # status.hash and every hash in status.versions
    image_refs: frozenset[str]  # status.imageRef and every imageRef in status.versions
    build: str | None = None  # status.build: the build it follows now


def build_facts(build: Mapping[str, Any]) -> BuildFacts:
    status = build.get("status") or {}
    return BuildFacts(name=str(build["metadata"]["name"]), hash=str((build.get("spec") or {}).get("hash", "")),
                      finished=status.get("phase") in TERMINAL, image_ref=status.get("imageRef"),
                      created=str(build["metadata"].get("creationTimestamp") or ""))


def environment_facts(environment: Mapping[str, Any]) -> EnvironmentFacts:
    status = environment.get("status") or {}
    versions = [v for v in status.get("versions") or [] if isinstance(v, Mapping)]
    hashes = {str(v["hash"]) for v in versions if v.get("hash")}
    if status.get("hash"):
        hashes.add(str(status["hash"]))
    refs = {str(v["imageRef"]) for v in versions if v.get("imageRef")}
    if status.get("imageRef"):
        refs.add(str(status["imageRef"]))
    build = status.get("build")
    return EnvironmentFacts(hashes=frozenset(hashes), image_refs=frozenset(refs),
                            build=str(build) if isinstance(build, str) and build else None)


def builds_to_collect(builds: Iterable[BuildFacts], environments: Iterable[EnvironmentFacts], keep: int) -> list[str]:
    """The names of the builds to delete, sorted."""
    builds = list(builds)
    environments = list(environments)
    referenced = {ref for env in environments for ref in env.image_refs}
    followed = {env.build for env in environments if env.build}
    kept = {b.name for b in builds
            if not b.finished or b.name in followed or (b.image_ref is not None and b.image_ref in referenced)}
    for env in environments:
        own = sorted((b for b in builds if b.hash in env.hashes), key=lambda b: (b.created, b.name), reverse=True)
        kept.update(b.name for b in own[:max(keep, 0)])
    return sorted(b.name for b in builds if b.name not in kept)
