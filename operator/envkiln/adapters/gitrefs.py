"""Git refs to commits: what a git build context's branch or tag points at now.

A git context with `ref: main` is hashed by the commit `main` points at (envkiln.core.definition), so a
new commit on the branch is a new definition. The commit comes from one `git ls-remote`-style query
of the remote (dulwich, pure Python: git:// and https://), cached per (url, ref) for a short time.
A ref that is already a full commit (40 hex) is used as is, without asking anyone. ssh repositories
are never queried (the operator holds no keys): their ref must be a commit.

An adapter: it talks to the network, never to the cluster, and knows nothing of Kopf.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

import urllib3
from dulwich.client import (
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    TCPGitClient,
    Urllib3HttpGitClient,
    default_urllib3_manager,
)
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.protocol import DEFAULT_GIT_PROTOCOL_VERSION_FETCH, PEELED_TAG_SUFFIX, Protocol

from envkiln.core.definition import is_commit
from envkiln.core.models import EnvironmentSpec

__all__ = ["GitRefError", "GitResolver", "ListRefs", "is_commit", "list_remote_refs", "resolve_git_commit"]

FIELD = "spec.build.git"
PIN_HINT = f"pin a commit (40 hex) in {FIELD}.ref"
# How many branch names an error lists before it stops.
SHOWN_BRANCHES = 10

# (url, timeout in seconds) -> the remote's refs: full ref name (`refs/heads/main`, `refs/tags/v1`,
# `refs/tags/v1^{}` for an annotated tag's commit, `HEAD`) -> object id (hex).
ListRefs = Callable[[str, float], Mapping[str, str]]


class GitRefError(Exception):
    """A git context's ref could not be resolved to a commit; the message says why and what to do."""


def _shown(url: str) -> str:
    """The URL without a password, or an https user name (often a token), for messages."""
    parts = urlsplit(url)
    if "@" in parts.netloc and (parts.password is not None or parts.scheme in ("http", "https")):
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return url


def _is_ssh(url: str) -> bool:
    return url.startswith(("ssh://", "git+ssh://", "git@")) or (
        "://" not in url and ":" in url.split("/", 1)[0])  # scp-like user@host:org/repo


class _TimedTCPGitClient(TCPGitClient):
    """dulwich's git:// client with a deadline on connecting and on every read (dulwich sets none)."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port=port)
        self._timeout = timeout

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None,
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
        if cmd != b"upload-pack":
            raise NotImplementedError("envkiln only lists refs")
        if not isinstance(path, bytes):
            path = path.encode("utf-8")
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb", -1)
        wfile = sock.makefile("wb", 0)

        def close() -> None:
            rfile.close()
            wfile.close()
            sock.close()

        proto = Protocol(rfile.read, wfile.write, close)
        self.protocol_version = protocol_version or DEFAULT_GIT_PROTOCOL_VERSION_FETCH
        # As git does: the version is hidden behind two NULs, which servers that know nothing of it skip.
        version = b"\0\0version=%d\0" % self.protocol_version if self.protocol_version == 2 else b""
        proto.send_cmd(b"git-" + cmd, path, b"host=" + self._host.encode("idna") + version)
        return proto, lambda: bool(select.select([sock], [], [], 0)[0]), None


def _reason(error: BaseException, timeout: float) -> str:
    """Why the remote could not be asked, in a few words (the innermost cause that says it)."""
    if isinstance(error, GitProtocolError) and isinstance(error.__cause__, Exception):
        return _reason(error.__cause__, timeout)  # dulwich wraps urllib3's errors
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return _reason(error.reason, timeout)
    if isinstance(error, urllib3.exceptions.NewConnectionError) and isinstance(error.__context__, OSError):
        return _reason(error.__context__, timeout)  # the socket's own error (refused, unknown host)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, TimeoutError | urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, HTTPUnauthorized | HTTPProxyUnauthorized):
        return "it asks for credentials, which envkiln does not have"
    if isinstance(error, HangupException | NotGitRepository):
        return "no such repository, or the server refused it"
    text = str(error).strip().splitlines()
    if isinstance(error, GitProtocolError) and text:
        return text[0]  # e.g. git daemon's "no such repository: /r.git"
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def list_remote_refs(url: str, timeout: float) -> dict[str, str]:
    """Every ref of the remote repository at `url` (git:// or https://), as `git ls-remote` lists them:
    an annotated tag also as `<tag>^{}`, its commit. One query, at most `timeout` seconds per wait."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "git":
            if not parts.hostname:
                raise ValueError(f"{url!r} names no host")
            client: TCPGitClient | Urllib3HttpGitClient = _TimedTCPGitClient(parts.hostname, parts.port, timeout)
        elif parts.scheme == "https":
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port is not None else host
            base = urlunsplit(("https", netloc, "/", "", ""))
            manager = default_urllib3_manager(None, base_url=base, timeout=timeout)
            if isinstance(manager, urllib3.PoolManager):  # one try within the deadline (redirects followed)
                manager.connection_pool_kw["retries"] = urllib3.Retry(connect=0, read=0, status=0, other=0)
            client = Urllib3HttpGitClient(
                base, pool_manager=manager,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None, timeout=timeout)
        else:
            raise GitRefError(f"{FIELD}: cannot query {_shown(url)}: only git:// and https:// repositories are "
                              f"asked for their refs; {PIN_HINT}")
        result = client.get_refs(parts.path.encode("utf-8"))
    except GitRefError:
        raise
    except (OSError, GitProtocolError, NotGitRepository, HTTPUnauthorized, HTTPProxyUnauthorized,
            urllib3.exceptions.HTTPError, ValueError) as error:
        raise GitRefError(f"{FIELD}: cannot reach {_shown(url)} ({_reason(error, timeout)}); check the URL, "
                          f"or {PIN_HINT}") from error
    return {name.decode("utf-8", "replace"): sha.decode("ascii") for name, sha in result.refs.items()
            if sha is not None}


def _resolve(url: str, ref: str, refs: Mapping[str, str]) -> str:
    """The commit `ref` names among `refs`: a branch, then a tag (an annotated one peeled), then a
    full ref name."""
    peeled = PEELED_TAG_SUFFIX.decode()
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        sha = refs.get(name + peeled) or refs.get(name)
        if sha is not None:
            if not is_commit(sha):
                raise GitRefError(f"{FIELD}: {_shown(url)} gives {sha!r} for {ref!r}, not a SHA-1 commit (40 hex); "
                                  "envkiln supports SHA-1 repositories only")
            return sha.lower()
    branches = sorted(n.removeprefix("refs/heads/") for n in refs if n.startswith("refs/heads/"))
    listed = ", ".join(branches[:SHOWN_BRANCHES]) + (" ..." if len(branches) > SHOWN_BRANCHES else "")
    hint = " (a commit must be given in full: 40 hex)" if all(c in "0123456789abcdefABCDEF" for c in ref) else ""
    raise GitRefError(f"{FIELD}: {_shown(url)} has no branch or tag named {ref!r}{hint}; existing branches: "
                      f"{listed or 'none'}; fix {FIELD}.ref")


class GitResolver:
    """Resolves a git context's ref to a commit, asking the remote at most once per (url, ref) every
    `ttl_seconds` (only answers are kept: a failure is asked again next time). Thread-safe."""

    def __init__(self, ttl_seconds: float = 60.0, timeout_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, list_refs: ListRefs | None = None) -> None:
        self.ttl_seconds = ttl_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._list_refs: ListRefs = list_refs or list_remote_refs
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    def resolve(self, url: str, ref: str) -> str:
        """The commit (lowercase, 40 hex) `ref` of the repository at `url` points at now."""
        if is_commit(ref):
            return ref.lower()
        if _is_ssh(url):
            raise GitRefError(f"{FIELD}: {_shown(url)} is an ssh repository, which envkiln does not query (it "
                              f"holds no ssh keys); {PIN_HINT} instead of {ref!r}")
        key = (url, ref)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and self._clock() - cached[0] < self.ttl_seconds:
                return cached[1]
        asked_at = self._clock()
        commit = _resolve(url, ref, self._list_refs(url, self.timeout_seconds))
        with self._lock:
            now = self._clock()
            for stale in [k for k, (at, _) in self._cache.items() if now - at >= self.ttl_seconds]:
                del self._cache[stale]  # refs no Environment asks for any more do not pile up
            self._cache[key] = (asked_at, commit)
        return commit

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
