"""The API retry policy (envkiln.core.decisions.retry), and Kube.call applying it, without a server.

The same retries against a real API server that throttles: tests/integration/test_kube_retry.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3
from kubernetes import client

from envkiln.adapters.kube import Kube, unreachable
from envkiln.core.decisions.retry import RetryPolicy, backoff_seconds, is_retryable, parse_retry_after, should_retry

POLICY = RetryPolicy(attempts=5, base_seconds=0.1, cap_seconds=2.0, max_retry_after_seconds=10.0,
                     deadline_seconds=30.0)


@pytest.mark.parametrize(("status", "retryable"), [
    (None, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (409, False), (422, False), (501, False),
])
def test_is_retryable(status: int | None, retryable: bool) -> None:
    assert is_retryable(status) is retryable


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("  ", None), ("soon", None),
    ("1", 1.0), (" 3 ", 3.0), ("0", 0.0), ("-4", 0.0), ("2.5", 2.5),
    ("Thu, 01 Jan 2026 12:00:07 GMT", 7.0),  # an HTTP date
    ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),  # in the past: no wait
])
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


# (retry number, Retry-After seconds, jitter, expected wait)
BACKOFF = [
    (1, None, 0.0, 0.0),  # full jitter may retry at once
    (1, None, 0.999, 0.0999),
    (2, None, 0.5, 0.1),  # ceiling 0.2
    (3, None, 1.0, 0.4),
    (6, None, 1.0, 2.0),  # 3.2 capped at 2
    (30, None, 1.0, 2.0),
    (1, 1.0, 0.0, 1.0),  # the server's word
    (5, 1.0, 0.5, 1.05),  # plus a little jitter, not exponential
    (1, 600.0, 0.0, 10.0),  # capped
]


@pytest.mark.parametrize(("retry", "retry_after", "jitter", "wait"), BACKOFF)
def test_backoff_seconds(retry: int, retry_after: float | None, jitter: float, wait: float) -> None:
    assert backoff_seconds(POLICY, retry, retry_after, jitter) == pytest.approx(wait)


@pytest.mark.parametrize(("status", "retry", "waited", "again"), [
    (429, 1, 0.0, True), (503, 4, 0.0, True), (None, 4, 29.0, True),
    (429, 5, 0.0, False),  # attempts used up (5 tries in all)
    (503, 2, 30.0, False),  # waited long enough
    (404, 1, 0.0, False), (409, 1, 0.0, False),
])
def test_should_retry(status: int | None, retry: int, waited: float, again: bool) -> None:
    assert should_retry(POLICY, status, retry, waited) is again


class Flaky:
    """A generated-API method that fails with the given errors, then answers."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0
        self.__name__ = "flaky"

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def api_error(status: int, retry_after: str | None = None) -> client.ApiException:
    error = client.ApiException(status=status, reason="test")
    error.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error


def kube(policy: RetryPolicy = POLICY) -> tuple[Kube, list[float]]:
    slept: list[float] = []
    return Kube(client.ApiClient(), policy=policy, sleep=slept.append, jitter=lambda: 0.5), slept


def test_call_retries_throttling_and_outages_then_succeeds() -> None:
    k, slept = kube()
    method = Flaky(api_error(429, "2"), api_error(503), urllib3.exceptions.ProtocolError("reset"))
    assert k.call(method, "a", b=1) == "ok"
    assert method.calls == 4
    assert slept == pytest.approx([2.05, 0.1, 0.2])  # Retry-After honoured; then jittered backoff
    assert k.retries == {"429": 1, "503": 1, "connection": 1}


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_call_does_not_retry_client_errors(status: int) -> None:
    k, slept = kube()
    method = Flaky(api_error(status))
    with pytest.raises(client.ApiException) as raised:
        k.call(method)
    assert raised.value.status == status and method.calls == 1 and slept == [] and not k.retries


def test_call_gives_up_after_the_attempts() -> None:
    k, slept = kube(RetryPolicy(attempts=3, base_seconds=0.1))
    method = Flaky(*(api_error(500) for _ in range(5)))
    with pytest.raises(client.ApiException):
        k.call(method)
    assert method.calls == 3 and len(slept) == 2 and k.retries == {"500": 2}


def test_create_or_get_follows_a_409_after_a_retried_create() -> None:
    """A create that went through but whose answer was lost is retried, gets 409, and reads the object."""
    k, _ = kube()

    class Custom:
        def __init__(self) -> None:
            self.create = Flaky(urllib3.exceptions.ProtocolError("reset"), api_error(409))

        def create_namespaced_custom_object(self, *args: Any) -> Any:
            return self.create(*args)

        def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
            return {"metadata": {"name": "b"}, "theirs": True}

    k._custom = Custom()
    obj, created = k.create_or_get("environmentbuilds", "ns", {"metadata": {"name": "b"}})
    assert obj["theirs"] and created is False and k.retries == {"connection": 1}


NO_POOL: Any = None  # the pool only names the connection in the message
# As urllib3 2 raises it (its str names the connection: "HTTPConnection(host=..., port=...): ...").
REFUSED = urllib3.exceptions.NewConnectionError(
    "HTTPConnection(host='10.0.0.1', port=6443)", "Failed to establish a new connection: [Errno 111] refused")


@pytest.mark.parametrize(("error", "line"), [
    (urllib3.exceptions.MaxRetryError(NO_POOL, "/apis", REFUSED),
     "MaxRetryError: HTTPConnection(host='10.0.0.1', port=6443): Failed to establish a new connection: "
     "[Errno 111] refused"),
    (urllib3.exceptions.ProtocolError("Connection aborted."), "ProtocolError: Connection aborted."),
    (urllib3.exceptions.ReadTimeoutError(NO_POOL, "/apis", "Read timed out."),
     "ReadTimeoutError: None: Read timed out."),
    (ConnectionResetError(104, "Connection reset by peer"),
     "ConnectionResetError: [Errno 104] Connection reset by peer"),
    (TimeoutError("timed out"), "TimeoutError: timed out"),
    (client.ApiException(status=500, reason="Internal"), None),  # the server answered: its message is logged
    (KeyError("status"), None),  # envkiln's own defect: logged with its traceback
    (ValueError("bad"), None),
])
def test_an_unreachable_api_server_is_one_line_without_a_traceback(error: BaseException, line: str | None) -> None:
    assert unreachable(error) == line
