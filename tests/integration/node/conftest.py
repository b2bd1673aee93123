"""Fixtures for flows whose pods really run on the harness's node: build Jobs, training Jobs,
the operator itself. Images come from the cluster's registry (on the node's own network);
Python packages from a local package index on the same address, so nothing leaves the machine."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.buildah import base_image_archive, push_archive
from harness.images import builder_image_archive
from harness.operator import OperatorProcess
from harness.pypi import PackageIndex, make_wheel
from node_helpers import PROBE, PROBE_SOURCE, PROBE_VERSION


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


@pytest.fixture(scope="session")
def node_registry_host(cluster: Any) -> str:
    return str(cluster.registry.host)


@pytest.fixture(scope="session")
def node_base_image(node_registry_host: str) -> str:
    reference = f"{node_registry_host}/envkiln-test/python-base:bookworm"
    digest = push_archive(base_image_archive(), reference)
    return f"{node_registry_host}/envkiln-test/python-base@{digest}"


@pytest.fixture(scope="session")
def builder_image(node_registry_host: str) -> str:
    """Debian's buildah and skopeo in an image made here (debootstrap), by digest."""
    digest = push_archive(builder_image_archive(), f"{node_registry_host}/envkiln/builder:test")
    return f"{node_registry_host}/envkiln/builder@{digest}"


@pytest.fixture(scope="session")
def probe_index(cluster: Any) -> Iterator[PackageIndex]:
    """A package index on the node's address with one package that only our images will have."""
    wheel = make_wheel(PROBE, PROBE_VERSION, module="envkiln_probe", source=PROBE_SOURCE)
    with PackageIndex([wheel], host=str(cluster.address)) as index:
        yield index


@pytest.fixture()
def buildah_operator(cluster: Any, node_registry_host: str, builder_image: str, tmp_path: Path,
                     request: pytest.FixtureRequest) -> Iterator[Callable[..., OperatorProcess]]:
    """A factory: an operator process on the host with the in-cluster buildah builder."""
    started: list[OperatorProcess] = []

    def start(namespace: str, **settings: str) -> OperatorProcess:
        env = {
            "ENVKILN_REGISTRY": node_registry_host,
            "ENVKILN_INSECURE_REGISTRY": "true",
            "ENVKILN_BUILDER": "buildah",
            "ENVKILN_BUILDAH_IMAGE": builder_image,
            "ENVKILN_BUILDAH_PUSH_IMAGE": builder_image,
            "ENVKILN_BUILDAH_SECCOMP_PROFILE": str(cluster.seccomp_profile),
            "ENVKILN_BUILD_SYNC_SECONDS": "1",
            "ENVKILN_ENV_SYNC_SECONDS": "2",
            "ENVKILN_REGISTRY_RETRY_SECONDS": "2",
            "ENVKILN_WATCH_TIMEOUT_SECONDS": "20",
            "ENVKILN_BUILD_RETRY_BACKOFF_SECONDS": "1",
            "ENVKILN_CACHE_TTL_SECONDS": "0",
            "ENVKILN_BUILD_CPU_REQUEST": "100m",
            "ENVKILN_BUILD_MEMORY_REQUEST": "128Mi",
            **{f"ENVKILN_{k.upper()}": str(v) for k, v in settings.items()},
        }
        process = OperatorProcess(cluster.kubeconfig, env, namespaces=[namespace], log_dir=tmp_path,
                                  name=f"operator-{len(started)}").start()
        started.append(process)
        deadline = time.monotonic() + 30
        while "envkiln operator" not in process.log():
            if process.exited() or time.monotonic() > deadline:
                pytest.fail(f"operator did not start: {process.exited()}\n{process.log()[-3000:]}")
            time.sleep(0.2)
        return process

    yield start
    for process in started:
        process.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for process in started:
            print(f"--- {process.name} log (tail) ---\n" + "\n".join(process.log().splitlines()[-80:]))
