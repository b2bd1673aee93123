"""Package locks ("envkiln lock v1"): what a built image holds, and what changed between two.

A lock is the text a build writes into its image (/opt/envkiln/envkiln-lock.txt, the image's
last layer) and the operator records in the EnvironmentBuild's status; `envkiln lock` prints it
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

Pure: the standard library only. LOCK_SCRIPT is the build's side of the same format (it runs in
the image, where envkiln is not installed, so it carries its own reading and comparison).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

LOCK_HEADER: Final = "# envkiln lock v1"
LOCK_HEADER_PREFIX: Final = "# envkiln lock v"
CONDA_SECTION: Final = "conda"
PIP_SECTION: Final = "pip"
EXPLICIT: Final = "@EXPLICIT"

# A conda package URL: scheme://.../<name>-<version>-<build>.conda|.tar.bz2, an optional #md5 or #sha256
# (a bare '#': a package recorded without one).
_CONDA_URL = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://\S*/(?P<file>[^/#\s]+?)(?:\.conda|\.tar\.bz2))(?:#(?P<hash>[0-9a-fA-F]*))?"
)
_PIP_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PIP_PINNED = re.compile(rf"(?P<name>{_PIP_NAME})\s*(?P<op>===?)\s*(?P<version>[^\s;#]+)")
_PIP_URL = re.compile(rf"(?P<name>{_PIP_NAME})(?:\[[^\]]*\])?\s*@\s*(?P<url>[A-Za-z][A-Za-z0-9+.-]*://\S+)")
_SECTION = re.compile(r"\[(?P<name>[^\]]*)\]")


class LockError(ValueError):
    """The text is not a lock envkiln can read; the message names the line and what to write."""


@dataclass(frozen=True)
class CondaPackage:
    version: str
    build: str
    url: str  # without the #hash fragment
    hash: str | None = None  # the md5 (or sha256) after '#', as written

    @property
    def line(self) -> str:
        return self.url + (f"#{self.hash}" if self.hash else "")

    @property
    def label(self) -> str:
        return f"{self.version}={self.build}"


@dataclass(frozen=True)
class Lock:
    """A parsed lock. `pip` values are what follows the name: a version (`2.1.0`), `===version`,
    or `@ url`; keys are normalized names."""

    conda: dict[str, CondaPackage] = field(default_factory=dict)
    pip: dict[str, str] = field(default_factory=dict)
    sections: tuple[str, ...] = ()  # the sections the text holds, in order

    @property
    def has_conda(self) -> bool:
        return CONDA_SECTION in self.sections

    @property
    def has_pip(self) -> bool:
        return PIP_SECTION in self.sections


def normalize_name(name: str) -> str:
    """PEP 503: lowercase, runs of '-', '_' and '.' become one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_line(name: str, value: str) -> str:
    """The requirement line of a [pip] entry."""
    if value.startswith("@"):
        return f"{name} {value}"
    if value.startswith("="):
        return f"{name}{value}"
    return f"{name}=={value}"


def conda_package(url_line: str) -> tuple[str, CondaPackage] | None:
    """(name, package) of a conda package URL line; None when it is not one. The file name is
    name-version-build: names may hold '-', versions and builds may not, so it splits from the right."""
    match = _CONDA_URL.fullmatch(url_line.strip())
    if match is None:
        return None
    parts = match.group("file").rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        return None
    name, version, build = parts
    return name, CondaPackage(version=version, build=build, url=match.group("url"), hash=match.group("hash") or None)


def parse_pip_line(line: str) -> tuple[str, str] | None:
    """(normalized name, value) of a `name==version` or `name @ url` line; None when it is neither."""
    text = line.strip()
    pinned = _PIP_PINNED.fullmatch(text)
    if pinned is not None:
        op, version = pinned.group("op"), pinned.group("version")
        return normalize_name(pinned.group("name")), (version if op == "==" else f"==={version}")
    direct = _PIP_URL.fullmatch(text)
    if direct is not None:
        return normalize_name(direct.group("name")), f"@ {direct.group('url')}"
    return None


def parse_lock(text: str) -> Lock:
    """Read a lock; raise LockError naming the line and what to write instead."""
    if not isinstance(text, str):
        raise LockError("a lock is text, as `envkiln lock` prints it")
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if first != LOCK_HEADER:
        if first.startswith(LOCK_HEADER_PREFIX):
            raise LockError(f"line 1: {first!r}: this envkiln reads {LOCK_HEADER!r} locks only; print the lock again "
                            "with this version's `envkiln lock`")
        raise LockError(f"line 1: a lock starts with the line {LOCK_HEADER!r}, as `envkiln lock` prints it"
                        + (f"; found {first[:80]!r}" if first else "; the text is empty"))
    conda: dict[str, CondaPackage] = {}
    pip: dict[str, str] = {}
    sections: list[str] = []
    section: str | None = None
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = _SECTION.fullmatch(line)
        if header is not None:
            name = header.group("name").strip()
            if name not in (CONDA_SECTION, PIP_SECTION):
                raise LockError(f"line {number}: unknown section [{name}]; a lock has [conda] and [pip] sections")
            if name in sections:
                raise LockError(f"line {number}: a second [{name}] section; put all its packages under one")
            sections.append(name)
            section = name
            continue
        if section is None:
            raise LockError(f"line {number}: {line[:80]!r} is outside a section; put it under [conda] or [pip]")
        if section == CONDA_SECTION:
            if line == EXPLICIT:
                continue
            parsed = conda_package(line)
            if parsed is None:
                raise LockError(
                    f"line {number}: {line[:120]!r} is not a conda package URL; write one URL a line, ending in "
                    "NAME-VERSION-BUILD.conda or .tar.bz2 (an optional #md5 after it), as "
                    "`micromamba env export --explicit --md5` prints them")
            name, package = parsed
            if name in conda:
                raise LockError(f"line {number}: conda package {name} is listed twice; keep one")
            conda[name] = package
        else:
            entry = parse_pip_line(line)
            if entry is None:
                raise LockError(f"line {number}: {line[:120]!r} is not a pinned pip package; write NAME==VERSION or "
                                "NAME @ URL, as `pip freeze` prints them")
            name, value = entry
            if name in pip:
                raise LockError(f"line {number}: pip package {name} is listed twice; keep one")
            pip[name] = value
    return Lock(conda=conda, pip=pip, sections=tuple(sections))


def conda_lines(lock: Lock) -> list[str]:
    """The [conda] section as an explicit file's lines: @EXPLICIT, then the URLs sorted."""
    return [EXPLICIT, *sorted(package.line for package in lock.conda.values())]


def pip_lines(lock: Lock) -> list[str]:
    """The [pip] section's lines, sorted by name."""
    return [pip_line(name, lock.pip[name]) for name in sorted(lock.pip)]


def format_lock(lock: Lock) -> str:
    """The canonical text of a lock (what the build writes for the same packages)."""
    lines = [LOCK_HEADER]
    for section in sorted(lock.sections, key=(CONDA_SECTION, PIP_SECTION).index):
        lines.append(f"[{section}]")
        lines += conda_lines(lock) if section == CONDA_SECTION else pip_lines(lock)
    return "\n".join(lines) + "\n"


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


def _conda_values(lock: Lock, with_url: bool) -> dict[str, str]:
    return {name: package.label + (f" {package.url}" if with_url else "") for name, package in lock.conda.items()}


def diff_locks(a: Lock, b: Lock) -> LockDiff:
    """What changed from lock `a` to lock `b`: conda packages by version and build (and the URL
    when only it changed: another channel), pip packages by version or URL."""
    conda_a, conda_b = _conda_values(a, False), _conda_values(b, False)
    moved = {name for name in conda_a.keys() & conda_b.keys()
             if conda_a[name] == conda_b[name] and a.conda[name].url != b.conda[name].url}
    for name in moved:
        conda_a[name] = f"{conda_a[name]} ({a.conda[name].url})"
        conda_b[name] = f"{conda_b[name]} ({b.conda[name].url})"
    return LockDiff(
        conda=_diff_section(conda_a, conda_b, a.has_conda or b.has_conda),
        pip=_diff_section(a.pip, b.pip, a.has_pip or b.has_pip),
    )


def _entry(section: str, name: str, value: str) -> str:
    if section == CONDA_SECTION:
        return f"{name}={value}"
    return pip_line(name, value)


def check_reproduced(pinned: Lock, built: Lock) -> list[str]:
    """What a build pinned to `pinned` got wrong, one entry a difference (empty: reproduced):
    `numpy 2.1.0 -> 2.1.1`, `missing: foo==1.0`, `extra: bar==2.0`; conda packages by version and
    build (`python=3.11.9=h1_0`), pip packages by version or URL. LOCK_SCRIPT says the same in the build."""
    problems: list[str] = []
    for section, old, new in ((CONDA_SECTION, _conda_values(pinned, False), _conda_values(built, False)),
                              (PIP_SECTION, pinned.pip, built.pip)):
        diff = _diff_section(old, new, True)
        problems += [f"{name} {before} -> {after}" for name, before, after in diff.changed]
        problems += [f"missing: {_entry(section, name, value)}" for name, value in diff.removed]
        problems += [f"extra: {_entry(section, name, value)}" for name, value in diff.added]
    return problems


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
        lines += [f"  + {_entry(section, name, value)}" for name, value in part.added]
        lines += [f"  - {_entry(section, name, value)}" for name, value in part.removed]
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


# --- the build's side: the script the install stage runs --------------------------------------------

LOCK_SCRIPT_NAME: Final = "envkiln_lock.py"

# Run by the environment's own Python (any Python 3; no f-strings, the standard library only), so
# the build needs no shell quoting and no heredoc. It must write what parse_lock reads and say
# what check_reproduced says (tests/unit/test_locks.py runs it against both).
LOCK_SCRIPT: Final = r'''"""envkiln lock v1: the package lock of the environment this Python runs; checks a pinned one.

Rendered by envkiln into the build context and run in the install stage by the environment's Python:

  envkiln_lock.py write OUTPUT [--conda EXPORT] [--pip] [--uv UV] [--pinned-conda FILE] [--pinned-pip FILE]
      the lock: [conda] from EXPORT (`micromamba env export --explicit --md5`), [pip] from
      `python -m pip freeze --all` (or `uv pip freeze`); with --pinned-*, exit 1 naming the packages
      when it differs from the pinned sections
  envkiln_lock.py pip-install-list PINNED_PIP OUTPUT
      the pinned pip lines not installed already (and the option lines), for `pip install --no-deps`;
      no OUTPUT when there are none
  envkiln_lock.py compare PINNED BUILT
      exit 1 naming the packages when two locks differ
"""
import argparse
import io
import os
import re
import subprocess
import sys

HEADER = "# envkiln lock v1"
CONDA_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*/([^/#\s]+?)(?:\.conda|\.tar\.bz2)(?:#[0-9a-fA-F]*)?$")
NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
PIP_PINNED = re.compile(r"^(" + NAME + r")\s*(===?)\s*([^\s;#]+)$")
PIP_URL = re.compile(r"^(" + NAME + r")(?:\[[^\]]*\])?\s*@\s*([A-Za-z][A-Za-z0-9+.-]*://\S+)$")


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_entry(line):
    """(normalized name, value) of a pip line: the version, ===version or @ url; None for others."""
    text = line.strip()
    match = PIP_PINNED.match(text)
    if match:
        value = match.group(3) if match.group(2) == "==" else "===" + match.group(3)
        return normalize(match.group(1)), value
    match = PIP_URL.match(text)
    if match:
        return normalize(match.group(1)), "@ " + match.group(2)
    return None


def pip_text(name, value):
    if value.startswith("@"):
        return name + " " + value
    if value.startswith("="):
        return name + value
    return name + "==" + value


def conda_entry(line):
    """(name, version=build) of a conda package URL line; None for others."""
    match = CONDA_URL.match(line.strip())
    if not match:
        return None
    parts = match.group(1).rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1] + "=" + parts[2]


def read(path):
    with io.open(path, encoding="utf-8") as handle:
        return handle.read()


def conda_lines(export):
    """The package URL lines of an explicit file, sorted (a bare '#', no hash recorded, dropped)."""
    return sorted(set(line.strip().rstrip("#") for line in export.splitlines() if conda_entry(line)))


def run(command):
    """The output of a command, None when it cannot run or fails."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONIOENCODING="utf-8")
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd="/")
    except OSError:
        return None
    out = process.communicate()[0]
    if process.returncode != 0:
        return None
    return out.decode("utf-8", "replace")


def freeze(uv=None):
    """{name: value} of the packages this Python sees, as pip freeze lists them."""
    out = run([sys.executable, "-m", "pip", "freeze", "--all"])
    if out is None and uv and os.path.exists(uv):
        out = run([uv, "pip", "freeze", "--python", sys.executable])
    if out is None:
        sys.exit("envkiln: cannot list the pip packages of " + sys.executable
                 + ": `python -m pip freeze` fails and there is no uv to ask")
    found = {}
    for line in out.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = pip_entry(text)
        if entry is None:
            sys.stderr.write("envkiln: the lock leaves out " + repr(text) + " (not NAME==VERSION or NAME @ URL)\n")
            continue
        found.setdefault(entry[0], entry[1])
    return found


def lock_text(conda, pip):
    lines = [HEADER]
    if conda is not None:
        lines += ["[conda]", "@EXPLICIT"] + conda
    if pip is not None:
        lines += ["[pip]"] + [pip_text(name, pip[name]) for name in sorted(pip)]
    return "\n".join(lines) + "\n"


def conda_map(lines):
    found = {}
    for line in lines:
        entry = conda_entry(line)
        if entry:
            found[entry[0]] = entry[1]
    return found


def pip_map(lines):
    found = {}
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("-"):
            continue
        entry = pip_entry(text)
        if entry:
            found.setdefault(entry[0], entry[1])
    return found


def parse(text):
    """({conda name: version=build}, {pip name: value}) of a lock's text."""
    sections = {"[conda]": [], "[pip]": []}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in sections:
            current = stripped
        elif current is not None:
            sections[current].append(stripped)
    return conda_map(sections["[conda]"]), pip_map(sections["[pip]"])


def differences(pinned_conda, pinned_pip, built_conda, built_pip):
    """What the build got wrong: `name old -> new`, `missing: ...`, `extra: ...` (as check_reproduced)."""
    problems = []
    for old, new, shown in ((pinned_conda, built_conda, lambda name, value: name + "=" + value),
                            (pinned_pip, built_pip, pip_text)):
        problems += [name + " " + old[name] + " -> " + new[name]
                     for name in sorted(set(old) & set(new)) if old[name] != new[name]]
        problems += ["missing: " + shown(name, old[name]) for name in sorted(set(old) - set(new))]
        problems += ["extra: " + shown(name, new[name]) for name in sorted(set(new) - set(old))]
    return problems


def report(problems):
    if problems:
        sys.stderr.write("envkiln: the build did not reproduce spec.lock: " + "; ".join(problems) + "\n")
        return 1
    sys.stdout.write("envkiln: the build reproduced spec.lock\n")
    return 0


def write_file(path, text):
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    with io.open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def write(args):
    conda = conda_lines(read(args.conda)) if args.conda else None
    pip = freeze(args.uv) if args.pip else None
    text = lock_text(conda, pip)
    write_file(args.output, text)
    sys.stdout.write("envkiln: wrote the lock to " + args.output + " (" + str(len(conda or []))
                     + " conda, " + str(len(pip or {})) + " pip packages)\n")
    if not (args.pinned_conda or args.pinned_pip):
        return 0
    pinned_conda = conda_map(read(args.pinned_conda).splitlines()) if args.pinned_conda else {}
    pinned_pip = pip_map(read(args.pinned_pip).splitlines()) if args.pinned_pip else {}
    built_conda, built_pip = parse(text)
    return report(differences(pinned_conda, pinned_pip, built_conda, built_pip))


def pip_install_list(args):
    installed = freeze()
    options, wanted = [], []
    for line in read(args.pinned).splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("-"):
            options.append(text)
            continue
        entry = pip_entry(text)
        if entry is None:
            sys.exit("envkiln: " + repr(text) + " in " + args.pinned + " is not NAME==VERSION or NAME @ URL")
        if installed.get(entry[0]) != entry[1]:
            wanted.append(pip_text(entry[0], entry[1]))
    if os.path.exists(args.output):
        os.remove(args.output)
    if not wanted:
        sys.stdout.write("envkiln: every pinned pip package is installed already\n")
        return 0
    write_file(args.output, "\n".join(options + wanted) + "\n")
    sys.stdout.write("envkiln: " + str(len(wanted)) + " pinned pip packages to install\n")
    return 0


def compare(args):
    pinned_conda, pinned_pip = parse(read(args.pinned))
    built_conda, built_pip = parse(read(args.built))
    return report(differences(pinned_conda, pinned_pip, built_conda, built_pip))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="envkiln_lock.py", description="envkiln lock v1")
    commands = parser.add_subparsers(dest="command")
    command = commands.add_parser("write")
    command.add_argument("output")
    command.add_argument("--conda")
    command.add_argument("--pip", action="store_true")
    command.add_argument("--uv")
    command.add_argument("--pinned-conda")
    command.add_argument("--pinned-pip")
    command = commands.add_parser("pip-install-list")
    command.add_argument("pinned")
    command.add_argument("output")
    command = commands.add_parser("compare")
    command.add_argument("pinned")
    command.add_argument("built")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required: write, pip-install-list or compare")
    return {"write": write, "pip-install-list": pip_install_list, "compare": compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
'''
