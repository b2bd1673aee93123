"""Ask an OCI registry whether an image exists (distribution API), with auth and a short cache.

Three outcomes, kept distinct (lessons from Flyte and BinderHub): found (with digest),
not found, and *unavailable* (network errors, 5xx, auth failures): unavailable is never
treated as found or missing; callers surface it as RegistryUnavailable and retry.

The registry is a network peer, not trusted to behave, so every lookup is bounded:
- one total deadline (`timeout`) covers the wait for a slot, every request (token fetch
  included) and every byte; a watchdog shuts the lookup's sockets down when it passes, so a
  registry dripping a byte at a time cannot hold a handler longer than that;
- at most `max_concurrent` lookups talk to registries at once; the wait counts against the deadline;
- redirects are followed only within one origin (scheme, host, port); a redirect elsewhere is
  RegistryRedirectRefused (a RegistryUnavailable), never followed with our credentials, and a
  manifest body that arrived through any redirect is never hashed into a digest;
- answers are capped at MAX_BODY_BYTES.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import re
import socket
import ssl
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from envkiln.core.imageref import ImageReference, parse_image_reference

if TYPE_CHECKING:
    from envkiln.adapters.metrics import Metrics

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)


class RegistryUnavailable(RuntimeError):
    """The registry could not answer (down, 5xx, refused credentials). Retry later."""

    def __init__(self, registry: str, reason: str):
        super().__init__(f"registry {registry} unavailable: {reason}")
        self.registry = registry
        self.reason = reason


class RegistryRedirectRefused(RegistryUnavailable):
    """The registry redirected a lookup to another origin (scheme, host or port): not followed."""

    def __init__(self, registry: str, source: str, target: str):
        super().__init__(registry, f"refused redirect from {_origin_text(source)} to another origin "
                                   f"{_origin_text(target)} (redirects are followed only within the registry's origin)")
        self.target = target


@dataclass(frozen=True)
class ManifestLookup:
    found: bool
    digest: str | None = None


@dataclass
class Credentials:
    username: str
    password: str


def credentials_from_docker_config(config_json: str | bytes) -> dict[str, Credentials]:
    """Registry host -> credentials, from a dockerconfigjson document."""
    document = json.loads(config_json)
    result: dict[str, Credentials] = {}
    for host, entry in (document.get("auths") or {}).items():
        host = re.sub(r"^https?://", "", host).rstrip("/")
        if host.endswith("/v1") or host.endswith("/v2"):
            host = host.rsplit("/", 1)[0]
        if host in ("index.docker.io", "registry-1.docker.io"):
            host = "docker.io"
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        else:
            user, password = entry.get("username", ""), entry.get("password", "")
        result[host] = Credentials(user, password)
    return result


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


MAX_BODY_BYTES = 4 * 1024 * 1024  # a manifest or token answer; registries cap manifests at 4 MiB
MAX_REDIRECTS = 5
DEFAULT_MAX_CONCURRENT = 8


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a malformed port never matches anything
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


class _CrossOriginRedirect(Exception):
    def __init__(self, source: str, target: str):
        super().__init__(f"redirect from {_origin_text(source)} to {_origin_text(target)}")
        self.source = source
        self.target = target


class _Deadline:
    """One lookup's total time budget. Socket timeouts alone bound each recv, not the sum of
    them (a registry dripping a byte per second never trips one); so every socket the lookup
    opens is registered here and a watchdog timer shuts them all down when the budget is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self.expired = False

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self._end

    def __enter__(self) -> _Deadline:
        self._timer = threading.Timer(self.remaining(), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer:
            self._timer.cancel()
        with self._lock:
            self.expired = True  # late connections of this lookup are refused too
            watched, self._watched = self._watched, []
        for sock in watched:
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
        """socket.create_connection, bounded by and watched under the deadline."""
        remaining = self.remaining()
        if remaining <= 0:
            raise TimeoutError("lookup deadline passed")
        if isinstance(timeout, int | float):
            remaining = min(remaining, timeout)
        sock = socket.create_connection(address, remaining, source_address)
        # A dup shares the connection but keeps its own descriptor: TLS wrapping detaches the
        # original socket object, and shutting the dup down still ends the connection.
        watch = sock.dup()
        with self._lock:
            if not self.expired:
                self._watched.append(watch)
                return sock
        watch.close()
        sock.close()
        raise TimeoutError("lookup deadline passed")


class _HTTPConnection(http.client.HTTPConnection):
    _create_connection: Callable[..., socket.socket]

    def __init__(self, host: str, deadline: _Deadline | None = None, **kwargs: Any):
        super().__init__(host, **kwargs)
        if deadline:
            self._create_connection = deadline.connect


class _HTTPSConnection(http.client.HTTPSConnection):
    _create_connection: Callable[..., socket.socket]

    def __init__(self, host: str, deadline: _Deadline | None = None, **kwargs: Any):
        super().__init__(host, **kwargs)
        if deadline:
            self._create_connection = deadline.connect


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, deadline=self._deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: ssl.SSLContext | None):
        super().__init__()
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, deadline=self._deadline, context=self._tls)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the origin (scheme, host, port) it was asked: credentials
    are never replayed to, and answers never taken from, a host the lookup did not address."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise _CrossOriginRedirect(req.full_url, newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()  # a HEAD stays a HEAD (the stdlib turns it into a GET)
        return new


def _opener(deadline: _Deadline, context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    # Only what a lookup needs: no file:, ftp: or data: handlers for a realm URL to reach.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTPHandler(deadline),
                    _HTTPSHandler(deadline, context), urllib.request.HTTPDefaultErrorHandler(),
                    _SameOriginRedirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _read_capped(response: IO[bytes]) -> bytes:
    body = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
    return body


def _file_in_layer(blob: bytes, path: str) -> bytes | None:
    """A regular file from a (gzip or plain) layer tar; None when absent or not a file."""
    raw = blob
    if blob[:2] == b"\x1f\x8b":  # bounded: a small layer must not inflate into gigabytes
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflate.decompress(blob, 4 * MAX_BODY_BYTES)
        except zlib.error:
            return None
        if inflate.unconsumed_tail:
            return None
    wanted = path.lstrip("/")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            for member in archive:
                if member.name.lstrip("./").lstrip("/") == wanted and member.isfile():
                    handle = archive.extractfile(member)
                    return handle.read() if handle is not None else None
    except tarfile.TarError:
        return None
    return None


@dataclass
class RegistryClient:
    """Thread-safe. Each lookup (the wait for a slot, every request including a token fetch,
    every byte read) finishes within `timeout` seconds in total or raises RegistryUnavailable;
    at most `max_concurrent` lookups talk to registries at once."""

    insecure_registries: set[str] = field(default_factory=set)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    timeout: float = 10.0
    cache_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic  # the cache's clock; deadlines use real time
    requests_made: int = 0
    metrics: Metrics | None = None  # lookup latency and errors (envkiln.adapters.metrics)
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    _cache: dict[str, tuple[float, ManifestLookup]] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    _slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        self._slots = threading.BoundedSemaphore(self.max_concurrent)

    def lookup(self, image: str | ImageReference, use_cache: bool = True) -> ManifestLookup:
        """Found/not found for a tag or digest reference; raises RegistryUnavailable."""
        deadline = _Deadline(self.timeout)
        reference = parse_image_reference(image) if isinstance(image, str) else image
        key = str(reference)
        registry = reference.resolved_registry()
        # One request per image at a time: concurrent reconciles of environments with the
        # same definition wait for the first answer instead of asking again (within the deadline).
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        try:
            return self._locked_lookup(reference, key, registry, lock, deadline, use_cache)
        except RegistryUnavailable:
            if self.metrics is not None:
                self.metrics.registry_error(registry)
            raise

    def _locked_lookup(self, reference: ImageReference, key: str, registry: str, lock: threading.Lock,
                       deadline: _Deadline, use_cache: bool) -> ManifestLookup:
        if not lock.acquire(timeout=deadline.remaining()):
            raise RegistryUnavailable(registry, f"another lookup of {key} did not finish within {self.timeout:g}s")
        try:
            if use_cache:
                cached = self._cache.get(key)
                if cached and self.clock() - cached[0] < self.cache_ttl:
                    return cached[1]
            if not self._slots.acquire(timeout=deadline.remaining()):
                raise RegistryUnavailable(registry, f"{self.max_concurrent} registry lookups already in flight; "
                                          f"no slot within {self.timeout:g}s")
            started = time.monotonic()
            try:
                with deadline:
                    result = self._lookup(reference, deadline)
            finally:
                self._slots.release()
                if self.metrics is not None:
                    self.metrics.registry_lookup(registry, time.monotonic() - started)
            if result.found:
                self._cache[key] = (self.clock(), result)  # only positives: a missing image may appear any moment
            else:
                self._cache.pop(key, None)
            return result
        finally:
            lock.release()

    def read_last_layer_file(self, image: str, path: str) -> bytes | None:
        """The file `path` from the last layer of `image` (repository@digest), e.g. the lock a build
        wrote into its own last layer. None when that layer does not hold it. The manifest and the
        layer are each capped at MAX_BODY_BYTES, the layer is checked against its digest, and only
        a single-platform image is read. Raises RegistryUnavailable."""
        deadline = _Deadline(self.timeout)
        reference = parse_image_reference(image)
        registry, repository = reference.resolved_registry(), reference.resolved_repository()
        base = f"{self._base_url(registry)}/v2/{repository}"
        if not self._slots.acquire(timeout=deadline.remaining()):
            raise RegistryUnavailable(registry, f"{self.max_concurrent} registry requests already in flight")
        try:
            with deadline:
                status, _, body, _ = self._request("GET", f"{base}/manifests/{reference.manifest_reference()}",
                                                   registry, repository, deadline)
                if status != 200:
                    raise RegistryUnavailable(registry, f"HTTP {status} for the manifest of {image}")
                try:
                    layers = json.loads(body).get("layers") or []
                except (ValueError, AttributeError):
                    raise RegistryUnavailable(registry, f"the manifest of {image} is not an image manifest") from None
                if not layers or not isinstance(layers[-1], dict) or not str(layers[-1].get("digest", "")).startswith(
                        "sha256:"):
                    return None
                layer_digest = str(layers[-1]["digest"])
                status, _, blob, _ = self._request("GET", f"{base}/blobs/{layer_digest}", registry, repository,
                                                   deadline)
                if status != 200:
                    raise RegistryUnavailable(registry, f"HTTP {status} for layer {layer_digest} of {image}")
        except ValueError as error:  # an answer over the cap
            raise RegistryUnavailable(registry, f"{image}: {error}") from None
        finally:
            self._slots.release()
        if "sha256:" + hashlib.sha256(blob).hexdigest() != layer_digest:
            raise RegistryUnavailable(registry, f"layer {layer_digest} of {image} does not match its digest")
        return _file_in_layer(blob, path)

    def forget(self, image: str) -> None:
        self._cache.pop(str(parse_image_reference(image)), None)

    def _base_url(self, registry: str) -> str:
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        scheme = "http" if registry in self.insecure_registries else "https"
        return f"{scheme}://{host}"

    def _lookup(self, reference: ImageReference, deadline: _Deadline) -> ManifestLookup:
        registry = reference.resolved_registry()
        repository = reference.resolved_repository()
        url = f"{self._base_url(registry)}/v2/{repository}/manifests/{reference.manifest_reference()}"
        status, headers, _, _ = self._request("HEAD", url, registry, repository, deadline)
        if status == 404:
            return ManifestLookup(found=False)
        if status == 200:
            digest = headers.get("Docker-Content-Digest")
            if not digest:
                # The digest header is only a SHOULD: hash the manifest body instead, but only
                # one served at the manifest's own URL (a redirected body is some other document).
                status, _, body, final_url = self._request("GET", url, registry, repository, deadline)
                if status != 200:
                    raise RegistryUnavailable(registry, f"HTTP {status} on GET after HEAD 200")
                if final_url != url:
                    raise RegistryUnavailable(registry, "manifest body came through a redirect; "
                                              "not hashing it into a digest")
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
            return ManifestLookup(found=True, digest=digest)
        if status == 401:
            # Some registries answer 401 for a repository that does not exist (BinderHub's
            # not_found_401); without credentials for it we cannot tell: say so explicitly.
            raise RegistryUnavailable(registry, "401 Unauthorized: credentials missing or refused for "
                                      f"{repository} (set ENVKILN_REGISTRY_SECRET)")
        if status == 403:
            raise RegistryUnavailable(registry, f"403 Forbidden for {repository}")
        raise RegistryUnavailable(registry, f"unexpected HTTP {status}")

    def _context(self, registry: str) -> ssl.SSLContext | None:
        if registry in self.insecure_registries:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return None

    def _timed_out(self, registry: str) -> RegistryUnavailable:
        return RegistryUnavailable(registry, f"no complete answer within the {self.timeout:g}s lookup deadline")

    def _request(self, method: str, url: str, registry: str, repository: str, deadline: _Deadline,
                 retried: bool = False) -> tuple[int, dict[str, str], bytes, str]:
        """(status, headers, body, final URL); raises RegistryUnavailable."""
        if deadline.passed():
            raise self._timed_out(registry)
        headers = {"Accept": ACCEPT, "User-Agent": "envkiln"}
        token = self._tokens.get((registry, repository))
        creds = self.credentials.get(registry)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif creds:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        request = urllib.request.Request(url, method=method, headers=headers)
        self.requests_made += 1
        try:
            with _opener(deadline, self._context(registry)).open(request, timeout=deadline.remaining()) as response:
                result = (response.status, dict(response.headers),
                          _read_capped(response) if method == "GET" else b"", response.geturl())
        except _CrossOriginRedirect as redirect:
            raise RegistryRedirectRefused(registry, redirect.source, redirect.target) from None
        except urllib.error.HTTPError as error:
            error.close()
            if deadline.passed():
                raise self._timed_out(registry) from None
            if error.code == 401 and not retried:
                challenge = error.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer") and self._fetch_token(challenge, registry, repository,
                                                                               deadline):
                    return self._request(method, url, registry, repository, deadline, retried=True)
            if error.code >= 500:
                raise RegistryUnavailable(registry, f"HTTP {error.code}") from None
            return error.code, dict(error.headers), b"", url
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            if deadline.passed():
                raise self._timed_out(registry) from None
            reason = getattr(error, "reason", error)
            raise RegistryUnavailable(registry, str(reason) or type(error).__name__) from None
        if deadline.passed():  # an answer the watchdog cut short is no answer
            raise self._timed_out(registry)
        return result

    def _fetch_token(self, challenge: str, registry: str, repository: str, deadline: _Deadline) -> bool:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm or urllib.parse.urlsplit(realm).scheme.lower() not in ("http", "https"):
            return False
        params.setdefault("scope", f"repository:{repository}:pull")
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
        headers = {"User-Agent": "envkiln"}
        creds = self.credentials.get(registry)
        if creds:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        try:
            with _opener(deadline, None).open(urllib.request.Request(url, headers=headers),
                                              timeout=deadline.remaining()) as response:
                body = json.loads(_read_capped(response))
        except _CrossOriginRedirect as redirect:
            raise RegistryRedirectRefused(registry, redirect.source, redirect.target) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            if deadline.passed():
                raise self._timed_out(registry) from None
            return False
        if deadline.passed():
            raise self._timed_out(registry)
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return False
        self._tokens[(registry, repository)] = token
        return True
