"""Package locks ("envkiln lock v1"): what a built image holds, and what changed between two.

A lock is the text a build writes into its image (/opt/envkiln/envkiln-lock.txt; read back from
the image's last layer or the lock image beside it, envkiln.core.render.lock_location) and the
operator records in the EnvironmentBuild's status; `envkiln lock` prints it
and `spec.lock` pins a definition to it. The format:

    # envkiln lock v1
    [conda]
    @EXPLICIT
    https://conda.anaconda.org/conda-forge/linux-64/python-3.11.9-hb806964_0_cpython.conda#<md5>
    [pip]
    numpy==2.1.0
    somepkg @ https://host/somepkg-1.0-py3-none-any.whl

- the header line comes first;
- [conda]: an explicit conda environment (`micromamba env export --explicit --md5`): the
  `@EXPLICIT` line, then one package URL a line (`.conda` or `.tar.bz2`, an optional `#md5`),
  sorted; present when the definition has spec.conda;
- [pip]: `pip freeze --all` of the environment's Python, names normalized (PEP 503), sorted by
  name: `name==version` or `name @ url`; present when the definition installs pip packages;
- blank lines and other `#` lines are ignored.

The standard library only; pure but for reading that file's text once, at import. Reading and writing
the format (parse_lock, format_lock, ...) and check_reproduced live once, in envkiln.core.envkiln_lock: the
program the build runs in the image (where envkiln is not installed), shipped as that file and put into
each build context as LOCK_SCRIPT. This module re-exports them and adds the operator's side: the digest,
the differences between two locks and two definitions, and `envkiln diff`'s text.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final

from envkiln.core.envkiln_lock import (
    CONDA_SECTION,
    EXPLICIT,
    LOCK_HEADER,
    LOCK_HEADER_PREFIX,
    PIP_SECTION,
    CondaPackage,
    Lock,
    LockError,
    check_reproduced,
    conda_labels,
    conda_lines,
    conda_package,
    entry_line,
    format_lock,
    normalize_name,
    parse_lock,
    parse_pip_line,
    pip_line,
    pip_lines,
)

__all__ = [
    "CONDA_SECTION", "EXPLICIT", "LOCK_HEADER", "LOCK_HEADER_PREFIX", "LOCK_SCRIPT", "LOCK_SCRIPT_NAME", "PIP_SECTION",
    "CondaPackage", "Lock", "LockDiff", "LockError", "SectionDiff", "check_reproduced", "conda_labels", "conda_lines",
    "conda_package", "diff_definitions", "diff_locks", "entry_line", "format_diff", "format_lock", "format_lock_diff",
    "lock_digest", "normalize_name", "package_count", "parse_lock", "parse_pip_line", "pip_line", "pip_lines",
]

# The build's side: envkiln_lock.py, as shipped in this package, is written into each build context that
# installs packages and run there by the environment's Python (envkiln.core.render).
LOCK_SCRIPT_NAME: Final = "envkiln_lock.py"
LOCK_SCRIPT: Final = resources.files("envkiln.core").joinpath(LOCK_SCRIPT_NAME).read_text(encoding="utf-8")


def lock_digest(text: str) -> str:
    """The digest of a lock's text as recorded: sha256 of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_count(lock: Lock) -> int:
    return len(lock.conda) + len(lock.pip)


# --- differences ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionDiff:
    """What changed in one section, each part sorted by name. Versions: pip's as in the lock (`2.1.0`,
    `@ URL`), conda's as VERSION=BUILD."""

    added: tuple[tuple[str, str], ...] = ()  # (name, version)
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[tuple[str, str, str], ...] = ()  # (name, old, new)
    present: bool = True  # False: neither lock has the section

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass(frozen=True)
class LockDiff:
    conda: SectionDiff
    pip: SectionDiff

    @property
    def empty(self) -> bool:
        return self.conda.empty and self.pip.empty


def _diff_section(a: Mapping[str, str], b: Mapping[str, str], present: bool) -> SectionDiff:
    return SectionDiff(
        added=tuple((name, b[name]) for name in sorted(b.keys() - a.keys())),
        removed=tuple((name, a[name]) for name in sorted(a.keys() - b.keys())),
        changed=tuple((name, a[name], b[name]) for name in sorted(a.keys() & b.keys()) if a[name] != b[name]),
        present=present,
    )


def diff_locks(a: Lock, b: Lock) -> LockDiff:
    """What changed from lock `a` to lock `b`: conda packages by version and build (and the URL
    when only it changed: another channel), pip packages by version or URL."""
    conda_a, conda_b = conda_labels(a), conda_labels(b)
    moved = {name for name in conda_a.keys() & conda_b.keys()
             if conda_a[name] == conda_b[name] and a.conda[name].url != b.conda[name].url}
    for name in moved:
        conda_a[name] = f"{conda_a[name]} ({a.conda[name].url})"
        conda_b[name] = f"{conda_b[name]} ({b.conda[name].url})"
    return LockDiff(
        conda=_diff_section(conda_a, conda_b, a.has_conda or b.has_conda),
        pip=_diff_section(a.pip, b.pip, a.has_pip or b.has_pip),
    )


def diff_definitions(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    """What changed between two definitions as `envkiln diff` shows them. Each side is
    {"baseImage": str | None, "baseImageDigest": str | None, "dockerSteps": [str, ...]}; the
    result is lines (empty: nothing changed): the base image, its digest, the docker steps added
    (`  + `) and removed (`  - `) in order."""
    lines: list[str] = []
    if a.get("baseImage") != b.get("baseImage"):
        lines.append(f"base image: {a.get('baseImage') or '(none)'} -> {b.get('baseImage') or '(none)'}")
    if a.get("baseImageDigest") != b.get("baseImageDigest"):
        lines.append(f"base image digest: {a.get('baseImageDigest') or '(unknown)'} -> "
                     f"{b.get('baseImageDigest') or '(unknown)'}")
    steps_a, steps_b = _steps(a.get("dockerSteps")), _steps(b.get("dockerSteps"))
    if steps_a != steps_b:
        lines.append("docker steps:")
        matcher = difflib.SequenceMatcher(a=steps_a, b=steps_b, autojunk=False)
        for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
            if tag in ("delete", "replace"):
                lines += [_step_line("-", step) for step in steps_a[a_start:a_end]]
            if tag in ("insert", "replace"):
                lines += [_step_line("+", step) for step in steps_b[b_start:b_end]]
    return lines


def _steps(value: object) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [str(step).strip() for step in value]


def _step_line(mark: str, step: str) -> str:
    # A step of several lines: its continuation lines indented under it.
    return f"  {mark} " + step.replace("\n", "\n    ")


_SECTION_TITLES = ((PIP_SECTION, "pip packages"), (CONDA_SECTION, "conda packages"))


def format_lock_diff(diff: LockDiff) -> list[str]:
    """The lines of a lock diff: per section present, a count line and the entries
    (`+` added, `-` removed, `~ name old -> new` changed), or `unchanged`."""
    lines: list[str] = []
    for section, title in _SECTION_TITLES:
        part = diff.pip if section == PIP_SECTION else diff.conda
        if not part.present:
            continue
        if part.empty:
            lines.append(f"{title}: unchanged")
            continue
        lines.append(f"{title}: {len(part.added)} added, {len(part.removed)} removed, {len(part.changed)} changed")
        lines += [f"  + {entry_line(section, name, value)}" for name, value in part.added]
        lines += [f"  - {entry_line(section, name, value)}" for name, value in part.removed]
        lines += [f"  ~ {name} {old} -> {new}" for name, old, new in part.changed]
    return lines


def format_diff(title_a: str, title_b: str, definition_diff: Sequence[str] | None,
                lock_diff: LockDiff | None) -> str:
    """`envkiln diff`'s output: the two titles, then what changed in the definition (None: not
    compared) and in the packages (None: not compared), or `no differences`."""
    lines = [f"--- {title_a}", f"+++ {title_b}"]
    changed = bool(definition_diff) or (lock_diff is not None and not lock_diff.empty)
    if not changed:
        lines.append("no differences")
    else:
        lines += list(definition_diff or [])
        if lock_diff is not None:
            lines += format_lock_diff(lock_diff)
    return "\n".join(lines) + "\n"
