"""Ask an OCI registry whether an image exists (distribution API), with auth and a short cache.

Three outcomes, kept distinct (lessons from Flyte and BinderHub): found (with digest),
not found, and *unavailable* (network errors, 5xx, auth failures): unavailable is never
treated as found or missing; callers surface it as RegistryUnavailable and retry.

The registry is a network peer, not trusted to behave, so every lookup is bounded
(envkiln.adapters.netguard holds the mechanisms):
- one total deadline (`timeout`) covers the wait for a slot, name resolution, every request
  (token fetch included) and every byte; a watchdog shuts the lookup's sockets down when it
  passes, so a registry dripping a byte at a time cannot hold a handler longer than that;
- at most `max_concurrent` lookups talk to registries at once (the wait counts against the
  deadline), and at most `per_host` of them to one tenant-named registry host: past that share a
  lookup of that host fails at once, and other hosts keep their slots;
- a registry a tenant names (a base or bring-your-own image) is connected to only at addresses
  the network policy allows (no loopback, link-local, cluster-internal addresses unless
  allow-listed): RegistryAddressRefused. The operator's own registries (`trusted_registries`,
  and the insecure ones, which are always the operator's) are not checked;
- redirects are followed only within one origin (scheme, host, port); a redirect elsewhere is
  RegistryRedirectRefused (a RegistryUnavailable), never followed with our credentials, and a
  manifest body that arrived through any redirect is never hashed into a digest;
- a Bearer challenge's token realm is asked only on the registry's own origin, or at the token
  service configured for that registry (`token_services`); elsewhere RegistryRealmRefused, and
  no credential is sent;
- answers are capped at MAX_BODY_BYTES;
- error texts never quote what the registry sent (only HTTP status codes and failure kinds).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, TypeVar

from envkiln.adapters.netguard import (
    AddressRefused,
    CrossOriginRedirect,
    Deadline,
    Dialer,
    HostShares,
    NoSlot,
    Resolve,
    ShareFull,
    describe_error,
    opener,
    read_capped,
    resolve,
)
from envkiln.core.decisions.network import STRICT, UNRESTRICTED, NetworkPolicy, decide_realm, origin_text, same_origin
from envkiln.core.imageref import ImageReference, parse_image_reference
from envkiln.core.models.hosts import DEFAULT_TOKEN_REALMS, parse_realm_entry
from envkiln.core.registryauth import normalize_host

if TYPE_CHECKING:
    from envkiln.adapters.metrics import Metrics

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
_T = TypeVar("_T")


class RegistryUnavailable(RuntimeError):
    """The registry could not answer (down, 5xx, refused credentials). Retry later."""

    def __init__(self, registry: str, reason: str):
        super().__init__(f"registry {registry} unavailable: {reason}")
        self.registry = registry
        self.reason = reason


class RegistryRedirectRefused(RegistryUnavailable):
    """The registry redirected a lookup to another origin (scheme, host or port): not followed.
    The target came from the registry: kept in `target`, never put in the message."""

    def __init__(self, registry: str, source: str, target: str):
        super().__init__(registry, f"refused a redirect from {origin_text(source)} to another origin (redirects "
                                   "are followed only within the registry's origin)")
        self.target = target


class RegistryAddressRefused(RegistryUnavailable):
    """The registry's host is, or resolves only to, addresses the network policy refuses."""


class RegistryRealmRefused(RegistryUnavailable):
    """The registry's Bearer challenge names a token realm envkiln does not ask (another origin)."""


@dataclass(frozen=True)
class ManifestLookup:
    found: bool
    digest: str | None = None


@dataclass
class Credentials:
    username: str
    password: str


HELPER_TIMEOUT = 10.0  # seconds one credential helper may take (within the lookup's deadline)
HELPER_MAX_BYTES = 64 * 1024


class CredentialHelperFailed(RuntimeError):
    pass


def run_credential_helper(name: str, registry: str, timeout: float) -> Credentials:
    """Ask `docker-credential-<name> get` for `registry`'s credentials (the docker credential helper
    protocol: the server URL on stdin, {"Username", "Secret"} on stdout). The helper finds its own
    identity (a workload identity token, the cloud's metadata server). Errors never quote its output."""
    program = f"docker-credential-{name}"
    try:
        result = subprocess.run([program, "get"], input=registry.encode(), capture_output=True,
                                timeout=max(0.1, min(timeout, HELPER_TIMEOUT)), check=False)
    except FileNotFoundError:
        raise CredentialHelperFailed(f"credential helper {program} is not on the operator's PATH (add it to the "
                                     "operator image, docs/registries.md)") from None
    except subprocess.TimeoutExpired:
        raise CredentialHelperFailed(f"credential helper {program} did not answer within "
                                     f"{min(timeout, HELPER_TIMEOUT):g}s") from None
    if result.returncode != 0:
        raise CredentialHelperFailed(f"credential helper {program} failed (exit {result.returncode})")
    try:
        answer = json.loads(result.stdout[:HELPER_MAX_BYTES])
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise CredentialHelperFailed(f"credential helper {program} answered no Username/Secret JSON") from None


def credentials_from_docker_config(config_json: str | bytes) -> dict[str, Credentials]:
    """Registry host -> credentials, from a dockerconfigjson document."""
    document = json.loads(config_json)
    result: dict[str, Credentials] = {}
    for host, entry in (document.get("auths") or {}).items():
        host = normalize_host(host)
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        else:
            user, password = entry.get("username", ""), entry.get("password", "")
        result[host] = Credentials(user, password)
    return result


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


MAX_BODY_BYTES = 4 * 1024 * 1024  # a manifest or token answer; registries cap manifests at 4 MiB
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_PER_HOST = 4  # lookups one tenant-named registry host may have in flight at once


def token_services(entries: Iterable[str] = DEFAULT_TOKEN_REALMS) -> dict[str, str]:
    """registry -> `https://host:port` of its token service, from ENVKILN_REGISTRY_TOKEN_REALMS entries."""
    return dict(parse_realm_entry(entry) for entry in entries)


def _read_capped(response: IO[bytes]) -> bytes:
    return read_capped(response, MAX_BODY_BYTES)


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
    at most `max_concurrent` lookups talk to registries at once, at most `per_host` to one
    tenant-named host."""

    insecure_registries: set[str] = field(default_factory=set)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    timeout: float = 10.0
    cache_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic  # the cache's clock; deadlines use real time
    requests_made: int = 0
    metrics: Metrics | None = None  # lookup latency and errors (envkiln.adapters.metrics)
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    per_host: int = DEFAULT_PER_HOST
    # The operator's own registries (host[:port] as in image references): no address check, no
    # per-host share. Insecure registries are always the operator's own: no address check either.
    trusted_registries: set[str] = field(default_factory=set)
    network_policy: NetworkPolicy = STRICT  # for every other registry (envkiln.core.decisions.network)
    token_services: dict[str, str] = field(default_factory=token_services)  # registry -> https://host:port
    resolver: Resolve = resolve
    ca_file: str | None = None  # CA certificates trusted besides the system's (ENVKILN_REGISTRY_CA_FILE)
    # registry -> credential helper name (credHelpers of ENVKILN_REGISTRY_SECRET); asked when there is no static
    # credential for the registry, its answer kept for `helper_ttl` seconds or until the registry refuses it.
    credential_helpers: dict[str, str] = field(default_factory=dict)
    helper_ttl: float = 300.0
    helper: Callable[[str, str, float], Credentials] = run_credential_helper
    _helped: dict[str, tuple[float, Credentials]] = field(default_factory=dict)
    _users: dict[str, str] = field(default_factory=dict)  # image digest -> its config's User
    _cache: dict[str, tuple[float, ManifestLookup]] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    _shares: HostShares = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.per_host < 1:
            raise ValueError("max_concurrent and per_host must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        self._shares = HostShares(self.max_concurrent, self.per_host)
        self._verified: ssl.SSLContext | None = None
        if self.ca_file:
            self._verified = ssl.create_default_context()
            self._verified.load_verify_locations(cafile=self.ca_file)

    def lookup(self, image: str | ImageReference, use_cache: bool = True) -> ManifestLookup:
        """Found/not found for a tag or digest reference; raises RegistryUnavailable."""
        reference = parse_image_reference(image) if isinstance(image, str) else image
        key = str(reference)
        registry = reference.resolved_registry()
        deadline = self._deadline(registry)
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

    def _deadline(self, registry: str) -> Deadline:
        own = registry in self.trusted_registries or registry in self.insecure_registries
        policy = UNRESTRICTED if own else self.network_policy
        return Deadline(self.timeout, Dialer(policy, self.resolver))

    def _locked_lookup(self, reference: ImageReference, key: str, registry: str, lock: threading.Lock,
                       deadline: Deadline, use_cache: bool) -> ManifestLookup:
        if not lock.acquire(timeout=deadline.remaining()):
            raise RegistryUnavailable(registry, f"another lookup of {key} did not finish within {self.timeout:g}s")
        try:
            if use_cache:
                cached = self._cache.get(key)
                if cached and self.clock() - cached[0] < self.cache_ttl:
                    return cached[1]
            result = self._held(registry, deadline, lambda: self._lookup(reference, deadline))
            if result.found:
                self._cache[key] = (self.clock(), result)  # only positives: a missing image may appear any moment
            else:
                self._cache.pop(key, None)
            return result
        finally:
            lock.release()

    def _held(self, registry: str, deadline: Deadline, call: Callable[[], _T]) -> _T:
        """`call()` under a slot and the host's share, within the deadline (timed for the metrics)."""
        host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
        try:
            with self._shares.hold(host, deadline.remaining(), exempt=registry in self.trusted_registries):
                started = time.monotonic()
                try:
                    with deadline:
                        return call()
                finally:
                    if self.metrics is not None:
                        self.metrics.registry_lookup(registry, time.monotonic() - started)
        except ShareFull as full:
            raise RegistryUnavailable(registry, f"{full.share} lookups of this registry host already in flight "
                                      "(its share); retried later") from None
        except NoSlot:
            raise RegistryUnavailable(registry, f"{self.max_concurrent} registry lookups already in flight; "
                                      f"no slot within {self.timeout:g}s") from None

    def read_last_layer_file(self, image: str, path: str) -> bytes | None:
        """The file `path` from the last layer of `image` (repository@digest), e.g. the lock a build
        wrote into its own last layer. None when that layer does not hold it. The manifest and the
        layer are each capped at MAX_BODY_BYTES, the layer is checked against its digest, and only
        a single-platform image is read. Raises RegistryUnavailable."""
        reference = parse_image_reference(image)
        registry = reference.resolved_registry()
        deadline = self._deadline(registry)
        layer = self._held(registry, deadline, lambda: self._last_layer(reference, image, deadline))
        if layer is None:
            return None
        layer_digest, blob = layer
        if "sha256:" + hashlib.sha256(blob).hexdigest() != layer_digest:
            raise RegistryUnavailable(registry, f"layer {layer_digest} of {image} does not match its digest")
        return _file_in_layer(blob, path)

    def _last_layer(self, reference: ImageReference, image: str, deadline: Deadline) -> tuple[str, bytes] | None:
        """(digest, bytes) of the last layer of a single-platform image; None when it has none."""
        registry, repository = reference.resolved_registry(), reference.resolved_repository()
        base = f"{self._base_url(registry)}/v2/{repository}"
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
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", layer_digest):
            raise RegistryUnavailable(registry, f"the manifest of {image} names a malformed layer digest")
        status, _, blob, _ = self._request("GET", f"{base}/blobs/{layer_digest}", registry, repository, deadline)
        if status != 200:
            raise RegistryUnavailable(registry, f"HTTP {status} for layer {layer_digest} of {image}")
        return layer_digest, blob

    def forget(self, image: str) -> None:
        self._cache.pop(str(parse_image_reference(image)), None)

    def image_user(self, image: str) -> str:
        """The User of the config of `image` (repository@digest; for an index, its linux/amd64 image,
        else its first): "" when the image sets none (root). Kept per digest (a digest never changes).
        Each document is checked against its digest and capped. Raises RegistryUnavailable."""
        reference = parse_image_reference(image)
        if not reference.digest:
            raise ValueError(f"{image}: give the image by digest")
        with self._guard:
            kept = self._users.get(reference.digest)
        if kept is not None:
            return kept
        registry = reference.resolved_registry()
        deadline = self._deadline(registry)
        user = self._held(registry, deadline, lambda: self._config_user(reference, image, deadline))
        with self._guard:
            if len(self._users) >= 4096:
                self._users.clear()
            self._users[reference.digest] = user
        return user

    def _document(self, base: str, kind: str, digest: str, registry: str, repository: str, image: str,
                  deadline: Deadline) -> dict[str, object]:
        status, _, body, _ = self._request("GET", f"{base}/{kind}/{digest}", registry, repository, deadline)
        if status != 200:
            raise RegistryUnavailable(registry, f"HTTP {status} for {kind[:-1]} {digest} of {image}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryUnavailable(registry, f"{kind[:-1]} {digest} of {image} does not match its digest")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise RegistryUnavailable(registry, f"{kind[:-1]} {digest} of {image} is not a JSON object")
        return document

    def _config_user(self, reference: ImageReference, image: str, deadline: Deadline) -> str:
        registry, repository = reference.resolved_registry(), reference.resolved_repository()
        base = f"{self._base_url(registry)}/v2/{repository}"
        digest = str(reference.digest)
        manifest = self._document(base, "manifests", digest, registry, repository, image, deadline)
        entries = manifest.get("manifests")
        if isinstance(entries, list) and entries:  # an index: the linux/amd64 image, else the first
            chosen = next((e for e in entries if isinstance(e, dict) and isinstance(e.get("platform"), dict)
                           and e["platform"].get("os") == "linux" and e["platform"].get("architecture") == "amd64"),
                          entries[0])
            child = str(chosen.get("digest", "")) if isinstance(chosen, dict) else ""
            if not _DIGEST.fullmatch(child):
                raise RegistryUnavailable(registry, f"the index of {image} names a malformed manifest digest")
            manifest = self._document(base, "manifests", child, registry, repository, image, deadline)
        config = manifest.get("config")
        config_digest = str(config.get("digest", "")) if isinstance(config, dict) else ""
        if not _DIGEST.fullmatch(config_digest):
            raise RegistryUnavailable(registry, f"the manifest of {image} names no config digest")
        document = self._document(base, "blobs", config_digest, registry, repository, image, deadline)
        settings = document.get("config")
        user = settings.get("User") if isinstance(settings, dict) else None
        return user if isinstance(user, str) else ""

    def _base_url(self, registry: str) -> str:
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        scheme = "http" if registry in self.insecure_registries else "https"
        return f"{scheme}://{host}"

    def _lookup(self, reference: ImageReference, deadline: Deadline) -> ManifestLookup:
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
            elif not _DIGEST.fullmatch(digest):  # it goes into status: only a digest, never other bytes
                raise RegistryUnavailable(registry, "its Docker-Content-Digest header is not a digest")
            return ManifestLookup(found=True, digest=digest)
        if status == 401:
            # Some registries answer 401 for a repository that does not exist (BinderHub's
            # not_found_401); without credentials for it we cannot tell: say so explicitly. A credential
            # helper's answer is not kept past a refusal (a short-lived token may have expired).
            self._helped.pop(registry, None)
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
        return self._verified  # None: the system's CAs

    def _credentials(self, registry: str, deadline: Deadline) -> Credentials | None:
        """The static credential of `registry`, else its credential helper's (kept for helper_ttl)."""
        creds = self.credentials.get(registry)
        name = self.credential_helpers.get(registry)
        if creds is not None or name is None:
            return creds
        kept = self._helped.get(registry)
        if kept is not None and time.monotonic() - kept[0] < self.helper_ttl:
            return kept[1]
        try:
            creds = self.helper(name, registry, deadline.remaining())
        except CredentialHelperFailed as error:
            raise RegistryUnavailable(registry, str(error)) from None
        self._helped[registry] = (time.monotonic(), creds)
        return creds

    def _timed_out(self, registry: str) -> RegistryUnavailable:
        return RegistryUnavailable(registry, f"no complete answer within the {self.timeout:g}s lookup deadline")

    def _failed(self, registry: str, error: BaseException, deadline: Deadline) -> RegistryUnavailable:
        """The exception a failed request becomes: the kind of failure, never the registry's bytes."""
        if deadline.passed():
            return self._timed_out(registry)
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, AddressRefused):
            return RegistryAddressRefused(registry, reason.reason)
        if isinstance(reason, CrossOriginRedirect):
            return RegistryRedirectRefused(registry, reason.source, reason.target)
        return RegistryUnavailable(registry, describe_error(error))

    def _authorization(self, registry: str, repository: str, deadline: Deadline) -> dict[str, str]:
        token = self._tokens.get((registry, repository))
        if token:
            return {"Authorization": f"Bearer {token}"}
        creds = self._credentials(registry, deadline)
        if creds:
            return {"Authorization": "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()}
        return {}

    def _request(self, method: str, url: str, registry: str, repository: str, deadline: Deadline,
                 retried: bool = False) -> tuple[int, dict[str, str], bytes, str]:
        """(status, headers, body, final URL); raises RegistryUnavailable."""
        if deadline.passed():
            raise self._timed_out(registry)
        headers = {"Accept": ACCEPT, "User-Agent": "envkiln", **self._authorization(registry, repository, deadline)}
        request = urllib.request.Request(url, method=method, headers=headers)
        self.requests_made += 1
        try:
            with opener(deadline, self._context(registry)).open(request, timeout=deadline.remaining()) as response:
                result = (response.status, dict(response.headers),
                          _read_capped(response) if method == "GET" else b"", response.geturl())
        except urllib.error.HTTPError as error:
            error.close()
            if deadline.passed():
                raise self._timed_out(registry) from None
            if error.code == 401 and not retried:
                challenge = error.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer") and self._fetch_token(challenge, url, registry, repository,
                                                                               deadline):
                    return self._request(method, url, registry, repository, deadline, retried=True)
            if error.code >= 500:
                raise RegistryUnavailable(registry, f"HTTP {error.code}") from None
            return error.code, dict(error.headers), b"", url
        except (CrossOriginRedirect, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            raise self._failed(registry, error, deadline) from None
        if deadline.passed():  # an answer the watchdog cut short is no answer
            raise self._timed_out(registry)
        return result

    def _fetch_token(self, challenge: str, url: str, registry: str, repository: str, deadline: Deadline) -> bool:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        refused = decide_realm(registry, url, realm, self.token_services)
        if refused is not None:
            raise RegistryRealmRefused(registry, refused)
        params.setdefault("scope", f"repository:{repository}:pull")
        token_url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
        headers = {"User-Agent": "envkiln"}
        creds = self._credentials(registry, deadline)
        if creds:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        try:
            context = self._context(registry) if same_origin(url, realm) else self._verified  # verified elsewhere
            with opener(deadline, context).open(urllib.request.Request(token_url, headers=headers),
                                                timeout=deadline.remaining()) as response:
                body = json.loads(_read_capped(response))
        except (CrossOriginRedirect, urllib.error.URLError) as error:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            if isinstance(reason, CrossOriginRedirect | AddressRefused) or deadline.passed():
                raise self._failed(registry, error, deadline) from None
            return False
        except (http.client.HTTPException, OSError, ValueError):
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
