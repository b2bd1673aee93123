"""Ask an OCI registry whether an image exists (distribution API), with auth and a short cache.

Three outcomes, kept distinct (lessons from Flyte and BinderHub): found (with digest),
not found, and *unavailable* (network errors, 5xx, auth failures): unavailable is never
treated as found or missing; callers surface it as RegistryUnavailable and retry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from envkiln.imageref import ImageReference, parse_image_reference

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


@dataclass
class RegistryClient:
    insecure_registries: set[str] = field(default_factory=set)
    credentials: dict[str, Credentials] = field(default_factory=dict)
    timeout: float = 10.0
    cache_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    requests_made: int = 0
    _cache: dict[str, tuple[float, ManifestLookup]] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def lookup(self, image: str | ImageReference, use_cache: bool = True) -> ManifestLookup:
        """Found/not found for a tag or digest reference; raises RegistryUnavailable."""
        reference = parse_image_reference(image) if isinstance(image, str) else image
        key = str(reference)
        # One request per image at a time: concurrent reconciles of environments with the
        # same definition wait for the first answer instead of asking again.
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if use_cache:
                cached = self._cache.get(key)
                if cached and self.clock() - cached[0] < self.cache_ttl:
                    return cached[1]
            result = self._lookup(reference)
            if result.found:
                self._cache[key] = (self.clock(), result)  # only positives: a missing image may appear any moment
            else:
                self._cache.pop(key, None)
            return result

    def forget(self, image: str) -> None:
        self._cache.pop(str(parse_image_reference(image)), None)

    def _base_url(self, registry: str) -> str:
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        scheme = "http" if registry in self.insecure_registries else "https"
        return f"{scheme}://{host}"

    def _lookup(self, reference: ImageReference) -> ManifestLookup:
        registry = reference.resolved_registry()
        repository = reference.resolved_repository()
        url = f"{self._base_url(registry)}/v2/{repository}/manifests/{reference.manifest_reference()}"
        status, headers, _ = self._request("HEAD", url, registry, reference.resolved_repository())
        if status == 404:
            return ManifestLookup(found=False)
        if status == 200:
            digest = headers.get("Docker-Content-Digest")
            if not digest:
                # The digest header is only a SHOULD: hash the manifest body instead.
                _, _, body = self._request("GET", url, registry, reference.resolved_repository())
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
            return ManifestLookup(found=True, digest=digest)
        if status == 401:
            # Some registries answer 401 for a repository that does not exist (BinderHub's
            # not_found_401); without credentials for it we cannot tell: say so explicitly.
            raise RegistryUnavailable(registry, "401 Unauthorized: credentials missing or refused for "
                                      f"{reference.resolved_repository()} (set ENVKILN_REGISTRY_SECRET)")
        if status == 403:
            raise RegistryUnavailable(registry, f"403 Forbidden for {reference.resolved_repository()}")
        raise RegistryUnavailable(registry, f"unexpected HTTP {status}")

    def _context(self, registry: str) -> ssl.SSLContext | None:
        if registry in self.insecure_registries:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return None

    def _request(self, method: str, url: str, registry: str, repository: str,
                 retried: bool = False) -> tuple[int, dict[str, str], bytes]:
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
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context(registry)) as response:
                return response.status, dict(response.headers), response.read() if method == "GET" else b""
        except urllib.error.HTTPError as error:
            if error.code == 401 and not retried:
                challenge = error.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer") and self._fetch_token(challenge, registry, repository):
                    return self._request(method, url, registry, repository, retried=True)
            if error.code >= 500:
                raise RegistryUnavailable(registry, f"HTTP {error.code}") from None
            return error.code, dict(error.headers), b""
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise RegistryUnavailable(registry, str(reason)) from None

    def _fetch_token(self, challenge: str, registry: str, repository: str) -> bool:
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        params.setdefault("scope", f"repository:{repository}:pull")
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
        headers = {"User-Agent": "envkiln"}
        creds = self.credentials.get(registry)
        if creds:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds.username}:{creds.password}".encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as r:
                body = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self._tokens[(registry, repository)] = token
        return True
