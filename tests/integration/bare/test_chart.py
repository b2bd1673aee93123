"""The Helm chart: lint, render, validate against the real API server, install for real, run the
operator under the chart's ServiceAccount, and enforce the reserved-name admission policy."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic

from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ControlPlane, ensure_binaries, install_crds
from harness.ports import free_port
from harness.process import ManagedProcess
from harness.rbac import (
    ALL_NAMESPACES_ONLY,
    OPERATOR_PERMISSIONS,
    OWN_NAMESPACE_PERMISSIONS,
    PUSH_IDENTITY,
    permissions_of,
)
from harness.records import seed_build
from harness.registry import Registry
from operator_helpers import GROUP, VERSION, Envs, environment, finish_job, image_for, play_kaniko_pod, wait_for

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "envkiln"
RELEASE_NAMESPACE = "envkiln-system"
CURATED_NAMESPACE = "envkiln-curated"  # curated.namespace: never the release namespace (its Secrets)
KUBE_VERSION = "1.34.4"


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
    ("webhook-off", ["operator.registry=r.example.com", "webhook.enabled=false", "userRoles.enabled=false"]),
    ("narrowed-network-policy", ["operator.registry=r.example.com", "operator.watchNamespaces={team-a}",
                                 "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/28"]),
]
READ, WRITE = ("get", "list", "watch"), ("create", "update", "patch", "delete")


def test_helm_lint_strict(helm: str) -> None:
    for _, values in VALUE_SETS:
        args = [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
        for value in values:
            args += ["--set", value]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_refuses_unknown_and_bad_values(helm: str) -> None:
    for bad in ("operator.registyr=x", "operator.builder=docker", "replicas=0", "operator.watchNamespaces={a,a}",
                "webhook.networkPolicy.from=x", "userRoles.enabled=maybe"):
        result = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                                 "--set", "operator.registry=r", "--set", bad], capture_output=True, text=True)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    missing = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "set operator.registry" in missing.stderr
    for curated in ("curated.namespace=Not_A_Namespace", "curated.createNamespace=maybe"):
        result = subprocess.run([helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                                 "--set", "operator.registry=r", "--set", curated], capture_output=True, text=True)
        assert "values don't meet the specifications of the schema" in result.stderr, curated
    # The curated namespace is never the release namespace (the signing key, the push identities).
    same = subprocess.run([helm, "template", "x", str(CHART), "-n", "ops", "--kube-version", KUBE_VERSION,
                           "--set", "operator.registry=r", "--set", "curated.namespace=ops"],
                          capture_output=True, text=True)
    assert same.returncode != 0 and 'curated.namespace "ops" is the release namespace' in same.stderr, same.stderr


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
    # A namespace the chart creates (the curated one) does not exist in a dry run before the install:
    # its objects are then validated in the release namespace.
    existing = {n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items}
    created = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"} - existing
    for document in documents:
        api = resources.get(api_version=document["apiVersion"], kind=document["kind"])
        namespace = document["metadata"].get("namespace") if api.namespaced else None
        if namespace in created:
            document = {**document, "metadata": {**document["metadata"], "namespace": release_namespace}}
            namespace = release_namespace
        # The real API server validates the object (schemas, CRDs, CEL) without storing it.
        api.create(body=document, namespace=namespace, query_params=[("dryRun", "All")])


def test_chart_crds_are_the_generated_ones() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


@pytest.fixture(scope="session")
def namespaced(api_client: client.ApiClient, release_namespace: str) -> dict[tuple[str, str], bool]:
    """(apiGroup, resource or resource/subresource) -> namespaced?, as the API server's discovery says
    (release_namespace: Kopf's peering CRDs are installed)."""
    groups = client.ApisApi(api_client).get_api_versions().groups
    paths = [("", "/api/v1"), *((g.name, f"/apis/{g.preferred_version.group_version}") for g in groups)]
    scopes = {}
    for group, path in paths:
        listing = json.loads(api_client.call_api("GET", api_client.configuration.host + path).read())
        for resource in listing["resources"]:
            scopes[(group, resource["name"])] = resource["namespaced"]
    return scopes


def operator_grants(documents: list[dict], fullname: str) -> dict[tuple[str | None, str], list[dict]]:
    """What the chart binds to the operator's ServiceAccount: (namespace the binding holds in, None
    for cluster-wide; role name) -> the role's rules."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["rules"]
             for d in documents if d["kind"] in ("Role", "ClusterRole")}
    grants = {}
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == fullname and s.get("namespace") == RELEASE_NAMESPACE
                   for s in binding.get("subjects") or []):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        grants[(scope, ref["name"])] = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
    return grants


def deployment_env(documents: list[dict]) -> dict[str, str]:
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    return {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_operator_rbac_grants_exactly_what_the_operator_uses(helm: str,
                                                             namespaced: dict[tuple[str, str], bool]) -> None:
    """Watching all namespaces: one ClusterRole, exactly OPERATOR_PERMISSIONS. Watching given ones:
    the namespaced part in a Role in each, the cluster-scoped part (less ALL_NAMESPACES_ONLY) in a
    ClusterRole. Either way, OWN_NAMESPACE_PERMISSIONS in a Role in the release namespace."""
    cluster_scoped = {p for p in OPERATOR_PERMISSIONS if not namespaced[(p[0], p[1])]}
    for name, values in VALUE_SETS:
        documents = render(helm, *values)
        fullname = next(d for d in documents if d["kind"] == "Deployment")["metadata"]["name"]
        env = deployment_env(documents)
        watched = [n for n in env["ENVKILN_NAMESPACES"].split(",") if n]
        grants = {}
        for key, rules in operator_grants(documents, fullname).items():
            for rule in rules:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            grants[key] = {tuple("RELEASE" if part == fullname else part for part in p) for p in permissions_of(rules)}
        if watched:  # each Secret read by name; the curated namespace pushes with the registry Secret
            readable = [env.get("ENVKILN_REGISTRY_SECRET"), *(PUSH_IDENTITY.format(namespace=n) for n in watched
                                                              if n != env["ENVKILN_CURATED_NAMESPACE"])]
            own = OWN_NAMESPACE_PERMISSIONS | {("", "secrets", "get", secret) for secret in readable if secret}
        else:  # push identities of namespaces unknown: any Secret read; created under the ClusterRole
            own = {p for p in OWN_NAMESPACE_PERMISSIONS if p[2] not in ("get", "create")} | {("", "secrets", "get")}
        expected = {(RELEASE_NAMESPACE, f"{fullname}-secrets"): own}
        if watched:
            expected[(None, fullname)] = cluster_scoped - ALL_NAMESPACES_ONLY
            expected.update({(namespace, fullname): OPERATOR_PERMISSIONS - cluster_scoped for namespace in watched})
        else:
            expected[(None, fullname)] = OPERATOR_PERMISSIONS
        assert grants.keys() == expected.keys(), name
        for key, permissions in expected.items():
            assert grants[key] - permissions == set(), f"{name}: {key} grants more than the operator uses"
            assert permissions - grants[key] == set(), f"{name}: {key} lacks permissions the operator uses"


def test_watching_given_namespaces_grants_roles_there_and_nothing_namespaced_cluster_wide(
        helm: str, namespaced: dict[tuple[str, str], bool]) -> None:
    documents = render(helm, "operator.registry=r.example.com", "operator.watchNamespaces={team-a,team-b}")
    grants = operator_grants(documents, "envkiln")
    # The curated namespace is watched too (and gets its Role and KopfPeering).
    assert {scope for scope, _ in grants} == {None, "team-a", "team-b", CURATED_NAMESPACE, RELEASE_NAMESPACE}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in documents if d["kind"] == "Role"}
    assert {("team-a", "envkiln"), ("team-b", "envkiln"), (CURATED_NAMESPACE, "envkiln")} <= roles
    assert {d["metadata"]["namespace"] for d in documents if d["kind"] == "KopfPeering"} == {
        "team-a", "team-b", CURATED_NAMESPACE}
    bound_cluster_roles = {b["roleRef"]["name"] for b in documents if b["kind"] == "ClusterRoleBinding"}
    # envkiln-crds: get/patch of envkiln's own CRDs (the adopting Job); envkiln-test: `helm test`'s reads.
    assert bound_cluster_roles == {"envkiln", "envkiln-crds", "envkiln-test"}
    for cluster_role in (d for d in documents if d["kind"] == "ClusterRole"):
        if cluster_role["metadata"]["name"] not in bound_cluster_roles:
            continue  # the user roles: bound by nobody in the chart, aggregated into view/edit/admin
        for group, resource, *_ in permissions_of(cluster_role["rules"]):
            assert not namespaced[(group, resource)], f"{group}/{resource} granted cluster-wide"
    # RoleBindings never reach for a ClusterRole either, and the webhook sees only watched namespaces.
    assert all(b["roleRef"]["kind"] == "Role" for b in documents if b["kind"] == "RoleBinding")
    webhook = next(d for d in documents if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In",
            "values": ["team-a", "team-b", CURATED_NAMESPACE]} in webhook["namespaceSelector"]["matchExpressions"]
    # Watching all namespaces is the only case with namespaced resources in the operator's ClusterRole.
    everywhere = operator_grants(render(helm, "operator.registry=r.example.com"), "envkiln")
    assert any(namespaced[(g, r)] for g, r, *_ in permissions_of(everywhere[(None, "envkiln")]))


def test_user_roles_render_as_aggregated_view_and_edit(helm: str) -> None:
    documents = render(helm, "operator.registry=r.example.com")
    roles = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ClusterRole"}
    view, edit = roles["envkiln-view"], roles["envkiln-edit"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}view": "true"}
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate)} == {
        f"{aggregate}edit": "true", f"{aggregate}admin": "true"}
    assert permissions_of(view["rules"]) == {("envkiln.dev", r, v) for r in ("environments", "environmentbuilds")
                                             for v in READ}
    assert permissions_of(edit["rules"]) == {("envkiln.dev", "environments", v) for v in WRITE}
    assert not [d for d in render(helm, "operator.registry=r.example.com", "userRoles.enabled=false")
                if d["metadata"]["name"] in ("envkiln-view", "envkiln-edit")]


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
    assert env["ENVKILN_CURATED_NAMESPACE"] == CURATED_NAMESPACE and env["ENVKILN_PEERING_PRIORITY"] == "random"
    assert deployment.spec.template.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert container.liveness_probe.http_get.path == "/healthz"
    curated = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "envkiln.dev", "v1alpha1", CURATED_NAMESPACE, "environments", label_selector="envkiln.dev/curated=true")
    names = sorted(item["metadata"]["name"] for item in curated["items"])
    assert len(names) >= 4 and all(name.startswith("azureml-") for name in names)
    # In their own namespace (which the chart created), not in the release namespace.
    labels = client.CoreV1Api(api_client).read_namespace(CURATED_NAMESPACE).metadata.labels
    assert labels["envkiln.dev/curated"] == "true"
    assert not client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "envkiln.dev", "v1alpha1", release_namespace, "environments",
        label_selector="envkiln.dev/curated=true")["items"]


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
                "ENVKILN_OPERATOR_NAMESPACE": release_namespace, "ENVKILN_CURATED_NAMESPACE": CURATED_NAMESPACE}
    envs = Envs(api_client, namespace)
    hit = {"image": "python:3.11-slim", "pip": ["rbac-hit==1.0"]}
    seed_build(api_client, namespace, hit, registry.host)  # a cache hit is a build the operator signed
    with OperatorProcess(kubeconfig, settings, namespaces=[namespace], log_dir=tmp_path) as operator:
        envs.create(environment("hit", **hit))
        envs.wait_phase("hit", "Ready", diagnostics=operator.log)
        build = {"image": "python:3.11-slim", "pip": ["rbac-build==1.0"]}
        envs.create(environment("build", **build))
        job = wait_for(envs.jobs, what="a Kaniko Job", diagnostics=operator.log)[0]
        destination = image_for(build, registry.host, namespace)
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
    # Allowed in the curated namespace, and there only: not in the release namespace either.
    custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", CURATED_NAMESPACE, "environments",
                                           environment("azureml-extra", image="python:3.11-slim", pip=["six"]))
    with pytest.raises(client.ApiException):
        custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", release_namespace, "environments",
                                               environment("azureml-extra", image="python:3.11-slim", pip=["six"]))
    custom.create_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments",
                                           environment("my-azureml-copy", image="python:3.11-slim", pip=["six"]))


def test_network_policy_admits_only_the_webhook_and_metrics_ports(helm: str, api_client: client.ApiClient,
                                                     installed_release: str, release_namespace: str) -> None:
    documents = render(helm, "operator.registry=r.example.com", "registry.enabled=true")
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 1
    spec = policies[0]["spec"]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    selector = spec["podSelector"]["matchLabels"]
    # It selects the operator's pods, and no other pod of the chart (the registry's).
    for workload in (d for d in documents if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert (workload is deployment) == (selector.items() <= labels.items()), workload["metadata"]["name"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert deployment_env(documents)["ENVKILN_WEBHOOK_PORT"] == str(ports["webhook"])
    assert deployment_env(documents)["ENVKILN_METRICS_PORT"] == str(ports["metrics"])
    # Inbound only, two rules: the webhook's and the metrics port from any peer; the health port and all else closed.
    assert spec["policyTypes"] == ["Ingress"]
    metrics_rule = {"ports": [{"protocol": "TCP", "port": ports["metrics"]}]}
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": ports["webhook"]}]}, metrics_rule]
    assert "egress" not in spec

    def policy(*values: str) -> dict[str, Any] | None:
        found = [d for d in render(helm, "operator.registry=r.example.com", *values) if d["kind"] == "NetworkPolicy"]
        return found[0] if found else None

    narrowed = policy("webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/28")
    assert narrowed is not None and narrowed["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": ports["webhook"]}], "from": [{"ipBlock": {"cidr": "10.0.0.0/28"}}]},
        metrics_rule]
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    only_metrics = policy("webhook.enabled=false",
                          "metrics.networkPolicyFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name"
                          "=monitoring")
    assert only_metrics is not None and only_metrics["spec"]["ingress"] == [{**metrics_rule, "from": [scraper]}]
    closed = policy("webhook.enabled=false", "metrics.enabled=false")
    assert closed is not None and closed["spec"]["ingress"] == [] and closed["spec"]["policyTypes"] == ["Ingress"]
    assert policy("webhook.networkPolicy.enabled=false") is None
    # The API server takes them: the installed release's for real, the others validated (dry run).
    networking = client.NetworkingV1Api(api_client)
    installed = api_client.sanitize_for_serialization(
        networking.read_namespaced_network_policy(installed_release, release_namespace))
    assert installed["spec"]["ingress"] == spec["ingress"] and installed["spec"]["policyTypes"] == ["Ingress"]
    for label, variant in (("narrowed", narrowed), ("closed", closed)):
        variant["metadata"]["name"] = f"{installed_release}-{label}"  # beside the installed one
        accepted = networking.create_namespaced_network_policy(release_namespace, variant, dry_run="All")
        assert accepted.spec.pod_selector.match_labels == selector


@pytest.fixture(scope="module")
def role_aggregation(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Kubernetes' own ClusterRole aggregation: the controller-manager with its clusterrole-aggregation
    controller alone (no Job controller or kubelet joins the bare control plane)."""
    bin_dir = ensure_binaries(("node",))
    process = ManagedProcess("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"), f"--kubeconfig={control_plane.kubeconfig}",
        "--controllers=clusterrole-aggregation", "--leader-elect=false", "--secure-port=0", "--v=1",
    ], tmp_path_factory.mktemp("aggregation") / "kube-controller-manager.log").start()
    try:
        yield
    finally:
        process.stop()


def test_user_roles_grant_environments_but_not_builds_or_status(installed_release: str,
                                                                api_client: client.ApiClient, namespace: str,
                                                                role_aggregation: None) -> None:
    """Users bound to the built-in view, edit and admin roles in a namespace, asked of the real API
    server (SubjectAccessReview, then real requests as that user)."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    users = {"viola": "view", "edgar": "edit", "adele": "admin"}
    for user, role in users.items():
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    authorization = client.AuthorizationV1Api(api_client)

    def allowed(user: str, verb: str, resource: str, subresource: str = "", where: str = namespace) -> bool:
        review = authorization.create_subject_access_review({"spec": {"user": user, "resourceAttributes": {
            "namespace": where, "group": GROUP, "resource": resource, "subresource": subresource, "verb": verb}}})
        return bool(review.status.allowed)

    # The aggregation controller folds envkiln-view into view (and so edit and admin), envkiln-edit into edit and admin.
    wait_for(lambda: all(allowed(u, "list", "environmentbuilds") for u in users)
             and allowed("edgar", "create", "environments") and allowed("adele", "create", "environments"),
             timeout=60, what="the chart's user roles aggregated into view, edit and admin")
    for user in users:
        for resource in ("environments", "environmentbuilds"):
            assert all(allowed(user, verb, resource) for verb in READ), (user, resource)
            for verb in ("get", "update", "patch"):
                assert not allowed(user, verb, resource, "status"), (user, verb, f"{resource}/status")
        assert not any(allowed(user, verb, "environmentbuilds") for verb in (*WRITE, "deletecollection")), user
        assert not allowed(user, "list", "environments", where="default"), "only where the user is bound"
    assert not any(allowed("viola", verb, "environments") for verb in WRITE)
    for user in ("edgar", "adele"):
        assert all(allowed(user, verb, "environments") for verb in WRITE), user

    # The same, done: edgar (edit) creates an Environment but neither an EnvironmentBuild nor a status.
    as_edgar = client.ApiClient(api_client.configuration, header_name="Impersonate-User", header_value="edgar")
    try:
        custom = client.CustomObjectsApi(as_edgar)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "environments",
                                               environment("edgars", image="python:3.11-slim", pip=["six"]))
        refusals = {
            "create environmentbuilds": lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "environmentbuilds",
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EnvironmentBuild", "metadata": {"name": "forged"},
                 "spec": {}}),
            "patch environments/status": lambda: custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "environments", "edgars", {"status": {"phase": "Ready"}}),
        }
        for what, call in refusals.items():
            with pytest.raises(client.ApiException) as refused:
                call()
            assert refused.value.status == 403, what
    finally:
        as_edgar.close()


@pytest.fixture(scope="module")
def scoped_release(helm: str, control_plane: ControlPlane, api_client: client.ApiClient, release_namespace: str,
                   registry: Registry) -> Iterator[dict[str, Any]]:
    """A second release watching two namespaces of its own: Roles there, a cluster-scoped-only ClusterRole."""
    core = client.CoreV1Api(api_client)
    suffix = uuid.uuid4().hex[:6]
    namespace, watched = f"envkiln-scoped-{suffix}", [f"scoped-a-{suffix}", f"scoped-b-{suffix}"]
    for name in watched:
        core.create_namespace({"metadata": {"name": name}})
    args = [helm, "install", "scoped", str(CHART), "-n", namespace, "--create-namespace",
            "--kubeconfig", str(control_plane.kubeconfig), "--set", f"operator.registry={registry.host}",
            "--set", "operator.insecureRegistry=true", "--set", f"operator.watchNamespaces={{{','.join(watched)}}}",
            "--set", "webhook.failurePolicy=Ignore", "--set", "curated.enabled=false",
            "--set", "admissionPolicy.enabled=false", "--set", "userRoles.enabled=false"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield {"release": "scoped", "fullname": "scoped-envkiln", "namespace": namespace, "watched": watched}
    finally:
        subprocess.run([helm, "uninstall", "scoped", "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig)],
                       capture_output=True, timeout=120)
        for name in (*watched, namespace):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(name)


def test_operator_works_under_namespaced_rbac(scoped_release: dict[str, Any], api_client: client.ApiClient,
                                              control_plane: ControlPlane, namespace: str, registry: Registry,
                                              tmp_path: Path) -> None:
    """The operator, watching two namespaces with the chart's Roles there and its cluster-scoped-only
    ClusterRole, with Kopf peering and the webhook on: it builds in a watched namespace and never
    meets a refusal; outside them it can do nothing."""
    from kubernetes import config as kube_config

    from harness.operator import OperatorProcess

    fullname, home, watched = scoped_release["fullname"], scoped_release["namespace"], scoped_release["watched"]
    kubeconfig = _service_account_kubeconfig(api_client, control_plane, home, fullname, tmp_path / "sa-kubeconfig")
    sa_api = kube_config.new_client_from_config(str(kubeconfig))
    try:
        as_operator = client.CustomObjectsApi(sa_api)
        as_operator.list_namespaced_custom_object(GROUP, VERSION, watched[0], "environments")
        for refused_call in (
                lambda: as_operator.list_namespaced_custom_object(GROUP, VERSION, namespace, "environments"),
                lambda: as_operator.list_cluster_custom_object(GROUP, VERSION, "environments"),
                lambda: client.CoreV1Api(sa_api).list_namespaced_secret(watched[0]),
                lambda: client.BatchV1Api(sa_api).list_job_for_all_namespaces()):
            with pytest.raises(client.ApiException) as denied:
                refused_call()
            assert denied.value.status == 403
    finally:
        sa_api.close()

    settings = {"ENVKILN_REGISTRY": registry.host, "ENVKILN_INSECURE_REGISTRY": "true",
                "ENVKILN_BUILD_SYNC_SECONDS": "1", "ENVKILN_ENV_SYNC_SECONDS": "2",
                "ENVKILN_OPERATOR_NAMESPACE": home, "ENVKILN_CURATED_NAMESPACE": f"{home}-curated",
                "ENVKILN_PEERING_NAME": "envkiln",
                "ENVKILN_WEBHOOK_ENABLED": "true", "ENVKILN_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
                "ENVKILN_WEBHOOK_PORT": str(free_port()), "ENVKILN_WEBHOOK_SERVICE": f"{fullname}-webhook",
                "ENVKILN_WEBHOOK_CONFIGURATION": fullname}
    inside, outside = Envs(api_client, watched[1]), Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": [f"rbac-scoped=={uuid.uuid4().int % 1000}.0"]}
    outside.create(environment("unwatched", **spec))
    # Not standalone: Kopf peers through the chart's KopfPeering in each watched namespace.
    with OperatorProcess(kubeconfig, settings, namespaces=watched, log_dir=tmp_path, standalone=False) as operator:
        inside.create(environment("scoped", **spec))
        wait_for(inside.jobs, timeout=60, what="a build Job in the watched namespace", diagnostics=operator.log)
        status = wait_for(lambda: (written := inside.status("scoped")).get("phase") and written,
                          what="the Environment's status", diagnostics=operator.log)
        assert status.get("build"), status
        # The webhook's start-up: its TLS Secret in the release namespace, the caBundle patched in.
        core, admission = client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client)
        assert core.read_namespaced_secret("envkiln-webhook-tls", home).data["tls.crt"]
        wait_for(lambda: admission.read_mutating_webhook_configuration(fullname).webhooks[0].client_config.ca_bundle,
                 what="the caBundle patched in", diagnostics=operator.log)
        # Untouched: only the CRD's default status, which the API server shows for every Environment.
        assert outside.get("unwatched").get("status") == {"observedGeneration": 0} and not outside.jobs(), \
            "the unwatched namespace"
        log = operator.log()
        # API refusals read "... is forbidden: User ... cannot ..."; Kopf's read "Not enough permissions".
        assert "forbidden" not in log.lower() and "not enough permissions" not in log.lower(), log[-3000:]


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
