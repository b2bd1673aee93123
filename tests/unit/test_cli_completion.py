"""Shell completion: the engine (words typed -> what may come next) as a table, the scripts that
`envkiln completion bash|zsh|fish` prints, run by the shells themselves where they are installed."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from envkiln.cli.completion import Completion, cobra_complete_command, complete, complete_command
from envkiln.cli.main import build_parser

BIN = Path(sys.executable).parent
PARSER = build_parser()
ASKED: list[dict[str, str]] = []


def names(flags: Mapping[str, str]) -> list[str]:
    """The cluster's Environment names, as a test plays them; the flags typed are recorded."""
    ASKED.append(dict(flags))
    return ["torch", "sklearn", "tensorflow"]


def values(found: Completion) -> list[str]:
    return [value for value, _ in found.candidates]


# (id, words typed, the first candidates (or all, with a trailing "$"), kind)
CASES: list[tuple[str, list[str], list[str], str]] = [
    ("commands", [""], ["hash", "validate", "render", "crds", "image", "list", "import", "wait", "logs", "lock",
                        "diff", "completion", "run", "$"], "none"),
    ("command-prefix", ["l"], ["list", "logs", "lock", "$"], "none"),
    ("global-flags", ["--k"], ["--kubeconfig", "$"], "none"),
    ("command-flags", ["wait", "--t"], ["--timeout", "$"], "none"),
    ("global-flags-after-the-command", ["list", "--con"], ["--context", "$"], "none"),
    ("format-choices", ["list", "-o", ""], ["json", "yaml", "name", "$"], "none"),
    ("format-after-equals-is-done", ["list", "-o=json", ""], [], "none"),
    ("kubeconfig-is-a-file", ["--kubeconfig", ""], [], "files"),
    ("manifest-files", ["hash", ""], [], "files"),
    ("more-manifest-files", ["validate", "a.yaml", ""], [], "files"),
    ("environment-names", ["wait", "t"], ["torch", "tensorflow", "$"], "none"),
    ("diff-sides", ["diff", ""], ["torch", "sklearn", "tensorflow", "$"], "files"),
    ("diff-second-side", ["diff", "a.yaml", "s"], ["sklearn", "$"], "files"),
    ("nothing-after-the-last-positional", ["diff", "a", "b", ""], [], "none"),
    ("value-of-a-flag-is-skipped", ["-n", "team", "logs", "--attempt", "2", ""], ["torch"], "none"),
    ("nested-command", ["import", ""], ["azureml", "$"], "none"),
    ("nested-command-files", ["import", "azureml", ""], [], "files"),
    ("directories", ["import", "azureml", "--root", ""], [], "dirs"),
    ("shells", ["completion", ""], ["bash", "zsh", "fish", "$"], "none"),
    ("free-text-value", ["wait", "torch", "--timeout", ""], [], "none"),
]


@pytest.mark.parametrize(("case", "words", "expected", "kind"), CASES, ids=[c[0] for c in CASES])
def test_complete(case: str, words: list[str], expected: list[str], kind: str) -> None:
    found = complete(PARSER, words, names)
    if expected[-1:] == ["$"]:
        assert values(found) == expected[:-1]
    else:
        assert values(found)[:len(expected)] == expected
    assert found.kind == kind


def test_names_are_asked_with_the_typed_cluster_flags() -> None:
    ASKED.clear()
    complete(PARSER, ["--context", "prod", "wait", "-n", "team", "--kubeconfig=/k", ""], names)
    assert ASKED == [{"context": "prod", "namespace": "team", "kubeconfig": "/k"}]


def test_descriptions_come_from_the_help() -> None:
    found = dict(complete(PARSER, [""], names).candidates)
    assert found["wait"].startswith("wait until NAME[:VERSION] is Ready")
    assert all(len(text) <= 70 for text in found.values())


def test_the_two_output_formats() -> None:
    out = io.StringIO()
    complete_command(PARSER, ["list", "-o", "j"], out, names)
    assert out.getvalue() == "none\njson\t\n"
    out = io.StringIO()
    cobra_complete_command(PARSER, ["hash", ""], out, names)
    assert out.getvalue() == ":0\n"  # Cobra's default: the shell completes file names
    out = io.StringIO()
    cobra_complete_command(PARSER, ["wait", "to"], out, names)
    assert out.getvalue() == "torch\tEnvironment\n:4\n"  # no file names


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_command_prints_each_script(shell: str) -> None:
    result = subprocess.run([str(BIN / "envkiln"), "completion", shell], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert "__complete" in result.stdout and "envkiln" in result.stdout and len(result.stdout.splitlines()) > 10


def shell_run(shell: str, script: str, tmp_path: Path) -> str:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here")
    (tmp_path / "env.yaml").write_text("kind: Environment\n")
    (tmp_path / "dir").mkdir()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 0, result
    return result.stdout


def test_bash_completes_commands_flags_and_files(tmp_path: Path) -> None:
    script = """source <(envkiln completion bash)
complete -p envkiln
ask() { COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _envkiln; echo "${COMPREPLY[*]}"; }
ask envkiln wa
ask envkiln list -o ''
ask envkiln hash ''
ask envkiln import azureml --root ''
"""
    lines = shell_run("bash", script, tmp_path).splitlines()
    assert lines[0] == "complete -F _envkiln envkiln"
    assert lines[1:4] == ["wait", "json yaml name", "dir env.yaml"]
    assert lines[4] == "dir"


def test_zsh_script(tmp_path: Path) -> None:
    """Registered with compdef; run with the completion system's own functions played (they need a terminal)."""
    script = """autoload -U compinit && compinit -u
source <(envkiln completion zsh)
print -r -- ${_comps[envkiln]}
_describe() { local name=${@[-1]}; print -l -- "${(@P)name}"; }
_files() { print -r -- "FILES $*"; }
words=(envkiln wa); CURRENT=2; _envkiln
words=(envkiln list -o ''); CURRENT=4; _envkiln
words=(envkiln hash ''); CURRENT=3; _envkiln
words=(envkiln import azureml --root ''); CURRENT=5; _envkiln
"""
    lines = shell_run("zsh", script, tmp_path).splitlines()
    assert lines[0] == "_envkiln"
    assert lines[1].startswith("wait:wait until NAME[:VERSION] is Ready")
    assert lines[2:] == ["json:", "yaml:", "name:", "FILES ", "FILES -/"]


def test_fish_script(tmp_path: Path) -> None:
    script = """envkiln completion fish | source
complete -C 'envkiln wa'
complete -C 'envkiln list -o '
complete -C 'envkiln hash e'
"""
    printed = shell_run("fish", script, tmp_path).splitlines()
    assert printed[0].startswith("wait\twait until NAME[:VERSION] is Ready")
    assert sorted(line.split("\t")[0] for line in printed[1:4]) == ["json", "name", "yaml"]
    assert printed[4:] == ["env.yaml"]
