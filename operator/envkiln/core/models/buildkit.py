"""BuildKit's own Dockerfile parser, typed: how Kaniko, buildah and `docker build` split a Dockerfile.

The PyPI package `dockerfile` wraps moby/buildkit's Go parser (the one Kaniko vendors), so a
step is split into instructions by exactly the rules a builder uses, line continuations,
comments dropped inside an instruction, heredocs and parser directives included; envkiln never
re-implements those rules with patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dockerfile  # type: ignore[import-not-found]  # a Go extension without type information


class DockerfileSyntaxError(ValueError):
    """BuildKit's parser refuses the text (an unterminated heredoc, an instruction without arguments...)."""


@dataclass(frozen=True)
class Instruction:
    """One instruction as BuildKit reads it. `keyword` is upper-cased ("" when BuildKit finds none)."""

    keyword: str
    sub_keyword: str | None  # ONBUILD's instruction
    original: str  # the instruction's text, continuation lines joined (heredoc bodies kept)
    json: bool
    flags: tuple[str, ...]
    value: tuple[str, ...]
    heredocs: tuple[str, ...]  # heredoc names
    start_line: int
    end_line: int

    @property
    def identity(self) -> tuple[object, ...]:
        """Everything a builder acts on; not where in the file it stands."""
        return (self.keyword, self.sub_keyword, self.original, self.json, self.flags, self.value, self.heredocs)


def _instruction(command: Any) -> Instruction:
    return Instruction(
        keyword=str(command.cmd or "").upper(),
        sub_keyword=str(command.sub_cmd).upper() if command.sub_cmd else None,
        original=str(command.original),
        json=bool(command.json),
        flags=tuple(str(flag) for flag in command.flags),
        value=tuple(str(part) for part in command.value),
        heredocs=tuple(str(heredoc.name) for heredoc in getattr(command, "heredocs", ())),
        start_line=int(command.start_line),
        end_line=int(command.end_line),
    )


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (none for only blanks and comments), in order."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as error:
        message = str(error)
        if message == "file with no instructions":
            return []
        raise DockerfileSyntaxError(message) from None
    return [_instruction(command) for command in commands]
