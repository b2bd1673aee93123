"""Which earlier image of the same namespace a new build can start from (its parent). Pure.

A build starts from an earlier build's image when that one is exactly the new definition minus some
pip requirements: the same one-stage render (base image at the same digest, the same docker steps,
the same tool images and user), pip-only, not pinned by spec.lock, its requirement lines a strict
subset of the new one's. The new build then installs only what is missing on top of the earlier
image, and pushes one small layer (docs/caching.md): an edit that adds a package no longer rebuilds
the 95 MiB the definitions share.

Only the namespace's own earlier builds are candidates (the rule of issue 25's caches: nothing one
namespace's build writes is read by another namespace's build), and only those the operator signed,
that succeeded and whose digest the registry verified; only images built from their base are
parents (no chains: the layers of an image stay few and its history readable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envkiln.core.render import REQUIREMENTS_FILE, reuse_shape

__all__ = ["Candidate", "ReuseFacts", "choose_parent", "reuse_facts"]


@dataclass(frozen=True)
class ReuseFacts:
    """What decides whether two plans can be parent and child: the Dockerfile with the definition hash
    taken out (sha256), and the pip requirement lines."""

    shape: str
    requirements: frozenset[str]


@dataclass(frozen=True)
class Candidate:
    """A succeeded earlier build of the namespace: its name, image repository, digest, and facts."""

    name: str
    repository: str
    digest: str
    facts: ReuseFacts

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"


def reuse_facts(plan: Mapping[str, Any]) -> ReuseFacts | None:
    """The facts of a rendered plan (an EnvironmentBuild's spec.plan, as the API server has it), or None
    when it can be neither parent nor child: a user build context, a multi-stage render, conda, a
    pinned lock, no pip requirements, or a plan that starts from a parent itself."""
    if plan.get("context") is not None or plan.get("parent") is not None:
        return None
    dockerfile = plan.get("dockerfile")
    files = plan.get("files") or []
    if not isinstance(dockerfile, str) or not isinstance(files, list):
        return None
    contents = {f.get("path"): f.get("content") for f in files if isinstance(f, Mapping)}
    requirements = contents.get(REQUIREMENTS_FILE)
    shape = reuse_shape(dockerfile, sorted(str(path) for path in contents))
    if shape is None or not isinstance(requirements, str):
        return None
    lines = frozenset(line.strip() for line in requirements.splitlines() if line.strip())
    if not lines:
        return None
    return ReuseFacts(shape=hashlib.sha256(shape.encode()).hexdigest(), requirements=lines)


def choose_parent(child: ReuseFacts | None, candidates: Iterable[Candidate]) -> Candidate | None:
    """The candidate to build `child` on: same shape, its requirements a strict subset of the child's;
    of those, the one sharing the most lines (then the first name, so the choice is the same every time).
    None: build from the base."""
    if child is None:
        return None
    fitting = [c for c in candidates
               if c.facts.shape == child.shape and c.facts.requirements < child.requirements]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (-len(c.facts.requirements), c.name))
