"""The envkiln command: hash, validate, render, crds; clean errors and exit codes; `-` and directories.
(The cluster commands: test_cli_cluster.py; diff: test_cli_diff.py; completion: test_cli_completion.py.)"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envkiln.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_hash_works_on_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(EXAMPLES) >= 4
    assert main(["hash", "--json", *map(str, EXAMPLES)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["kind"] for r in rows} == {"SystemManaged", "BuildContext", "BringYourOwnContainer"}
    for row in rows:
        assert len(row["hash"]) == 32
        if row["kind"] != "BringYourOwnContainer":
            assert row["image"] == f"localhost:5000/envkiln/default/env_{row['hash']}:{row['hash']}"


def test_hash_registry_and_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "python-pip.yaml"
    assert main(["hash", "--registry", "reg.example.com", "--template", "{registry}/ml/{hash}", str(example)]) == 0
    name, version, value, image = capsys.readouterr().out.split()
    assert (name, version) == ("python-pip", "1") and image == f"reg.example.com/ml/{value}:{value}"


def test_bad_file_exits_nonzero_with_field_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: x}\n"
                   "spec: {image: python, pip: ['numpy; rm -rf /']}\n")
    result = subprocess.run([sys.executable, "-m", "envkiln.cli", "validate", str(bad)], capture_output=True,
                            text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "operator")})
    assert result.returncode == 1
    assert "spec.pip[0]" in result.stderr and "Traceback" not in result.stderr


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Environment\nspec:\n  pip: [unclosed\n")
    assert main(["validate", str(bad)]) == 1
    assert "not valid YAML at line" in capsys.readouterr().err


def test_validate_reports_every_bad_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "many.yaml"
    docs.write_text((ROOT / "examples" / "python-pip.yaml").read_text() + "\n---\n"
                    "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: a}\nspec: {}\n---\n"
                    "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: b}\nspec: {image: 'X'}\n")
    assert main(["validate", str(docs)]) == 1
    captured = capsys.readouterr()
    assert "ok:" in captured.out and "python-pip" in captured.out
    assert "Environment a" in captured.err and "Environment b" in captured.err


def test_render_writes_dockerfile_and_context(tmp_path: Path) -> None:
    assert main(["render", str(ROOT / "examples" / "sklearn-conda.yaml"), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "Dockerfile").read_text().startswith("# Rendered by envkiln")
    assert "scikit-learn" in (tmp_path / "conda.yaml").read_text()


def test_configmap_context_from_the_same_file_or_a_directory(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "build-context.yaml"
    assert main(["hash", "--json", str(example)]) == 0
    from_file = json.loads(capsys.readouterr().out)["hash"]
    only_env = tmp_path / "env.yaml"
    only_env.write_text(example.read_text().split("---\n", 1)[1])
    assert main(["hash", str(only_env)]) == 1
    assert "spec.build.configMap" in capsys.readouterr().err
    import yaml
    cm = yaml.safe_load(example.read_text().split("---\n", 1)[0])
    context = tmp_path / "ctx"
    context.mkdir()
    for key, value in cm["data"].items():
        (context / key).write_text(value)
    assert main(["hash", "--json", "--context-dir", str(context), str(only_env)]) == 0
    assert json.loads(capsys.readouterr().out)["hash"] == from_file


def test_crds_command_writes_the_generated_files(tmp_path: Path) -> None:
    assert main(["crds", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "envkiln.dev_environments.yaml").read_text() == (
        ROOT / "crds" / "envkiln.dev_environments.yaml").read_text()


# --- standard input, directories, files that are not there ------------------------------------------

BIN = Path(sys.executable).parent


def test_standard_input_is_read_for_dash(tmp_path: Path) -> None:
    """The installed command: `-` reads the manifests from standard input, as kubectl's `-f -`."""
    example = (ROOT / "examples" / "python-pip.yaml").read_text()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    from_file = subprocess.run([BIN / "envkiln", "hash", "-o", "json", str(ROOT / "examples" / "python-pip.yaml")],
                               capture_output=True, text=True, env=env, timeout=60)
    from_stdin = subprocess.run([BIN / "envkiln", "hash", "-o", "json", "-"], input=example, capture_output=True,
                                text=True, env=env, timeout=60)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == json.loads(from_file.stdout)
    validated = subprocess.run([BIN / "envkiln", "validate", "-"], input=example, capture_output=True, text=True,
                               env=env, timeout=60)
    assert validated.stdout == "ok: <stdin>: Environment python-pip (SystemManaged)\n"
    bad = subprocess.run([BIN / "envkiln", "validate", "-"], input="kind: Environment\nspec: {pip: 3}\n",
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: <stdin>: Environment ?: ")


def test_hash_output_formats(capsys: pytest.CaptureFixture[str]) -> None:
    two = [str(ROOT / "examples" / "python-pip.yaml"), str(ROOT / "examples" / "sklearn-conda.yaml")]
    assert main(["hash", "-o", "yaml", *two]) == 0
    listed = yaml.safe_load(capsys.readouterr().out)
    assert listed["kind"] == "List" and [i["name"] for i in listed["items"]] == ["python-pip", "sklearn-conda"]
    assert main(["hash", "-o", "json", two[0]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "python-pip"  # one: the object itself
    assert main(["-n", "team", "hash", "--json", two[0]]) == 0  # -n before the command: the image path's namespace
    assert "/envkiln/team/env_" in json.loads(capsys.readouterr().out)["image"]


def test_a_directory_stands_for_its_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("python-pip.yaml", "sklearn-conda.yaml"):
        (tmp_path / name).write_text((ROOT / "examples" / name).read_text())
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert main(["validate", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize(("argv", "words"), [
    (["validate", "no-such.yaml"], "no-such.yaml: no such file"),
    (["hash", "-", "-"], "- (standard input) can be given once"),
    (["render", "{empty}"], "a directory without .yaml, .yml, .json files"),
    (["hash", "--context-dir", "no-such-dir", str(ROOT / "examples" / "build-context.yaml")], ""),
], ids=["missing", "stdin-twice", "empty-directory", "context-dir-unused"])
def test_files_that_cannot_be_read_are_usage_errors(argv: list[str], words: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    if not words:  # the ConfigMap is in the file: --context-dir is not read
        assert code == 0, err
        return
    assert code == 2 and err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(("argv", "namespaces"), [
    (["run"], None),
    (["run", "--namespace", "a", "--namespace", "b", "--standalone"], ["a", "b"]),
    (["-n", "a", "run"], ["a"]),
])
def test_run_starts_the_operator_on_the_namespaces_to_watch(argv: list[str], namespaces: list[str] | None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import envkiln.runtime.runner as runner

    started: list[argparse.Namespace] = []

    def run_operator(args: argparse.Namespace) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(runner, "run_operator", run_operator)
    assert main(argv) == 0
    assert started[0].namespace == namespaces and started[0].standalone == ("--standalone" in argv)
