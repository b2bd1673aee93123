"""Which Kubernetes API failures to retry, and how long to wait before the next try.

Retried: 429 (API Priority and Fairness, or any throttling), 5xx (an API server restarting or
overloaded) and a connection that broke (`status` None). Not retried: every other 4xx, which the
caller handles (404 absent, 409 conflict, 422 invalid) or must report.

The wait honours `Retry-After` (seconds, or an HTTP date) when the server sends one, capped so a
wrong header cannot stall a handler; otherwise it is exponential with full jitter, capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # tries in all, the first one included
    base_seconds: float = 0.1  # the first backoff's ceiling (before jitter)
    cap_seconds: float = 5.0  # no exponential wait is longer
    max_retry_after_seconds: float = 30.0  # no server-requested wait is longer
    deadline_seconds: float = 60.0  # give up once this much time went to waiting


def is_retryable(status: int | None) -> bool:
    """`status` is the HTTP status, or None when no response came (connection reset or refused)."""
    return status is None or status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(policy: RetryPolicy, retry: int, retry_after: float | None, jitter: float) -> float:
    """The wait before retry number `retry` (1 = the first retry).

    `jitter` is a random number in [0, 1), passed in so the function stays pure. With a server
    hint the wait is the hint (capped) plus up to one base interval, so that clients told the
    same second do not come back together; without one it is full jitter over the capped
    exponential ceiling.
    """
    if retry_after is not None:
        return min(retry_after, policy.max_retry_after_seconds) + jitter * policy.base_seconds
    ceiling = min(policy.cap_seconds, policy.base_seconds * 2.0 ** (retry - 1))
    return jitter * ceiling


def should_retry(policy: RetryPolicy, status: int | None, retry: int, waited_seconds: float) -> bool:
    """Whether to make retry number `retry` after a failure with `status`, having waited so long already."""
    return is_retryable(status) and retry < policy.attempts and waited_seconds < policy.deadline_seconds
