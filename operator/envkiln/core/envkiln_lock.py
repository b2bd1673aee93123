"""envkiln lock v1: the package lock of the environment this Python runs; checks a pinned one.

envkiln renders this file into every build context that installs packages, and the install stage runs it
with the environment's own Python:

  envkiln_lock.py write OUTPUT [--conda EXPORT] [--pip] [--uv UV] [--pinned-conda FILE] [--pinned-pip FILE]
      the lock: [conda] from EXPORT (`micromamba env export --explicit --md5`), [pip] from
      `python -m pip freeze --all` (or `uv pip freeze`); with --pinned-*, exit 1 naming the packages
      when it differs from the pinned sections
  envkiln_lock.py pip-install-list PINNED_PIP OUTPUT
      the pinned pip lines not installed already (and the option lines), for `pip install --no-deps`;
      no OUTPUT when there are none
  envkiln_lock.py compare PINNED BUILT
      exit 1 naming the packages when two locks differ (2 when one is not a lock)

It is also the one reader and writer of the lock format: the operator (envkiln.core.locks) imports
parse_lock, format_lock, check_reproduced and the rest from here, so the build and the operator cannot
read a lock differently. The format is described in envkiln.core.locks.

Because any environment's Python runs it: the standard library only, and Python 3.6.1 or newer, so
annotations evaluated at run time (signatures, module and class level) use typing's names, not `X | Y`
or `dict[...]`; no `from __future__ import annotations`, dataclasses or typing.Final (3.7, 3.8);
no walrus or match. tests/unit/test_locks.py checks this and runs it with every Python it finds.
"""

import argparse
import os
import re
import subprocess
import sys
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

LOCK_HEADER = "# envkiln lock v1"
LOCK_HEADER_PREFIX = "# envkiln lock v"
CONDA_SECTION = "conda"
PIP_SECTION = "pip"
EXPLICIT = "@EXPLICIT"

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


class CondaPackage(NamedTuple):
    version: str
    build: str
    url: str  # without the #hash fragment
    hash: Optional[str] = None  # the md5 (or sha256) after '#', as written

    @property
    def line(self) -> str:
        return self.url + (f"#{self.hash}" if self.hash else "")

    @property
    def label(self) -> str:
        return f"{self.version}={self.build}"


class Lock(NamedTuple):
    """A parsed lock. `pip` values are what follows the name: a version (`2.1.0`), `===version`,
    or `@ url`; keys are normalized names. Read-only: never change its mappings."""

    conda: Dict[str, CondaPackage]
    pip: Dict[str, str]
    sections: Tuple[str, ...]  # the sections the text holds, in order

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


def entry_line(section: str, name: str, value: str) -> str:
    """An entry as messages show it: `name=version=build` (conda), the requirement line (pip)."""
    if section == CONDA_SECTION:
        return f"{name}={value}"
    return pip_line(name, value)


def conda_package(url_line: str) -> Optional[Tuple[str, CondaPackage]]:
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


def parse_pip_line(line: str) -> Optional[Tuple[str, str]]:
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
    conda: Dict[str, CondaPackage] = {}
    pip: Dict[str, str] = {}
    sections: List[str] = []
    section: Optional[str] = None
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


def conda_lines(lock: Lock) -> List[str]:
    """The [conda] section as an explicit file's lines: @EXPLICIT, then the URLs sorted."""
    return [EXPLICIT, *sorted(package.line for package in lock.conda.values())]


def pip_lines(lock: Lock) -> List[str]:
    """The [pip] section's lines, sorted by name."""
    return [pip_line(name, lock.pip[name]) for name in sorted(lock.pip)]


def format_lock(lock: Lock) -> str:
    """The canonical text of a lock (what the build writes for the same packages)."""
    lines = [LOCK_HEADER]
    for section in sorted(lock.sections, key=(CONDA_SECTION, PIP_SECTION).index):
        lines.append(f"[{section}]")
        lines += conda_lines(lock) if section == CONDA_SECTION else pip_lines(lock)
    return "\n".join(lines) + "\n"


def conda_labels(lock: Lock) -> Dict[str, str]:
    """{name: VERSION=BUILD} of the conda packages: what a conda package is compared by."""
    return {name: package.label for name, package in lock.conda.items()}


def check_reproduced(pinned: Lock, built: Lock) -> List[str]:
    """What a build pinned to `pinned` got wrong, one entry a difference (empty: reproduced):
    `numpy 2.1.0 -> 2.1.1`, `missing: foo==1.0`, `extra: bar==2.0`; conda packages by version and
    build (`python=3.11.9=h1_0`), then pip packages by version or URL."""
    problems: List[str] = []
    for section, old, new in ((CONDA_SECTION, conda_labels(pinned), conda_labels(built)),
                              (PIP_SECTION, pinned.pip, built.pip)):
        problems += [f"{name} {old[name]} -> {new[name]}"
                     for name in sorted(old.keys() & new.keys()) if old[name] != new[name]]
        problems += [f"missing: {entry_line(section, name, old[name])}" for name in sorted(old.keys() - new.keys())]
        problems += [f"extra: {entry_line(section, name, new[name])}" for name in sorted(new.keys() - old.keys())]
    return problems


# --- the build's side: reading what the environment holds, the commands ---------------------------------


def conda_packages(lines: Iterable[str]) -> Dict[str, CondaPackage]:
    """The conda packages of an explicit file (an export, or the pinned [conda] section); the lines
    that are not package URLs (@EXPLICIT, comments) are left out."""
    found: Dict[str, CondaPackage] = {}
    for line in lines:
        parsed = conda_package(line)
        if parsed is not None:
            found.setdefault(parsed[0], parsed[1])
    return found


def pip_requirements(text: str, source: str) -> Tuple[List[str], Dict[str, str]]:
    """(option lines, {name: value}) of a pinned pip file: the pinned [pip] section after the
    definition's index options; exits naming `source` and the line when one is neither."""
    options: List[str] = []
    found: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        entry = parse_pip_line(line)
        if entry is None:
            sys.exit(f"envkiln: {source} line {number}: {line!r} is not NAME==VERSION or NAME @ URL")
        found.setdefault(entry[0], entry[1])
    return options, found


def run(command: List[str]) -> Optional[str]:
    """The output of a command, None when it cannot run or fails."""
    # No bytecode written: `pip freeze` runs in the image being built, whose venv's pip has none (envkiln's
    # render seeds it uncompiled, as uv installs every package); __pycache__ files would enter the image.
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONIOENCODING="utf-8",
               PYTHONDONTWRITEBYTECODE="1")
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd="/")
    except OSError:
        return None
    out = process.communicate()[0]
    if process.returncode != 0:
        return None
    return out.decode("utf-8", "replace")


def freeze(uv: Optional[str] = None) -> Dict[str, str]:
    """{name: value} of the packages this Python sees, as pip freeze lists them."""
    out = run([sys.executable, "-m", "pip", "freeze", "--all"])
    if out is None and uv and os.path.exists(uv):
        out = run([uv, "pip", "freeze", "--python", sys.executable])
    if out is None:
        sys.exit(f"envkiln: cannot list the pip packages of {sys.executable}: `python -m pip freeze` fails and "
                 "there is no uv to ask")
    found: Dict[str, str] = {}
    for line in out.splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = parse_pip_line(text)
        if entry is None:
            sys.stderr.write(f"envkiln: the lock leaves out {text!r} (not NAME==VERSION or NAME @ URL)\n")
            continue
        found.setdefault(entry[0], entry[1])
    return found


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def write_file(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def report(problems: List[str]) -> int:
    if problems:
        sys.stderr.write("envkiln: the build did not reproduce spec.lock: " + "; ".join(problems) + "\n")
        return 1
    sys.stdout.write("envkiln: the build reproduced spec.lock\n")
    return 0


def write(args: argparse.Namespace) -> int:
    conda = conda_packages(read(args.conda).splitlines()) if args.conda else None
    pip = freeze(args.uv) if args.pip else None
    sections = tuple(name for name, part in ((CONDA_SECTION, conda), (PIP_SECTION, pip)) if part is not None)
    built = Lock(conda=conda or {}, pip=pip or {}, sections=sections)
    write_file(args.output, format_lock(built))
    sys.stdout.write(f"envkiln: wrote the lock to {args.output} ({len(built.conda)} conda, {len(built.pip)} pip "
                     "packages)\n")
    if not (args.pinned_conda or args.pinned_pip):
        return 0
    pinned = Lock(
        conda=conda_packages(read(args.pinned_conda).splitlines()) if args.pinned_conda else {},
        pip=pip_requirements(read(args.pinned_pip), args.pinned_pip)[1] if args.pinned_pip else {},
        sections=sections,
    )
    return report(check_reproduced(pinned, built))


def pip_install_list(args: argparse.Namespace) -> int:
    installed = freeze()
    options, pinned = pip_requirements(read(args.pinned), args.pinned)
    wanted = [pip_line(name, value) for name, value in pinned.items() if installed.get(name) != value]
    if os.path.exists(args.output):
        os.remove(args.output)
    if not wanted:
        sys.stdout.write("envkiln: every pinned pip package is installed already\n")
        return 0
    write_file(args.output, "\n".join(options + wanted) + "\n")
    sys.stdout.write(f"envkiln: {len(wanted)} pinned pip packages to install\n")
    return 0


def compare(args: argparse.Namespace) -> int:
    locks: List[Lock] = []
    for path in (args.pinned, args.built):
        try:
            locks.append(parse_lock(read(path)))
        except LockError as error:
            sys.stderr.write(f"envkiln: {path}: {error}\n")
            return 2
    return report(check_reproduced(locks[0], locks[1]))


def main(argv: Optional[Sequence[str]] = None) -> int:
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
    run_command = {"write": write, "pip-install-list": pip_install_list, "compare": compare}[args.command]
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
