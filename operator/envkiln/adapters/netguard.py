"""Network calls made for a tenant, bounded: a total deadline, a byte cap, a checked address, and a
share of the connections per host.

The registry client (envkiln.adapters.registryclient) and the git ref resolver
(envkiln.adapters.gitrefs) talk to hosts a tenant names, which may be hostile: slow on purpose,
endless, pointing at the cluster's own addresses, or redirecting elsewhere. Everything they need
to stay bounded lives here:

- `Deadline`: one call's total time; a watchdog shuts its sockets down when it passes, so a peer
  dripping one byte a second cannot hold a thread longer than that;
- `Dialer`: resolves a name once (within the deadline), keeps the addresses the network policy
  allows (envkiln.core.decisions.network) and connects to one of those, so what is checked is
  what is connected to;
- `HostShares`: a global bound on calls in flight plus a small share per host; a host whose
  share is full fails at once, for that host only;
- `opener`: urllib with only http(s), redirects within one origin, and every socket through the
  deadline and the dialer; `read_capped`: a body read up to a cap, never more;
- `describe_error`: what went wrong, from the exception's class, never from bytes the peer sent.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import IO, Any

from envkiln.core.decisions.network import NetworkPolicy, decide_addresses, decide_name, same_origin

MAX_REDIRECTS = 5

# (host, port, timeout) -> [(address family, socket address)], the resolver's answer in its order.
Resolve = Callable[[str, int, float], list[tuple[int, tuple[Any, ...]]]]


class AddressRefused(OSError):
    """The host is (or resolves to) an address the network policy does not allow."""

    def __init__(self, host: str, reason: str):
        super().__init__(reason)
        self.host = host
        self.reason = reason


class TooLarge(ValueError):
    """An answer went past its byte cap (and was not read further)."""

    def __init__(self, limit: int):
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


class CrossOriginRedirect(Exception):
    """A redirect to another origin (scheme, host, port): not followed. The target came from the peer,
    so it is kept for the caller but never put in a message."""

    def __init__(self, source: str, target: str):
        super().__init__("redirect to another origin")
        self.source = source
        self.target = target


class ShareFull(Exception):
    """The host already has its share of calls in flight."""

    def __init__(self, host: str, share: int):
        super().__init__(f"{share} calls to {host} already in flight")
        self.host = host
        self.share = share


class NoSlot(Exception):
    """Every slot stayed taken until the deadline."""

    def __init__(self, total: int):
        super().__init__(f"{total} calls already in flight")
        self.total = total


def resolve(host: str, port: int, timeout: float) -> list[tuple[int, tuple[Any, ...]]]:
    """getaddrinfo, waited for at most `timeout` seconds (the C resolver has no deadline of its
    own: it runs in a daemon thread that is abandoned when late, and ends with the resolver's own
    timeout). Raises socket.gaierror, or TimeoutError."""
    answer: list[tuple[int, tuple[Any, ...]]] = []
    failure: list[OSError] = []

    def run() -> None:
        try:
            answer.extend((family, address) for family, _, _, _, address in
                          socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            failure.append(error)

    worker = threading.Thread(target=run, name="envkiln-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no address within {timeout:g}s")
    if failure:
        raise failure[0]
    return answer


class Dialer:
    """Connects to a host at an address its policy allows (the one resolution is the one used)."""

    def __init__(self, policy: NetworkPolicy, resolver: Resolve = resolve):
        self.policy = policy
        self._resolve = resolver

    def addresses(self, host: str, port: int, timeout: float) -> list[tuple[int, tuple[Any, ...]]]:
        """The allowed (family, socket address) pairs of `host`; AddressRefused when there is none."""
        refused = decide_name(host, self.policy)
        if refused is not None:
            raise AddressRefused(host, refused)
        literal = _literal(host)
        if literal is not None:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            found: list[tuple[int, tuple[Any, ...]]] = [(family, (str(literal), port))]
        else:
            found = self._resolve(host, port, timeout)
        decision = decide_addresses(host, [str(address[0]) for _, address in found], self.policy)
        if decision.reason is not None:
            raise AddressRefused(host, decision.reason)
        allowed = set(decision.allowed)
        return [(family, address) for family, address in found if str(address[0]) in allowed]

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A connected socket (its timeout set to `timeout`); tries each allowed address in turn."""
        end = time.monotonic() + timeout
        last: OSError = TimeoutError("no time left to connect")
        for family, address in self.addresses(host, port, timeout):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(remaining)
                sock.connect(address)
            except OSError as error:
                sock.close()
                last = error
                continue
            sock.settimeout(timeout)
            return sock
        raise last


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class Deadline:
    """One call's total time budget. Socket timeouts alone bound each recv, not the sum of them (a
    peer dripping a byte per second never trips one); so every socket the call opens is registered
    here and a watchdog timer shuts them all down when the budget is spent. Sockets are opened by
    `dialer` (the address policy applies to each)."""

    def __init__(self, seconds: float, dialer: Dialer):
        self.seconds = seconds
        self.dialer = dialer
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self.expired = False

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self._end

    def __enter__(self) -> Deadline:
        self._timer = threading.Timer(self.remaining(), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer:
            self._timer.cancel()
        with self._lock:
            self.expired = True  # late connections of this call are refused too
            watched, self._watched = self._watched, []
        for sock in watched:  # ends the connection even where a caller's exception left its socket open
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            watched = list(self._watched)
        for sock in watched:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv/send/handshake with EOF

    def connect(self, address: tuple[str, int], timeout: object = None,
                source_address: tuple[str, int] | None = None) -> socket.socket:
        """socket.create_connection's signature: through the dialer, bounded by and watched under
        the deadline. (`source_address` is never set by the callers here.)"""
        remaining = self.remaining()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        if isinstance(timeout, int | float):
            remaining = min(remaining, timeout)
        sock = self.dialer.connect(address[0], address[1], remaining)
        # A dup shares the connection but keeps its own descriptor: TLS wrapping detaches the
        # original socket object, and shutting the dup down still ends the connection.
        watch = sock.dup()
        with self._lock:
            if not self.expired:
                self._watched.append(watch)
                return sock
        watch.close()
        sock.close()
        raise TimeoutError("deadline passed")


class HostShares:
    """At most `total` calls in flight, and at most `per_host` of them to one host. The wait for a
    slot is bounded by the caller (NoSlot); a call whose host already has its share in flight
    fails at once (ShareFull) and gives its slot back, so one slow host holds at most `per_host`
    slots and the others stay free for other hosts. Exempt hosts (the operator's own registries)
    count against the total only. Thread-safe; a host's entry lives only while it has calls in
    flight."""

    def __init__(self, total: int, per_host: int):
        if total < 1 or per_host < 1:
            raise ValueError("total and per_host must be at least 1")
        self.total = total
        self.per_host = per_host
        self.slots = threading.BoundedSemaphore(total)
        self._guard = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def in_flight(self, host: str) -> int:
        with self._guard:
            return self._in_flight.get(host.lower(), 0)

    def _take(self, host: str) -> None:
        with self._guard:
            held = self._in_flight.get(host, 0)
            if held >= self.per_host:
                raise ShareFull(host, self.per_host)
            self._in_flight[host] = held + 1

    def _give(self, host: str) -> None:
        with self._guard:
            held = self._in_flight.pop(host) - 1
            if held:
                self._in_flight[host] = held

    @contextlib.contextmanager
    def hold(self, host: str, wait: float, exempt: bool = False) -> Iterator[None]:
        key = host.lower()
        if not self.slots.acquire(timeout=max(0.0, wait)):
            raise NoSlot(self.total)
        try:
            if not exempt:
                self._take(key)
            try:
                yield
            finally:
                if not exempt:
                    self._give(key)
        finally:
            self.slots.release()


# --- urllib through the deadline and the dialer -------------------------------------------------

class _HTTPConnection(http.client.HTTPConnection):
    _create_connection: Callable[..., socket.socket]

    def __init__(self, host: str, deadline: Deadline | None = None, **kwargs: Any):
        super().__init__(host, **kwargs)
        if deadline is None:
            raise TypeError("a connection needs its call's deadline")
        self._create_connection = deadline.connect


class _HTTPSConnection(http.client.HTTPSConnection):
    _create_connection: Callable[..., socket.socket]

    def __init__(self, host: str, deadline: Deadline | None = None, **kwargs: Any):
        super().__init__(host, **kwargs)
        if deadline is None:
            raise TypeError("a connection needs its call's deadline")
        self._create_connection = deadline.connect


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, deadline=self._deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext | None):
        super().__init__()
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, deadline=self._deadline, context=self._tls)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the origin (scheme, host, port) it was asked: credentials
    are never replayed to, and answers never taken from, a host the call did not address; https
    never becomes http."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if not same_origin(req.full_url, newurl):
            fp.close()
            raise CrossOriginRedirect(req.full_url, newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()  # a HEAD stays a HEAD (the stdlib turns it into a GET)
        return new


def opener(deadline: Deadline, context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """Only what a call needs: http(s) (no file:, ftp: or data:), no proxy (a proxy would connect
    to the tenant's host itself, out of the address check), same-origin redirects."""
    director = urllib.request.OpenerDirector()
    for handler in (urllib.request.UnknownHandler(), _HTTPHandler(deadline), _HTTPSHandler(deadline, context),
                    urllib.request.HTTPDefaultErrorHandler(), _SameOriginRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        director.add_handler(handler)
    return director


def read_capped(response: IO[bytes], limit: int) -> bytes:
    """The whole body, or TooLarge once it passes `limit` bytes (at most limit + 1 are read)."""
    body = response.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(limit)
    return body


def describe_error(error: BaseException) -> str:
    """What went wrong, in a few words, from the kind of failure only: a peer's bytes (a status
    line, a message, a certificate's names) never reach the text."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError) and isinstance(
            error.reason, BaseException):
        return describe_error(error.reason)
    if isinstance(error, AddressRefused):
        return error.reason
    if isinstance(error, TooLarge):
        return f"its answer is larger than {error.limit} bytes"
    if isinstance(error, CrossOriginRedirect):
        return "it redirected to another origin, which is not followed"
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ConnectionError):
        return f"the connection was closed ({type(error).__name__})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "its TLS certificate is not trusted (SSLCertVerificationError)"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({type(error).__name__})"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, http.client.HTTPException):
        return f"its answer is not HTTP ({type(error).__name__})"
    return f"connection failed ({type(error).__name__})"
