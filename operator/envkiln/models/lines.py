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

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDA_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*$")
# Characters that could end a line or reach a shell. Requirement and dependency lines are
# written into files in the build context (never onto a RUN line), but a newline or a
# shell metacharacter there is always a mistake or an attack, so they are refused early.
SHELL_META = set("`$|&\\\n\r\t\0{}")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre", "--only-binary", "--no-binary")
_MARKER_CHARS = re.compile(r"^[A-Za-z0-9_.\s'\"<>=!~()-]*$")
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]+\])?"  # name[extras]
    r"(\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"(\s*@\s*(https|git\+https|file)://\S+)?\s*$"
)
_CONDA_DEP = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*(\[[^\]\n]*\])?(\s*(==|=|>=|<=|>|<|!=|~=)?\s*[A-Za-z0-9.*+!_,|<>=-]*)*$"
)
_STEP_INSTRUCTIONS = {
    "RUN", "ENV", "WORKDIR", "USER", "LABEL", "ARG", "SHELL", "EXPOSE", "VOLUME",
    "ENTRYPOINT", "CMD", "STOPSIGNAL", "HEALTHCHECK", "ONBUILD",
}



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
    if marker and not _MARKER_CHARS.match(marker):
        raise ValueError(f"{what} {text!r}: the environment marker after ';' has characters a marker cannot have")
    if not _REQUIREMENT.match(requirement.strip()):
        raise ValueError(
            f"{what} {text!r} is not a pip requirement; expected e.g. 'numpy==1.26.4' or 'torch>=2.2,<3'"
        )
    return text


def _pip_item(text: str) -> str:
    return check_pip_requirement(text, "requirement")


def _channel_item(channel: str) -> str:
    check_line(channel, "channel")
    if not _CONDA_CHANNEL.match(channel):
        raise ValueError(f"{channel!r} is not a conda channel name or URL")
    return channel


def _conda_dep_item(dep: str) -> str:
    check_line(dep, "dependency")
    if not _CONDA_DEP.match(dep.strip()):
        raise ValueError(f"{dep!r} is not a conda package spec (e.g. numpy=1.26)")
    return dep


PipLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_pip_item)]
ChannelLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_channel_item)]
CondaDependency = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_conda_dep_item)]

def check_docker_step(step: str) -> str:
    if not step.strip():
        raise ValueError("the step is empty; remove it")
    if "\0" in step or "\r" in step:
        raise ValueError("the step contains a NUL or carriage return")
    if not step.isascii():
        raise ValueError("the step contains non-ASCII characters (look for look-alike letters)")
    lines = step.split("\n")
    for line_no, line in enumerate(lines[:-1]):
        if not line.rstrip().endswith("\\"):
            raise ValueError(
                f"the step spans several lines, but line {line_no + 1} does not end with '\\'; give one "
                "instruction per entry (continue lines with a trailing backslash)"
            )
    instruction = step.lstrip().split(None, 1)[0].upper()
    if instruction in ("FROM", "COPY", "ADD"):
        raise ValueError(
            f"{instruction} is not allowed in docker steps (there is no build context and the base "
            "is spec.image); use spec.build with your own Dockerfile instead"
        )
    if instruction not in _STEP_INSTRUCTIONS:
        raise ValueError(
            f"the step starts with {instruction!r}, which is not a Dockerfile instruction; expected one of "
            + ", ".join(sorted(_STEP_INSTRUCTIONS))
        )
    if instruction == "ONBUILD" and re.match(r"^\s*ONBUILD\s+(FROM|COPY|ADD)\b", step, re.IGNORECASE):
        raise ValueError("ONBUILD may not wrap FROM, COPY or ADD")
    return step


DockerStep = Annotated[
    str, StringConstraints(max_length=MAX_STEP_LENGTH), AfterValidator(lambda step: check_docker_step(step))
]

