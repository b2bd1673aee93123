"""Bounds of git ref resolution without a real remote: the per-host share (a slow host fails its
extra queries at once while another host resolves fast), one query per (url, ref) at a time, and
the address policy refusing loopback, link-local and cluster names before anything is sent.
(Real hostile servers: tests/integration/test_hostile_servers.py.)"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pytest

from envkiln.adapters.gitrefs import GitRefError, GitResolver

C1 = "1111111111111111111111111111111111111111"
SLOW = "https://slow.example/team/app.git"
VICTIM = "https://victim.example/team/app.git"


class SlowHost:
    """A `list_refs` whose queries of slow.example wait until released; other hosts answer at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, timeout: float, wanted: Sequence[str] | None = None) -> Mapping[str, str]:
        with self.lock:
            self.calls.append(url)
        if "slow.example" in url and not self.release.wait(timeout):
            raise GitRefError(f"spec.build.git: cannot reach {url} (no answer within {timeout:g}s)")
        return {"refs/heads/main": C1, **{f"refs/heads/b{i}": C1 for i in range(10)}}


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "not in time"
        time.sleep(0.01)


def test_a_slow_host_fails_its_extra_queries_at_once_and_others_stay_fast() -> None:
    remote = SlowHost()
    resolver = GitResolver(ttl_seconds=0, timeout_seconds=5, list_refs=remote, per_host=2, max_concurrent=8)
    results: list[str] = []
    holders = [threading.Thread(target=lambda b=b: results.append(resolver.resolve(SLOW, f"b{b}"))) for b in range(2)]
    for thread in holders:
        thread.start()
    wait_for(lambda: len(remote.calls) == 2)
    start = time.monotonic()
    with pytest.raises(GitRefError, match=r"2 queries of slow\.example are already in flight \(its share\)"):
        resolver.resolve(SLOW, "b5")
    assert time.monotonic() - start < 0.2
    for branch in ("main", "b1", "b2", "b3", "b4"):
        start = time.monotonic()
        assert resolver.resolve(VICTIM, branch) == C1
        assert time.monotonic() - start < 0.2, "another host is not slowed"
    remote.release.set()
    for thread in holders:
        thread.join()
    assert results == [C1, C1]


def test_one_query_per_url_and_ref_at_a_time() -> None:
    remote = SlowHost()
    resolver = GitResolver(ttl_seconds=60, timeout_seconds=5, list_refs=remote, per_host=1)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(resolver.resolve(SLOW, "main"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(remote.calls) == 1)
    time.sleep(0.1)
    remote.release.set()
    for thread in threads:
        thread.join()
    assert results == [C1] * 6 and remote.calls == [SLOW], "the others waited for the first answer (share of 1)"
    assert resolver._flights._locks == {}, "no lock left behind"


def test_waiting_for_another_query_is_bounded() -> None:
    remote = SlowHost()
    resolver = GitResolver(ttl_seconds=60, timeout_seconds=0.5, list_refs=remote)
    errors: list[GitRefError] = []

    def ask() -> None:
        try:
            resolver.resolve(SLOW, "main")
        except GitRefError as error:
            errors.append(error)
    first = threading.Thread(target=ask)
    first.start()
    wait_for(lambda: len(remote.calls) == 1)
    start = time.monotonic()
    with pytest.raises(GitRefError):
        resolver.resolve(SLOW, "main")
    assert time.monotonic() - start < 1.2
    first.join()
    assert len(errors) == 1, "the first query hit its own deadline"


@pytest.mark.parametrize(("url", "said"), [
    ("git://{loopback}/app.git", "127.0.0.1 is a loopback address"),
    ("https://{loopback}/app.git", "127.0.0.1 is a loopback address"),
    ("git://localhost:{port}/app.git", "localhost is a cluster-internal name"),
    ("git://[::1]:{port}/app.git", "::1 is a loopback address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("https://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a cluster-internal name"),
    ("git://kubernetes.default.svc/x.git", "kubernetes.default.svc is a cluster-internal name"),
    ("https://10.96.0.1/x.git", "10.96.0.1 is a cluster-internal address"),
    ("https://0.0.0.0/x.git", "0.0.0.0 is an unspecified address"),
])
def test_private_addresses_are_refused_before_any_connection(url: str, said: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        target = url.format(loopback=f"127.0.0.1:{port}", port=port)
        start = time.monotonic()
        with pytest.raises(GitRefError) as raised:
            GitResolver(timeout_seconds=2).resolve(target, "main")
        # Well inside the 2 s a connection attempt would be given (0.5 s was exceeded once on a loaded machine).
        assert time.monotonic() - start < 1.5
        message = str(raised.value)
        assert message.startswith(f"spec.build.git: cannot reach {target} ({said}; ")
        assert "ENVKILN_ALLOWED_PRIVATE_HOSTS" in message and "pin a commit" in message
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()

