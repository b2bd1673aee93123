"""envkiln's venv seed: gives a venv made `--without-pip` the pip (and setuptools) ensurepip would install.

envkiln renders this file into the build context of every pip-only environment built with uv, and the
install step runs it with the new venv's Python (envkiln.core.render):

  envkiln_venv.py UV
      the wheels ensurepip would install (ensurepip's package names, from the distribution's WHEEL_PKG_DIR,
      else ensurepip's own _bundled directory; the last file name of each, as ensurepip picks), installed
      by uv offline, by name and version from that directory; `python -m ensurepip` itself when they are
      not all there; exit 1 saying what to install when this Python has no ensurepip

Why: `python -m venv` runs ensurepip, which runs pip to install pip and compiles every module of it: 2.5 s
of CPU in every build here, and half of the venv's size. uv installs the same wheels in 0.1 s and, as for
every package it installs, compiles nothing. By name from the directory, not by path: a wheel installed by
its path is recorded with it, and the lock would say `pip @ file:///...` instead of `pip==23.0.1`.

Because any environment's Python runs it: the standard library only, and Python 3.6.1 or newer (as
envkiln_lock.py; tests/unit/test_locks.py checks both).
"""

import importlib
import os
import sys
import sysconfig
from typing import Dict, List, Optional, Sequence, Tuple

NO_ENSUREPIP = (
    "envkiln: the Python of the base image has no ensurepip, so the venv of the environment cannot get pip: "
    "install it in a docker step (Debian and Ubuntu: the python3-venv package)"
)


def seed_wheels(names: Sequence[str], directories: Sequence[Optional[str]]) -> Optional[Tuple[str, List[str]]]:
    """(directory, ["name==version", ...] in the order of `names`) of the first directory that has a wheel
    of every name (of several, the last file name); None when none has them all, or there are no names."""
    if not names:
        return None
    for directory in directories:
        if not directory or not os.path.isdir(directory):
            continue
        found: Dict[str, str] = {}
        for filename in sorted(os.listdir(directory)):
            for name in names:
                if filename.startswith(name + "-") and filename.endswith(".whl"):
                    found[name] = filename[len(name) + 1:].split("-")[0]
        if len(found) == len(names):
            return directory, [name + "==" + found[name] for name in names]
    return None


def seed_command(uv: str, python: str, names: Sequence[str], directories: Sequence[Optional[str]]) -> List[str]:
    """The command that gives the venv of `python` its pip: uv from the wheels, else ensurepip."""
    wheels = seed_wheels(names, directories)
    if wheels is None:
        return [python, "-m", "ensurepip", "--upgrade", "--default-pip"]
    directory, requirements = wheels
    return [uv, "pip", "install", "--quiet", "--offline", "--no-index", "--no-cache", "--no-deps",
            "--find-links", directory, "--python", python, *requirements]


def main(argv: Optional[Sequence[str]] = None) -> int:  # returns only when it cannot run
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: envkiln_venv.py UV\n")
        return 2
    try:
        ensurepip = importlib.import_module("ensurepip")
    except ImportError:
        sys.stderr.write(NO_ENSUREPIP + "\n")
        return 1
    names = tuple(getattr(ensurepip, "_PACKAGE_NAMES", ()))
    bundled = os.path.join(os.path.dirname(ensurepip.__file__ or ""), "_bundled")
    command = seed_command(args[0], sys.executable, names, [sysconfig.get_config_var("WHEEL_PKG_DIR"), bundled])
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
