"""The cluster as the `envkiln` command reaches it: the global flags (`--kubeconfig`, `--context`,
`-n`, `--request-timeout`), the connection made from them at first use, and the namespace.

Commands other than `wait` read through Kube with a short retry policy (three tries over a few
seconds on 429, 5xx and broken connections, then exit 4): a person at a terminal hears at once that
the API server is away. `wait` retries by itself, until its own --timeout. Every request has a time
limit: 10 s to connect and 60 s for an answer (a followed log: none), or --request-timeout.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

from envkiln.adapters.kube import Kube
from envkiln.adapters.kubeclient import Connection, KubeconfigError, Timeouts, connect
from envkiln.cli.errors import ClusterError
from envkiln.cli.follow import Cluster
from envkiln.core.decisions.retry import RetryPolicy

# A few seconds of retries (a restarting API server), then the error.
CLI_RETRIES = RetryPolicy(attempts=3, base_seconds=0.25, cap_seconds=2.0, max_retry_after_seconds=5.0,
                          deadline_seconds=5.0)
CONNECT_SECONDS, READ_SECONDS = 10.0, 60.0
NO_RETRIES = RetryPolicy(attempts=1)


def process_started(clock: float | None = None) -> float:
    """When this process started, as a `time.monotonic()` value: a --timeout counts from there, as
    `timeout 3 envkiln ...` would (starting Python and loading the kubernetes client take a good part
    of a second). Linux's /proc gives it to 10 ms; elsewhere: now."""
    now = time.monotonic() if clock is None else clock
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        elapsed = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - elapsed if 0 <= elapsed < 60 else now


def request_timeouts(limit: float | None, deadline: float | None = None) -> Timeouts:
    """The time limits of each request: --request-timeout (0: no limit on answers, as kubectl's), else
    the defaults; never beyond `deadline`."""
    if limit is None:
        return Timeouts(connect=CONNECT_SECONDS, read=READ_SECONDS, deadline=deadline)
    if limit == 0:
        return Timeouts(connect=CONNECT_SECONDS, read=None, deadline=deadline)
    return Timeouts(connect=min(CONNECT_SECONDS, limit), read=limit, deadline=deadline)


@dataclass
class Session:
    """The global flags of one command, and the connection made from them at first use."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace_flag: str | None = None
    request_timeout: float | None = None  # seconds for each request (--request-timeout; None: the defaults)
    _connection: Connection | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Session:
        """The session of a command's arguments (made once; kept as `args.session`, where `main`
        finds the API server's address for an error message)."""
        existing = getattr(args, "session", None)
        if isinstance(existing, Session):
            return existing
        session = cls(getattr(args, "kubeconfig", None), getattr(args, "context", None),
                      getattr(args, "namespace", None), getattr(args, "request_timeout_seconds", None))
        args.session = session
        return session

    def connect(self, deadline: float | None = None) -> Connection:
        """The connection (made once); `deadline` bounds every request made on it."""
        if self._connection is None:
            timeouts = request_timeouts(self.request_timeout, deadline)
            try:
                self._connection = connect(self.kubeconfig, self.context, timeouts)
            except KubeconfigError as error:
                raise ClusterError(str(error)) from None
        return self._connection

    @property
    def namespace(self) -> str:
        """-n, else the context's namespace, else `default` (as kubectl)."""
        return self.namespace_flag or self.connect().namespace

    def cluster(self, deadline: float | None = None) -> Cluster:
        """What the commands read; with `deadline` (`wait`), no retries below the caller's."""
        connection = self.connect(deadline)
        return Cluster(Kube(connection.api_client, NO_RETRIES if deadline is not None else CLI_RETRIES),
                       connection.server)

    @property
    def server(self) -> str:
        return self._connection.server if self._connection is not None else ""
