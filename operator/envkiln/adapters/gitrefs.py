"""Git refs to commits: what a git build context's branch or tag points at now.

A git context with `ref: main` is hashed by the commit `main` points at (envkiln.core.definition), so a
new commit on the branch is a new definition. The commit comes from one `git ls-remote`-style query
of the remote (git:// through dulwich, https:// through the bounded HTTP stack of
envkiln.adapters.netguard; protocol v2 asks only for the wanted ref), cached per (url, ref) for a
short time. A ref that is already a full commit (40 hex) is used as is, without asking anyone. ssh
repositories are never queried (the operator holds no keys): their ref must be a commit.

The remote is named by a tenant and may be hostile, so every query is bounded: one total deadline
(a remote dripping one byte a second is cut off), a byte cap on everything read, an address check
(no loopback, link-local or cluster-internal addresses unless allow-listed; the address checked
is the one connected to), redirects only within the origin (never https to http), at most
`per_host` queries in flight to one host (more fail at once, for that host only) and
`max_concurrent` in all. Error texts name the URL the user wrote, the kind of failure and what to
do; never a byte the remote sent (not even its branch names).

An adapter: it talks to the network, never to the cluster, and knows nothing of Kopf.
"""

from __future__ import annotations

import base64
import http.client
import io
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

from dulwich.client import (
    TCPGitClient,
    build_ls_refs_request_v2,
    extract_object_format_from_capabilities,
    negotiate_protocol_version,
    read_pkt_refs_v1,
    read_pkt_refs_v2,
    read_server_capabilities,
)
from dulwich.errors import GitProtocolError
from dulwich.protocol import (
    DEFAULT_GIT_PROTOCOL_VERSION_FETCH,
    PEELED_TAG_SUFFIX,
    TCP_GIT_PORT,
    Protocol,
    pkt_line,
)

from envkiln.adapters.keyedlocks import KeyedLocks
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
    opener,
    read_capped,
)
from envkiln.core.decisions.network import STRICT, NetworkPolicy
from envkiln.core.definition import is_commit
from envkiln.core.models import EnvironmentSpec

__all__ = ["GitRefError", "GitResolver", "ListRefs", "is_commit", "list_remote_refs", "resolve_git_commit"]

FIELD = "spec.build.git"
PIN_HINT = f"pin a commit (40 hex) in {FIELD}.ref"
MAX_REFS_BYTES = 1024 * 1024  # what one query may read in all (protocol v2 answers are a few lines)
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_PER_HOST = 4
_INFO_REFS = "info/refs?service=git-upload-pack"
_ADVERTISEMENT = "application/x-git-upload-pack-advertisement"

# (url, timeout in seconds, the ref names wanted or None for all) -> those refs of the remote: full ref
# name (`refs/heads/main`, `refs/tags/v1`, `refs/tags/v1^{}` for an annotated tag's commit, `HEAD`) ->
# object id (hex). The remote may answer more.
ListRefs = Callable[[str, float, Sequence[str] | None], Mapping[str, str]]


class GitRefError(Exception):
    """A git context's ref could not be resolved to a commit; the message says why and what to do."""


class _NotGit(Exception):
    """The remote answered, but not as a git repository does."""


def _shown(url: str) -> str:
    """The URL without a password, or an https user name (often a token), for messages."""
    parts = urlsplit(url)
    if "@" in parts.netloc and (parts.password is not None or parts.scheme in ("http", "https")):
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return url


def _is_ssh(url: str) -> bool:
    return url.startswith(("ssh://", "git+ssh://", "git@")) or (
        "://" not in url and ":" in url.split("/", 1)[0])  # scp-like user@host:org/repo


def wanted_refs(ref: str) -> list[str]:
    """The full ref names `ref` may stand for, in the order they win: a branch, a tag, a full name."""
    return [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]


class _Capped:
    """A read function that raises TooLarge once more than `limit` bytes went through it."""

    def __init__(self, read: Callable[[int], bytes], limit: int):
        self._read = read
        self._left = limit
        self._limit = limit

    def __call__(self, size: int) -> bytes:
        data = self._read(size)
        self._left -= len(data)
        if self._left < 0:
            raise TooLarge(self._limit)
        return data


class _GuardedTCPGitClient(TCPGitClient):
    """dulwich's git:// client, connected through the deadline (address check, watchdog) and with
    every read counted against the byte cap."""

    def __init__(self, host: str, port: int | None, deadline: Deadline, max_bytes: int) -> None:
        super().__init__(host, port=port)
        self._deadline = deadline
        self._max_bytes = max_bytes

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None,
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
        if cmd != b"upload-pack":
            raise NotImplementedError("envkiln only lists refs")
        if not isinstance(path, bytes):
            path = path.encode("utf-8")
        sock = self._deadline.connect((self._host, self._port or TCP_GIT_PORT))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb", -1)
        wfile = sock.makefile("wb", 0)

        def close() -> None:
            rfile.close()
            wfile.close()
            sock.close()

        proto = Protocol(_Capped(rfile.read, self._max_bytes), wfile.write, close)
        self.protocol_version = protocol_version or DEFAULT_GIT_PROTOCOL_VERSION_FETCH
        # As git does: the version is hidden behind two NULs, which servers that know nothing of it skip.
        version = b"\0\0version=%d\0" % self.protocol_version if self.protocol_version == 2 else b""
        proto.send_cmd(b"git-" + cmd, path, b"host=" + self._host.encode("idna") + version)
        return proto, lambda: bool(select.select([sock], [], [], 0)[0]), None


def _git_protocol_refs(host: str, port: int | None, path: str, deadline: Deadline,
                       prefixes: list[bytes], max_bytes: int) -> Mapping[bytes, bytes | None]:
    client = _GuardedTCPGitClient(host, port, deadline, max_bytes)
    return {bytes(name): sha for name, sha in client.get_refs(path.encode("utf-8"), ref_prefix=prefixes).refs.items()}


# --- smart (and dumb) HTTP, protocol v2 when the server speaks it ----------------------------------

class _Http:
    """One query's HTTP requests to one repository: same origin only, within the deadline and a
    byte budget shared by every answer."""

    def __init__(self, deadline: Deadline, tls: ssl.SSLContext | None, authorization: str | None,
                 max_bytes: int):
        self._deadline = deadline
        self._tls = tls
        self._headers = {"User-Agent": "git/2 (envkiln)", "Pragma": "no-cache"}
        if authorization:
            self._headers["Authorization"] = authorization
        self._left = max_bytes
        self._limit = max_bytes

    def request(self, url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[str, bytes, str]:
        """(content type, body, final URL) of a 200 answer; urllib.error.HTTPError otherwise."""
        request = urllib.request.Request(url, data=body, headers={**self._headers, **headers},
                                         method="POST" if body is not None else "GET")
        with opener(self._deadline, self._tls).open(request, timeout=self._deadline.remaining()) as response:
            try:
                data = read_capped(response, self._left)
            except TooLarge:
                raise TooLarge(self._limit) from None
            self._left -= len(data)
            return response.headers.get("Content-Type", ""), data, response.geturl()


def _http_refs(url: str, deadline: Deadline, prefixes: list[bytes], max_bytes: int,
               tls: ssl.SSLContext | None) -> Mapping[bytes, bytes | None]:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    authorization = None
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(user_pass.encode()).decode()
    base = urlunsplit(("https", netloc, parts.path.rstrip("/") + "/", "", ""))
    http = _Http(deadline, tls, authorization, max_bytes)
    content_type, body, final = http.request(base + _INFO_REFS, {"Accept": "*/*", "Git-Protocol": "version=2"})
    if not final.endswith("/" + _INFO_REFS):
        raise _NotGit("redirected away from the repository's refs")
    if not content_type.startswith(_ADVERTISEMENT):
        return _dumb_refs(body, prefixes)
    proto = Protocol(io.BytesIO(body).read, lambda data: None)
    first = proto.read_pkt_line()
    serviced = first is not None and first.rstrip(b"\n") == b"# service=git-upload-pack"
    if serviced:
        if list(proto.read_pkt_seq()):
            raise _NotGit("no flush after the service line")
    else:  # git http-backend leaves the service line out of a protocol v2 answer, and only then
        proto.unread_pkt_line(first)
    version = negotiate_protocol_version(proto)
    if not serviced and version != 2:
        raise _NotGit("neither the service line nor protocol v2")
    if version != 2:
        refs_v1, _ = read_pkt_refs_v1(proto.read_pkt_seq())
        return _only({bytes(name): bytes(sha) for name, sha in refs_v1.items()}, prefixes)
    capabilities = read_server_capabilities(proto.read_pkt_seq())
    commands, arguments = build_ls_refs_request_v2(
        capabilities, extract_object_format_from_capabilities(capabilities), prefixes)
    request = b"".join([*map(pkt_line, commands), b"0001", *map(pkt_line, arguments), b"0000"])
    _, answer, _ = http.request(final[: -len(_INFO_REFS)] + "git-upload-pack", {
        "Content-Type": "application/x-git-upload-pack-request", "Accept": "application/x-git-upload-pack-result",
        "Git-Protocol": "version=2"}, request)
    refs, _, peeled = read_pkt_refs_v2(Protocol(io.BytesIO(answer).read, lambda data: None).read_pkt_seq())
    merged: dict[bytes, bytes | None] = {bytes(name): sha for name, sha in refs.items()}
    merged.update({name + PEELED_TAG_SUFFIX: sha for name, sha in peeled.items()})
    return merged


def _dumb_refs(body: bytes, prefixes: list[bytes]) -> Mapping[bytes, bytes | None]:
    """A dumb HTTP server's info/refs: `<sha>\\t<name>` lines."""
    refs: dict[bytes, bytes | None] = {}
    for line in body.splitlines():
        sha, tab, name = line.partition(b"\t")
        if not tab or len(sha) not in (40, 64):
            raise _NotGit("not an info/refs listing")
        refs[name] = sha
    return _only(refs, prefixes)


def _only(refs: Mapping[bytes, bytes | None], prefixes: list[bytes]) -> dict[bytes, bytes | None]:
    return {name: sha for name, sha in refs.items() if name.startswith(tuple(prefixes))}


# --- one query -----------------------------------------------------------------------------------

def _reason(error: BaseException, timeout: float) -> str:
    """Why the remote could not be asked, from the kind of failure only (never the remote's bytes)."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError) and isinstance(
            error.reason, BaseException):
        return _reason(error.reason, timeout)
    if isinstance(error, urllib.error.HTTPError):
        if error.code in (401, 403):
            return f"it asks for credentials, which envkiln does not have (HTTP {error.code})"
        return "no such repository (HTTP 404)" if error.code == 404 else f"HTTP {error.code}"
    if isinstance(error, _NotGit):
        return "its answer is not a git repository's"
    if isinstance(error, TimeoutError):
        return f"no answer within {round(timeout, 1):g}s"
    if isinstance(error, OSError | http.client.HTTPException | AddressRefused | TooLarge | CrossOriginRedirect):
        return describe_error(error)
    if isinstance(error, GitProtocolError):
        return f"no such repository, the server refused the query, or its answer is not git's ({type(error).__name__})"
    return f"its answer is not git's protocol ({type(error).__name__})"


def _decoded(refs: Mapping[bytes, bytes | None]) -> dict[str, str]:
    return {name.decode("utf-8", "replace"): sha.decode("ascii", "replace") for name, sha in refs.items()
            if sha is not None}


def list_remote_refs(url: str, timeout: float, wanted: Sequence[str] | None = None, *,
                     policy: NetworkPolicy = STRICT, max_bytes: int = MAX_REFS_BYTES,
                     tls: ssl.SSLContext | None = None) -> dict[str, str]:
    """The refs of the remote repository at `url` (git:// or https://) named in `wanted` (every
    ref when None), as `git ls-remote` lists them: an annotated tag also as `<tag>^{}`, its
    commit. One query within `timeout` seconds in all, reading at most `max_bytes`, connecting
    only where `policy` allows. `tls`: the TLS context for https (default: the system's CAs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("git", "https"):
        raise GitRefError(f"{FIELD}: cannot query {_shown(url)}: only git:// and https:// repositories are "
                          f"asked for their refs; {PIN_HINT}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host:
        raise GitRefError(f"{FIELD}: {_shown(url)} names no host; check the URL")
    prefixes = [name.encode("utf-8") for name in wanted] if wanted is not None else [b"HEAD", b"refs/"]
    deadline = Deadline(timeout, Dialer(policy))
    with deadline:
        try:
            if parts.scheme == "git":
                refs = _git_protocol_refs(host, port, parts.path, deadline, prefixes, max_bytes)
            else:
                refs = _http_refs(url, deadline, prefixes, max_bytes, tls)
            if deadline.passed():  # an answer the watchdog cut short is no answer
                raise TimeoutError("deadline passed")
        except Exception as error:  # a hostile peer can make any parser fail: every failure means "no answer"
            reason = _reason(TimeoutError() if deadline.passed() else error, timeout)
            raise GitRefError(f"{FIELD}: cannot reach {_shown(url)} ({reason}); check the URL, or {PIN_HINT}"
                              ) from None
    return _decoded(refs)


def _resolve(url: str, ref: str, refs: Mapping[str, str]) -> str:
    """The commit `ref` names among `refs`: a branch, then a tag (an annotated one peeled), then a
    full ref name."""
    peeled = PEELED_TAG_SUFFIX.decode()
    for name in wanted_refs(ref):
        sha = refs.get(name + peeled) or refs.get(name)
        if sha is not None:
            if not is_commit(sha):
                raise GitRefError(f"{FIELD}: {_shown(url)} does not give a SHA-1 commit (40 hex) for {ref!r}; "
                                  f"envkiln supports SHA-1 repositories only; {PIN_HINT}")
            return sha.lower()
    hint = " (a commit must be given in full: 40 hex)" if all(c in "0123456789abcdefABCDEF" for c in ref) else ""
    raise GitRefError(f"{FIELD}: {_shown(url)} has no branch or tag named {ref!r}{hint}; fix {FIELD}.ref "
                      f"(`git ls-remote {_shown(url)}` lists them)")


class GitResolver:
    """Resolves a git context's ref to a commit, asking the remote at most once per (url, ref) every
    `ttl_seconds` (only answers are kept: a failure is asked again next time; concurrent asks of
    one (url, ref) wait for the first). Thread-safe."""

    def __init__(self, ttl_seconds: float = 60.0, timeout_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, list_refs: ListRefs | None = None, *,
                 policy: NetworkPolicy = STRICT, max_bytes: int = MAX_REFS_BYTES,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, per_host: int = DEFAULT_PER_HOST,
                 tls: ssl.SSLContext | None = None) -> None:
        self.ttl_seconds = ttl_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._list_refs: ListRefs = list_refs or (
            lambda url, timeout, wanted: list_remote_refs(url, timeout, wanted, policy=policy, max_bytes=max_bytes,
                                                          tls=tls))
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._flights = KeyedLocks()
        self._shares = HostShares(max_concurrent, per_host)

    def resolve(self, url: str, ref: str) -> str:
        """The commit (lowercase, 40 hex) `ref` of the repository at `url` points at now."""
        if is_commit(ref):
            return ref.lower()
        if _is_ssh(url):
            raise GitRefError(f"{FIELD}: {_shown(url)} is an ssh repository, which envkiln does not query (it "
                              f"holds no ssh keys); {PIN_HINT} instead of {ref!r}")
        key = (url, ref)
        cached = self._cached(key)
        if cached is not None:
            return cached
        end = time.monotonic() + self.timeout_seconds
        with self._flights.hold(key, self.timeout_seconds) as first:
            if not first:
                raise GitRefError(f"{FIELD}: another query of {_shown(url)} for {ref!r} did not finish within "
                                  f"{self.timeout_seconds:g}s; retried later, or {PIN_HINT}")
            cached = self._cached(key)  # answered while this one waited
            if cached is not None:
                return cached
            asked_at = self._clock()
            commit = _resolve(url, ref, self._query(url, ref, end))
        with self._lock:
            now = self._clock()
            for stale in [k for k, (at, _) in self._cache.items() if now - at >= self.ttl_seconds]:
                del self._cache[stale]  # refs no Environment asks for any more do not pile up
            self._cache[key] = (asked_at, commit)
        return commit

    def _cached(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and self._clock() - cached[0] < self.ttl_seconds:
            return cached[1]
        return None

    def _query(self, url: str, ref: str, end: float) -> Mapping[str, str]:
        """The remote's refs for `ref`, under a slot and the host's share, within what is left of the deadline."""
        host = (urlsplit(url).hostname or "").lower()
        try:
            with self._shares.hold(host, end - time.monotonic()):
                return self._list_refs(url, max(0.001, end - time.monotonic()), wanted_refs(ref))
        except ShareFull as full:
            raise GitRefError(f"{FIELD}: {full.share} queries of {host} are already in flight (its share); "
                              f"retried shortly, or {PIN_HINT}") from None
        except NoSlot as busy:
            raise GitRefError(f"{FIELD}: {busy.total} git queries are already in flight; retried shortly, or "
                              f"{PIN_HINT}") from None

    def forget(self, url: str, ref: str) -> None:
        """Drop the cached answer for (url, ref): the next resolve asks the remote."""
        with self._lock:
            self._cache.pop((url, ref), None)


def resolve_git_commit(spec: EnvironmentSpec, resolver: GitResolver) -> str | None:
    """The commit a git build context's ref points at (None when the spec has no git context)."""
    git = spec.build.git if spec.build is not None else None
    if git is None:
        return None
    return resolver.resolve(git.url, git.ref)
