"""Fuzzing: for any input, a clean error or a valid render (#14, item 10).

- docker steps built from Dockerfile-ish pieces (keywords, backslashes, line breaks of every kind,
  heredocs, comments, directives): refused with a ValueError, or rendered into a Dockerfile that
  BuildKit reads back as exactly the instructions envkiln wrote, the step among them unchanged;
- Environment documents of plausible and implausible shapes: refused with a field-named
  DefinitionError (pydantic's ValidationError underneath), or hashed and rendered as above;
- the CLI on files holding anything: exit 0 or 1 (the documented error code), never an exception.

Kept small (a few hundred examples each) so `make unit` stays fast; no example database is written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from envkiln.cli.main import main
from envkiln.core.definition import MissingContextContent, definition_hash
from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment
from envkiln.core.models import Environment, EnvironmentKind, EnvironmentSpec, buildkit, check_docker_step
from envkiln.core.render import NothingToBuild, render
from helpers import CONDA_ENV, PIP_ENV, manifest


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --- docker steps ---------------------------------------------------------------------------------

KEYWORDS = ["RUN", "run", "ENV", "LABEL", "ARG", "USER", "WORKDIR", "SHELL", "CMD", "ENTRYPOINT", "HEALTHCHECK",
            "EXPOSE", "VOLUME", "STOPSIGNAL", "FROM", "COPY", "ADD", "ONBUILD", "onbuild", "MAINTAINER", "CURL"]
PIECES = [
    " ", " ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\x00", "\x1c", "\x85", "\u2028", "\u2029", "\u0430",
    "\\", "\\\n", "\\ \n", "\\\\", "\\\\\n", "`", "<<", "<<EOF", "<<-EOF", "<<'EOF'", "EOF", "\nEOF\n",
    "#", "# escape=`\n", "# syntax=evil\n", "# check=skip=all\n", "\n#", "echo", "a=b", "A=1", "x", "'", '"',
    "[", "]", '["sh", "-c"]', "$HOME", "$((1<<2))", "&&", "|", ";", "--mount=type=bind,from=evil,target=/x",
    "--network=host", "--interval=5s", "CMD", "/", "..", "=",
]
ALLOWED = ["RUN", "run", "ENV", "LABEL", "ARG", "USER", "WORKDIR", "SHELL", "CMD", "ENTRYPOINT", "HEALTHCHECK",
           "EXPOSE", "VOLUME", "STOPSIGNAL"]
# Mostly harmless words, so that many steps pass and reach the render.
WORDS = ["echo", "a=b", "A=1", "x", "'", '"', "$HOME", "&&", "|", ";", "/", "..", "=", "-", " ", " ", " ",
         "\\\n  ", "\\\\", "`", "#", "[", "]", '["sh", "-c"]', "--interval=5s", "CMD", "$((1+2))"]
steps = st.one_of(
    # An allowed keyword and mostly harmless words, now and then a hostile piece.
    st.builds(lambda keyword, body: keyword + " " + "".join(body), st.sampled_from(ALLOWED),
              st.lists(st.sampled_from(WORDS * 6 + PIECES), min_size=1, max_size=8)),
    # Any keyword, then a body of pieces.
    st.builds(lambda keyword, sep, body: keyword + sep + "".join(body), st.sampled_from(KEYWORDS),
              st.sampled_from([" ", "\t", "\\\n ", "", "\n"]),
              st.lists(st.sampled_from(PIECES + KEYWORDS), max_size=8)),
    # Anything made of the pieces.
    st.lists(st.sampled_from(PIECES + KEYWORDS), min_size=1, max_size=10).map("".join),
    # Raw text over a Dockerfile-ish alphabet.
    st.text(alphabet=st.sampled_from("RUNENVFROMab \t\n\r\\#<>=`'\"$\u2028\x0b;-"), max_size=30),
)


def assert_reads_back(spec: EnvironmentSpec, dockerfile: str) -> None:
    """BuildKit reads the Dockerfile as envkiln wrote it: the steps unchanged, where envkiln put them."""
    instructions = buildkit.parse(dockerfile)
    first = 2  # FROM base AS envkiln-base, LABEL, the steps
    written = [buildkit.parse(step.strip()) for step in spec.docker_steps or []]
    assert all(len(alone) == 1 for alone in written)
    assert [i.identity for i in instructions[first:first + len(written)]] == [alone[0].identity for alone in written]
    assert instructions[first - 1].keyword == "LABEL"
    for instruction in instructions[first:first + len(written)]:
        assert instruction.keyword not in ("FROM", "COPY", "ADD", "ONBUILD") and not instruction.heredocs
    # The stages are envkiln's: the steps never add or change one.
    stages = [i.value for i in instructions if i.keyword == "FROM"]
    assert stages[0][1:] == ("AS", "envkiln-base")
    if spec.conda or spec.pip:
        assert stages[-3:] == [("envkiln-base", "AS", "envkiln-install"), ("envkiln-base", "AS", "envkiln-image"),
                               ("envkiln-image",)]


@fuzz(600)
@given(step=steps)
def test_docker_step_is_refused_cleanly_or_renders_as_written(step: str) -> None:
    try:
        check_docker_step(step)
    except ValueError as error:
        assert str(error) and "Traceback" not in str(error)
        # The model refuses it too, naming the field.
        try:
            parse_environment(manifest(dockerSteps=["ENV A=1", step]))
        except DefinitionError as refused:
            assert refused.problems[0].startswith("spec.dockerSteps[1]: "), refused.problems
        else:
            raise AssertionError(f"check_docker_step refused {step!r} but the model accepted it")
        return
    (alone,) = buildkit.parse(step.strip())
    assert alone.keyword in ("RUN", "ENV", "LABEL", "ARG", "USER", "WORKDIR", "SHELL", "CMD", "ENTRYPOINT",
                             "HEALTHCHECK", "EXPOSE", "VOLUME", "STOPSIGNAL")
    spec = Environment.model_validate(manifest(dockerSteps=["ENV A=1", step, "RUN true"])).spec
    assert_reads_back(spec, render(spec, definition_hash(spec)).dockerfile)


# --- Environment documents -------------------------------------------------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible, sometimes anything."""
    return st.one_of(strategy, strategy, strategy, junk)


def some(*examples: Any, text: str = "abz09.-_:/@=<>!~ \n") -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(examples), st.text(alphabet=st.sampled_from(text), max_size=16))


names = some("py", "a.b", "x-1", "Py", "py\n", "-x", "", "a" * 254, "azureml-x", "microsoft-y", text="abz09.-\n")
versions = some("1", "2024.06", "v1-rc.1", "1\n", "", "-1", "a" * 64, text="az09._-\n")
images = some("python:3.11-slim", "debian:bookworm-slim", "localhost:5000/a/b:c", "ghcr.io/x/y@sha256:" + "a" * 64,
              "Python:3", "x y", "", "a:b:c", text="az09.:/@-_ ")
pip_lines = some("numpy==2.1.3", "torch>=2.2,<3", "six", "foo; python_version>'3'", "--extra-index-url https://x/simple",
                 "foo; python_version>'3' --pre", "-e .", "pkg @ https://x/y.whl", "a[b,c]==1", "x==1\n", "$(id)", "",
                 text="az09=<>!~;,.[]@'\" -")
conda_deps = st.one_of(some("python=3.11", "pip", "numpy>=1.26", "conda-forge::x", "x[build=py*]", "a b", "x;y", ""),
                       st.fixed_dictionaries({"pip": st.lists(pip_lines, max_size=3)}))
conda = st.fixed_dictionaries(
    {"dependencies": maybe(st.lists(conda_deps, max_size=4))},
    optional={"channels": maybe(st.lists(some("conda-forge", "defaults", "https://x/c", "a b", "-x"), max_size=3)),
              "name": maybe(names)},
)
builds = st.fixed_dictionaries({}, optional={
    "configMap": maybe(st.fixed_dictionaries({"name": maybe(names)})),
    "git": maybe(st.fixed_dictionaries(
        {"url": maybe(some("https://g/r.git", "git@g:r.git", "ftp://x", "https://x y", "")),
         "ref": maybe(some("main", "v1", "-b", "--upload-pack=x", "a..b", "/etc", "main\n"))},
        optional={"path": maybe(some("", "sub", "/etc", "a/../..", "-x", "sub\n"))})),
    "tarball": maybe(st.fixed_dictionaries({"url": maybe(some("https://x/t.tgz", "http://x/t.tgz", ""))},
                                           optional={"sha256": maybe(some("a" * 64, "A" * 64, "a" * 63))})),
    "dockerfilePath": maybe(some("Dockerfile", "docker/Dockerfile", "../Dockerfile", "/Dockerfile", "a b", "")),
})
SPEC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "image": maybe(images),
    "version": maybe(versions),
    "userManaged": maybe(st.booleans()),
    "pip": maybe(st.lists(pip_lines, max_size=4)),
    "conda": maybe(conda),
    "dockerSteps": maybe(st.lists(steps, max_size=3)),
    "build": maybe(builds),
    "environmentVariables": maybe(st.dictionaries(some("A", "_B", "1A", "A\n", "A-B"), some("1", "x\x00"), max_size=3)),
    "tags": maybe(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)),
    "description": maybe(st.text(max_size=20)),
    "inference": maybe(st.fixed_dictionaries({}, optional={"port": maybe(st.integers(-1, 70000)),
                                                           "scoringRoute": maybe(some("/score", "a\nb"))})),
}
specs = st.fixed_dictionaries({}, optional=SPEC_FIELDS)
metadata = st.fixed_dictionaries({}, optional={
    "name": maybe(names), "generateName": maybe(names), "namespace": maybe(names),
    "labels": maybe(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2))})
wild_documents = st.fixed_dictionaries({}, optional={
    "apiVersion": maybe(st.sampled_from(["envkiln.dev/v1alpha1", "v1"])),
    "kind": maybe(st.sampled_from(["Environment", "ConfigMap"])),
    "metadata": maybe(metadata),
    "spec": maybe(specs),
})
BASES: list[dict[str, Any]] = [
    PIP_ENV, CONDA_ENV,
    manifest(pip=None, dockerSteps=["RUN true"]),
    manifest(pip=None, userManaged=True),
    manifest(image=None, pip=None, build={"git": {"url": "https://g/r.git", "ref": "main"}}),
    manifest(image=None, pip=None, build={"configMap": {"name": "ctx"}}),
    manifest(image=None, pip=None, build={"tarball": {"url": "https://x/t.tgz", "sha256": "a" * 64}}),
]
DELETE = object()
# One change to a plausible manifest: a spec field, a metadata field or a top-level key set or removed.
changes = st.one_of(
    *(st.tuples(st.just("spec"), st.just(key), st.one_of(value, st.just(DELETE)))
      for key, value in SPEC_FIELDS.items()),
    st.tuples(st.just("metadata"), st.sampled_from(["name", "generateName", "namespace", "labels"]),
              st.one_of(names, junk, st.just(DELETE))),
    st.tuples(st.just(""), st.sampled_from(["apiVersion", "kind", "metadata", "spec", "status"]),
              st.one_of(junk, st.just(DELETE))),
)


def changed(base: dict[str, Any], edits: list[tuple[str, str, Any]]) -> dict[str, Any]:
    document = copy.deepcopy(base)
    for section, key, value in edits:
        target = document.get(section) if section else document
        if not isinstance(target, dict):
            continue
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return document


documents = st.one_of(
    st.builds(changed, st.sampled_from(BASES), st.lists(changes, max_size=3)),
    st.builds(changed, st.sampled_from(BASES), st.lists(changes, max_size=3)),
    wild_documents,
)
context_data = st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.binary(max_size=8), max_size=3)


@fuzz(500)
@given(document=documents, data=context_data)
def test_environment_is_refused_cleanly_or_renders(document: dict[str, Any], data: dict[str, str | bytes]) -> None:
    try:
        model = Environment.model_validate(document)
    except ValidationError:
        model = None
    try:
        environment = parse_environment(document)
    except DefinitionError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
        return
    assert model is not None and model.spec == environment.spec
    spec = environment.spec
    # What the operator stores and reads back validates to the same definition.
    assert Environment.model_validate(environment.to_kube()).spec == spec
    try:
        commit = "0" * 40 if spec.build is not None and spec.build.git is not None else None  # the ref, resolved
        context = data if spec.build is not None and spec.build.config_map else None
        value = definition_hash(spec, context, commit=commit)
        plan = render(spec, value)
    except NothingToBuild:
        assert spec.kind is EnvironmentKind.BRING_YOUR_OWN
        return
    except MissingContextContent:
        raise AssertionError("context data was supplied") from None
    if spec.kind is EnvironmentKind.SYSTEM_MANAGED:
        assert_reads_back(spec, plan.dockerfile)
    else:
        assert plan.dockerfile == "" and plan.context == spec.build


# --- the CLI ---------------------------------------------------------------------------------------

YAML_PIECES = [
    "apiVersion: envkiln.dev/v1alpha1\n", "kind: Environment\n", "kind: ConfigMap\n", "metadata: {name: x}\n",
    "metadata:\n  name: x\n", "metadata: [x]\n", "spec:\n", "  image: python:3.11\n", "  pip: [six]\n",
    "  pip: [six]\n", "  build: {configMap: {name: x}}\n", "  dockerSteps: ['RUN a \\\\']\n", "data: {a: b}\n",
    "binaryData: {a: '!!!'}\n", "binaryData: {a: !!binary aGk=}\n", "data: {a: 3}\n", "---\n", "- a\n",
    "&a [*a]\n", "x: &a {y: 1}\n", "<<: *a\n", "[", "]", "{", "}", ": ", "- ", "  ", "\t", "'", '"',
    "!!python/object:os.system\n",
    "? [a]\n: b\n", "%YAML 1.1\n", "\u2028", "\ufeff", "null\n", "~\n", "1e999\n", "2024-01-01\n",
]
files = st.one_of(
    st.lists(st.sampled_from(YAML_PIECES), max_size=12).map(lambda pieces: "".join(pieces).encode()),
    st.lists(documents, min_size=1, max_size=2).map(
        lambda docs: yaml.safe_dump_all(docs, allow_unicode=True).encode()),
    st.binary(max_size=40),
)


@fuzz(200)
@given(content=files)
def test_cli_exits_zero_or_one_and_never_raises(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "env.yaml"
        path.write_bytes(content)
        for argv in (["validate", str(path)], ["hash", str(path)],
                     ["render", str(path), "-o", str(Path(directory) / "out")]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            assert code in (0, 1), (argv, code, err.getvalue())
            assert "Traceback" not in err.getvalue()
            assert (code == 1) == ("error: " in err.getvalue()), (argv, err.getvalue())


def test_fuzz_sanity_the_strategies_reach_valid_renders() -> None:
    """The document strategy is not all junk: the plain manifest it is modelled on renders."""
    spec = parse_environment(manifest(PIP_ENV, dockerSteps=["RUN true"])).spec
    assert_reads_back(spec, render(spec, definition_hash(spec)).dockerfile)
