"""`envkiln lock` and `envkiln diff`: what an environment version holds, and what changed between two.

A side of a diff is an Environment version in the cluster (`NAME[:VERSION]`, read through the
user's kubeconfig), a lock file (as `envkiln lock` prints it) or an Environment manifest file
(`-`: standard input). What is compared, when both sides have it:

- the base image as written, and the digest it was built on (cluster sides; an unknown digest is
  not a difference);
- the docker steps;
- the packages as declared (conda channels and dependencies, the conda pip block, spec.pip), by
  name with the version specifiers as written: from a manifest, or from the build plan of a cluster
  version (its conda.yaml and requirements.txt);
- the packages as resolved (the lock): a cluster version's recorded lock, a manifest's spec.lock, a
  lock file;
- whether the image is user-managed and its build context (manifests).

When both definition hashes are known and differ while nothing above shows it, a line says so. The
exit code is diff(1)'s: 0 no differences, 1 differences, 2 a side cannot be read; 4 and 5 come from
the cluster (envkiln.cli.errors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from envkiln.cli.errors import Exit, NotFound, NotReady, UsageError
from envkiln.cli.follow import Cluster
from envkiln.cli.inputs import STDIN, STDIN_LABEL, NotText, read_text
from envkiln.cli.output import dump
from envkiln.core.decisions.build import TERMINAL
from envkiln.core.definition import MissingContextContent, content_digests, definition_hash
from envkiln.core.locks import (
    LOCK_HEADER_PREFIX,
    Lock,
    LockDiff,
    LockError,
    SectionDiff,
    diff_definitions,
    diff_locks,
    format_diff,
    normalize_name,
    parse_lock,
)
from envkiln.core.manifests import load_environments
from envkiln.core.models import DEFAULT_CURATED_NAMESPACE
from envkiln.core.names import REASON_BASE_IMAGE_UPDATED, build_name
from envkiln.core.render import BASE_STAGE, CONDA_LOCK, CONDA_PREFIX, IMAGE_STAGE, PIP_LOCK, VENV_PREFIX

MANIFEST_HINT = re.compile(r".*\.(ya?ml|json|lock|txt)$")


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
    declared: Declared | None = None  # the packages as written (None: not known)
    build_phase: str | None = None  # a cluster side's EnvironmentBuild phase
    other: dict[str, Any] | None = None  # userManaged, build context (manifests)

    def header(self) -> str:
        details = [f"hash {self.hash[:12]}"] if self.hash else []
        if self.base_image_digest:
            details.append(f"base {self.base_image_digest[:19]}")
        return self.title + (f" ({', '.join(details)})" if details else "")

    def definition(self, digest: bool = True) -> dict[str, Any]:
        return {"baseImage": self.base_image, "baseImageDigest": self.base_image_digest if digest else None,
                "dockerSteps": self.docker_steps}


# --- packages as declared ---------------------------------------------------------------------------

_PIP_NAME = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?P<rest>.*)", re.DOTALL)
_CONDA_SPEC = re.compile(r"(?:(?P<channel>[^\s:]+)::)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.+-]*)(?P<rest>.*)", re.DOTALL)
_BARE_PIP = re.compile(r"pip\s*")


@dataclass(frozen=True)
class Declared:
    """Declared packages by section: {key: value}; the key is the normalized name (with a pip
    requirement's environment marker), the value the rest as written (`==2.1.0`, `>=2,<3`, `@ URL`,
    `=1.26=build`; '' for any version). Options and nameless URLs are their own key, value ''."""

    channels: tuple[str, ...] = ()
    conda: Mapping[str, str] = field(default_factory=dict)
    conda_pip: Mapping[str, str] = field(default_factory=dict)
    pip: Mapping[str, str] = field(default_factory=dict)


def pip_requirement(line: str) -> tuple[str, str]:
    """(key, value) of a pip requirement line: `NumPy >= 2.1 ; python_version<'3.12'` ->
    ("numpy; python_version<'3.12'", ">=2.1")."""
    text = line.strip()
    requirement, _, marker = text.partition(";")
    marker = " ".join(marker.split())
    match = _PIP_NAME.fullmatch(requirement.strip())
    if text.startswith("-") or "://" in requirement.split("@")[0] or match is None:
        return " ".join(text.split()), ""
    rest = match.group("rest").strip()
    value = rest if rest.startswith("@") else "".join(rest.split())
    key = normalize_name(match.group("name")) + (f"; {marker}" if marker else "")
    return key, value


def conda_requirement(dependency: str) -> tuple[str, str]:
    """(name, value) of a conda dependency: `conda-forge::numpy>=1.26` -> ("numpy", "conda-forge::>=1.26")."""
    text = dependency.strip()
    match = _CONDA_SPEC.fullmatch(text)
    if match is None:
        return text, ""
    channel = f"{match.group('channel')}::" if match.group("channel") else ""
    return match.group("name").lower(), channel + " ".join(match.group("rest").split())


def declared(spec: Mapping[str, Any]) -> Declared | None:
    """The packages an Environment spec (its Kubernetes JSON) declares; None when it declares none.
    A bare `pip` dependency next to a pip block is left out: the build adds it when it is missing."""
    conda = spec.get("conda") or None
    pip = spec.get("pip") or []
    if conda is None and not pip:
        return None
    dependencies: list[Any] = list((conda or {}).get("dependencies") or [])
    pip_block = [d["pip"] for d in dependencies if isinstance(d, dict) and isinstance(d.get("pip"), list)]
    names = [d for d in dependencies if isinstance(d, str) and not (pip_block and _BARE_PIP.fullmatch(d.strip()))]
    return Declared(
        channels=tuple(str(c) for c in (conda or {}).get("channels") or []),
        conda=dict(conda_requirement(d) for d in names),
        conda_pip=dict(pip_requirement(str(line)) for block in pip_block for line in block),
        pip=dict(pip_requirement(str(line)) for line in pip),
    )


def declared_from_plan(files: Sequence[Mapping[str, Any]]) -> Declared | None:
    """What a build plan's conda.yaml and requirements.txt declare; None when that is not known (a
    build pinned to a lock installs the lock's packages: its plan does not hold what was declared)."""
    contents = {str(f.get("path")): str(f.get("content") or "") for f in files}
    if CONDA_LOCK in contents or PIP_LOCK in contents:
        return None
    spec: dict[str, Any] = {}
    if "conda.yaml" in contents:
        try:
            document = yaml.safe_load(contents["conda.yaml"]) or {}
        except yaml.YAMLError:
            document = {}
        if isinstance(document, dict):
            spec["conda"] = {"channels": document.get("channels") or [],
                             "dependencies": document.get("dependencies") or []}
    if "requirements.txt" in contents:
        spec["pip"] = [line for line in contents["requirements.txt"].splitlines() if line.strip()]
    return declared(spec) or Declared()


def _section(a: Mapping[str, str], b: Mapping[str, str]) -> SectionDiff:
    return SectionDiff(
        added=tuple((k, b[k]) for k in sorted(b.keys() - a.keys())),
        removed=tuple((k, a[k]) for k in sorted(a.keys() - b.keys())),
        changed=tuple((k, a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]),
    )


DECLARED_SECTIONS = (("conda", "conda dependencies"), ("conda_pip", "conda pip requirements"),
                     ("pip", "pip requirements"))


def diff_declared(a: Declared, b: Declared) -> dict[str, SectionDiff]:
    """What changed per section of declared packages (sections neither side has are left out)."""
    return {key: _section(getattr(a, key), getattr(b, key)) for key, _ in DECLARED_SECTIONS
            if getattr(a, key) or getattr(b, key)}


def _requirement(key: str, value: str) -> str:
    name, _, marker = key.partition("; ")
    separator = " " if value.startswith("@") else ""
    return f"{name}{separator}{value}" + (f"; {marker}" if marker else "")


def format_declared(a: Declared, b: Declared) -> list[str]:
    """The lines of a declared-packages diff; nothing when they are the same."""
    lines: list[str] = []
    if a.channels != b.channels:
        lines.append(f"conda channels: {', '.join(a.channels) or '(none)'} -> {', '.join(b.channels) or '(none)'}")
    titles = dict(DECLARED_SECTIONS)
    for key, part in diff_declared(a, b).items():
        if part.empty:
            continue
        lines.append(f"{titles[key]}: {len(part.added)} added, {len(part.removed)} removed, "
                     f"{len(part.changed)} changed")
        lines += [f"  + {_requirement(name, value)}" for name, value in part.added]
        lines += [f"  - {_requirement(name, value)}" for name, value in part.removed]
        lines += [f"  ~ {name} {old or '(any version)'} -> {new or '(any version)'}" for name, old, new in part.changed]
    return lines


def format_other(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """userManaged and the build context, when they changed."""
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {_compact(a.get(key))} -> {_compact(b.get(key))}")
    return lines


def _compact(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the sides ---------------------------------------------------------------------------------------


def docker_steps(dockerfile: str) -> tuple[str | None, list[str]]:
    """(the base image, the docker steps) of a rendered Dockerfile: the base stage's FROM and the
    instructions after its LABEL up to the next FROM; or, rendered as one build stage, the
    instructions after its FROM up to envkiln's own (the first COPY, or the labels), without the
    `USER 0:0` envkiln puts before the installs when it restores a user after them."""
    lines = dockerfile.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("FROM ")), None)
    if first is None:
        return None, []
    head = lines[first]
    if head.endswith(f" AS {BASE_STAGE}"):
        steps = []
        for line in lines[first + 1:]:
            if line.startswith("FROM "):
                break
            if line and not line.startswith(("LABEL ", "#")):
                steps.append(line)
        return head.split()[1], steps
    if not head.endswith(f" AS {IMAGE_STAGE}"):
        return None, []
    steps = []
    for line in lines[first + 1:]:
        if line.startswith(("FROM ", "LABEL ", "COPY ")):
            break
        if line and not line.startswith("#"):
            steps.append(line)
    paths = (f"ENV PATH={VENV_PREFIX}/bin:", f"ENV PATH={CONDA_PREFIX}/bin:")
    envs = [i for i, line in enumerate(lines) if line.startswith(paths)]
    restores = bool(envs) and any(line.startswith("USER ") for line in lines[envs[0] + 1:])
    if restores and steps and steps[-1] == "USER 0:0":
        steps.pop()
    return head.split()[1], steps


def version_build(environment: dict[str, Any], version: str | None) -> tuple[str, str]:
    """(the EnvironmentBuild's name, its title) of NAME[:VERSION]: the current version's build, or
    the newest history entry of an earlier version. NotReady: no build yet; NotFound: no such version."""
    name = environment["metadata"]["name"]
    spec, status = environment.get("spec") or {}, environment.get("status") or {}
    current = str(spec.get("version", "1"))
    if version is None or version == current:
        if not status.get("hash"):
            raise NotReady(f"Environment {name} has no definition hash yet (phase {status.get('phase', 'Pending')}: "
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
    plan = spec.get("plan") or {}
    base, steps = docker_steps(plan.get("dockerfile", ""))
    if base is not None and "@" in base and spec.get("baseImageDigest"):
        base = None  # pinned in the FROM: the digest says it; the reference as written is in the Environment
    lock = (status.get("lock") or {}).get("text")
    return Side(title, hash=spec.get("hash"), base_image=base or (environment.get("spec") or {}).get("image"),
                base_image_digest=spec.get("baseImageDigest") or status.get("baseImageDigest"),
                docker_steps=steps, lock=lock, declared=declared_from_plan(plan.get("files") or []),
                build_phase=status.get("phase") or "Pending")


def text_side(label: str, text: str) -> Side:
    """A lock file or a manifest file, from its text."""
    if text.startswith(LOCK_HEADER_PREFIX):
        try:
            parse_lock(text)
        except LockError as error:
            raise UsageError(f"{label}: {error}") from None
        return Side(label, lock=text, has_definition=False)
    loaded, problems = load_environments([label], DEFAULT_CURATED_NAMESPACE, texts={label: text})
    if problems:
        raise UsageError(f"{label}: " + "; ".join(line for p in problems for line in p.problems))
    if len(loaded) != 1:
        raise UsageError(f"{label}: holds {len(loaded)} Environments; give a file with one")
    item = loaded[0]
    spec = item.environment.spec
    kube = spec.to_kube()
    try:
        value: str | None = definition_hash(spec, item.context_data())
    except (MissingContextContent, ValueError):  # a git branch (resolved only by its remote), a ConfigMap elsewhere
        value = None
    other: dict[str, Any] = {"userManaged": spec.user_managed, "build": kube.get("build")}
    context = item.context_data()
    if context is not None:
        other["build context files"] = content_digests(context)
    return Side(f"{label} ({item.environment.metadata.name}:{spec.version})", hash=value, base_image=spec.image,
                docker_steps=[s.strip() for s in spec.docker_steps or []], lock=spec.lock,
                declared=declared(kube) or Declared(), other=other)


def is_file_reference(reference: str) -> bool:
    """A file (or `-`) rather than NAME[:VERSION]: `-`, an existing file, a path with a slash, or a
    name ending in .yaml, .yml, .json, .lock or .txt (a missing file is then said to be missing)."""
    return reference == STDIN or Path(reference).is_file() or "/" in reference or bool(
        MANIFEST_HINT.fullmatch(reference))


def side(cluster: Callable[[], Cluster], namespace: Callable[[], str], reference: str,
         stdin: TextIO | None = None) -> Side:
    if is_file_reference(reference):
        try:
            text = read_text(reference, stdin)
        except NotText as error:
            raise UsageError(str(error)) from None
        return text_side(STDIN_LABEL if reference == STDIN else reference, text)
    return cluster_side(cluster(), namespace(), reference)


# --- the commands -------------------------------------------------------------------------------------


def lock(cluster: Cluster, namespace: str, reference: str, out: TextIO, err: TextIO,
         output: str | None = None) -> int:
    """Print the lock of NAME[:VERSION] (with `output`, parsed: json or yaml); 3 while its build runs,
    5 when it has none."""
    try:
        found = cluster_side(cluster, namespace, reference)
    except (NotFound, NotReady) as error:
        print(f"error: {error}", file=err)
        return error.code
    if found.lock is None and found.build_phase not in TERMINAL:
        print(f"error: {found.title} has no lock yet: its build is {found.build_phase}; the lock is recorded once "
              "it succeeds", file=err)
        return Exit.NOT_READY
    if found.lock is None:
        print(f"error: {found.title} has no lock: only system-managed environments with conda or pip packages "
              "record one, once their build succeeded", file=err)
        return Exit.NOT_FOUND
    if output:
        try:
            parsed = parse_lock(found.lock)
        except LockError as error:
            print(f"error: {found.title}: the recorded lock cannot be read: {error}", file=err)
            return Exit.FAILED
        out.write(dump(lock_document(found, parsed), output))
        return Exit.OK
    out.write(found.lock if found.lock.endswith("\n") else found.lock + "\n")
    return Exit.OK


def lock_document(found: Side, parsed: Lock) -> dict[str, Any]:
    """`lock -o json|yaml`: the packages by name, and the lock's text (what spec.lock takes)."""
    name, _, version = found.title.partition(":")
    return {"environment": name, "version": version, "hash": found.hash,
            "conda": {n: {"version": p.version, "build": p.build, "url": p.url, "md5": p.hash}
                      for n, p in sorted(parsed.conda.items())} if parsed.has_conda else None,
            "pip": dict(sorted(parsed.pip.items())) if parsed.has_pip else None,
            "text": found.lock}


@dataclass(frozen=True)
class Comparison:
    """Everything `envkiln diff` found: lines per part, and whether the sides differ."""

    left: Side
    right: Side
    definition: list[str]  # base image, digest, docker steps, userManaged, build context
    declared: list[str]  # packages as declared
    locks: LockDiff | None  # packages as resolved (None: not compared)
    notes: list[str]

    @property
    def differ(self) -> bool:
        return bool(self.definition or self.declared) or (self.locks is not None and not self.locks.empty)


def compare(left: Side, right: Side) -> Comparison:
    """The pure comparison of two sides (see the module's docstring)."""
    notes: list[str] = []
    locks = None
    if left.lock is not None and right.lock is not None:
        locks = diff_locks(parse_lock(left.lock), parse_lock(right.lock))
    elif (left.lock is None) != (right.lock is None) and not (left.declared and right.declared):
        missing = right if right.lock is None else left
        notes.append(f"{missing.title} has no lock; packages are not compared")
    definition: list[str] = []
    if left.has_definition and right.has_definition:
        both_digests = bool(left.base_image_digest and right.base_image_digest)
        definition = diff_definitions(left.definition(both_digests), right.definition(both_digests))
        if left.other is not None and right.other is not None:
            definition += format_other(left.other, right.other)
    declared_lines: list[str] = []
    if left.declared is not None and right.declared is not None:
        declared_lines = format_declared(left.declared, right.declared)
    elif (left.declared is None) != (right.declared is None) and left.has_definition and right.has_definition:
        unknown = left if left.declared is None else right
        if not (left.lock and right.lock):
            notes.append(f"{unknown.title} declares no packages (or they are not known); declared packages are not "
                         "compared")
    shown = Comparison(left, right, definition, declared_lines, locks, notes)
    if shown.differ or not (left.hash and right.hash and left.hash != right.hash):
        return shown
    unexplained = (f"the definitions differ in what is not shown here (hash {left.hash[:12]} -> {right.hash[:12]}): "
                   "`envkiln hash --explain FILE` prints what is hashed")
    return Comparison(left, right, [*definition, unexplained], declared_lines, locks, notes)


def _section_json(part: SectionDiff) -> dict[str, Any]:
    return {"added": [{"name": n, "version": v} for n, v in part.added],
            "removed": [{"name": n, "version": v} for n, v in part.removed],
            "changed": [{"name": n, "from": a, "to": b} for n, a, b in part.changed]}


def comparison_document(found: Comparison) -> dict[str, Any]:
    """`diff -o json|yaml`."""
    def side_json(s: Side) -> dict[str, Any]:
        return {"title": s.title, "hash": s.hash, "baseImage": s.base_image, "baseImageDigest": s.base_image_digest}

    declared_parts = None
    if found.left.declared is not None and found.right.declared is not None:
        declared_parts = {key: _section_json(part)
                          for key, part in diff_declared(found.left.declared, found.right.declared).items()}
        if found.left.declared.channels or found.right.declared.channels:
            declared_parts["channels"] = {"from": list(found.left.declared.channels),
                                          "to": list(found.right.declared.channels)}
    locks = None
    if found.locks is not None:
        locks = {name: _section_json(part) for name, part in (("conda", found.locks.conda), ("pip", found.locks.pip))
                 if part.present}
    return {"a": side_json(found.left), "b": side_json(found.right), "differ": found.differ,
            "definition": found.definition, "declared": declared_parts, "locked": locks, "notes": found.notes}


def diff(cluster: Callable[[], Cluster], namespace: Callable[[], str] | str, a: str, b: str, out: TextIO, err: TextIO,
         output: str | None = None, stdin: TextIO | None = None) -> int:
    """Print what changed from A to B: exit 0 when nothing did, 1 when something did (as diff(1)); 2 when a
    file side cannot be read, 3, 4 or 5 when a cluster side cannot (envkiln.cli.errors)."""
    if a == STDIN and b == STDIN:
        print("error: - (standard input) can be one side only", file=err)
        return Exit.USAGE
    names: Callable[[], str] = namespace if callable(namespace) else (lambda: str(namespace))
    try:
        left, right = side(cluster, names, a, stdin), side(cluster, names, b, stdin)
        found = compare(left, right)
    except (NotFound, NotReady, UsageError) as error:
        print(f"error: {error}", file=err)
        return error.code
    except LockError as error:
        print(f"error: {error}", file=err)
        return Exit.USAGE
    for note in found.notes:
        print(f"note: {note}", file=err)
    if output:
        out.write(dump(comparison_document(found), output))
    else:
        out.write(format_diff(left.header(), right.header(), found.definition + found.declared, found.locks))
    return Exit.FAILED if found.differ else Exit.OK
