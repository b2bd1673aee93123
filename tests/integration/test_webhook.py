"""Training workloads consume environments through the real API server calling the operator's
admission webhook on 127.0.0.1: image digests, variables, scheduling gates, anonymous environments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ControlPlane
from harness.ports import free_port
from harness.registry import Registry
from harness.webhook import webhook_configuration
from operator_helpers import Envs, environment, finish_job, hash_of, image_for, play_kaniko_pod, wait_for

GATE = "envkiln.dev/environment"


# These tests play the Kaniko executor's part (it cannot run here), writing its pod's and Job's
# status: they run on the bare control plane, where no Job controller or kubelet writes them too.
@pytest.fixture(scope="session")
def control_plane(bare_control_plane: ControlPlane) -> ControlPlane:
    return bare_control_plane


@pytest.fixture(scope="session")
def api_client(bare_api_client: client.ApiClient) -> client.ApiClient:
    return bare_api_client


@pytest.fixture()
def webhook_operator(api_client: client.ApiClient, namespace: str, start_operator) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The operator with its webhook on 127.0.0.1, and a MutatingWebhookConfiguration like the chart's."""
    port = free_port()
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"envkiln-{namespace}"
    admission.create_mutating_webhook_configuration(webhook_configuration(name, port, namespace))
    operator = start_operator(namespace, webhook_enabled="true", webhook_listen_address="127.0.0.1",
                              webhook_port=str(port), webhook_hosts="127.0.0.1", webhook_configuration=name,
                              operator_namespace=namespace, max_concurrent_builds="20")
    core = client.CoreV1Api(api_client)

    def serving() -> bool:
        try:
            core.create_namespaced_pod(namespace, pod("probe", "nonexistent-env"), dry_run="All")
        except client.ApiException as error:
            return "does not exist" in (error.body or "")
        return False

    wait_for(serving, timeout=60, what="the webhook to answer", diagnostics=operator.log)
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


def test_job_on_a_ready_environment_runs_its_digest(api_client: client.ApiClient, namespace: str,
                                                    registry: Registry, webhook_operator: Any) -> None:
    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["webhook-ready==1.0"],
            "environmentVariables": {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}}
    push_archive(base_image_archive(), image_for(spec, registry.host))
    envs.create(environment("pytorch-cpu", **spec))
    status = envs.wait_phase("pytorch-cpu", "Ready", diagnostics=webhook_operator.log)
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
    digest = push_archive(base_image_archive(), image_for(spec, registry.host))
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
    digest1 = push_archive(base_image_archive(), image_for(v1, registry.host))
    envs.create(environment("hist", **v1))
    envs.wait_phase("hist", "Ready", diagnostics=webhook_operator.log)
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
    anonymous = envs.custom.list_namespaced_custom_object("envkiln.dev", "v1alpha1", namespace, "environments",
                                                          label_selector="envkiln.dev/anonymous=true")["items"]
    assert [a["metadata"]["name"] for a in anonymous] == [name]
    wait_for(lambda: len(envs.builds()) == 1, what="one build", diagnostics=webhook_operator.log)
    wait_for(lambda: len(envs.jobs()) == 1, what="one Job", diagnostics=webhook_operator.log)


def test_cli_image_and_list(api_client: client.ApiClient, namespace: str, registry: Registry,
                            webhook_operator: Any, kubeconfig_env: str) -> None:
    import subprocess
    import sys

    envs = Envs(api_client, namespace)
    spec = {"image": "python:3.11-slim", "pip": ["cli-image==1.0"]}
    push_archive(base_image_archive(), image_for(spec, registry.host))
    envs.create(environment("named", **spec))
    status = envs.wait_phase("named", "Ready", diagnostics=webhook_operator.log)
    anon_spec = {"image": "python:3.11-slim", "pip": ["cli-image==1.0"], "description": "inline"}
    client.CoreV1Api(api_client).create_namespaced_pod(
        namespace, pod("anon", "inline", {"envkiln.dev/environment-spec": json.dumps(anon_spec)}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "envkiln.cli", *args], capture_output=True, text=True,
                              env={"KUBECONFIG": kubeconfig_env, "PATH": "/usr/bin:/bin"})

    assert cli("image", "named", "-n", namespace).stdout.strip() == status["imageRef"]
    assert cli("image", "named:1", "-n", namespace).stdout.strip() == status["imageRef"]
    missing = cli("image", "named:4", "-n", namespace)
    assert missing.returncode == 1 and "no version '4'" in missing.stderr
    listing = cli("list", "-n", namespace).stdout
    assert "named" in listing and "anonymous-" not in listing
    anonymous = f"anonymous-{hash_of(anon_spec)}"
    wait_for(lambda: envs.status(anonymous).get("phase") == "Ready", what="the anonymous environment Ready",
             diagnostics=webhook_operator.log)
    assert anonymous in cli("list", "--anonymous", "-n", namespace).stdout
    by_hash = cli("image", "--hash", hash_of(anon_spec)[:12], "-n", namespace)
    assert by_hash.stdout.strip() == status["imageRef"], by_hash.stderr
