"""What the reconcile functions share: settings, API access, registry client, builder."""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kubernetes import client

from envkiln.builders import Builder
from envkiln.kube import ApiError, Kube
from envkiln.registryclient import Credentials, RegistryClient, credentials_from_docker_config
from envkiln.settings import OperatorSettings

log = logging.getLogger(__name__)

# (namespace, hash) -> names of the Environments with that hash.
EnvironmentsByHash = Callable[[str, str], Iterable[str]]


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    registry: RegistryClient
    builder: Builder
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    environments_by_hash: EnvironmentsByHash | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


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


def make_context(api_client: client.ApiClient, settings: OperatorSettings,
                 on_local_build_done: Callable[[str, str], None] | None = None) -> OperatorContext:
    kube = Kube(api_client)
    credentials, secret_data = load_registry_credentials(kube, settings)
    registry = RegistryClient(
        insecure_registries=registry_hosts(settings) if settings.insecure_registry else set(),
        credentials=credentials, timeout=settings.registry_timeout_seconds, cache_ttl=settings.cache_ttl_seconds,
    )
    instance_id = uuid.uuid4().hex
    builder: Builder
    if settings.builder == "local":
        from envkiln.builders.local import LocalBuilder

        builder = LocalBuilder(kube, settings, on_done=on_local_build_done, instance_id=instance_id)
    elif settings.builder == "buildah":
        from envkiln.builders.buildah import BuildahJobBuilder

        builder = BuildahJobBuilder(kube, settings, secret_data)
    else:
        from envkiln.builders.kaniko import KanikoBuilder

        builder = KanikoBuilder(kube, settings, secret_data)
    return OperatorContext(settings=settings, kube=kube, registry=registry, builder=builder, instance_id=instance_id)
