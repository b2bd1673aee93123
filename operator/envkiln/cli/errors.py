"""The `envkiln` command's exit codes, and the errors that end a command with one of them.

Every expected failure ends the command with one line on standard error (`error: ...`) and one
of these codes; docs/cli.md and `envkiln --help` show the same table (EXIT_CODES).
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_READY = 3
    CLUSTER = 4
    NOT_FOUND = 5
    INTERRUPTED = 130


# (code, when): the table of `envkiln --help` and docs/cli.md.
EXIT_CODES: tuple[tuple[Exit, str], ...] = (
    (Exit.OK, "success: Ready, valid, no differences, printed"),
    (Exit.FAILED, "the answer is no: the build failed (wait, logs -f), the sides differ (diff), a manifest is "
                  "invalid (validate, hash, render), an import had errors"),
    (Exit.USAGE, "usage: a bad flag or argument, a file that cannot be read, or (diff) a side that cannot be "
                 "compared"),
    (Exit.NOT_READY, "not Ready: wait's --timeout ran out; image or lock of an Environment not built yet"),
    (Exit.CLUSTER, "the cluster: no kubeconfig or context, API server unreachable, credentials or RBAC "
                   "refused (401, 403), any other API error"),
    (Exit.NOT_FOUND, "not found: the Environment, version, EnvironmentBuild, lock or envkiln's CRDs"),
    (Exit.INTERRUPTED, "interrupted (Ctrl-C)"),
)


def exit_codes_text() -> str:
    """The table as `envkiln --help` shows it."""
    return "exit codes:\n" + "\n".join(f"  {int(code):<4} {text}" for code, text in EXIT_CODES)


class CliError(Exception):
    """Ends the command: `error: MESSAGE` on standard error, exit `code`."""

    code: Exit = Exit.FAILED

    def __init__(self, message: str, code: Exit | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CliError):
    code = Exit.USAGE


class NotReady(CliError):
    code = Exit.NOT_READY


class ClusterError(CliError):
    code = Exit.CLUSTER


class NotFound(CliError):
    code = Exit.NOT_FOUND


def exit_for_status(status: int | None) -> Exit:
    """The exit code of an API failure that outlasted the retries: 404 is something not found (an
    object, or the envkiln.dev API itself); everything else (no answer, 401, 403, 409, 422, 429, 5xx)
    is the cluster's."""
    return Exit.NOT_FOUND if status == 404 else Exit.CLUSTER
