"""Files the `envkiln` command reads: paths, directories (their *.yaml, *.yml and *.json files) and
`-` for standard input (once per command, as kubectl's `-f -`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from envkiln.cli.errors import UsageError

STDIN = "-"
STDIN_LABEL = "<stdin>"  # how standard input is named in messages
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class NotText(ValueError):
    """The file was read, and it is not UTF-8 text: a problem of its content (as an invalid manifest)."""


def read_text(path: str, stdin: TextIO | None = None) -> str:
    """The text of `path` (`-`: standard input); UsageError naming the path when it cannot be read,
    NotText when it is not UTF-8."""
    label = STDIN_LABEL if path == STDIN else path
    try:
        if path == STDIN:
            source = stdin or sys.stdin
            buffer = getattr(source, "buffer", None)
            return buffer.read().decode("utf-8") if buffer is not None else source.read()
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; give a file") from None
    except UnicodeDecodeError:
        raise NotText(f"{label}: not UTF-8 text") from None
    except OSError as error:
        raise UsageError(f"{label}: cannot read it ({error.strerror or error})") from None


def expand(paths: Iterable[str]) -> list[str]:
    """The files to read: a directory stands for its manifest files (sorted, not recursive); `-` at
    most once."""
    files: list[str] = []
    for path in paths:
        if path != STDIN and Path(path).is_dir():
            found = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
            if not found:
                raise UsageError(f"{path}: a directory without {', '.join(MANIFEST_SUFFIXES)} files")
            files += found
        else:
            files.append(path)
    if files.count(STDIN) > 1:
        raise UsageError("- (standard input) can be given once")
    return files


def read_all(paths: Iterable[str], stdin: TextIO | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """({label: text} of every file, in order (standard input labelled STDIN_LABEL), {label: why} of
    those that are not text); UsageError at the first that cannot be read."""
    texts, problems = {}, {}
    for path in expand(paths):
        label = STDIN_LABEL if path == STDIN else path
        try:
            texts[label] = read_text(path, stdin)
        except NotText as error:
            problems[label] = str(error)
    return texts, problems
