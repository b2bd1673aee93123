"""Session fixtures: one real one-node cluster (etcd + kube-apiserver + controller-manager + scheduler,
kubelet + containerd + kube-proxy; harness.cluster), a real registry on the cluster's network,
buildah; a namespace per test."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from harness.buildah import BASE_REPOSITORY, base_image_archive, forget_images, push_archive
from harness.cluster import Cluster
from harness.controlplane import ControlPlane, install_crds
from harness.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The whole one-node cluster. Its teardown fails loudly if anything is left on the host."""
    started = Cluster(kube_proxy=os.environ.get("ENVKILN_NODE_KUBE_PROXY") != "0")
    try:
        started.start()
    except BaseException:
        started.stop()
        raise
    yield started
    if started.registry is not None:
        forget_images(started.registry.host)
    left = started.stop()
    if left:
        pytest.fail("the test cluster left things behind:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture(scope="session")
def node_ready(cluster: Cluster) -> Cluster:
    """The node is Ready and schedulable (checked again, e.g. after a long session)."""
    cluster.wait_ready()
    return cluster


@pytest.fixture(scope="session")
def control_plane(cluster: Cluster) -> ControlPlane:
    assert cluster.control_plane is not None
    return cluster.control_plane


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    install_crds(api)
    yield api
    api.close()


@pytest.fixture(scope="session")
def bare_control_plane() -> Iterator[ControlPlane]:
    """kube-apiserver + etcd alone: no controllers, no kubelet. Only for tests that play the part of
    the Kaniko executor (which cannot be had on this machine): nothing else may write those Jobs' and
    pods' status. A test module opts in by overriding `control_plane` and `api_client` with
    `bare_control_plane` and `bare_api_client`."""
    with ControlPlane() as plane:
        yield plane


@pytest.fixture(scope="session")
def bare_api_client(bare_control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(bare_control_plane.kubeconfig))
    install_crds(api)
    yield api
    api.close()


@pytest.fixture()
def operator_namespace(api_client: client.ApiClient) -> Iterator[str]:
    """The operator's own namespace (the chart's release namespace), apart from the tenants': its
    credential, the namespaces' push identities, its signing key and webhook certificates live there,
    and no anonymous Environment is ever made there."""
    name = f"ops-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


@pytest.fixture()
def namespace(api_client: client.ApiClient, control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # ServiceAccount admission refuses pods until the controller-manager made the default account.
    deadline = time.monotonic() + 30
    while control_plane.node_mode and not core.list_namespaced_service_account(
            name, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            pytest.fail(f"no default ServiceAccount in {name} after 30s")
        time.sleep(0.1)
    yield name
    # The namespace controller deletes what is in it (and the kubelet stops its pods).
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def registry(cluster: Cluster) -> Registry:
    """Served on the cluster's node address: reachable from the host, from pods and by containerd."""
    assert cluster.registry is not None
    return cluster.registry


@pytest.fixture(scope="session")
def base_image(registry: Registry) -> str:
    """A small Debian + python3 image in the test registry, from a cached debootstrap rootfs."""
    reference = f"{registry.host}/{BASE_REPOSITORY}:bookworm"
    push_archive(base_image_archive(), reference)
    return reference


@pytest.fixture(scope="session")
def kubeconfig_env(control_plane: ControlPlane) -> Iterator[str]:
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
    yield str(control_plane.kubeconfig)
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous


@pytest.fixture()
def start_operator(control_plane: ControlPlane, api_client: client.ApiClient, registry: Registry,
                   tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """A factory: start_operator(namespace, builder=..., **ENVKILN settings) -> a running operator process."""
    from harness.operator import OperatorProcess

    started: list[OperatorProcess] = []

    def start(namespace: str, builder: str = "kaniko", registry_host: str | None = None,
              also_watch: tuple[str, ...] = (), process_env: dict[str, str] | None = None,
              **settings: str) -> OperatorProcess:
        env = {
            "ENVKILN_REGISTRY": registry_host or registry.host,
            "ENVKILN_INSECURE_REGISTRY": "true",
            "ENVKILN_BUILDER": builder,
            "ENVKILN_BUILD_SYNC_SECONDS": "1",
            "ENVKILN_ENV_SYNC_SECONDS": "2",
            "ENVKILN_REGISTRY_RETRY_SECONDS": "2",
            "ENVKILN_WATCH_TIMEOUT_SECONDS": "20",
            "ENVKILN_BUILD_RETRY_BACKOFF_SECONDS": "1",
            "ENVKILN_CACHE_TTL_SECONDS": "0",
            **{f"ENVKILN_{k.upper()}": str(v) for k, v in settings.items()},
            **(process_env or {}),  # other variables of the operator's process (PATH...)
        }
        process = OperatorProcess(control_plane.kubeconfig, env, namespaces=[namespace, *also_watch],
                                  log_dir=tmp_path, name=f"operator-{len(started)}").start()
        started.append(process)
        # Fail fast with the operator's own message when it cannot start.
        deadline = time.monotonic() + 30
        while "envkiln operator" not in process.log():
            if process.exited() or time.monotonic() > deadline:
                pytest.fail(f"operator did not start: {process.exited()}\n{process.log()[-3000:]}")
            time.sleep(0.2)
        return process

    yield start
    for process in started:
        process.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for process in started:
            print(f"--- {process.name} log (tail) ---\n" + "\n".join(process.log().splitlines()[-80:]))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
