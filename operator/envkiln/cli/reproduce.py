"""`envkiln lock` and `envkiln diff`: what an environment version holds, and what changed between two.

A side of a diff is an Environment version in the cluster (`NAME[:VERSION]`, read through the
user's kubeconfig), a lock file (as `envkiln lock` prints it) or an Environment manifest file.
From the cluster come the lock (the EnvironmentBuild's `status.lock`), the base image digest the
image was built on and the docker steps of its rendered Dockerfile; from a manifest come the
base image and docker steps as written; from a lock file, the packages alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from envkiln.cli.follow import Cluster
from envkiln.core.locks import LOCK_HEADER_PREFIX, LockError, diff_definitions, diff_locks, format_diff, parse_lock
from envkiln.core.manifests import load_environments
from envkiln.core.models import DEFAULT_CURATED_NAMESPACE
from envkiln.core.names import REASON_BASE_IMAGE_UPDATED, build_name
from envkiln.core.render import BASE_STAGE


class NotFound(Exception):
    """What the user named does not exist or holds nothing to show; the message says what to do."""


@dataclass
class Side:
    """One side of a diff."""

    title: str
    hash: str | None = None
    base_image: str | None = None
    base_image_digest: str | None = None
    docker_steps: list[str] = field(default_factory=list)
    lock: str | None = None
    has_definition: bool = True  # False for a bare lock file: base and steps are not compared

    def header(self) -> str:
        details = [f"hash {self.hash[:12]}"] if self.hash else []
        if self.base_image_digest:
            details.append(f"base {self.base_image_digest[:19]}")
        return self.title + (f" ({', '.join(details)})" if details else "")

    def definition(self) -> dict[str, Any]:
        return {"baseImage": self.base_image, "baseImageDigest": self.base_image_digest,
                "dockerSteps": self.docker_steps}


def docker_steps(dockerfile: str) -> tuple[str | None, list[str]]:
    """(the base image, the docker steps) of a rendered Dockerfile: the base stage's FROM and the
    instructions after its LABEL up to the next FROM."""
    base, steps, in_base = None, [], False
    for line in dockerfile.splitlines():
        if line.startswith("FROM "):
            if in_base:
                break
            if line.endswith(f" AS {BASE_STAGE}"):
                base, in_base = line.split()[1], True
            continue
        if in_base and line and not line.startswith(("LABEL ", "#")):
            steps.append(line)
    return base, steps


def version_build(environment: dict[str, Any], version: str | None) -> tuple[str, str]:
    """(the EnvironmentBuild's name, its title) of NAME[:VERSION]: the current version's build, or
    the newest history entry of an earlier version."""
    name = environment["metadata"]["name"]
    spec, status = environment.get("spec") or {}, environment.get("status") or {}
    current = str(spec.get("version", "1"))
    if version is None or version == current:
        if not status.get("hash"):
            raise NotFound(f"Environment {name} has no definition hash yet (phase {status.get('phase', 'Pending')}: "
                           f"{status.get('message', '')})")
        return str(status.get("build") or build_name(status["hash"])), f"{name}:{current}"
    for record in reversed(status.get("versions") or []):
        if str(record.get("version")) == version and record.get("hash"):
            rebuilt = record.get("reason") == REASON_BASE_IMAGE_UPDATED and record.get("baseImageDigest")
            return build_name(record["hash"], record["baseImageDigest"] if rebuilt else None), f"{name}:{version}"
    known = sorted({str(r.get("version")) for r in status.get("versions") or []} | {current})
    raise NotFound(f"Environment {name} has no version {version!r}; known versions: {', '.join(known)}")


def cluster_side(cluster: Cluster, namespace: str, reference: str) -> Side:
    name, _, version = reference.partition(":")
    environment = cluster.environment(namespace, name)
    if environment is None:
        raise NotFound(f"Environment {name!r} not found in namespace {namespace} (and no file {reference!r})")
    build_ref, title = version_build(environment, version or None)
    build = cluster.build(namespace, build_ref)
    if build is None:
        raise NotFound(f"EnvironmentBuild {build_ref} of {title} is gone (deleted, or never created in namespace "
                       f"{namespace}); nothing to show")
    spec, status = build.get("spec") or {}, build.get("status") or {}
    base, steps = docker_steps((spec.get("plan") or {}).get("dockerfile", ""))
    if base is not None and "@" in base and spec.get("baseImageDigest"):
        base = None  # pinned in the FROM: the digest says it; the reference as written is in the Environment
    lock = (status.get("lock") or {}).get("text")
    return Side(title, hash=spec.get("hash"), base_image=base or (environment.get("spec") or {}).get("image"),
                base_image_digest=spec.get("baseImageDigest") or status.get("baseImageDigest"),
                docker_steps=steps, lock=lock)


def file_side(path: Path) -> Side:
    text = path.read_text()
    if text.startswith(LOCK_HEADER_PREFIX):
        return Side(str(path), lock=text, has_definition=False)
    loaded, problems = load_environments([str(path)], DEFAULT_CURATED_NAMESPACE)
    if problems:
        raise NotFound(f"{path}: " + "; ".join(line for p in problems for line in p.problems))
    if len(loaded) != 1:
        raise NotFound(f"{path}: holds {len(loaded)} Environments; give a file with one")
    spec = loaded[0].environment.spec
    return Side(f"{path} ({loaded[0].environment.metadata.name}:{spec.version})", base_image=spec.image,
                docker_steps=[s.strip() for s in spec.docker_steps or []], lock=spec.lock)


def side(cluster: Callable[[], Cluster], namespace: str, reference: str) -> Side:
    path = Path(reference)
    if path.is_file():
        return file_side(path)
    return cluster_side(cluster(), namespace, reference)


def lock(cluster: Cluster, namespace: str, reference: str, out: TextIO, err: TextIO) -> int:
    """Print the lock of NAME[:VERSION]; exit 1 when there is none."""
    try:
        found = cluster_side(cluster, namespace, reference)
    except NotFound as error:
        print(f"error: {error}", file=err)
        return 1
    if found.lock is None:
        print(f"error: {found.title} has no lock: only system-managed environments with conda or pip packages "
              "record one, once their build succeeded", file=err)
        return 1
    out.write(found.lock if found.lock.endswith("\n") else found.lock + "\n")
    return 0


def diff(cluster: Callable[[], Cluster], namespace: str, a: str, b: str, out: TextIO, err: TextIO) -> int:
    """Print what changed from A to B; exit 0 either way (1 when a side cannot be read)."""
    try:
        left, right = side(cluster, namespace, a), side(cluster, namespace, b)
        locks = None
        if left.lock is not None and right.lock is not None:
            locks = diff_locks(parse_lock(left.lock), parse_lock(right.lock))
        elif left.lock is not None or right.lock is not None:
            missing = right if right.lock is None else left
            print(f"note: {missing.title} has no lock; packages are not compared", file=err)
    except (NotFound, LockError) as error:
        print(f"error: {error}", file=err)
        return 1
    definitions = diff_definitions(left.definition(), right.definition()) if (
        left.has_definition and right.has_definition) else None
    out.write(format_diff(left.header(), right.header(), definitions, locks))
    return 0
