"""Builders turn an EnvironmentBuild's plan into a pushed image. One attempt at a time.

Every builder (Kaniko and buildah Jobs, the local builder) answers the same two questions,
idempotently: `start(build, attempt)` (safe to call again for the same attempt) and
`observe(build, attempt)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class AttemptState(StrEnum):
    MISSING = "Missing"  # nothing runs for this attempt (never started, or its runner died)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class AttemptResult:
    state: AttemptState
    digest: str | None = None
    log_tail: str | None = None
    reason: str | None = None
    name: str | None = None  # the Job name, for kaniko


class BuildCannotStart(Exception):
    """The attempt cannot start (no push identity, quota, admission, context changed); `reason` is a condition
    reason and the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Builder(Protocol):
    name: str

    def start(self, build: dict[str, Any], attempt: int) -> str | None: ...

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult: ...


def tail(text: str, lines: int = 40, max_chars: int = 8000) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-max_chars:]
