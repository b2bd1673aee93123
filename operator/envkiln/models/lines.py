"""Validated text: the lines users write (requirements, channels, dependencies, docker steps).

Bounds keep specs small enough for etcd and keep the CRD's CEL rules within the API server's
cost budget.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

MAX_LINE = 1024
MAX_PACKAGES = 500
MAX_STEPS = 100
MAX_STEP_LENGTH = 8192

# Patterns are written with ^...$ for the CRD schema (Go's `$` is the end of the text); Python's
# `$` also matches before a trailing line feed, so Python code must use re.fullmatch with them.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDA_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*$")
# Characters that could end a line or reach a shell. Requirement and dependency lines are
# written into files in the build context (never onto a RUN line), but a newline or a
# shell metacharacter there is always a mistake or an attack, so they are refused early.
SHELL_META = set("`$|&\\\n\r\t\0{}")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre", "--only-binary", "--no-binary")
# An option (`-x`, `--index-url ...`) after a requirement: pip reads per-requirement options there.
_TRAILING_OPTION = re.compile(r"\s-")
_MARKER_CHARS = re.compile(r"^[A-Za-z0-9_.\s'\"<>=!~()-]*$")
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]+\])?"  # name[extras]
    r"(\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"(\s*@\s*(https|git\+https|file)://\S+)?\s*$"
)
_CONDA_DEP = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*(\[[^\]\n]*\])?(\s*(==|=|>=|<=|>|<|!=|~=)?\s*[A-Za-z0-9.*+!_,|<>=-]*)*$"
)
# The instructions a docker step may be. FROM/COPY/ADD reach outside the image (another
# base, the build context); ONBUILD defers an instruction to images built FROM this one, where
# no check runs.
_STEP_INSTRUCTIONS = {
    "RUN", "ENV", "WORKDIR", "USER", "LABEL", "ARG", "SHELL", "EXPOSE", "VOLUME",
    "ENTRYPOINT", "CMD", "STOPSIGNAL", "HEALTHCHECK",
}
# Instructions that are Dockerfile instructions but not allowed as steps, with the reason.
_REFUSED_INSTRUCTIONS = {
    "FROM": "the base is spec.image",
    "COPY": "there is no build context",
    "ADD": "there is no build context",
    "ONBUILD": "its instruction would run in images built from this one, where nothing checks it",
}
# A line continued by a single backslash (never an escaped one), then optional blanks.
_CONTINUED = re.compile(r"^(?P<content>.*[^\\])?\\[ \t]*$")


Line = Annotated[str, StringConstraints(max_length=MAX_LINE)]


def check_line(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"{what} is empty; remove the entry")
    bad = sorted({repr(ch) for ch in text if ch in SHELL_META})
    if bad:
        raise ValueError(
            f"{what} {text!r} contains {', '.join(bad)}; line breaks and shell metacharacters are not "
            "allowed (put build commands in spec.dockerSteps)"
        )
    if not text.isascii():
        raise ValueError(f"{what} {text!r} contains non-ASCII characters (look for look-alike letters)")
    return text


def check_pip_requirement(text: str, what: str = "requirement") -> str:
    """Validate one pip requirement line (PEP 508 subset, a few index options)."""
    check_line(text, what)
    stripped = text.strip()
    if stripped.startswith("-"):
        option = stripped.split("=", 1)[0].split(" ", 1)[0]
        if option not in _PIP_OPTIONS:
            raise ValueError(
                f"{what} {text!r}: pip option {option} is not supported; allowed options: {', '.join(_PIP_OPTIONS)}"
            )
        return text
    requirement, _, marker = stripped.partition(";")
    if _TRAILING_OPTION.search(stripped):
        raise ValueError(
            f"{what} {text!r} carries a pip option after the requirement or its marker; put options on their "
            f"own line (allowed: {', '.join(_PIP_OPTIONS)})"
        )
    if marker and not _MARKER_CHARS.fullmatch(marker):
        raise ValueError(f"{what} {text!r}: the environment marker after ';' has characters a marker cannot have")
    if not _REQUIREMENT.fullmatch(requirement.strip()):
        raise ValueError(
            f"{what} {text!r} is not a pip requirement; expected e.g. 'numpy==1.26.4' or 'torch>=2.2,<3'"
        )
    return text


def _pip_item(text: str) -> str:
    return check_pip_requirement(text, "requirement")


def _channel_item(channel: str) -> str:
    check_line(channel, "channel")
    if not _CONDA_CHANNEL.fullmatch(channel):
        raise ValueError(f"{channel!r} is not a conda channel name or URL")
    return channel


def _conda_dep_item(dep: str) -> str:
    check_line(dep, "dependency")
    if not _CONDA_DEP.fullmatch(dep.strip()):
        raise ValueError(f"{dep!r} is not a conda package spec (e.g. numpy=1.26)")
    return dep


PipLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_pip_item)]
ChannelLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_channel_item)]
CondaDependency = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_conda_dep_item)]

def _control_characters(text: str) -> list[str]:
    # Besides the line feed and tab: \r, \v, \f and \x1c-\x1e (str.splitlines breaks), NUL, ESC, DEL...
    return sorted({repr(ch) for ch in text if (ord(ch) < 0x20 and ch not in "\t\n") or ord(ch) == 0x7F})


def check_docker_step(step: str) -> str:
    """One Dockerfile instruction that every Dockerfile parser reads the same way.

    The step is written into the rendered Dockerfile (stripped), so it must not be able to end
    its line early or to swallow the lines envkiln writes after it. Allowed: one line, or lines
    joined by a single trailing backslash, the continuation all parsers agree on. Refused:
    every other line-break or control character (non-ASCII ones such as U+2028 included), a
    backslash at the very end (it would continue into envkiln's next line), a line ending in
    an escaped backslash (parsers disagree on it), empty or comment continuation lines
    (BuildKit drops them and keeps continuing), comments and parser directives, heredocs (`<<`
    on a RUN line reads the following lines), and instructions outside the allow-list.
    """
    if not step.strip():
        raise ValueError("the step is empty; remove it")
    if not step.isascii():
        raise ValueError("the step contains non-ASCII characters (look for look-alike letters or line separators)")
    control = _control_characters(step)
    if control:
        raise ValueError(
            f"the step contains {', '.join(control)}; control characters (carriage return, form feed, ...) "
            "are not allowed: write one instruction per entry, continuing a long line with '\\' and a line feed"
        )
    text = step.strip()
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        content = line.strip()
        if number < len(lines):
            continued = _CONTINUED.match(line)
            if continued is None:
                raise ValueError(
                    f"the step spans several lines, but line {number} does not end with '\\' (a single one: an "
                    "escaped '\\\\' does not continue the line); give one instruction per entry"
                )
            content = (continued.group("content") or "").strip()
        elif line.endswith("\\"):
            raise ValueError(
                "the step ends with '\\', which would continue it into the next line of the Dockerfile; "
                "remove the trailing backslash"
            )
        if number > 1 and not content:
            raise ValueError(f"line {number} of the step is empty; remove the empty continuation line")
        if content.startswith("#"):
            raise ValueError(
                f"line {number} of the step is a comment or parser directive; Dockerfile parsers drop such "
                "lines inside an instruction, so docker steps cannot hold comments"
            )
    instruction = text.split(None, 1)[0].upper()
    if instruction in _REFUSED_INSTRUCTIONS:
        raise ValueError(
            f"{instruction} is not allowed in docker steps ({_REFUSED_INSTRUCTIONS[instruction]}); "
            "use spec.build with your own Dockerfile instead"
        )
    if instruction not in _STEP_INSTRUCTIONS:
        raise ValueError(
            f"the step starts with {instruction!r}, which is not a Dockerfile instruction envkiln allows; "
            "expected one of " + ", ".join(sorted(_STEP_INSTRUCTIONS))
        )
    if instruction == "RUN" and "<<" in text:
        raise ValueError(
            "the step contains '<<', which starts a heredoc that would read the following lines of the "
            "Dockerfile; write the command without '<<' (e.g. printf '...' > file)"
        )
    return step


DockerStep = Annotated[
    str, StringConstraints(max_length=MAX_STEP_LENGTH), AfterValidator(lambda step: check_docker_step(step))
]

