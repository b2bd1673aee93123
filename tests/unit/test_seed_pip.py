"""render.SEED_PIP: the one line that gives a venv made `--without-pip` the pip (and setuptools) wheels
ensurepip would have installed, through uv; ensurepip itself when they are not all there; a clear exit
without ensurepip. Run in-process against a stand-in ensurepip (every decision, in a table), and once for
real with this Python and a stand-in uv."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from envkiln.core.render import NO_ENSUREPIP, SEED_PIP

UV = "/tools/uv"


class Exec(Exception):
    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv)
        self.argv = argv


def _wheels(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")
    return directory


def seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, names: tuple[str, ...] | None,
         wheel_dir: tuple[str, ...] | None, bundled: tuple[str, ...]) -> list[str]:
    """What SEED_PIP execs, given ensurepip's package names (None: no _PACKAGE_NAMES), the files of the
    distribution's WHEEL_PKG_DIR (None: not set) and of ensurepip's _bundled directory."""
    package = tmp_path / "ensurepip"
    _wheels(package / "_bundled", *bundled)
    fake = types.ModuleType("ensurepip")
    fake.__file__ = str(package / "__init__.py")
    if names is not None:
        fake._PACKAGE_NAMES = names  # type: ignore[attr-defined]
    distribution = str(_wheels(tmp_path / "python-wheels", *wheel_dir)) if wheel_dir is not None else None
    real_get = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: distribution if name == "WHEEL_PKG_DIR" else real_get(name))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "ensurepip" else None)
    monkeypatch.setattr(importlib, "import_module", lambda name: fake)

    def execv(path: str, argv: list[str]) -> None:
        assert path == argv[0]
        raise Exec(argv)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["-c", UV])
    with pytest.raises(Exec) as called:
        exec(SEED_PIP, {})
    return [arg.replace(str(tmp_path), "T") for arg in called.value.argv]


def uv_install(*wheels: str) -> list[str]:
    return [UV, "pip", "install", "--quiet", "--offline", "--no-cache", "--no-deps", "--python", sys.executable,
            *wheels]


ENSUREPIP = [sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"]
PY311 = ("setuptools", "pip")
BOTH = ("pip-23.0.1-py3-none-any.whl", "setuptools-66.1.1-py3-none-any.whl")


@pytest.mark.parametrize(("names", "wheel_dir", "bundled", "expected"), [
    (PY311, BOTH, ("pip-22.3.1-py3-none-any.whl", "setuptools-65.5.0-py3-none-any.whl"),
     uv_install("T/python-wheels/setuptools-66.1.1-py3-none-any.whl", "T/python-wheels/pip-23.0.1-py3-none-any.whl")),
    (PY311, ("pip-23.0.1-py3-none-any.whl",), ("pip-22.3.1-py3-none-any.whl", "setuptools-65.5.0-py3-none-any.whl"),
     uv_install("T/ensurepip/_bundled/setuptools-65.5.0-py3-none-any.whl",
                "T/ensurepip/_bundled/pip-22.3.1-py3-none-any.whl")),
    (PY311, None, ("pip-22.3.1-py3-none-any.whl", "pip-9.0-py3-none-any.whl", "setuptools-65.5.0-py3-none-any.whl",
                   "README.txt", "pip-22.3.1.tar.gz"),
     uv_install("T/ensurepip/_bundled/setuptools-65.5.0-py3-none-any.whl",
                "T/ensurepip/_bundled/pip-9.0-py3-none-any.whl")),
    (("pip",), BOTH, (), uv_install("T/python-wheels/pip-23.0.1-py3-none-any.whl")),
    (PY311, ("pip-23.0.1-py3-none-any.whl",), ("pip-22.3.1-py3-none-any.whl",), ENSUREPIP),
    (PY311, None, (), ENSUREPIP),
    (None, BOTH, BOTH, ENSUREPIP),
], ids=["the-distributions-wheels-first", "bundled-when-the-distribution-lacks-one", "last-file-name-wins-as-ensurepip",
        "python-3.12-pip-only", "ensurepip-when-none-has-all", "ensurepip-when-no-wheels", "ensurepip-unknown-names"])
def test_seed_pip_installs_what_ensurepip_would(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                names: tuple[str, ...] | None, wheel_dir: tuple[str, ...] | None,
                                                bundled: tuple[str, ...], expected: list[str]) -> None:
    assert seed(monkeypatch, tmp_path, names, wheel_dir, bundled) == expected


def test_seed_pip_without_ensurepip_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(os, "execv", lambda path, argv: pytest.fail(f"ran {argv}"))
    with pytest.raises(SystemExit) as stopped:
        exec(SEED_PIP, {})
    assert stopped.value.code == NO_ENSUREPIP
    assert "python3-venv" in NO_ENSUREPIP


def test_seed_pip_is_one_line_for_a_single_quoted_python_c() -> None:
    assert "'" not in SEED_PIP and "\n" not in SEED_PIP and "\\" not in SEED_PIP


def test_seed_pip_runs_in_a_real_venv_and_hands_uv_real_wheels(tmp_path: Path) -> None:
    """With this Python's own ensurepip: a venv without pip, a stand-in uv that records what it is given."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    record = tmp_path / "argv"
    uv = tmp_path / "uv"
    uv.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    uv.chmod(0o755)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-c", SEED_PIP, str(uv)], check=True, timeout=60)
    argv = record.read_text().splitlines()
    assert argv[:8] == ["pip", "install", "--quiet", "--offline", "--no-cache", "--no-deps", "--python", str(python)]
    wheels = argv[8:]
    assert any(Path(w).name.startswith("pip-") for w in wheels), wheels
    assert all(w.endswith(".whl") and Path(w).is_file() for w in wheels), wheels
