"""Package locks (envkiln lock v1): reading, differences, `envkiln diff`'s text, and the build's lock program
(envkiln.core.envkiln_lock: imported here, and run as the build runs it, by this and any other Python found)."""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envkiln.core import envkiln_lock, locks
from envkiln.core.locks import (
    LOCK_HEADER,
    LOCK_SCRIPT,
    LOCK_SCRIPT_NAME,
    CondaPackage,
    Lock,
    LockDiff,
    LockError,
    SectionDiff,
    check_reproduced,
    conda_package,
    diff_definitions,
    diff_locks,
    format_diff,
    format_lock,
    format_lock_diff,
    lock_digest,
    package_count,
    parse_lock,
)
from envkiln.core.render import VENV_SCRIPT

CF = "https://conda.anaconda.org/conda-forge"
MD5 = "0123456789abcdef0123456789abcdef"
PYTHON_URL = f"{CF}/linux-64/python-3.11.9-hb806964_0_cpython.conda"

FULL = f"""{LOCK_HEADER}
[conda]
@EXPLICIT
{CF}/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2#{MD5}
{CF}/linux-64/ca-certificates-2024.8.30-hbcca054_0.conda#{MD5}
{CF}/linux-64/libgcc-ng-14.1.0-h77fa898_1.conda
{PYTHON_URL}#{MD5}
[pip]
numpy==2.1.0
pyyaml==6.0.2
somepkg @ https://host/somepkg-1.0-py3-none-any.whl
"""


def lock_of(conda: dict[str, str] | None = None, pip: dict[str, str] | None = None) -> Lock:
    """A lock from {name: version=build} and {name: value}; a section is present when given."""
    packages = {}
    for name, label in (conda or {}).items():
        version, build = label.split("=")
        packages[name] = CondaPackage(version, build, f"{CF}/linux-64/{name}-{version}-{build}.conda")
    sections = (("conda",) if conda is not None else ()) + (("pip",) if pip is not None else ())
    return Lock(conda=packages, pip=dict(pip or {}), sections=sections)


# --- reading -------------------------------------------------------------------------------------

def test_a_full_lock_reads_into_packages() -> None:
    lock = parse_lock(FULL)
    assert lock.sections == ("conda", "pip") and lock.has_conda and lock.has_pip
    assert lock.conda["python"] == CondaPackage("3.11.9", "hb806964_0_cpython", PYTHON_URL, MD5)
    assert lock.conda["libgcc-ng"].hash is None
    assert lock.pip == {"numpy": "2.1.0", "pyyaml": "6.0.2", "somepkg": "@ https://host/somepkg-1.0-py3-none-any.whl"}
    assert package_count(lock) == 7
    assert format_lock(lock) == FULL, "the canonical text is what the build writes"


@pytest.mark.parametrize(("line", "expected"), [
    (PYTHON_URL, ("python", "3.11.9", "hb806964_0_cpython", None)),
    (f"{PYTHON_URL}#", ("python", "3.11.9", "hb806964_0_cpython", None)),  # recorded without a hash
    (f"{CF}/linux-64/ca-certificates-2024.8.30-hbcca054_0.conda#{MD5}", ("ca-certificates", "2024.8.30",
                                                                          "hbcca054_0", MD5)),
    (f"{CF}/linux-64/_libgcc_mutex-0.1-conda_forge.tar.bz2", ("_libgcc_mutex", "0.1", "conda_forge", None)),
    (f"{CF}/noarch/python-dateutil-2.9.0.post0-pyhff2d567_1.conda", ("python-dateutil", "2.9.0.post0",
                                                                      "pyhff2d567_1", None)),
    (f"{CF}/linux-64/r-base-4.4.1-h1-2-3_0.conda", ("r-base-4.4.1-h1", "2", "3_0", None)),  # split from the right
    ("file:///opt/channel/linux-64/mypkg-1.0-0.tar.bz2", ("mypkg", "1.0", "0", None)),
    (f"{CF}/linux-64/python-3.11.9.conda", None),  # no build
    (f"{CF}/linux-64/python-3.11.9-h_0.zip", None),
    ("python-3.11.9-h_0.conda", None),  # no URL
    (f"{CF}/linux-64/python-3.11.9-h_0.conda#not-hex", None),
], ids=["plain", "bare-hash", "dashed-name-md5", "tar-bz2", "dashed-name-post-version", "many-dashes", "file-url",
        "no-build", "not-a-package", "no-url", "bad-hash"])
def test_conda_file_names_split_from_the_right(line: str, expected: tuple[str, ...] | None) -> None:
    parsed = conda_package(line)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        name, package = parsed
        assert (name, package.version, package.build, package.hash) == expected


@pytest.mark.parametrize(("body", "pip"), [
    ("numpy==2.1.0", {"numpy": "2.1.0"}),
    ("PyYAML==6.0.2", {"pyyaml": "6.0.2"}),
    ("Typing_Extensions == 4.12.2", {"typing-extensions": "4.12.2"}),
    ("zope.interface==7.0", {"zope-interface": "7.0"}),
    ("torch==2.3.0+cu121", {"torch": "2.3.0+cu121"}),
    ("weird===1.0-custom", {"weird": "===1.0-custom"}),
    ("pkg @ git+https://host/org/pkg.git@0123abc", {"pkg": "@ git+https://host/org/pkg.git@0123abc"}),
    ("Pkg[extra] @ https://host/pkg-1.0.tar.gz#sha256=ab", {"pkg": "@ https://host/pkg-1.0.tar.gz#sha256=ab"}),
    ("# a comment\n\nnumpy==2.1.0\n   \n", {"numpy": "2.1.0"}),
    ("", {}),
], ids=["pinned", "normalized", "spaced", "dotted", "local-version", "arbitrary-equality", "vcs-url", "url-extras",
        "comments-and-blanks", "empty-section"])
def test_pip_lines_read_as_freeze_writes_them(body: str, pip: dict[str, str]) -> None:
    lock = parse_lock(f"{LOCK_HEADER}\n[pip]\n{body}\n")
    assert lock.pip == pip and lock.sections == ("pip",) and not lock.conda


def test_line_endings_and_trailing_blanks_do_not_matter() -> None:
    assert parse_lock(FULL.replace("\n", "\r\n")) == parse_lock(FULL)
    assert parse_lock(FULL.replace("\n", "  \n")) == parse_lock(FULL)
    assert parse_lock(LOCK_HEADER) == Lock(conda={}, pip={}, sections=())


@pytest.mark.parametrize(("text", "message"), [
    ("", r"line 1: a lock starts with the line '# envkiln lock v1'.*the text is empty"),
    ("[pip]\nnumpy==1.0\n", r"line 1: a lock starts with the line '# envkiln lock v1'.*found '\[pip\]'"),
    ("numpy==1.0\n", r"line 1: .*found 'numpy==1.0'"),
    ("# envkiln lock v2\n[pip]\n", r"line 1: '# envkiln lock v2': this envkiln reads '# envkiln lock v1' locks only"),
    (f"{LOCK_HEADER}\nnumpy==1.0\n", r"line 2: 'numpy==1.0' is outside a section; put it under \[conda\] or \[pip\]"),
    (f"{LOCK_HEADER}\n[npm]\n", r"line 2: unknown section \[npm\]"),
    (f"{LOCK_HEADER}\n[pip]\na==1\n[pip]\n", r"line 4: a second \[pip\] section"),
    (f"{LOCK_HEADER}\n[pip]\nnumpy>=1.0\n", r"line 3: 'numpy>=1.0' is not a pinned pip package; write NAME==VERSION"),
    (f"{LOCK_HEADER}\n[pip]\n-e /src\n", r"line 3: '-e /src' is not a pinned pip package"),
    (f"{LOCK_HEADER}\n[pip]\nnumpy\n", r"line 3: 'numpy' is not a pinned pip package"),
    (f"{LOCK_HEADER}\n[pip]\nNumPy==1.0\nnumpy==1.1\n", r"line 4: pip package numpy is listed twice"),
    (f"{LOCK_HEADER}\n[conda]\npython=3.11\n",
     r"line 3: 'python=3.11' is not a conda package URL; write one URL a line"),
    (f"{LOCK_HEADER}\n[conda]\n{PYTHON_URL}\n{PYTHON_URL}#{MD5}\n", r"line 4: conda package python is listed twice"),
], ids=["empty", "no-header", "no-header-pip-line", "other-version", "outside-section", "unknown-section",
        "second-section", "range", "editable", "bare-name", "duplicate-pip", "conda-spec", "duplicate-conda"])
def test_bad_locks_are_refused_with_the_line_and_what_to_write(text: str, message: str) -> None:
    with pytest.raises(LockError, match=message):
        parse_lock(text)


def test_the_digest_is_of_the_text_as_written() -> None:
    assert lock_digest(FULL) == lock_digest(FULL) and lock_digest(FULL).startswith("sha256:")
    assert len(lock_digest(FULL)) == len("sha256:") + 64
    assert lock_digest(FULL) != lock_digest(FULL + "\n")


# --- differences ---------------------------------------------------------------------------------

DIFF_CASES: dict[str, tuple[Lock, Lock, LockDiff]] = {
    "same": (lock_of({"python": "3.11.9=h_0"}, {"numpy": "2.1.0"}),
             lock_of({"python": "3.11.9=h_0"}, {"numpy": "2.1.0"}),
             LockDiff(conda=SectionDiff(), pip=SectionDiff())),
    "pip-added-removed-changed": (
        lock_of(pip={"numpy": "2.1.0", "six": "1.16.0"}),
        lock_of(pip={"numpy": "2.1.1", "requests": "2.32.3"}),
        LockDiff(conda=SectionDiff(present=False),
                 pip=SectionDiff(added=(("requests", "2.32.3"),), removed=(("six", "1.16.0"),),
                                 changed=(("numpy", "2.1.0", "2.1.1"),)))),
    "conda-build-changed": (
        lock_of({"python": "3.11.9=h_0"}), lock_of({"python": "3.11.9=h_1"}),
        LockDiff(conda=SectionDiff(changed=(("python", "3.11.9=h_0", "3.11.9=h_1"),)), pip=SectionDiff(present=False))),
    "pip-section-only-on-one-side": (
        lock_of({"python": "3.11.9=h_0"}), lock_of({"python": "3.11.9=h_0"}, {"six": "1.16.0"}),
        LockDiff(conda=SectionDiff(), pip=SectionDiff(added=(("six", "1.16.0"),)))),
    "pip-url": (
        lock_of(pip={"pkg": "@ https://h/pkg-1.whl"}), lock_of(pip={"pkg": "1.0"}),
        LockDiff(conda=SectionDiff(present=False),
                 pip=SectionDiff(changed=(("pkg", "@ https://h/pkg-1.whl", "1.0"),)))),
}


@pytest.mark.parametrize(("a", "b", "expected"), DIFF_CASES.values(), ids=DIFF_CASES.keys())
def test_diff_locks(a: Lock, b: Lock, expected: LockDiff) -> None:
    assert diff_locks(a, b) == expected
    assert diff_locks(a, b).empty == (a == b)


def test_a_conda_package_from_another_channel_shows_its_urls() -> None:
    a = parse_lock(f"{LOCK_HEADER}\n[conda]\n{PYTHON_URL}\n")
    b = parse_lock(f"{LOCK_HEADER}\n[conda]\n{PYTHON_URL.replace('conda-forge', 'mirror/conda-forge')}\n")
    (changed,) = diff_locks(a, b).conda.changed
    assert changed[0] == "python" and "conda-forge/linux-64" in changed[1] and "mirror/conda-forge" in changed[2]
    assert check_reproduced(a, b) == [], "a build pinned to a lock is checked by version and build"


REPRODUCED_CASES: dict[str, tuple[Lock, Lock, list[str]]] = {
    "reproduced": (lock_of({"python": "3.11.9=h_0"}, {"numpy": "2.1.0"}), lock_of({"python": "3.11.9=h_0"},
                                                                                  {"numpy": "2.1.0"}), []),
    "brief-example": (lock_of(pip={"numpy": "2.1.0", "foo": "1.0"}), lock_of(pip={"numpy": "2.1.1", "bar": "2.0"}),
                      ["numpy 2.1.0 -> 2.1.1", "missing: foo==1.0", "extra: bar==2.0"]),
    "conda-then-pip": (lock_of({"python": "3.11.9=h_0", "zlib": "1.3=h_1"}, {"pkg": "@ https://h/p.whl"}),
                       lock_of({"python": "3.11.10=h_0", "openssl": "3.3=h_2"}, {}),
                       ["python 3.11.9=h_0 -> 3.11.10=h_0", "missing: zlib=1.3=h_1", "extra: openssl=3.3=h_2",
                        "missing: pkg @ https://h/p.whl"]),
    "arbitrary-equality": (lock_of(pip={}), lock_of(pip={"weird": "===1.0-x"}), ["extra: weird===1.0-x"]),
}


@pytest.mark.parametrize(("pinned", "built", "expected"), REPRODUCED_CASES.values(), ids=REPRODUCED_CASES.keys())
def test_check_reproduced_names_each_difference(pinned: Lock, built: Lock, expected: list[str]) -> None:
    assert check_reproduced(pinned, built) == expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    ({"baseImage": "python:3.11", "baseImageDigest": "sha256:aaaa", "dockerSteps": ["RUN a"]},
     {"baseImage": "python:3.11", "baseImageDigest": "sha256:aaaa", "dockerSteps": ["RUN a"]}, []),
    ({"baseImage": "python:3.11", "baseImageDigest": None, "dockerSteps": []},
     {"baseImage": "python:3.12", "baseImageDigest": "sha256:bbbb", "dockerSteps": []},
     ["base image: python:3.11 -> python:3.12", "base image digest: (unknown) -> sha256:bbbb"]),
    ({"dockerSteps": ["RUN a", "RUN b", "RUN c"]}, {"dockerSteps": ["RUN a", "RUN x", "RUN c", "ENV D=1"]},
     ["docker steps:", "  - RUN b", "  + RUN x", "  + ENV D=1"]),
    ({"dockerSteps": ["RUN a"]}, {"dockerSteps": []}, ["docker steps:", "  - RUN a"]),
    ({"dockerSteps": None}, {"dockerSteps": ["RUN a \\\n && b"]}, ["docker steps:", "  + RUN a \\\n     && b"]),
    ({"baseImage": None}, {"baseImage": "x"}, ["base image: (none) -> x"]),
], ids=["same", "base-and-digest", "steps-replaced-and-added", "step-removed", "multi-line-step", "no-base"])
def test_diff_definitions(a: dict[str, Any], b: dict[str, Any], expected: list[str]) -> None:
    assert diff_definitions(a, b) == expected


def test_format_diff_reads_like_the_issue_example() -> None:
    a = {"baseImage": "python:3.11", "baseImageDigest": "sha256:aaaa", "dockerSteps": []}
    b = {"baseImage": "python:3.11", "baseImageDigest": "sha256:bbbb", "dockerSteps": ["RUN apt-get install -y curl"]}
    locks = diff_locks(lock_of({"python": "3.11.9=h_0"}, {"numpy": "2.1.0"}),
                       lock_of({"python": "3.11.9=h_0"}, {"numpy": "2.1.1", "requests": "2.32.3"}))
    text = format_diff("myenv:1 (hash 1a2b)", "myenv:2 (hash 3c4d)", diff_definitions(a, b), locks)
    assert text == (
        "--- myenv:1 (hash 1a2b)\n"
        "+++ myenv:2 (hash 3c4d)\n"
        "base image digest: sha256:aaaa -> sha256:bbbb\n"
        "docker steps:\n"
        "  + RUN apt-get install -y curl\n"
        "pip packages: 1 added, 0 removed, 1 changed\n"
        "  + requests==2.32.3\n"
        "  ~ numpy 2.1.0 -> 2.1.1\n"
        "conda packages: unchanged\n"
    )


@pytest.mark.parametrize(("definitions", "locks", "expected"), [
    ([], diff_locks(lock_of(pip={"a": "1"}), lock_of(pip={"a": "1"})), "--- A\n+++ B\nno differences\n"),
    (None, None, "--- A\n+++ B\nno differences\n"),
    (None, diff_locks(lock_of({"zlib": "1.3=h_1"}), lock_of({})),
     "--- A\n+++ B\nconda packages: 0 added, 1 removed, 0 changed\n  - zlib=1.3=h_1\n"),
    (["base image: a -> b"], None, "--- A\n+++ B\nbase image: a -> b\n"),
    (["base image: a -> b"], diff_locks(lock_of(pip={"x": "1"}), lock_of(pip={"x": "1"})),
     "--- A\n+++ B\nbase image: a -> b\npip packages: unchanged\n"),
], ids=["nothing-changed", "nothing-compared", "locks-only", "definition-only", "definition-and-same-packages"])
def test_format_diff(definitions: list[str] | None, locks: LockDiff | None, expected: str) -> None:
    assert format_diff("A", "B", definitions, locks) == expected


def test_format_lock_diff_leaves_out_sections_neither_lock_has() -> None:
    assert format_lock_diff(diff_locks(lock_of(pip={}), lock_of(pip={}))) == ["pip packages: unchanged"]


# --- the build's lock program: envkiln_lock.py ---------------------------------------------------------

SCRIPT_FILE = Path(envkiln_lock.__file__)
OLDEST = (3, 6)  # the oldest Python the program promises to run on (its docstring says why)


def test_the_build_runs_the_shipped_file_and_the_operator_reads_with_its_functions() -> None:
    """One program: render writes envkiln_lock.py's bytes into the build context, and envkiln.core.locks
    reads and compares locks with that file's functions, not copies of them."""
    assert SCRIPT_FILE.name == LOCK_SCRIPT_NAME
    assert LOCK_SCRIPT.encode("utf-8") == SCRIPT_FILE.read_bytes()
    shared = ["LOCK_HEADER", "LockError", "CondaPackage", "Lock", "parse_lock", "parse_pip_line", "conda_package",
              "pip_line", "conda_lines", "pip_lines", "format_lock", "check_reproduced", "entry_line", "conda_labels"]
    assert [name for name in shared if getattr(locks, name) is not getattr(envkiln_lock, name)] == []


# typing's names that Python 3.6.1 has (Final, Literal, Protocol and TypedDict came in 3.8).
TYPING_36 = frozenset({"Any", "Callable", "Dict", "FrozenSet", "IO", "Iterable", "Iterator", "List", "Mapping",
                       "NamedTuple", "NoReturn", "Optional", "Sequence", "Set", "TextIO", "Tuple", "TYPE_CHECKING",
                       "Union", "cast"})
NEWER_MODULES = frozenset({"dataclasses", "contextvars", "importlib.resources", "importlib.metadata", "graphlib",
                           "zoneinfo", "tomllib"})
BUILTIN_GENERICS = frozenset({"dict", "list", "tuple", "set", "frozenset", "type"})


def _evaluated_annotations(tree: ast.Module) -> Iterator[ast.expr]:
    """The annotations Python 3.6 evaluates when it runs the file: signatures, and names at module and
    class level (a function's local annotations are never evaluated)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            for arg in [*arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
    for body in [tree.body, *(node.body for node in ast.walk(tree) if isinstance(node, ast.ClassDef))]:
        yield from (statement.annotation for statement in body if isinstance(statement, ast.AnnAssign))


def compat_problems(source: str) -> list[str]:
    """Why `source` would not run on Python 3.6 with the standard library alone (empty: it would)."""
    try:
        tree = ast.parse(source, feature_version=OLDEST)  # 3.6's grammar: no walrus, positional-only, match
    except SyntaxError as error:
        return [f"syntax: {error.msg}"]
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules, names = [alias.name for alias in node.names], []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                problems.append("a relative import: the build runs the file alone")
                continue
            modules, names = [node.module or ""], [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module.partition(".")[0] not in sys.stdlib_module_names:
                problems.append(f"import {module}: not the standard library")
            if module in NEWER_MODULES:
                problems.append(f"import {module}: newer than Python 3.6")
        if modules == ["__future__"] and "annotations" in names:
            problems.append("from __future__ import annotations: Python 3.7")
        if modules == ["typing"]:
            problems += [f"typing.{name}: newer than Python 3.6" for name in names if name not in TYPING_36]
    for annotation in _evaluated_annotations(tree):
        for part in ast.walk(annotation):
            if isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr):
                problems.append(f"{ast.unparse(annotation)}: `X | Y` is evaluated (Python 3.10)")
            if (isinstance(part, ast.Subscript) and isinstance(part.value, ast.Name)
                    and part.value.id in BUILTIN_GENERICS):
                problems.append(f"{ast.unparse(annotation)}: {part.value.id}[...] is evaluated (Python 3.9)")
    return problems


@pytest.mark.parametrize(("source", "problem"), [
    ("import os\nfrom typing import Dict, Optional\n\ndef f(x: Optional[Dict[str, str]]) -> None:\n"
     "    y: dict[str, int | None] = {}\n", None),
    ("import yaml\n", "import yaml: not the standard library"),
    ("from envkiln.core import names\n", "import envkiln.core: not the standard library"),
    ("from . import x\n", "a relative import"),
    ("import dataclasses\n", "import dataclasses: newer than Python 3.6"),
    ("from __future__ import annotations\n", "from __future__ import annotations: Python 3.7"),
    ("from typing import Final\n", "typing.Final: newer than Python 3.6"),
    ("def f(x: str | None) -> None: ...\n", "str | None: `X | Y` is evaluated"),
    ("class C:\n    x: list[str] = []\n", "list[str]: list[...] is evaluated"),
    ("def f() -> tuple[int, ...]: ...\n", "tuple[int, ...]: tuple[...] is evaluated"),
    ("if (n := 1): pass\n", "syntax: Assignment expressions are only supported in Python 3.8"),
    ("def f(a, /): pass\n", "syntax: Positional-only parameters"),
], ids=["fine", "third-party", "envkiln", "relative", "dataclasses", "lazy-annotations", "typing-final", "union",
        "class-level-generic", "return-generic", "walrus", "positional-only"])
def test_compat_problems_finds_what_an_old_or_bare_python_cannot_run(source: str, problem: str | None) -> None:
    problems = compat_problems(source)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("program", [LOCK_SCRIPT, VENV_SCRIPT], ids=["envkiln_lock", "envkiln_venv"])
def test_the_programs_run_on_python_3_6_with_the_standard_library_alone(program: str) -> None:
    assert compat_problems(program) == []


BZIP2_URL = f"{CF}/linux-64/bzip2-1.0.8-h4bc722e_7.conda"
EXPORT = ("# This file may be used to create an environment using:\n# platform: linux-64\n@EXPLICIT\n"
          + "".join(f"{line}\n" for line in reversed(FULL.splitlines()) if line.startswith("https://"))
          + f"{BZIP2_URL}#\n")  # recorded without a hash: written without '#'


def with_bzip2(lock_text: str) -> str:
    """FULL's [conda] lines (sorted) with EXPORT's extra package in its place."""
    return lock_text.replace(f"{CF}/linux-64/ca-", f"{BZIP2_URL}\n{CF}/linux-64/ca-")


def test_write_puts_the_environment_into_the_canonical_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(envkiln_lock, "freeze", lambda uv=None: {
        "zope-interface": "7.0", "numpy": "2.1.0", "somepkg": "@ https://host/somepkg-1.0-py3-none-any.whl"})
    export, output = tmp_path / "conda-explicit.txt", tmp_path / "lock" / "envkiln-lock.txt"
    export.write_text(EXPORT)
    assert envkiln_lock.main(["write", str(output), "--conda", str(export), "--pip", "--uv", "/nowhere/uv"]) == 0
    written = output.read_text()
    assert written == with_bzip2(FULL).replace("pyyaml==6.0.2\n", "") + "zope-interface==7.0\n"
    assert format_lock(parse_lock(written)) == written
    assert capsys.readouterr().out == f"envkiln: wrote the lock to {output} (5 conda, 3 pip packages)\n"


def test_write_without_pip_leaves_the_section_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envkiln_lock, "freeze", lambda uv=None: pytest.fail("pip is not asked without --pip"))
    export, output = tmp_path / "conda-explicit.txt", tmp_path / "lock.txt"
    export.write_text(EXPORT)
    assert envkiln_lock.main(["write", str(output), "--conda", str(export)]) == 0
    assert parse_lock(output.read_text()).sections == ("conda",)


def test_the_script_installs_only_the_pinned_packages_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(envkiln_lock, "freeze",
                        lambda uv=None: {"numpy": "2.1.0", "torch": "2.3.0+cu121", "pkg": "@ https://h/pkg-1.whl"})
    pinned, wanted = tmp_path / "pip-lock.txt", tmp_path / "pip-install.txt"
    pinned.write_text("--index-url https://idx/simple\nnumpy==2.1.0\ntorch==2.3.0+cu121\npkg @ https://h/pkg-1.whl\n"
                      "six==1.16.0\nNumPy_Extra==1.0\n")
    assert envkiln_lock.main(["pip-install-list", str(pinned), str(wanted)]) == 0
    assert wanted.read_text() == "--index-url https://idx/simple\nsix==1.16.0\nnumpy-extra==1.0\n"
    pinned.write_text("--index-url https://idx/simple\nnumpy==2.1.0\n")
    assert envkiln_lock.main(["pip-install-list", str(pinned), str(wanted)]) == 0
    assert not wanted.exists(), "nothing to install: no file, and the build skips the install"
    assert "installed already" in capsys.readouterr().out
    pinned.write_text("numpy==2.1.0\nnumpy>=2\n")
    with pytest.raises(SystemExit, match=r"pip-lock.txt line 2: 'numpy>=2' is not NAME==VERSION or NAME @ URL"):
        envkiln_lock.main(["pip-install-list", str(pinned), str(wanted)])


def test_the_script_write_checks_the_pinned_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(envkiln_lock, "freeze", lambda uv=None: {"numpy": "2.1.1", "bar": "2.0"})
    export = tmp_path / "conda-explicit.txt"
    export.write_text(f"# platform: linux-64\n@EXPLICIT\n{PYTHON_URL}#{MD5}\n")
    conda_lock, pip_lock = tmp_path / "conda-lock.txt", tmp_path / "pip-lock.txt"
    conda_lock.write_text(f"@EXPLICIT\n{PYTHON_URL}#{MD5}\n")
    pip_lock.write_text("--extra-index-url https://idx/simple\nnumpy==2.1.0\nfoo==1.0\n")
    output = tmp_path / "lock.txt"
    write = ["write", str(output), "--conda", str(export), "--pip", "--pinned-conda", str(conda_lock),
             "--pinned-pip", str(pip_lock)]
    assert envkiln_lock.main(write) == 1
    assert capsys.readouterr().err == ("envkiln: the build did not reproduce spec.lock: numpy 2.1.0 -> 2.1.1; "
                                       "missing: foo==1.0; extra: bar==2.0\n")
    assert parse_lock(output.read_text()).pip == {"numpy": "2.1.1", "bar": "2.0"}, "written even when it differs"
    pip_lock.write_text("numpy==2.1.1\nbar==2.0\n")
    assert envkiln_lock.main(write) == 0
    assert capsys.readouterr().out.endswith("envkiln: the build reproduced spec.lock\n")


@pytest.mark.parametrize(("pinned", "built", "expected"), REPRODUCED_CASES.values(), ids=REPRODUCED_CASES.keys())
def test_compare_says_what_check_reproduced_says(pinned: Lock, built: Lock, expected: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pinned.txt").write_text(format_lock(pinned))
    (tmp_path / "built.txt").write_text(format_lock(built))
    code = envkiln_lock.main(["compare", str(tmp_path / "pinned.txt"), str(tmp_path / "built.txt")])
    err = capsys.readouterr().err
    assert (code, err) == ((1, f"envkiln: the build did not reproduce spec.lock: {'; '.join(expected)}\n")
                           if expected else (0, ""))


def test_compare_refuses_what_is_not_a_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lock.txt").write_text(FULL)
    (tmp_path / "pinned.txt").write_text("numpy==2.1.0\n")
    assert envkiln_lock.main(["compare", str(tmp_path / "pinned.txt"), str(tmp_path / "lock.txt")]) == 2
    assert capsys.readouterr().err == (f"envkiln: {tmp_path / 'pinned.txt'}: line 1: a lock starts with the line "
                                       f"'{LOCK_HEADER}', as `envkiln lock` prints it; found 'numpy==2.1.0'\n")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """The program as the build gets it: LOCK_SCRIPT, alone in a directory."""
    path = tmp_path / "context" / LOCK_SCRIPT_NAME
    path.parent.mkdir()
    path.write_text(LOCK_SCRIPT)
    return path


def run_script(python: str, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no PYTHONPATH, not the script's directory: the standard library alone, as in a
    # bare image (pip, which `write --pip` asks, runs as a process of its own).
    return subprocess.run([python, "-I", "-S", str(script), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_script_writes_a_lock_of_this_python(script: Path, tmp_path: Path) -> None:
    """`write --pip` run by a Python (here the test's own) writes a lock parse_lock reads, with this
    environment's packages in its [pip] section."""
    output = tmp_path / "out" / "envkiln-lock.txt"
    done = run_script(sys.executable, script, "write", str(output), "--pip", "--uv", "/nonexistent/uv")
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    lock = parse_lock(text)
    assert lock.sections == ("pip",) and format_lock(lock) == text
    assert lock.pip["pytest"] == pytest.__version__ and "pip" in lock.pip
    # Pinned to what it wrote, it reproduces it; pinned to something else, it names the package and fails.
    assert run_script(sys.executable, script, "compare", str(output), str(output)).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text(text.replace(f"pytest=={pytest.__version__}", "pytest==0.0.1"))
    failed = run_script(sys.executable, script, "compare", str(other), str(output))
    assert failed.returncode == 1
    assert failed.stderr == f"envkiln: the build did not reproduce spec.lock: pytest 0.0.1 -> {pytest.__version__}\n"


@functools.cache
def other_pythons() -> dict[str, str]:
    """{"3.N": path} of the CPythons 3.6 and newer on this machine besides the one running the tests: on PATH
    as python3.N, or installed by pyenv. None found: the test below has no cases (CI runs one Python)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(OLDEST[1], 20)]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(str(path) for path in pyenv.glob("versions/3.*/bin/python3"))
    found: dict[str, str] = {}
    for path in filter(None, candidates):
        try:
            probe = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                                   text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue  # e.g. a pyenv shim for a version not selected
        parts = probe.stdout.split()
        if probe.returncode != 0 or len(parts) != 2:
            continue
        version = (int(parts[0]), int(parts[1]))
        if version >= OLDEST and version != sys.version_info[:2]:
            found.setdefault(f"{version[0]}.{version[1]}", path)
    return dict(sorted(found.items(), key=lambda item: tuple(map(int, item[0].split(".")))))


@pytest.mark.parametrize("version", sorted({*list(other_pythons())[:1], *list(other_pythons())[-1:]}))
def test_the_script_runs_on_the_oldest_and_newest_python_found(version: str, script: Path, tmp_path: Path) -> None:
    """What the build runs, run by another Python (the environment's may be 3.6; the oldest and the newest
    found, to keep the suite quick): the conda lock and its check, compare, and with pip the [pip] section
    and the pinned packages to install."""
    python = other_pythons()[version]
    export, output = tmp_path / "conda-explicit.txt", tmp_path / "out" / "lock.txt"
    export.write_text(EXPORT)
    conda_pinned = tmp_path / "conda-lock.txt"
    conda_pinned.write_text(EXPORT)
    done = run_script(python, script, "write", str(output), "--conda", str(export), "--pinned-conda", str(conda_pinned))
    assert (done.returncode, done.stderr) == (0, "")
    expected = format_lock(Lock(conda=parse_lock(FULL).conda, pip={}, sections=("conda",)))
    assert output.read_text() == with_bzip2(expected)
    conda_pinned.write_text(EXPORT.replace("hb806964_0_cpython", "hb806964_1_cpython"))
    failed = run_script(python, script, "write", str(output), "--conda", str(export), "--pinned-conda",
                        str(conda_pinned))
    assert (failed.returncode, failed.stderr) == (1, "envkiln: the build did not reproduce spec.lock: python "
                                                     "3.11.9=hb806964_1_cpython -> 3.11.9=hb806964_0_cpython\n")
    assert run_script(python, script, "compare", str(output), str(output)).returncode == 0
    assert run_script(python, script, "compare", str(export), str(output)).returncode == 2
    pip_output = tmp_path / "pip-lock-written.txt"
    done = run_script(python, script, "write", str(pip_output), "--pip")
    if done.returncode != 0:  # a Python without pip: the build says so
        assert done.stderr.startswith(f"envkiln: cannot list the pip packages of {python}"), done.stderr
        return
    installed = parse_lock(pip_output.read_text()).pip
    pinned, wanted = tmp_path / "pip-lock.txt", tmp_path / "pip-install.txt"
    pinned.write_text(f"--index-url https://idx/simple\npip=={installed['pip']}\nsix==0.0.1\n")
    done = run_script(python, script, "pip-install-list", str(pinned), str(wanted))
    assert done.returncode == 0, done.stderr
    assert wanted.read_text() == "--index-url https://idx/simple\nsix==0.0.1\n"


def test_the_commands_the_script_runs_write_no_bytecode_into_the_image() -> None:
    """`pip freeze` runs inside the image being built, whose venv's pip was installed uncompiled
    (render.SEED_PIP): it must not leave __pycache__ files in the image."""
    out = envkiln_lock.run([sys.executable, "-c", "import os, sys; print(os.environ['PYTHONDONTWRITEBYTECODE'], "
                                                  "sys.dont_write_bytecode)"])
    assert out == "1 True\n"
