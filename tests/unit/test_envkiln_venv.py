"""envkiln_venv.py: a venv made `--without-pip` gets the pip (and setuptools) wheels ensurepip would have
installed, through uv, by name from their directory; ensurepip itself when they are not all there; a clear
exit without ensurepip. Every decision in a table; the program run once for real by this Python, with a
stand-in uv."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from envkiln.core import envkiln_venv
from envkiln.core.envkiln_venv import NO_ENSUREPIP, seed_command, seed_wheels
from envkiln.core.render import VENV_SCRIPT

PY311 = ("setuptools", "pip")
BOTH = ("pip-23.0.1-py3-none-any.whl", "setuptools-66.1.1-py3-none-any.whl")
OLDER = ("pip-22.3.1-py3-none-any.whl", "setuptools-65.5.0-py3-none-any.whl")


def _directory(root: Path, name: str, files: tuple[str, ...] | None) -> str | None:
    if files is None:
        return None
    directory = root / name
    directory.mkdir()
    for file in files:
        (directory / file).write_bytes(b"")
    return str(directory)


@pytest.mark.parametrize(("names", "distribution", "bundled", "expected"), [
    (PY311, BOTH, OLDER, ("distribution", ["setuptools==66.1.1", "pip==23.0.1"])),
    (PY311, ("pip-23.0.1-py3-none-any.whl",), OLDER, ("bundled", ["setuptools==65.5.0", "pip==22.3.1"])),
    (PY311, None, ("pip-22.3.1-py3-none-any.whl", "pip-9.0-py3-none-any.whl", *OLDER[1:], "README.txt",
                   "pip-22.3.1.tar.gz", "pipx-1.0-py3-none-any.whl"),
     ("bundled", ["setuptools==65.5.0", "pip==9.0"])),
    (("pip",), BOTH, (), ("distribution", ["pip==23.0.1"])),
    (PY311, ("pip-23.0.1-py3-none-any.whl",), ("pip-22.3.1-py3-none-any.whl",), None),
    (PY311, None, (), None),
    ((), BOTH, BOTH, None),
], ids=["the-distributions-wheels-first", "bundled-when-the-distribution-lacks-one", "last-file-name-wins-as-ensurepip",
        "python-3.12-pip-only", "none-when-no-directory-has-all", "none-without-wheels", "none-without-names"])
def test_seed_wheels_finds_what_ensurepip_would_install(tmp_path: Path, names: tuple[str, ...],
                                                        distribution: tuple[str, ...] | None, bundled: tuple[str, ...],
                                                        expected: tuple[str, list[str]] | None) -> None:
    directories = {"distribution": _directory(tmp_path, "distribution", distribution),
                   "bundled": _directory(tmp_path, "bundled", bundled)}
    found = seed_wheels(names, [directories["distribution"], directories["bundled"], str(tmp_path / "missing")])
    assert found == (None if expected is None else (directories[expected[0]], expected[1]))


@pytest.mark.parametrize(("wheels", "expected"), [
    (BOTH, ["/t/uv", "pip", "install", "--quiet", "--offline", "--no-index", "--no-cache", "--no-deps",
            "--find-links", "W", "--python", "/v/bin/python", "setuptools==66.1.1", "pip==23.0.1"]),
    (("pip-23.0.1-py3-none-any.whl",), ["/v/bin/python", "-m", "ensurepip", "--upgrade", "--default-pip"]),
], ids=["uv-by-name-from-the-directory", "ensurepip-otherwise"])
def test_seed_command(tmp_path: Path, wheels: tuple[str, ...], expected: list[str]) -> None:
    directory = _directory(tmp_path, "W", wheels)
    command = seed_command("/t/uv", "/v/bin/python", PY311, [directory])
    assert directory is not None
    assert [arg.replace(directory, "W") for arg in command] == expected


def test_without_ensurepip_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def no_module(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_module)
    assert envkiln_venv.main(["/t/uv"]) == 1
    assert capsys.readouterr().err == NO_ENSUREPIP + "\n" and "python3-venv" in NO_ENSUREPIP
    assert envkiln_venv.main([]) == 2


def test_the_program_in_the_context_is_this_module() -> None:
    assert Path(envkiln_venv.__file__).read_text(encoding="utf-8") == VENV_SCRIPT


def test_it_runs_in_a_real_venv_and_hands_uv_wheels_it_can_install(tmp_path: Path) -> None:
    """With this Python's own ensurepip: a venv without pip, a stand-in uv that records what it is given."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    record, uv = tmp_path / "argv", tmp_path / "uv"
    uv.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    uv.chmod(0o755)
    script = tmp_path / "envkiln_venv.py"
    script.write_text(VENV_SCRIPT)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-I", "-S", str(script), str(uv)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    argv = record.read_text().splitlines()
    assert argv[:8] == ["pip", "install", "--quiet", "--offline", "--no-index", "--no-cache", "--no-deps",
                        "--find-links"]
    assert argv[9:11] == ["--python", str(python)]
    directory, requirements = Path(argv[8]), argv[11:]
    assert any(r.startswith("pip==") for r in requirements), requirements
    for requirement in requirements:  # each names a wheel in the directory uv is pointed at
        name, version = requirement.split("==")
        assert list(directory.glob(f"{name}-{version}-*.whl")), (requirement, sorted(directory.iterdir()))
