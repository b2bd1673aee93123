"""The network guards (envkiln.adapters.netguard) on real local sockets: the dialer connects only to
an address the policy allows (the one it checked), the per-host share fails a full host at once
and leaves other hosts their slots, and error texts come from failure kinds, never from peers."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest

from envkiln.adapters.netguard import (
    AddressRefused,
    CrossOriginRedirect,
    Deadline,
    Dialer,
    HostShares,
    NoSlot,
    ShareFull,
    TooLarge,
    describe_error,
)
from envkiln.core.decisions.network import STRICT, UNRESTRICTED, NetworkPolicy

LOOPBACK = NetworkPolicy.from_entries(["127.0.0.0/8"])


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.3)
        yield sock


class FixedResolver:
    """A resolver answering `addresses` for every name; `asked` lists the names it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, timeout: float) -> list[tuple[int, tuple[Any, ...]]]:
        self.asked.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, (a, port)) for a in self.addresses]


def test_a_refused_address_is_never_connected_to(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(AddressRefused, match="loopback"):
        Dialer(STRICT).connect("127.0.0.1", port, 1.0)
    with pytest.raises(TimeoutError):
        listener.accept()


def test_an_allowed_address_is_connected_to(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with Dialer(LOOPBACK).connect("127.0.0.1", port, 1.0):
        accepted, _ = listener.accept()
        accepted.close()


def test_only_the_checked_addresses_of_a_mixed_answer_are_used(listener: socket.socket) -> None:
    # A name answering the metadata service and an allowed address: only the allowed one is dialled,
    # from the one resolution (no second query that could answer something else: DNS rebinding).
    port = listener.getsockname()[1]
    resolver = FixedResolver("169.254.169.254", "127.0.0.1")
    dialer = Dialer(LOOPBACK, resolver)
    assert dialer.addresses("mixed.example", port, 1.0) == [(socket.AF_INET, ("127.0.0.1", port))]
    with dialer.connect("mixed.example", port, 1.0) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)
        listener.accept()[0].close()
    assert resolver.asked == ["mixed.example", "mixed.example"]  # once per dial, used as answered


def test_a_name_is_refused_before_any_dns_query() -> None:
    resolver = FixedResolver("93.184.216.34")
    with pytest.raises(AddressRefused, match="cluster-internal name"):
        Dialer(STRICT, resolver).connect("kubernetes.default.svc", 443, 1.0)
    assert resolver.asked == []


def test_unrestricted_dials_anything(listener: socket.socket) -> None:
    with Dialer(UNRESTRICTED).connect("127.0.0.1", listener.getsockname()[1], 1.0):
        listener.accept()[0].close()


def test_a_deadline_refuses_connections_once_passed(listener: socket.socket) -> None:
    deadline = Deadline(0.05, Dialer(LOOPBACK))
    time.sleep(0.1)
    with pytest.raises(TimeoutError):
        deadline.connect(("127.0.0.1", listener.getsockname()[1]))


def test_a_deadline_cuts_a_silent_peer_off(listener: socket.socket) -> None:
    start = time.monotonic()
    with Deadline(0.5, Dialer(LOOPBACK)) as deadline:
        sock = deadline.connect(("127.0.0.1", listener.getsockname()[1]))
        sock.settimeout(30)
        assert sock.recv(1) == b"", "the watchdog ended the read (EOF), not the 30 s socket timeout"
        assert deadline.passed()
        sock.close()
    assert time.monotonic() - start < 1.5


# --- the per-host share --------------------------------------------------------------------------

def test_a_full_host_fails_at_once_and_other_hosts_keep_their_slots() -> None:
    shares = HostShares(total=4, per_host=2)
    with shares.hold("slow.example", 1.0), shares.hold("SLOW.example", 1.0):
        start = time.monotonic()
        with pytest.raises(ShareFull), shares.hold("slow.example", 5.0):
            pass
        assert time.monotonic() - start < 0.1, "no waiting for a full host"
        with shares.hold("victim.example", 0.1), shares.hold("victim.example", 0.1):
            assert shares.in_flight("victim.example") == 2
        assert shares.in_flight("slow.example") == 2
    assert shares.in_flight("slow.example") == 0 and shares._in_flight == {}, "no entry left behind"


def test_exempt_hosts_count_against_the_total_only() -> None:
    shares = HostShares(total=3, per_host=1)
    with shares.hold("own.registry", 0.1, exempt=True), shares.hold("own.registry", 0.1, exempt=True):
        with shares.hold("other.example", 0.1), pytest.raises(NoSlot), shares.hold("third.example", 0.1):
            pass
        assert shares.in_flight("own.registry") == 0


def test_slow_hosts_never_starve_a_victim_host() -> None:
    shares = HostShares(total=6, per_host=2)
    release = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def slow(i: int) -> None:
        try:
            with shares.hold(f"slow{i % 2}.example", 2.0):
                release.wait(5)
                outcome = "held"
        except ShareFull:
            outcome = "full"
        with lock:
            outcomes.append(outcome)
    threads = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes.count("full") == 4, "two slow hosts hold 2 + 2 of 6 slots; their other calls failed at once"
    start = time.monotonic()
    with shares.hold("victim.example", 0.5), shares.hold("victim.example", 0.5):
        pass
    assert time.monotonic() - start < 0.1
    release.set()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(("total", "per_host"), [(0, 1), (1, 0)])
def test_nonsense_shares_are_refused(total: int, per_host: int) -> None:
    with pytest.raises(ValueError):
        HostShares(total, per_host)


# --- error texts hold no peer bytes ------------------------------------------------------------------

SECRET = "AWS-SECRET-KEY-from-the-metadata-service"


@pytest.mark.parametrize(("error", "expected"), [
    (http.client.BadStatusLine(SECRET), "its answer is not HTTP (BadStatusLine)"),
    (http.client.LineTooLong(SECRET), "its answer is not HTTP (LineTooLong)"),
    (urllib.error.URLError(http.client.RemoteDisconnected(SECRET)), "the connection was closed (RemoteDisconnected)"),
    (urllib.error.URLError(ssl.SSLCertVerificationError(1, SECRET)),
     "its TLS certificate is not trusted (SSLCertVerificationError)"),
    (ssl.SSLError(1, SECRET), "TLS failed (SSLError)"),
    (ConnectionRefusedError(111, SECRET), "connection refused"),
    (socket.gaierror(-2, SECRET), "unknown host"),
    (TimeoutError(SECRET), "no answer in time"),
    (TooLarge(1024), "its answer is larger than 1024 bytes"),
    (CrossOriginRedirect("https://a/", f"http://169.254.169.254/{SECRET}"),
     "it redirected to another origin, which is not followed"),
    (OSError(SECRET), "connection failed (OSError)"),
])
def test_describe_error_never_quotes_the_peer(error: BaseException, expected: str) -> None:
    assert describe_error(error) == expected
