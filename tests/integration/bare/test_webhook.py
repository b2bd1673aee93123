"""Training workloads consume environments through the real API server calling the operator's
admission webhook on 127.0.0.1: image digests, variables, scheduling gates, anonymous environments."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client, config

from envkiln.adapters import webhookcert
from envkiln.adapters.kube import Kube
from harness.buildah import base_image_archive, push_archive
from harness.certs import make_ca, sign
from harness.controlplane import ControlPlane, install_crds
from harness.operator import OperatorProcess
from harness.ports import free_port
from harness.registry import Registry
from harness.webhook import admission_control_config, webhook_configuration
from operator_helpers import Envs, environment, finish_job, hash_of, image_for, play_kaniko_pod, wait_for

GATE = "envkiln.dev/environment"


@pytest.fixture()
def webhook_operator(api_client: client.ApiClient, namespace: str, operator_namespace: str,
                     start_operator) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The operator with its webhook on 127.0.0.1, and a MutatingWebhookConfiguration like the chart's."""
    port = free_port()
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"envkiln-{namespace}"
    admission.create_mutating_webhook_configuration(webhook_configuration(name, port, namespace))
    operator = start_operator(namespace, webhook_enabled="true", webhook_listen_address="127.0.0.1",
                              webhook_port=str(port), webhook_hosts="127.0.0.1", webhook_configuration=name,
                              operator_namespace=operator_namespace, max_concurrent_builds="20")
    wait_until_serving(client.CoreV1Api(api_client), namespace, 60, operator.log)
    yield operator
    admission.delete_mutating_webhook_configuration(name)


def pod(name: str, env_label: str, annotations: dict[str, str] | None = None,
        containers: list[dict] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"envkiln.dev/environment": env_label},
                         "annotations": annotations or {}},
            "spec": {"restartPolicy": "Never",
                     "containers": containers or [{"name": "trainer", "image": "placeholder",
                                                   "env": [{"name": "OMP_NUM_THREADS", "value": "8"}]}]}}


def wait_until_serving(core: client.CoreV1Api, namespace: str, timeout: float, log: Any) -> None:
    """Until the API server gets the webhook's answer (a dry-run pod naming no Environment)."""
    def serving() -> bool:
        try:
            core.create_namespaced_pod(namespace, pod("probe", "nonexistent-env"), dry_run="All")
        except client.ApiException as error:
            return "does not exist" in (error.body or "")
        return False

    wait_for(serving, timeout=timeout, what="the API server to reach the webhook", diagnostics=log)


def pod_from_job(api: client.ApiClient, namespace: str, job: dict[str, Any], index: int = 0) -> client.V1Pod:
    """What the Job controller does: a pod from the Job's template (no controller-manager runs here)."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    created = batch.create_namespaced_job(namespace, job)
    template = api.sanitize_for_serialization(created.spec.template)
    template["metadata"]["name"] = f"{job['metadata']['name']}-{index}"
    template["metadata"]["labels"]["job-name"] = job["metadata"]["name"]
    return core.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod", **template})


def training_job(name: str, env_ref: str) -> dict[str, Any]:
    env_name = env_ref.split(":")[0]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {"envkiln.dev/environment": env_name},
                             "annotations": {"envkiln.dev/environment": env_ref,
                                             "envkiln.dev/container": "trainer"}},
                "spec": {"restartPolicy": "Never", "containers": [
                    {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "1"]},
                    {"name": "trainer", "image": "placeholder", "command": ["python", "train.py"]}]}}}}


def build_ready(api: client.ApiClient, namespace: str, registry: Registry, operator: Any, name: str,
                spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(status, digest): the Environment created and built, the Kaniko part played (a cache hit
    needs the operator's own signed record, which only its build writes while it runs)."""
    envs = Envs(api, namespace)
    envs.create(environment(name, **spec))
    value = hash_of(spec)
    job = wait_for(lambda: [j for j in envs.jobs() if value in j.metadata.name], what="the Kaniko Job",
                   diagnostics=operator.log)[0]
    digest = push_archive(base_image_archive(), image_for(spec, registry.host, namespace))
    play_kaniko_pod(api, namespace, job, 0, digest)
    finish_job(api, namespace, job, succeeded=True)
    return envs.wait_phase(name, "Ready", diagnostics=operator.log), digest


def test_job_on_a_ready_environment_runs_its_digest(api_client: client.ApiClient, namespace: str,
                                                    registry: Registry, webhook_operator: Any) -> None:
    spec = {"image": "python:3.11-slim", "pip": ["webhook-ready==1.0"],
            "environmentVariables": {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}}
    status, _ = build_ready(api_client, namespace, registry, webhook_operator, "pytorch-cpu", spec)
    created = pod_from_job(api_client, namespace, training_job("train", "pytorch-cpu"))
    sidecar, trainer = created.spec.containers
    assert trainer.image == status["imageRef"] and "@sha256:" in trainer.image
    assert sidecar.image == "busybox:1.36", "only the named container changes"
    assert {e.name: e.value for e in trainer.env} == {"OMP_NUM_THREADS": "1",
                                                       "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert not created.spec.scheduling_gates


def test_pod_waits_behind_a_gate_until_the_build_finishes(api_client: client.ApiClient, namespace: str,
                                                          registry: Registry, webhook_operator: Any) -> None:
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["webhook-gate==1.0"], "environmentVariables": {"A": "1"}}
    envs.create(environment("slow", **spec))
    envs.wait_phase("slow", "Building", diagnostics=webhook_operator.log)
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_pod(namespace, pod("early", "slow"))
    assert [g.name for g in created.spec.scheduling_gates] == [GATE]
    assert created.spec.containers[0].image == "placeholder"
    assert {e.name: e.value for e in created.spec.containers[0].env} == {"OMP_NUM_THREADS": "8", "A": "1"}
    job = wait_for(envs.jobs, what="the Kaniko Job", diagnostics=webhook_operator.log)[0]
    digest = push_archive(base_image_archive(), image_for(spec, registry.host, namespace))
    play_kaniko_pod(api_client, namespace, job, 0, digest)
    finish_job(api_client, namespace, job, succeeded=True)
    status = envs.wait_phase("slow", "Ready", diagnostics=webhook_operator.log)
    released = wait_for(lambda: (p := core.read_namespaced_pod("early", namespace)).spec.scheduling_gates is None
                        and p, what="the gate to be removed", diagnostics=webhook_operator.log)
    assert released.spec.containers[0].image == status["imageRef"]


def test_failed_environment_reports_on_the_waiting_pod(api_client: client.ApiClient, namespace: str,
                                                       webhook_operator: Any) -> None:
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["webhook-fails==1.0"]}
    envs.create(environment("doomed", **spec))
    envs.wait_phase("doomed", "Building", diagnostics=webhook_operator.log)
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, pod("waiting", "doomed"))
    for attempt in (1, 2, 3):
        job = wait_for(lambda a=attempt: [j for j in envs.jobs() if j.metadata.name.endswith(f"-{a}")],
                       what=f"attempt {attempt}", diagnostics=webhook_operator.log)[0]
        play_kaniko_pod(api_client, namespace, job, 1, "ERROR: resolution impossible")
        finish_job(api_client, namespace, job, succeeded=False)
    envs.wait_phase("doomed", "Failed", diagnostics=webhook_operator.log)

    def reported() -> Any:
        conditions = core.read_namespaced_pod("waiting", namespace).status.conditions or []
        return next((c for c in conditions if c.type == "envkiln.dev/EnvironmentReady"), None)

    condition = wait_for(reported, what="a pod condition", diagnostics=webhook_operator.log)
    assert condition.status == "False" and condition.reason == "EnvironmentFailed"
    assert "doomed" in condition.message
    assert any(e.reason == "EnvironmentFailed" for e in envs.events("waiting"))


@pytest.mark.parametrize(("label", "annotations", "expected"), [
    ("nope", {}, "Environment 'nope' does not exist"),
    ("inline", {"envkiln.dev/environment-spec": "image: python:3.11\npip: ['numpy; rm -rf /']"},
     "spec.pip[0]"),
    ("inline", {"envkiln.dev/environment-spec": "{not yaml"}, "not valid YAML/JSON"),
    ("inline", {"envkiln.dev/environment-spec": "[1, 2]"}, "must be a mapping"),
    ("versioned", {"envkiln.dev/environment": "versioned:9"}, "has no version '9'"),
    ("versioned", {"envkiln.dev/container": "missing"}, "no container named 'missing'"),
], ids=["unknown", "bad-inline-spec", "inline-not-yaml", "inline-not-mapping", "unknown-version",
        "unknown-container"])
def test_bad_requests_are_refused_with_clear_messages(api_client: client.ApiClient, namespace: str,
                                                      webhook_operator: Any, label: str,
                                                      annotations: dict[str, str], expected: str) -> None:
    envs = Envs(api_client, namespace)
    if label == "versioned":
        envs.create(environment("versioned", image="python:3.11-slim", pip=["six"]))
    with pytest.raises(client.ApiException) as error:
        client.CoreV1Api(api_client).create_namespaced_pod(namespace, pod("refused", label, annotations))
    assert error.value.status == 400
    assert expected in json.loads(error.value.body)["message"]


def test_version_from_history(api_client: client.ApiClient, namespace: str, registry: Registry,
                              webhook_operator: Any) -> None:
    envs = Envs(api_client, namespace)
    v1 = {"image": "python:3.11-slim", "pip": ["webhook-history==1.0"]}
    _, digest1 = build_ready(api_client, namespace, registry, webhook_operator, "hist", v1)
    envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments", "hist",
                                               {"spec": {"version": "2", "pip": ["webhook-history==2.0"]}})
    wait_for(lambda: envs.status("hist").get("observedGeneration") == 2, what="version 2 seen")
    core = client.CoreV1Api(api_client)
    old = core.create_namespaced_pod(namespace, pod("old", "hist", {"envkiln.dev/environment": "hist:1"}))
    assert old.spec.containers[0].image.endswith(digest1) and not old.spec.scheduling_gates
    latest = core.create_namespaced_pod(namespace, pod("latest", "hist"))
    assert [g.name for g in latest.spec.scheduling_gates] == [GATE], "version 2 is still building"


def test_same_inline_spec_gives_one_anonymous_environment_and_one_build(
        api_client: client.ApiClient, namespace: str, webhook_operator: Any) -> None:
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["anonymous-one==1.0"], "environmentVariables": {"X": "y"}}
    annotations = {"envkiln.dev/environment-spec": yaml.safe_dump(spec)}
    core = client.CoreV1Api(api_client)
    first = core.create_namespaced_pod(namespace, pod("anon-1", "inline", annotations))
    second = core.create_namespaced_pod(namespace, pod("anon-2", "inline",
                                                       {"envkiln.dev/environment-spec": json.dumps(spec)}))
    name = f"anonymous-{hash_of(spec)}"
    for created in (first, second):
        assert created.metadata.labels["envkiln.dev/environment"] == name
        assert [g.name for g in created.spec.scheduling_gates] == [GATE]
        variables = {e.name: e.value for e in created.spec.containers[0].env}
        assert variables["X"] == "y"
    # The webhook made nothing: the operator makes the Environment when its watch sees the gated pods.
    def anonymous() -> list[str]:
        return [a["metadata"]["name"] for a in envs.custom.list_namespaced_custom_object(
            "envkiln.dev", "v1alpha1", namespace, "environments", label_selector="envkiln.dev/anonymous=true")["items"]]

    wait_for(lambda: anonymous() == [name], what="the anonymous Environment", diagnostics=webhook_operator.log)
    wait_for(lambda: len(envs.builds()) == 1, what="one build", diagnostics=webhook_operator.log)
    wait_for(lambda: len(envs.jobs()) == 1, what="one Job", diagnostics=webhook_operator.log)


def test_a_pre_created_anonymous_environment_with_another_spec_is_refused(
        api_client: client.ApiClient, namespace: str, webhook_operator: Any) -> None:
    """The anonymous Environment's name follows from the inline spec's hash, so a tenant can create it
    first with another spec; the webhook refuses to hand its image to the pod."""
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["anonymous-victim==1.0"]}
    name = f"anonymous-{hash_of(spec)}"
    envs.create({**environment(name, image="python:3.11-slim", pip=["anonymous-evil==6.6.6"]),
                 "metadata": {"name": name, "labels": {"envkiln.dev/anonymous": "true"}}})
    with pytest.raises(client.ApiException) as error:
        client.CoreV1Api(api_client).create_namespaced_pod(
            namespace, pod("victim", "inline", {"envkiln.dev/environment-spec": yaml.safe_dump(spec)}))
    assert error.value.status == 400
    message = json.loads(error.value.body)["message"]
    assert f"Environment {name} exists but its spec is not the pod's inline spec" in message, message


def test_cli_image_and_list(api_client: client.ApiClient, namespace: str, registry: Registry,
                            webhook_operator: Any, kubeconfig_env: str) -> None:
    import subprocess
    import sys

    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["cli-image==1.0"]}
    status, _ = build_ready(api_client, namespace, registry, webhook_operator, "named", spec)
    anon_spec = {"image": "python:3.11-slim", "pip": ["cli-image==1.0"], "description": "inline"}
    client.CoreV1Api(api_client).create_namespaced_pod(
        namespace, pod("anon", "inline", {"envkiln.dev/environment-spec": json.dumps(anon_spec)}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "envkiln.cli", *args], capture_output=True, text=True,
                              env={"KUBECONFIG": kubeconfig_env, "PATH": "/usr/bin:/bin"})

    assert cli("image", "named", "-n", namespace).stdout.strip() == status["imageRef"]
    assert cli("image", "named:1", "-n", namespace).stdout.strip() == status["imageRef"]
    missing = cli("image", "named:4", "-n", namespace)
    assert missing.returncode == 5 and "no version '4'" in missing.stderr  # not found (envkiln.cli.errors)
    listing = cli("list", "-n", namespace).stdout
    assert "named" in listing and "anonymous-" not in listing
    anonymous = f"anonymous-{hash_of(anon_spec)}"
    wait_for(lambda: envs.status(anonymous).get("phase") == "Ready", what="the anonymous environment Ready",
             diagnostics=webhook_operator.log)
    assert anonymous in cli("list", "--anonymous", "-n", namespace).stdout
    by_hash = cli("image", "--hash", hash_of(anon_spec)[:12], "-n", namespace)
    assert by_hash.stdout.strip() == status["imageRef"], by_hash.stderr


# --- curated environments: usable from every namespace, NAME@latest ---------------------------------------

def test_curated_environments_are_used_from_another_namespace_and_latest_is_the_newest_built(
        api_client: client.ApiClient, control_plane: ControlPlane, namespace: str, registry: Registry,
        tmp_path: Path) -> None:
    """A pod in a tenant namespace names `curated/NAME` (annotation; `curated_NAME` in the label): the webhook
    reads NAME from the curated namespace, trusting only what the operator wrote there from builds it signed.
    `@latest` is the newest version that was built; a curated version not built is refused, never gated.
    A tenant's own Environment with the same name is used only by the plain name."""
    core, admission = client.CoreV1Api(api_client), client.AdmissionregistrationV1Api(api_client)
    curated = _new_namespace(api_client)
    port, name = free_port(), f"envkiln-{namespace}"
    admission.create_mutating_webhook_configuration(webhook_configuration(name, port, namespace))
    operator = OperatorProcess(control_plane.kubeconfig, {
        "ENVKILN_REGISTRY": registry.host, "ENVKILN_INSECURE_REGISTRY": "true", "ENVKILN_BUILDER": "kaniko",
        "ENVKILN_BUILD_SYNC_SECONDS": "1", "ENVKILN_ENV_SYNC_SECONDS": "2", "ENVKILN_REGISTRY_RETRY_SECONDS": "2",
        "ENVKILN_WATCH_TIMEOUT_SECONDS": "20", "ENVKILN_BUILD_RETRY_BACKOFF_SECONDS": "1",
        "ENVKILN_CACHE_TTL_SECONDS": "0", "ENVKILN_CURATED_NAMESPACE": curated,
        "ENVKILN_WEBHOOK_ENABLED": "true", "ENVKILN_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
        "ENVKILN_WEBHOOK_PORT": str(port), "ENVKILN_WEBHOOK_HOSTS": "127.0.0.1",
        "ENVKILN_WEBHOOK_CONFIGURATION": name, "ENVKILN_OPERATOR_NAMESPACE": namespace,
    }, namespaces=[namespace, curated], log_dir=tmp_path, name="operator-curated").start()
    try:
        wait_until_serving(core, namespace, 60, operator.log)
        v1 = {"image": "python:3.11-slim", "pip": ["curated-shared==1.0"], "environmentVariables": {"FROM": "curated"}}
        status1, _ = build_ready(api_client, curated, registry, operator, "shared-sklearn", v1)
        assert f"/envkiln/{curated}/" in status1["imageRef"], "built under the curated namespace's path"
        # The tenant's own Environment of the same name (still building): only the plain name means it.
        Envs(api_client, namespace).create(environment("shared-sklearn", image="python:3.11-slim",
                                                       pip=["tenant-own==6.6.6"]))

        by_label = core.create_namespaced_pod(namespace, pod("by-label", "curated_shared-sklearn"))
        assert by_label.spec.containers[0].image == status1["imageRef"] and not by_label.spec.scheduling_gates
        assert {e.name: e.value for e in by_label.spec.containers[0].env}["FROM"] == "curated"
        assert by_label.metadata.annotations["envkiln.dev/environment"] == "curated/shared-sklearn"
        own = core.create_namespaced_pod(namespace, pod("own", "shared-sklearn"))
        assert own.spec.containers[0].image == "placeholder" and [g.name for g in own.spec.scheduling_gates] == [GATE]

        # Version 2 of the curated environment: while it builds, @latest is version 1, the current one refused.
        v2 = {**v1, "pip": ["curated-shared==2.0"]}
        envs = Envs(api_client, curated)
        envs.custom.patch_namespaced_custom_object("envkiln.dev", "v1alpha1", curated, "environments",
                                                   "shared-sklearn", {"spec": {"version": "2", "pip": v2["pip"]}})
        envs.wait_phase("shared-sklearn", "Building", diagnostics=operator.log)
        latest = core.create_namespaced_pod(namespace, pod("latest-1", "curated", {
            "envkiln.dev/environment": "curated/shared-sklearn@latest"}))
        assert latest.spec.containers[0].image == status1["imageRef"] and not latest.spec.scheduling_gates
        assert latest.metadata.annotations["envkiln.dev/environment"] == "curated/shared-sklearn:1"
        with pytest.raises(client.ApiException) as refused:
            core.create_namespaced_pod(namespace, pod("current", "curated_shared-sklearn"))
        assert refused.value.status == 400
        message = json.loads(refused.value.body)["message"]
        assert "is not built for its current version (phase Building)" in message, message
        assert "curated/shared-sklearn:1, or curated/shared-sklearn@latest" in message, message

        value = hash_of(v2)
        job = wait_for(lambda: [j for j in Envs(api_client, curated).jobs() if value in j.metadata.name],
                       what="version 2's Kaniko Job", diagnostics=operator.log)[0]
        digest2 = push_archive(base_image_archive(), image_for(v2, registry.host, curated))
        play_kaniko_pod(api_client, curated, job, 0, digest2)
        finish_job(api_client, curated, job, succeeded=True)
        status2 = envs.wait_phase("shared-sklearn", "Ready", diagnostics=operator.log)
        wait_for(lambda: envs.status("shared-sklearn").get("observedGeneration") == 2, what="version 2 Ready")
        latest = core.create_namespaced_pod(namespace, pod("latest-2", "curated", {
            "envkiln.dev/environment": "curated/shared-sklearn@latest"}))
        assert latest.spec.containers[0].image == status2["imageRef"] != status1["imageRef"]
        assert latest.metadata.annotations["envkiln.dev/environment"] == "curated/shared-sklearn:2"
        pinned = core.create_namespaced_pod(namespace, pod("pinned", "curated", {
            "envkiln.dev/environment": "curated/shared-sklearn:1"}))
        assert pinned.spec.containers[0].image == status1["imageRef"]

        with pytest.raises(client.ApiException) as unknown:
            core.create_namespaced_pod(namespace, pod("unknown", "curated_nope"))
        assert f"curated Environment 'nope' does not exist in the curated namespace {curated}" in json.loads(
            unknown.value.body)["message"]
    finally:
        operator.stop()
        admission.delete_mutating_webhook_configuration(name)
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(curated)


# --- mutual TLS: only the API server, with its client certificate, reaches the webhook -------------------
# The API server presents a client certificate to webhooks only when it starts with an admission
# configuration saying so, hence a control plane of these tests' own.


@dataclass
class MutualTLS:
    plane: ControlPlane
    api: client.ApiClient
    port: int  # the webhook's
    client_cert: Path  # the API server's certificate for webhooks (and its key)
    client_key: Path
    other_cert: Path  # from a CA the webhook does not trust
    other_key: Path


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTLS]:
    directory = tmp_path_factory.mktemp("webhook-mtls")
    client_ca, client_ca_key = make_ca(directory, "webhook-client-ca", "/CN=envkiln-test-webhook-client-ca")
    cert, key = sign(directory, "apiserver-webhook-client", "/CN=kube-apiserver-webhook-client", client_ca,
                     client_ca_key)
    other_ca, other_ca_key = make_ca(directory, "other-ca", "/CN=envkiln-test-other-ca")
    other_cert, other_key = sign(directory, "impostor", "/CN=kube-apiserver-webhook-client", other_ca, other_ca_key)
    port = free_port()
    admission = admission_control_config(directory, f"127.0.0.1:{port}", cert, key)
    with ControlPlane(extra_apiserver_args=[f"--admission-control-config-file={admission}"]) as plane:
        api = config.new_client_from_config(str(plane.kubeconfig))
        install_crds(api)
        yield MutualTLS(plane, api, port, cert, key, other_cert, other_key)
        api.close()


def _new_namespace(api: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def _post_review(port: int, ca_bundle: bytes, review: dict[str, Any],
                 cert: tuple[Path, Path] | None = None) -> tuple[int, dict[str, Any]]:
    """A direct call to the webhook, as anyone on the network could make it."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("POST", "/envkiln-environment", body=json.dumps(review),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def _handshake(port: int, ca_bundle: bytes, cert: tuple[Path, Path] | None, version: ssl.TLSVersion) -> None:
    """A TLS handshake alone with the webhook, at most `version`; raises ssl.SSLError when refused."""
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    context.maximum_version = version
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"


def _forged_review(namespace: str, claimed: str) -> dict[str, Any]:
    """An AdmissionReview for `namespace` whose pod claims to be in `claimed`."""
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "forged-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
        "namespace": namespace, "userInfo": {"username": "mallory"}, "dryRun": True,
        "object": pod("forged", "probe") | {"metadata": {"name": "forged", "namespace": claimed,
                                                         "labels": {"envkiln.dev/environment": "probe"}}}}}


def test_api_server_calls_the_webhook_with_its_client_certificate_and_nobody_else_can(
        mutual_tls: MutualTLS, tmp_path: Path) -> None:
    api, port = mutual_tls.api, mutual_tls.port
    namespace = _new_namespace(api)
    admission = client.AdmissionregistrationV1Api(api)
    name = f"envkiln-{namespace}"
    admission.create_mutating_webhook_configuration(webhook_configuration(name, port, namespace))
    closed = free_port()  # no registry: environments stay unbuilt, pods get a gate
    operator = OperatorProcess(mutual_tls.plane.kubeconfig, {
        "ENVKILN_REGISTRY": f"127.0.0.1:{closed}", "ENVKILN_INSECURE_REGISTRY": "true",
        "ENVKILN_REGISTRY_RETRY_SECONDS": "2", "ENVKILN_WATCH_TIMEOUT_SECONDS": "20",
        "ENVKILN_WEBHOOK_ENABLED": "true", "ENVKILN_WEBHOOK_LISTEN_ADDRESS": "127.0.0.1",
        "ENVKILN_WEBHOOK_PORT": str(port), "ENVKILN_WEBHOOK_HOSTS": "127.0.0.1",
        "ENVKILN_WEBHOOK_CONFIGURATION": name, "ENVKILN_OPERATOR_NAMESPACE": namespace,
        "ENVKILN_WEBHOOK_CLIENT_CA_FILE": str(mutual_tls.client_cert.parent / "webhook-client-ca.crt"),
    }, namespaces=[namespace], log_dir=tmp_path).start()
    core = client.CoreV1Api(api)
    try:
        wait_until_serving(core, namespace, 90, operator.log)

        # The API server's calls carry its certificate: a pod is admitted and changed.
        Envs(api, namespace).create(environment("mtls", image="python:3.11-slim", pip=["mtls-test==1.0"],
                                                environmentVariables={"MTLS": "yes"}))
        created = core.create_namespaced_pod(namespace, pod("trainer", "mtls"))
        assert [g.name for g in created.spec.scheduling_gates] == [GATE]
        assert {e.name: e.value for e in created.spec.containers[0].env} == {"OMP_NUM_THREADS": "8", "MTLS": "yes"}
        assert created.metadata.annotations["envkiln.dev/environment"] == "mtls"

        # The caBundle the operator patched in is the one it keeps in the Secret.
        bundle = base64.b64decode(admission.read_mutating_webhook_configuration(name).webhooks[0]
                                  .client_config.ca_bundle)
        secret = core.read_namespaced_secret("envkiln-webhook-tls", namespace)
        assert base64.b64decode(secret.data["ca.crt"]) == bundle
        served = x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"]))
        assert served.not_valid_after_utc - served.not_valid_before_utc <= datetime.timedelta(days=91)

        # Anyone else fails the TLS handshake: no certificate, or one from another CA. With TLS 1.2
        # the handshake itself fails; with TLS 1.3 the client finishes its half first and then
        # sees the server's alert, or the connection closed, instead of any HTTP response.
        review = _forged_review(namespace, namespace)
        for cert in (None, (mutual_tls.other_cert, mutual_tls.other_key)):
            with pytest.raises(ssl.SSLError):
                _handshake(port, bundle, cert, ssl.TLSVersion.TLSv1_2)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _post_review(port, bundle, review, cert)
        _handshake(port, bundle, (mutual_tls.client_cert, mutual_tls.client_key), ssl.TLSVersion.TLSv1_2)

        # Even with the API server's certificate, the namespace is the request's: a pod that
        # claims another one is refused before any handler runs.
        status, answer = _post_review(port, bundle, _forged_review(namespace, "curated"),
                                      (mutual_tls.client_cert, mutual_tls.client_key))
        assert status == 200 and answer["response"]["allowed"] is False, answer
        assert answer["response"]["uid"] == "forged-1"
        assert f"is 'curated' but the request is for namespace '{namespace}'" in answer["response"]["status"]["message"]
    finally:
        operator.stop()
        admission.delete_mutating_webhook_configuration(name)


def test_webhook_ca_is_kept_and_certificates_rotated_in_secrets(mutual_tls: MutualTLS) -> None:
    """The certificate Secrets through the product's Kube wrapper on the real API server, with a
    clock moved forward: the serving certificate is re-issued after 60 days from the same CA, the CA
    after about 7 years with the old one still in the bundle; a stale write loses."""
    api = mutual_tls.api
    namespace = _new_namespace(api)
    kube, core = Kube(api), client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    name = f"envkiln-rotation-{namespace}"
    admission.create_mutating_webhook_configuration(webhook_configuration(name, mutual_tls.port, namespace))
    hosts = ["envkiln-webhook.envkiln-system.svc", "envkiln-webhook"]
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    try:
        def at(days: float) -> webhookcert.WebhookCertificate:
            when = start + datetime.timedelta(days=days)
            return webhookcert.ensure_certificate(kube, namespace, "envkiln-webhook-tls", hosts, clock=lambda: when)

        def read(secret: str) -> Any:
            return core.read_namespaced_secret(secret, namespace)

        first = at(0)
        ca_secret, tls_secret = read("envkiln-webhook-tls-ca"), read("envkiln-webhook-tls")
        assert ca_secret.type == "Opaque" and set(ca_secret.data) == {"ca.crt", "ca.key"}
        assert tls_secret.type == "kubernetes.io/tls" and set(tls_secret.data) == {"ca.crt", "tls.crt", "tls.key"}
        assert webhookcert.patch_ca_bundle(kube, name, first.ca_pem) is True
        assert webhookcert.patch_ca_bundle(kube, name, first.ca_pem) is False

        assert at(30) == first
        assert read("envkiln-webhook-tls").metadata.resource_version == tls_secret.metadata.resource_version
        renewed = at(61)
        assert renewed.ca_pem == first.ca_pem and renewed.cert_pem != first.cert_pem
        assert read("envkiln-webhook-tls-ca").metadata.resource_version == ca_secret.metadata.resource_version

        rotated = at(7 * 365)
        new_ca, old_ca = x509.load_pem_x509_certificates(rotated.ca_pem)
        assert old_ca == x509.load_pem_x509_certificate(first.ca_pem)
        x509.load_pem_x509_certificate(rotated.cert_pem).verify_directly_issued_by(new_ca)
        assert webhookcert.patch_ca_bundle(kube, name, rotated.ca_pem) is True
        patched = admission.read_mutating_webhook_configuration(name).webhooks[0].client_config.ca_bundle
        assert base64.b64decode(patched) == rotated.ca_pem

        # A replica that read the Secret before another one wrote it loses, and reads theirs.
        stale = read("envkiln-webhook-tls")
        at(7 * 365 + 61)  # another replica re-issues
        body = {"metadata": {"name": "envkiln-webhook-tls", "namespace": namespace}, "type": "kubernetes.io/tls",
                "data": {key: base64.b64encode(b"stale").decode() for key in ("ca.crt", "tls.crt", "tls.key")}}
        current, replaced = kube.replace_secret_if_unchanged(namespace, body, stale.metadata.resource_version)
        assert not replaced and base64.b64decode(current.data["tls.crt"]) != b"stale"
    finally:
        admission.delete_mutating_webhook_configuration(name)
