"""The Helm chart: lint, render, validate against the real API server, install for real, run the
operator under the chart's ServiceAccount, and enforce the reserved-name admission policy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, dynamic

from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ControlPlane, ensure_binaries, install_crds
from harness.rbac import OPERATOR_PERMISSIONS, permissions_of
from harness.registry import Registry
from operator_helpers import Envs, environment, finish_job, image_for, play_kaniko_pod, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "envkiln"
RELEASE_NAMESPACE = "envkiln-system"
KUBE_VERSION = "1.34.4"


# These tests play the Kaniko executor's part (it cannot run here), writing its pod's and Job's
# status: they run on the bare control plane, where no Job controller or kubelet writes them too.
@pytest.fixture(scope="session")
def control_plane(bare_control_plane: ControlPlane) -> ControlPlane:
    return bare_control_plane


@pytest.fixture(scope="session")
def api_client(bare_api_client: client.ApiClient) -> client.ApiClient:
    return bare_api_client


@pytest.fixture(scope="session")
def helm() -> str:
    return str(ensure_binaries(("helm",)) / "helm")


def render(helm: str, *values: str, namespace: str = RELEASE_NAMESPACE) -> list[dict]:
    args = [helm, "template", "envkiln", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


VALUE_SETS = [
    ("defaults", ["operator.registry=registry.example.com:5000"]),
    ("in-cluster-registry", ["registry.enabled=true", "registry.nodePort=30500", "replicas=2"]),
    ("namespaced-with-secret", ["operator.registry=r.example.com", "operator.registrySecret=regcred",
                                "operator.watchNamespaces={team-a,team-b}", "curated.enabled=false",
                                "registry.enabled=true", "registry.persistence.enabled=false"]),
]


def test_helm_lint_strict(helm: str) -> None:
    for _, values in VALUE_SETS:
        args = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
        for value in values:
            args += ["--set", value]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_refuses_unknown_and_bad_values(helm: str) -> None:
    for bad in ("operator.registyr=x", "operator.builder=docker", "replicas=0"):
        result = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                                 "--set", "operator.registry=r", "--set", bad], capture_output=True, text=True)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    missing = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "set operator.registry" in missing.stderr


@pytest.fixture(scope="session")
def release_namespace(api_client: client.ApiClient) -> str:
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=RELEASE_NAMESPACE)))
    except client.ApiException as error:
        if error.status != 409:
            raise
    for extra in ("team-a", "team-b"):
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=extra)))
        except client.ApiException as error:
            if error.status != 409:
                raise
    install_crds(api_client, [CHART / "crds" / "kopf.dev_peerings.yaml"])
    return RELEASE_NAMESPACE


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=[n for n, _ in VALUE_SETS])
def test_rendered_manifests_pass_server_side_validation(helm: str, api_client: client.ApiClient,
                                                         release_namespace: str, values: list[str]) -> None:
    resources = dynamic.DynamicClient(api_client).resources
    documents = render(helm, *values)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    for document in documents:
        api = resources.get(api_version=document["apiVersion"], kind=document["kind"])
        namespace = document["metadata"].get("namespace") if api.namespaced else None
        # The real API server validates the object (schemas, CRDs, CEL) without storing it.
        api.create(body=document, namespace=namespace, query_params=[("dryRun", "All")])


def test_chart_crds_are_the_generated_ones() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


def test_cluster_role_grants_exactly_what_the_operator_uses(helm: str) -> None:
    for _, values in VALUE_SETS:
        roles = [d for d in render(helm, *values) if d["kind"] == "ClusterRole"]
        assert len(roles) == 1
        rules = roles[0]["rules"]
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        fullname = roles[0]["metadata"]["name"]
        granted = {tuple("RELEASE" if part == fullname else part for part in p) for p in permissions_of(rules)}
        assert granted - OPERATOR_PERMISSIONS == set(), "the ClusterRole grants more than the operator uses"
        assert OPERATOR_PERMISSIONS - granted == set(), "the ClusterRole lacks permissions the operator uses"


@pytest.fixture(scope="session")
def installed_release(helm: str, control_plane: ControlPlane, release_namespace: str,
                      registry: Registry) -> Iterator[str]:
    args = [helm, "install", "envkiln", str(CHART), "-n", release_namespace, "--kubeconfig",
            str(control_plane.kubeconfig), "--set", f"operator.registry={registry.host}",
            "--set", "operator.insecureRegistry=true",
            # No operator pod runs here (no kubelet): a fail-closed webhook would refuse the
            # labelled pods of the webhook tests sharing this API server.
            "--set", "webhook.failurePolicy=Ignore"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    yield "envkiln"


def test_helm_install_creates_the_release(installed_release: str, api_client: client.ApiClient,
                                          release_namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    deployment = apps.read_namespaced_deployment(installed_release, release_namespace)
    container = deployment.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert env["ENVKILN_CURATED_NAMESPACE"] == release_namespace and env["ENVKILN_PEERING_PRIORITY"] == "random"
    assert deployment.spec.template.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.liveness_probe.http_get.path == "/healthz"
    curated = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "envkiln.dev", "v1alpha1", release_namespace, "environments", label_selector="envkiln.dev/curated=true")
    names = sorted(item["metadata"]["name"] for item in curated["items"])
    assert len(names) >= 4 and all(name.startswith("azureml-") for name in names)


def _service_account_kubeconfig(api_client: client.ApiClient, control_plane: ControlPlane, namespace: str,
                                name: str, path: Path) -> Path:
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    assert control_plane.certs is not None
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": control_plane.url,
                                               "certificate-authority": str(control_plane.certs.ca_cert)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_works_under_the_chart_service_account(installed_release: str, api_client: client.ApiClient,
                                                        control_plane: ControlPlane, release_namespace: str,
                                                        namespace: str, registry: Registry,
                                                        tmp_path: Path) -> None:
    from harness.operator import OperatorProcess

    kubeconfig = _service_account_kubeconfig(api_client, control_plane, release_namespace, installed_release,
                                             tmp_path / "sa-kubeconfig")
    # The ServiceAccount really is limited: it cannot read Secrets in general.
    from kubernetes import config as kube_config
    sa_api = kube_config.new_client_from_config(str(kubeconfig))
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
    assert denied.value.status == 403

    settings = {"ENVKILN_REGISTRY": registry.host, "ENVKILN_INSECURE_REGISTRY": "true",
                "ENVKILN_BUILD_SYNC_SECONDS": "1", "ENVKILN_ENV_SYNC_SECONDS": "2",
                "ENVKILN_OPERATOR_NAMESPACE": release_namespace, "ENVKILN_CURATED_NAMESPACE": release_namespace}
    envs = Envs(api_client, namespace)
    hit = {"image": "python:3.11-slim", "pip": ["rbac-hit==1.0"]}
    push_archive(base_image_archive(), image_for(hit, registry.host))
    with OperatorProcess(kubeconfig, settings, namespaces=[namespace], log_dir=tmp_path) as operator:
        envs.create(environment("hit", **hit))
        envs.wait_phase("hit", "Ready", diagnostics=operator.log)
        build = {"image": "python:3.11-slim", "pip": ["rbac-build==1.0"]}
        envs.create(environment("build", **build))
        job = wait_for(envs.jobs, what="a Kaniko Job", diagnostics=operator.log)[0]
        destination = image_for(build, registry.host)
        digest = push_archive(base_image_archive(), destination)
        play_kaniko_pod(api_client, namespace, job, 0, digest)
        finish_job(api_client, namespace, job, succeeded=True)
        status = envs.wait_phase("build", "Ready", diagnostics=operator.log)
        assert status["imageDigest"] == digest
        # API refusals read "... is forbidden: User ... cannot ..." (a bare "403" could be a port number).
        assert "forbidden" not in operator.log().lower(), operator.log()[-3000:]


def test_reserved_names_policy(installed_release: str, api_client: client.ApiClient, release_namespace: str,
                               namespace: str) -> None:
    custom = client.CustomObjectsApi(api_client)
    body = environment("azureml-mine", image="python:3.11-slim", pip=["six"])

    def refused() -> str | None:
        try:
            custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments",
                                                   body, dry_run="All")
        except client.ApiException as error:
            return error.body if error.status in (403, 422) else None
        return None

    # The policy takes effect once the API server has loaded it.
    message = wait_for(refused, timeout=30, what="the reserved-name policy to refuse")
    assert "reserved prefix" in message and "rename the environment" in message
    microsoft = environment("microsoft-tools", image="python:3.11-slim", pip=["six"])
    with pytest.raises(client.ApiException):
        custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", microsoft)
    # Allowed in the curated namespace.
    custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", release_namespace, "environments",
                                           environment("azureml-extra", image="python:3.11-slim", pip=["six"]))
    custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments",
                                           environment("my-azureml-copy", image="python:3.11-slim", pip=["six"]))


@pytest.mark.timeout(900)
def test_operator_image_builds_and_runs_as_non_root(registry: Registry, base_image: str, tmp_path: Path) -> None:
    """operator/Dockerfile, built with buildah on the test base image (Debian + python3 3.11)."""
    from harness.buildah import buildah
    from harness.operator_image import operator_image_archive

    archive = operator_image_archive(base_image)
    image = f"{registry.host}/envkiln/operator:test"
    push_archive(archive, image)
    buildah("pull", "--tls-verify=false", image)
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["envkiln"]
    container = buildah("from", image).stdout.strip()
    try:
        version = buildah("run", "--isolation", "chroot", container, "--", "envkiln", "--version").stdout
        assert version.strip() == "envkiln 0.1.0"
        whoami = buildah("run", "--isolation", "chroot", container, "--", "id", "-u").stdout
        assert whoami.strip() == "10001"
    finally:
        buildah("rm", container, check=False)
        buildah("rmi", "--force", image, check=False)
