"""What the reconcile functions share: settings, API access, registry client, builder."""

from __future__ import annotations

import base64
import logging
import secrets
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from envkiln.adapters.builders import Builder
from envkiln.adapters.gitrefs import GitResolver
from envkiln.adapters.keyedlocks import KeyedLocks
from envkiln.adapters.kube import ApiError, Kube
from envkiln.adapters.kubeclient import ApiClient
from envkiln.adapters.metrics import Metrics
from envkiln.adapters.registryclient import (
    Credentials,
    RegistryClient,
    credentials_from_docker_config,
    token_services,
)
from envkiln.core.decisions.network import NetworkPolicy
from envkiln.core.decisions.parent import Candidate
from envkiln.core.names import MANAGED_BY, SIGNING_KEY_SECRET
from envkiln.core.registryauth import DockerConfigError, credential_helpers
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import DEFAULT_KEY_ID, Signer, signer_from_secret

log = logging.getLogger(__name__)

# (namespace, hash) -> names of the Environments with that hash.
EnvironmentsByHash = Callable[[str, str], Iterable[str]]
EarlierBuilds = Callable[[str], Iterable[Candidate]]


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    registry: RegistryClient
    builder: Builder
    signer: Signer
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    environments_by_hash: EnvironmentsByHash | None = None
    # The namespace's succeeded builds a new build may start from (the runtime's index; None: none).
    earlier_builds: EarlierBuilds | None = None
    metrics: Metrics = field(default_factory=Metrics)  # its own registry; served by runtime/handlers.configure
    # One sync of a given EnvironmentBuild at a time: its watch event, its Job's event and the
    # resync run in different threads, and two of them must not both see and act on the same step.
    build_locks: KeyedLocks = field(default_factory=lambda: KeyedLocks())
    # The build slots this process handed out (envkiln.reconcile.buildsync): counting and claiming is one step.
    build_slots: BuildSlots = field(default_factory=lambda: BuildSlots())
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


class BuildSlots:
    """The builds this process gave a build slot, as (namespace, name), until their sync sees them
    give it back; and the lock under which slots are counted and claimed. The watch brings a build's
    status write a moment later, so a count from it alone would let two syncs take the last slot;
    one active replica at a time (Kopf peering) makes this process the only one handing out slots."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held by the caller around count + claim
        self._claimed: set[tuple[str, str]] = set()

    def claimed(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._claimed)

    def claim(self, key: tuple[str, str]) -> None:
        self._claimed.add(key)

    def release(self, key: tuple[str, str]) -> None:
        with self.lock:
            self._claimed.discard(key)

    def forget_missing(self, present: set[tuple[str, str]]) -> None:
        """Drop the claims of builds that are gone (deleted while they held a slot); caller holds the lock."""
        self._claimed &= present


def registry_hosts(settings: OperatorSettings) -> set[str]:
    return {settings.registry.split("/")[0], settings.effective_pull_registry.split("/")[0]}


def load_registry_credentials(kube: Kube, settings: OperatorSettings) -> tuple[dict[str, Credentials],
                                                                               dict[str, str] | None]:
    """Credentials from the configured dockerconfigjson Secret: (per-host creds, raw secret data)."""
    return load_registry_secret(kube, settings)[:2]


def load_registry_secret(kube: Kube, settings: OperatorSettings) -> tuple[dict[str, Credentials],
                                                                          dict[str, str] | None, dict[str, str]]:
    """The configured dockerconfigjson Secret: (per-host creds, raw secret data, per-host credential helpers)."""
    if not settings.registry_secret:
        return {}, None, {}
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
    document = base64.b64decode(data[".dockerconfigjson"])
    try:
        helpers = credential_helpers(document, f"ENVKILN_REGISTRY_SECRET: Secret {settings.registry_secret}")
    except DockerConfigError as error:
        raise RuntimeError(str(error)) from None
    return credentials_from_docker_config(document), {".dockerconfigjson": data[".dockerconfigjson"]}, helpers


def read_ca_bundle(settings: OperatorSettings) -> str | None:
    """The PEM text of ENVKILN_REGISTRY_CA_FILE (read once, at start), or None."""
    if not settings.registry_ca_file:
        return None
    try:
        text = Path(settings.registry_ca_file).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise RuntimeError(f"ENVKILN_REGISTRY_CA_FILE: cannot read {settings.registry_ca_file} "
                           f"({getattr(error, 'strerror', None) or type(error).__name__}); mount the CA bundle there "
                           "(chart registry.caBundle)") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise RuntimeError(f"ENVKILN_REGISTRY_CA_FILE: {settings.registry_ca_file} holds no PEM certificate")
    return text


def load_signing_key(kube: Kube, settings: OperatorSettings) -> Signer:
    """ENVKILN_SIGNING_KEY (with ENVKILN_SIGNING_KEY_ID and ENVKILN_PREVIOUS_SIGNING_KEYS), or the keys of
    the operator namespace's Secret (created with one random key by the first replica): entry `current`
    names the key that signs, every other entry is a key named by its id (envkiln.core.trust)."""
    signer = settings.signer_from_settings() or _secret_signer(kube, settings)
    log.info("signing with key id %r; also verifying with %s", signer.key_id,
             ", ".join(repr(k) for k in signer.key_ids[1:]) or "no previous key")
    return signer


def _secret_signer(kube: Kube, settings: OperatorSettings) -> Signer:
    namespace = settings.operator_namespace
    body = {"metadata": {"name": SIGNING_KEY_SECRET, "namespace": namespace, "labels": MANAGED_BY},
            "type": "Opaque", "data": {DEFAULT_KEY_ID: base64.b64encode(secrets.token_bytes(32)).decode()}}
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
        return signer_from_secret({entry: base64.b64decode(value) for entry, value in (secret.data or {}).items()})
    except ValueError as error:  # binascii.Error too
        raise RuntimeError(f"Secret {namespace}/{SIGNING_KEY_SECRET}: {error} (docs/security.md, \"Rotating the "
                           "signing key\")") from None


def make_context(api_client: ApiClient, settings: OperatorSettings,
                 on_local_build_done: Callable[[str, str], None] | None = None) -> OperatorContext:
    kube = Kube(api_client)
    # Registry hosts the settings name are metric labels of their own; tenants' other hosts count as `other`.
    metrics = Metrics(registries=registry_hosts(settings) | set(settings.base_image_registries))
    credentials, secret_data, helpers = load_registry_secret(kube, settings)
    ca_bundle = read_ca_bundle(settings)
    network = NetworkPolicy.from_entries(settings.allowed_private_hosts)  # for hosts namespaces name
    registry = RegistryClient(
        ca_file=settings.registry_ca_file if ca_bundle else None, credential_helpers=helpers,
        insecure_registries=registry_hosts(settings) if settings.insecure_registry else set(),
        credentials=credentials, timeout=settings.registry_timeout_seconds, cache_ttl=settings.cache_ttl_seconds,
        metrics=metrics, trusted_registries=registry_hosts(settings), network_policy=network,
        per_host=settings.per_host_concurrency, token_services=token_services(settings.registry_token_realms),
    )
    instance_id = uuid.uuid4().hex
    builder: Builder
    if settings.builder == "local":
        from envkiln.adapters.builders.local import LocalBuilder

        builder = LocalBuilder(kube, settings, on_done=on_local_build_done, instance_id=instance_id)
    elif settings.builder == "buildah":
        from envkiln.adapters.builders.buildah import BuildahJobBuilder

        builder = BuildahJobBuilder(kube, settings, secret_data, ca_bundle)
    else:
        from envkiln.adapters.builders.kaniko import KanikoBuilder

        builder = KanikoBuilder(kube, settings, secret_data, ca_bundle)
    return OperatorContext(settings=settings, kube=kube, registry=registry, builder=builder,
                           signer=load_signing_key(kube, settings), instance_id=instance_id, metrics=metrics,
                           git_resolver=GitResolver(ttl_seconds=settings.git_ref_ttl_seconds,
                                                    timeout_seconds=settings.git_timeout_seconds, policy=network,
                                                    max_bytes=settings.git_max_bytes,
                                                    per_host=settings.per_host_concurrency,
                                                    tls=ca_context(settings.registry_ca_file if ca_bundle else None)))


def ca_context(ca_file: str | None) -> ssl.SSLContext | None:
    """TLS verification with the system's CAs and those of `ca_file` (None: the system's only)."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context
