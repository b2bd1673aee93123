"""The `envkiln` command's exit codes and one-line errors, as tables: what each failure maps to, what an
API refusal or a dead connection says, the time limits of each request."""

from __future__ import annotations

import argparse
import json
import socket

import pytest
import urllib3
from kubernetes.client import ApiException

from envkiln.adapters.kubeclient import Timeouts, describe_failure
from envkiln.cli.errors import EXIT_CODES, CliError, ClusterError, Exit, NotFound, NotReady, UsageError, exit_for_status
from envkiln.cli.main import build_parser, failure_exit, main
from envkiln.cli.session import CONNECT_SECONDS, READ_SECONDS, request_timeouts


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [int(code) for code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes)) == len(Exit)
    assert codes[:6] == [0, 1, 2, 3, 4, 5]
    help_text = build_parser().format_help()
    for code, text in EXIT_CODES:
        assert f"  {int(code):<4} {text}" in help_text, code


@pytest.mark.parametrize(("status", "code"), [
    (None, Exit.CLUSTER),  # no answer at all
    (401, Exit.CLUSTER),
    (403, Exit.CLUSTER),
    (404, Exit.NOT_FOUND),
    (409, Exit.CLUSTER),
    (422, Exit.CLUSTER),
    (429, Exit.CLUSTER),
    (500, Exit.CLUSTER),
    (503, Exit.CLUSTER),
])
def test_exit_for_an_api_status(status: int | None, code: Exit) -> None:
    assert exit_for_status(status) == code


@pytest.mark.parametrize(("error", "code"), [
    (UsageError("x"), Exit.USAGE),
    (NotReady("x"), Exit.NOT_READY),
    (ClusterError("x"), Exit.CLUSTER),
    (NotFound("x"), Exit.NOT_FOUND),
])
def test_each_error_has_its_code(error: CliError, code: Exit) -> None:
    assert error.code == code


def api_exception(status: int, message: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="Reason")
    error.body = json.dumps({"kind": "Status", "message": message}) if message else None
    return error


# What urllib3 names in its errors (made, never connected).
POOL = urllib3.HTTPConnectionPool("h", 6443)


def refused() -> urllib3.exceptions.MaxRetryError:
    cause = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("h", 6443),
        "Failed to establish a new connection: [Errno 111] Connection refused")
    return urllib3.exceptions.MaxRetryError(POOL, "/apis", cause)


def wrapped(cause: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(POOL, "/apis", cause)


# (id, error, status, exit code, words in the message)
FAILURES: list[tuple[str, BaseException, int | None, int, str]] = [
    ("forbidden", api_exception(403, 'environments.envkiln.dev is forbidden: User "u" cannot list'), 403,
     Exit.CLUSTER, 'answered 403: environments.envkiln.dev is forbidden: User "u" cannot list (ask for RBAC'),
    ("unauthorized", api_exception(401, "Unauthorized"), 401, Exit.CLUSTER, "credentials were refused"),
    ("not-found", api_exception(404, "the server could not find the requested resource"), 404, Exit.NOT_FOUND,
     "answered 404: the server could not find"),
    ("server-error-without-body", api_exception(503), 503, Exit.CLUSTER, "answered 503: 503 Reason"),
    ("refused", refused(), None, Exit.CLUSTER, "cannot reach the API server https://h:6443: connection refused"),
    ("connect-timeout", wrapped(urllib3.exceptions.ConnectTimeoutError(None, "timed out")), None, Exit.CLUSTER,
     "no connection within the time limit"),
    ("read-timeout", urllib3.exceptions.ReadTimeoutError(POOL, "/apis", "Read timed out."),
     None, Exit.CLUSTER, "no answer within the time limit"),
    ("tls", wrapped(urllib3.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")),
     None, Exit.CLUSTER, "TLS failed"),
    ("broken", urllib3.exceptions.ProtocolError("Connection aborted."), None, Exit.CLUSTER,
     "the connection broke"),
    ("reset", ConnectionResetError(104, "Connection reset by peer"), None, Exit.CLUSTER, "connection reset"),
]


@pytest.mark.parametrize(("case", "error", "status", "code", "words"), FAILURES, ids=[f[0] for f in FAILURES])
def test_an_api_failure_in_one_line(case: str, error: BaseException, status: int | None, code: int,
                                    words: str) -> None:
    failure = describe_failure(error, "https://h:6443")
    assert failure is not None and failure.status == status
    assert words in failure.message and "\n" not in failure.message
    assert failure_exit(error, "https://h:6443") == (code, failure.message)


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("x"), socket.gaierror()])
def test_other_exceptions_are_not_taken_for_api_failures(error: BaseException) -> None:
    assert failure_exit(error) is None


def test_main_ends_every_expected_failure_in_one_line(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The command functions raise; main prints `error: ...` and returns the code, no traceback."""
    import envkiln.cli.offline as offline

    for raised, code in ((NotFound("Environment 'x' not found"), Exit.NOT_FOUND), (refused(), Exit.CLUSTER),
                         (api_exception(403, "forbidden"), Exit.CLUSTER), (KeyboardInterrupt(), Exit.INTERRUPTED)):
        def command(args: argparse.Namespace, raised: BaseException = raised) -> int:
            raise raised
        monkeypatch.setattr(offline, "cmd_validate", command)
        assert main(["validate", "x.yaml"]) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.splitlines()) <= 1
        assert code == Exit.INTERRUPTED or err.startswith("error: ")
    monkeypatch.setattr(offline, "cmd_validate", lambda args: 1 // 0)
    with pytest.raises(ZeroDivisionError):  # a bug is not an expected failure: its traceback is kept
        main(["validate", "x.yaml"])


@pytest.mark.parametrize(("argv", "words"), [
    (["wait"], "envkiln wait: the following arguments are required: NAME[:VERSION] (see envkiln wait --help)"),
    (["list", "-o", "xml"], "argument -o/--output: invalid choice: 'xml'"),
    (["frob"], "argument COMMAND: invalid choice: 'frob'"),
    (["wait", "x", "--timeout", "soon"], "--timeout: 'soon' is not a duration"),
    (["list", "--request-timeout=-1s"], "argument --request-timeout: '-1s' is not a duration"),
    (["image"], "image: give NAME[:VERSION] or --hash"),
    (["image", "x", "--hash", "abc"], "not both"),
    (["completion", "tcsh"], "invalid choice: 'tcsh'"),
    (["run", "--kubeconfig", "k"], "unrecognized arguments: --kubeconfig k"),
    (["--kubeconfig", "k", "run"], "run reads $KUBECONFIG"),
], ids=["missing-argument", "bad-format", "bad-command", "bad-timeout", "bad-request-timeout", "image-nothing",
        "image-both", "bad-shell", "run-kubeconfig-after", "run-kubeconfig-before"])
def test_usage_errors_exit_2_in_one_line(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == Exit.USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err


# --- time limits -------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("timeouts", "streaming", "expected"), [
    (Timeouts(connect=10, read=60), False, (10, 60)),
    (Timeouts(connect=10, read=60), True, (10, None)),  # a followed log may be quiet for long
    (Timeouts(connect=10, read=None), False, (10, None)),
    # With a deadline (wait): nothing outlives it, a followed log neither.
    (Timeouts(connect=10, read=60, deadline=103.0, clock=Clock(100.0)), False, (3.0, 3.0)),
    (Timeouts(connect=1, read=60, deadline=103.0, clock=Clock(100.0)), True, (1, 3.0)),
    (Timeouts(connect=10, read=None, deadline=103.0, clock=Clock(100.0)), False, (3.0, 3.0)),
    (Timeouts(connect=10, read=60, deadline=103.0, clock=Clock(104.0)), False, (0.05, 0.05)),  # past: at once
], ids=["defaults", "stream", "no-read-limit", "deadline", "deadline-stream", "deadline-no-read-limit",
        "deadline-passed"])
def test_the_time_limits_of_one_request(timeouts: Timeouts, streaming: bool,
                                        expected: tuple[float | None, float | None]) -> None:
    assert timeouts.for_request(streaming) == expected


@pytest.mark.parametrize(("flag", "connect", "read"), [
    (None, CONNECT_SECONDS, READ_SECONDS),
    (0.0, CONNECT_SECONDS, None),  # --request-timeout 0: no limit on answers, as kubectl's
    (2.0, 2.0, 2.0),
    (30.0, CONNECT_SECONDS, 30.0),
])
def test_request_timeout_flag(flag: float | None, connect: float, read: float | None) -> None:
    timeouts = request_timeouts(flag)
    assert (timeouts.connect, timeouts.read, timeouts.deadline) == (connect, read, None)


def test_the_defaults_main_shows_are_the_models_defaults() -> None:
    """main.py names them without importing the models (so --help and TAB stay fast)."""
    from envkiln.cli import main as cli_main
    from envkiln.core.definition import DEFAULT_IMAGE_TEMPLATE
    from envkiln.core.models import DEFAULT_CURATED_NAMESPACE

    assert (cli_main.DEFAULT_TEMPLATE, cli_main.DEFAULT_CURATED_NAMESPACE) == (
        DEFAULT_IMAGE_TEMPLATE, DEFAULT_CURATED_NAMESPACE)

