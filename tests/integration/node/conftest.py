"""Fixtures for flows whose pods really run on the harness's node: build Jobs, training Jobs,
the operator itself. Images come from the cluster's registry (on the node's own network);
Python packages from a local package index on the same address, so nothing leaves the machine."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import BASE_REPOSITORY, base_image_archive, push_archive
from harness.images import builder_image_archive
from harness.operator import OperatorProcess
from harness.ports import free_port
from harness.pypi import PackageIndex, make_wheel
from harness.webhook import webhook_configuration
from node_helpers import PROBE, PROBE_SOURCE, PROBE_VERSION

UV_VERSION = "0.9.18"  # envkiln.core.render.DEFAULT_UV_IMAGE's


@pytest.fixture(scope="session")
def node_api(cluster: Any, api_client: client.ApiClient) -> client.ApiClient:
    """The cluster's admin client, with the CRDs installed."""
    return api_client


@pytest.fixture()
def node_namespace(node_api: client.ApiClient) -> Iterator[str]:
    name = f"n-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(node_api)
    core.create_namespace({"metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "baseline"}}})
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


@pytest.fixture()
def second_namespace(node_api: client.ApiClient) -> Iterator[str]:
    """Another tenant namespace beside node_namespace (Pod Security baseline)."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(node_api)
    core.create_namespace({"metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def node_registry_host(cluster: Any) -> str:
    return str(cluster.registry.host)


@pytest.fixture(scope="session")
def node_base_image(node_registry_host: str) -> str:
    reference = f"{node_registry_host}/{BASE_REPOSITORY}:bookworm"
    digest = push_archive(base_image_archive(), reference)
    return f"{node_registry_host}/{BASE_REPOSITORY}@{digest}"


@pytest.fixture(scope="session")
def builder_image(node_registry_host: str) -> str:
    """Debian's buildah and skopeo in an image made here (debootstrap), by digest."""
    digest = push_archive(builder_image_archive(), f"{node_registry_host}/envkiln/builder:test")
    return f"{node_registry_host}/envkiln/builder@{digest}"


@pytest.fixture(scope="session")
def uv_image(node_registry_host: str) -> str:
    """uv as builds get it: a FROM scratch tool image with /uv, made here from the uv wheel, by digest."""
    from harness.wheels import uv_tool_archive

    digest = push_archive(uv_tool_archive(UV_VERSION), f"{node_registry_host}/envkiln/uv:{UV_VERSION}")
    return f"{node_registry_host}/envkiln/uv@{digest}"


@pytest.fixture(scope="session")
def probe_index(cluster: Any) -> Iterator[PackageIndex]:
    """A package index on the node's address with one package that only our images will have."""
    wheel = make_wheel(PROBE, PROBE_VERSION, module="envkiln_probe", source=PROBE_SOURCE)
    with PackageIndex([wheel], host=str(cluster.address)) as index:
        yield index


@pytest.fixture()
def buildah_operator(start_operator: Callable[..., OperatorProcess], cluster: Any,
                     builder_image: str, uv_image: str) -> Callable[..., OperatorProcess]:
    """start_operator with the in-cluster buildah builder (the cluster's registry, small requests, uv
    mounted from its tool image)."""

    def start(namespace: str, **settings: str) -> OperatorProcess:
        defaults = {"buildah_image": builder_image, "buildah_push_image": builder_image, "uv_image": uv_image,
                    "buildah_seccomp_profile": str(cluster.seccomp_profile), "build_cpu_request": "100m",
                    "build_memory_request": "128Mi"}
        return start_operator(namespace, builder="buildah", **{**defaults, **settings})

    return start


@pytest.fixture()
def webhook(node_api: client.ApiClient, node_namespace: str, operator_namespace: str) -> Iterator[dict[str, str]]:
    """A MutatingWebhookConfiguration like the chart's, calling an operator on 127.0.0.1."""
    port = free_port()
    name = f"envkiln-{node_namespace}"
    admission = client.AdmissionregistrationV1Api(node_api)
    admission.create_mutating_webhook_configuration(webhook_configuration(name, port, node_namespace))
    yield {"webhook_enabled": "true", "webhook_listen_address": "127.0.0.1", "webhook_port": str(port),
           "webhook_hosts": "127.0.0.1", "webhook_configuration": name, "operator_namespace": operator_namespace}
    admission.delete_mutating_webhook_configuration(name)
