"""`envkiln diff` of manifest files: packages as declared (pip and conda, with their versions), base image,
docker steps, build context; exit 1 when the sides differ, 0 when they are the same, 2 when a side
cannot be read (as diff(1)). The cluster's side: tests/unit/test_reproduce.py and the node's test_drift."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.errors import Exit
from envkiln.cli.reproduce import (
    Declared,
    compare,
    conda_requirement,
    declared,
    declared_from_plan,
    diff,
    is_file_reference,
    pip_requirement,
    text_side,
)
from envkiln.core.definition import definition_hash
from envkiln.core.render import render
from helpers import PIP_ENV, manifest, spec_of

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(("line", "key", "value"), [
    ("numpy==2.1.0", "numpy", "==2.1.0"),
    ("NumPy == 2.1.0", "numpy", "==2.1.0"),  # PEP 503 names, spaces in the specifier do not count
    ("scikit_learn>=1.5,<2", "scikit-learn", ">=1.5,<2"),
    ("torch", "torch", ""),
    ("torch[cuda]==2.4", "torch", "[cuda]==2.4"),
    ("pkg @ https://host/pkg-1.0-py3-none-any.whl", "pkg", "@ https://host/pkg-1.0-py3-none-any.whl"),
    ("numpy==1.26; python_version < '3.12'", "numpy; python_version < '3.12'", "==1.26"),
    ("git+https://host/org/repo.git@v1#egg=x", "git+https://host/org/repo.git@v1#egg=x", ""),
    ("--extra-index-url https://idx/simple", "--extra-index-url https://idx/simple", ""),
])
def test_pip_requirement(line: str, key: str, value: str) -> None:
    assert pip_requirement(line) == (key, value)


@pytest.mark.parametrize(("dependency", "name", "value"), [
    ("python=3.11", "python", "=3.11"),
    ("numpy>=1.26", "numpy", ">=1.26"),
    ("numpy 1.26.*", "numpy", "1.26.*"),
    ("conda-forge::lightgbm=4.5", "lightgbm", "conda-forge::=4.5"),
    ("pkg=1.0=h123_0", "pkg", "=1.0=h123_0"),
    ("ruamel.yaml", "ruamel.yaml", ""),
    ("scikit-learn=1.5", "scikit-learn", "=1.5"),
])
def test_conda_requirement(dependency: str, name: str, value: str) -> None:
    assert conda_requirement(dependency) == (name, value)


CONDA = {"channels": ["conda-forge"], "dependencies": ["python=3.11", "pip", {"pip": ["mlflow==2.16"]}]}


@pytest.mark.parametrize(("spec", "expected"), [
    ({"image": "python:3.11"}, None),
    ({"pip": ["numpy==2.1.0"]}, Declared(pip={"numpy": "==2.1.0"})),
    # A bare `pip` next to a pip block is what the build adds anyway: not a package of its own.
    ({"conda": CONDA, "pip": ["x"]}, Declared(channels=("conda-forge",), conda={"python": "=3.11"},
                                              conda_pip={"mlflow": "==2.16"}, pip={"x": ""})),
    ({"conda": {"dependencies": ["pip=24"]}}, Declared(conda={"pip": "=24"})),
])
def test_declared_packages(spec: dict[str, Any], expected: Declared | None) -> None:
    assert declared(spec) == expected


def test_a_build_plan_declares_what_its_definition_did() -> None:
    """A cluster version's declared packages come from its build plan's files: the same as its manifest's."""
    for extra in ({"pip": ["numpy==2.1.0", "pandas>=2"]}, {"conda": CONDA, "pip": ["scipy"]}):
        spec = spec_of(manifest(PIP_ENV, **extra))
        plan = render(spec, definition_hash(spec))
        files = [{"path": f.path, "content": f.content} for f in plan.files]
        assert declared_from_plan(files) == declared(spec.to_kube())
    assert declared_from_plan([]) == Declared()  # a plan that installs no packages
    assert declared_from_plan([{"path": "pip-lock.txt", "content": "numpy==2.1.0\n"}]) is None  # pinned: unknown


def environment(**spec: Any) -> str:
    body = {"image": "python:3.11-slim", "pip": ["numpy==2.1.0", "pandas>=2"], "dockerSteps": ["ENV A=1"], **spec}
    return yaml.safe_dump({"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment",
                           "metadata": {"name": "train"}, "spec": {k: v for k, v in body.items() if v is not None}})


GIT = {"git": {"url": "https://example.com/r.git", "ref": "a" * 40}}

# (id, the other side's spec changes, exit code, lines shown)
DIFF_CASES: list[tuple[str, dict[str, Any], int, list[str]]] = [
    ("same", {}, Exit.OK, ["no differences"]),
    ("pip-pin", {"pip": ["numpy==2.2.0", "pandas>=2"]}, Exit.FAILED,
     ["pip requirements: 0 added, 0 removed, 1 changed", "  ~ numpy ==2.1.0 -> ==2.2.0"]),
    ("pip-added-removed", {"pip": ["numpy==2.1.0", "scipy==1.14"]}, Exit.FAILED,
     ["pip requirements: 1 added, 1 removed, 0 changed", "  + scipy==1.14", "  - pandas>=2"]),
    ("pip-unpinned", {"pip": ["numpy", "pandas>=2"]}, Exit.FAILED, ["  ~ numpy ==2.1.0 -> (any version)"]),
    ("pip-order", {"pip": ["pandas>=2", "numpy==2.1.0"]}, Exit.FAILED,  # the order is part of the hash
     ["the definitions differ in what is not shown here"]),
    ("conda", {"pip": None, "conda": {"channels": ["conda-forge", "bioconda"],
                                      "dependencies": ["python=3.12", {"pip": ["numpy==2.1.0"]}]}}, Exit.FAILED,
     ["conda channels: (none) -> conda-forge, bioconda", "conda dependencies: 1 added, 0 removed, 0 changed",
      "  + python=3.12", "conda pip requirements: 1 added, 0 removed, 0 changed", "pip requirements: 0 added, "
      "2 removed, 0 changed"]),
    ("base-image", {"image": "python:3.12-slim"}, Exit.FAILED, ["base image: python:3.11-slim -> python:3.12-slim"]),
    ("docker-steps", {"dockerSteps": ["ENV A=2"]}, Exit.FAILED, ["docker steps:", "  - ENV A=1", "  + ENV A=2"]),
    ("build-context", {"image": None, "pip": None, "dockerSteps": None, "build": GIT}, Exit.FAILED,
     ['build: (none) -> {"dockerfilePath":"Dockerfile","git":{"path":"","ref":"' + "a" * 40,
      "pip requirements: 0 added, 2 removed, 0 changed"]),
    ("metadata-only", {"description": "other words", "environmentVariables": {"A": "1"}}, Exit.OK,
     ["no differences"]),
]


def run_diff(a: str, b: str, output: str | None = None, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def no_cluster() -> Any:
        raise AssertionError("files never ask the cluster")

    code = diff(no_cluster, "ns", a, b, out, err, output, io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("case", "changes", "code", "lines"), DIFF_CASES, ids=[c[0] for c in DIFF_CASES])
def test_diff_of_two_manifests(case: str, changes: dict[str, Any], code: int, lines: list[str],
                               tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(environment())
    (tmp_path / "b.yaml").write_text(environment(**changes))
    got, out, err = run_diff(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert got == code, out + err
    for line in lines:
        assert any(shown.startswith(line) for shown in out.splitlines()), f"{line!r} not in\n{out}"
    printed = json.loads(run_diff(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "json")[1])
    assert printed["differ"] is (code == Exit.FAILED)


def test_diff_reads_one_side_from_standard_input(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(environment())
    code, out, _ = run_diff(str(tmp_path / "a.yaml"), "-", stdin=environment(pip=["numpy==2.2.0", "pandas>=2"]))
    assert code == Exit.FAILED and "+++ <stdin> (train:1)" in out and "~ numpy ==2.1.0 -> ==2.2.0" in out
    assert run_diff("-", "-", stdin=environment())[0] == Exit.USAGE


@pytest.mark.parametrize(("content", "words"), [
    (None, "no-such.yaml: no such file"),
    ("kind: Environment\nspec: [", "not valid YAML"),
    ("apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: x}\nspec: {pip: ['a$b']}\n",
     "spec.pip[0]"),
    ("# envkiln lock v1\n[pip]\nnot a pin\n", "is not a pinned pip package"),
], ids=["missing", "bad-yaml", "invalid", "bad-lock"])
def test_a_side_that_cannot_be_read_is_trouble_not_a_difference(content: str | None, words: str,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(environment())
    other = tmp_path / ("no-such.yaml" if content is None else "b.yaml")
    if content is not None:
        other.write_text(content)
    code, out, err = run_diff(str(tmp_path / "a.yaml"), str(other))
    assert (code, out) == (Exit.USAGE, "") and err.startswith("error: ") and words in err
    assert len(err.splitlines()) == 1


def test_a_pinned_lock_is_compared_as_resolved_packages(tmp_path: Path) -> None:
    lock_a = "# envkiln lock v1\n[pip]\nnumpy==2.1.0\npandas==2.2.3\n"
    lock_b = "# envkiln lock v1\n[pip]\nnumpy==2.1.0\npandas==2.2.2\n"
    (tmp_path / "a.yaml").write_text(environment(lock=lock_a))
    (tmp_path / "b.yaml").write_text(environment(lock=lock_b))
    code, out, _ = run_diff(str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert code == Exit.FAILED and "pip packages: 0 added, 0 removed, 1 changed" in out
    assert "~ pandas 2.2.3 -> 2.2.2" in out and "pip requirements" not in out  # the declared ones are the same


@pytest.mark.parametrize(("reference", "is_file"), [
    ("-", True), ("train", False), ("train:2", False), ("env.yaml", True), ("x.lock", True), ("dir/env", True),
    ("my.env", False),
])
def test_what_names_a_file(reference: str, is_file: bool) -> None:
    assert is_file_reference(reference) is is_file


def test_comparing_a_manifest_to_itself_finds_nothing() -> None:
    side = text_side("a.yaml", environment(conda=CONDA))
    found = compare(side, side)
    assert not found.differ and found.notes == []


def test_the_envkiln_command_diffs_two_files_whose_pip_pins_differ(tmp_path: Path) -> None:
    """The installed command, as a user runs it: the difference shown, exit 1; the same file: exit 0."""
    (tmp_path / "a.yaml").write_text(environment())
    (tmp_path / "b.yaml").write_text(environment(pip=["numpy==2.2.0", "pandas>=2"]))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # no kubeconfig: files never need one
    result = subprocess.run([BIN / "envkiln", "diff", "a.yaml", "b.yaml"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "~ numpy ==2.1.0 -> ==2.2.0" in result.stdout and result.stderr == ""
    same = subprocess.run([BIN / "envkiln", "diff", "a.yaml", "-", "-o", "json"], input=environment(),
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["differ"] is False
