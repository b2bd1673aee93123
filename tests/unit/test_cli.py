"""The envkiln command: hash, validate, render, crds; clean errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from envkiln.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_hash_works_on_every_example(capsys) -> None:  # type: ignore[no-untyped-def]
    assert len(EXAMPLES) >= 4
    assert main(["hash", "--json", *map(str, EXAMPLES)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["kind"] for r in rows} == {"SystemManaged", "BuildContext", "BringYourOwnContainer"}
    for row in rows:
        assert len(row["hash"]) == 32
        if row["kind"] != "BringYourOwnContainer":
            assert row["image"] == f"localhost:5000/envkiln/default/env_{row['hash']}:{row['hash']}"


def test_hash_registry_and_template(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
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


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Environment\nspec:\n  pip: [unclosed\n")
    assert main(["validate", str(bad)]) == 1
    assert "not valid YAML at line" in capsys.readouterr().err


def test_validate_reports_every_bad_document(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
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


def test_configmap_context_from_the_same_file_or_a_directory(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
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
