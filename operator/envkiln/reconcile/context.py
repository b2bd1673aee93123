"""What the reconcile functions share: settings, API access, registry client, builder."""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from envkiln.adapters.builders import Builder
from envkiln.adapters.gitrefs import GitResolver
from envkiln.adapters.kube import ApiError, Kube
from envkiln.adapters.kubeclient import ApiClient
from envkiln.adapters.metrics import Metrics
from envkiln.adapters.registryclient import Credentials, RegistryClient, credentials_from_docker_config
from envkiln.core.names import MANAGED_BY, SIGNING_KEY_SECRET
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer

log = logging.getLogger(__name__)

# (namespace, hash) -> names of the Environments with that hash.
EnvironmentsByHash = Callable[[str, str], Iterable[str]]


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    registry: RegistryClient
    builder: Builder
    signer: Signer
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    environments_by_hash: EnvironmentsByHash | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: Metrics = field(default_factory=Metrics)  # its own registry; served by handlers.configure
    # One sync of a given EnvironmentBuild at a time: its watch event, its Job's event and the
    # resync run in different threads, and two of them must not both see and act on the same step.
    build_locks: KeyedLocks = field(default_factory=lambda: KeyedLocks())
    # The digest each base image reference had at the base-update watcher's last look (in memory:
    # after a restart the watcher's first pass fills it again).
    latest_bases: LatestBases = field(default_factory=lambda: LatestBases())
    git_resolver: GitResolver = field(default_factory=lambda: GitResolver())


class LatestBases:
    """base image reference -> its digest when last checked. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[str, str] = {}

    def set(self, reference: str, digest: str) -> None:
        with self._lock:
            self._digests[reference] = digest

    def get(self, reference: str | None) -> str | None:
        if reference is None:
            return None
        with self._lock:
            return self._digests.get(reference)


class KeyedLocks:
    """A lock per key, held only while someone uses it (no growth with the number of keys)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[object, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: object) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def registry_hosts(settings: OperatorSettings) -> set[str]:
    return {settings.registry.split("/")[0], settings.effective_pull_registry.split("/")[0]}


def load_registry_credentials(kube: Kube, settings: OperatorSettings) -> tuple[dict[str, Credentials],
                                                                               dict[str, str] | None]:
    """Credentials from the configured dockerconfigjson Secret: (per-host creds, raw secret data)."""
    if not settings.registry_secret:
        return {}, None
    try:
        secret = kube.read_secret(settings.operator_namespace, settings.registry_secret)
    except ApiError as error:
        secret, problem = None, f"{error.status} {error.reason}"
    else:
        problem = "404 Not Found"
    if secret is None:
        raise RuntimeError(
            f"ENVKILN_REGISTRY_SECRET: cannot read Secret {settings.operator_namespace}/{settings.registry_secret} "
            f"({problem}); create it with `kubectl create secret docker-registry`"
        ) from None
    data = secret.data or {}
    if ".dockerconfigjson" not in data:
        raise RuntimeError(f"ENVKILN_REGISTRY_SECRET: Secret {settings.registry_secret} has no .dockerconfigjson key; "
                           "it must be of type kubernetes.io/dockerconfigjson")
    return credentials_from_docker_config(base64.b64decode(data[".dockerconfigjson"])), {
        ".dockerconfigjson": data[".dockerconfigjson"]}


def load_signing_key(kube: Kube, settings: OperatorSettings) -> Signer:
    """ENVKILN_SIGNING_KEY, or the operator namespace's Secret (created with a random key by the first replica)."""
    if settings.signing_key is not None:
        try:
            return Signer(settings.signing_key.get_secret_value().encode("utf-8"))
        except ValueError as error:
            raise RuntimeError(f"ENVKILN_SIGNING_KEY: {error}") from None
    namespace = settings.operator_namespace
    body = {"metadata": {"name": SIGNING_KEY_SECRET, "namespace": namespace, "labels": MANAGED_BY},
            "type": "Opaque", "data": {"key": base64.b64encode(secrets.token_bytes(32)).decode()}}
    try:
        secret, created = kube.create_or_get_secret(namespace, body)
    except ApiError as error:
        raise RuntimeError(
            f"ENVKILN_SIGNING_KEY is not set and Secret {namespace}/{SIGNING_KEY_SECRET} cannot be created "
            f"({error.status} {error.reason}); create the namespace {namespace} (ENVKILN_OPERATOR_NAMESPACE) or "
            "set ENVKILN_SIGNING_KEY"
        ) from None
    if created:
        log.info("created the signing key Secret %s/%s", namespace, SIGNING_KEY_SECRET)
    try:
        return Signer(base64.b64decode((secret.data or {})["key"]))
    except (KeyError, ValueError):
        raise RuntimeError(f"Secret {namespace}/{SIGNING_KEY_SECRET} has no valid `key` (32 random bytes, base64); "
                           "delete it and the operator creates a new one (existing images are then rebuilt)") from None


def make_context(api_client: ApiClient, settings: OperatorSettings,
                 on_local_build_done: Callable[[str, str], None] | None = None) -> OperatorContext:
    kube = Kube(api_client)
    metrics = Metrics()
    credentials, secret_data = load_registry_credentials(kube, settings)
    registry = RegistryClient(
        insecure_registries=registry_hosts(settings) if settings.insecure_registry else set(),
        credentials=credentials, timeout=settings.registry_timeout_seconds, cache_ttl=settings.cache_ttl_seconds,
        metrics=metrics,
    )
    instance_id = uuid.uuid4().hex
    builder: Builder
    if settings.builder == "local":
        from envkiln.adapters.builders.local import LocalBuilder

        builder = LocalBuilder(kube, settings, on_done=on_local_build_done, instance_id=instance_id)
    elif settings.builder == "buildah":
        from envkiln.adapters.builders.buildah import BuildahJobBuilder

        builder = BuildahJobBuilder(kube, settings, secret_data)
    else:
        from envkiln.adapters.builders.kaniko import KanikoBuilder

        builder = KanikoBuilder(kube, settings, secret_data)
    return OperatorContext(settings=settings, kube=kube, registry=registry, builder=builder,
                           signer=load_signing_key(kube, settings), instance_id=instance_id, metrics=metrics,
                           git_resolver=GitResolver(ttl_seconds=settings.git_ref_ttl_seconds,
                                                    timeout_seconds=settings.git_timeout_seconds))
