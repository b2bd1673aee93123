"""What Flux (`wait: true`, health checks) and kstatus-based gates see, computed by kstatus itself:
sigs.k8s.io/cli-utils' `status.Compute` (tests/controlplane/kstatus, built by build.sh) run on the
objects a real API server returns, at each point of an Environment's and an EnvironmentBuild's life.

The bare control plane and a registry on 127.0.0.1; the operator (Kaniko builder) makes the builds,
and the test plays the Kaniko executor's part (it cannot run here), as test_webhook.py does.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from envkiln.core.buildspec import build_manifest
from envkiln.core.conditions import kstatus as mirror
from envkiln.core.crdgen import UNRECONCILED_STATUS
from envkiln.core.models import EnvironmentSpec
from envkiln.core.names import BUILDS, ENVIRONMENTS, GROUP, VERSION
from envkiln.core.settings import OperatorSettings
from envkiln.core.trust import Signer
from harness.buildah import base_image_archive, push_archive
from harness.controlplane import ensure_binaries
from harness.records import TEST_SIGNING_KEY
from harness.registry import Registry
from operator_helpers import (
    Envs,
    condition,
    environment,
    finish_job,
    hash_of,
    image_for,
    play_kaniko_pod,
    wait_for,
)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """A registry of this module's own on 127.0.0.1 (the operator only checks and reads images)."""
    with Registry() as started:
        yield started


@pytest.fixture(scope="module")
def kstatus_binary() -> str:
    return str(ensure_binaries(("kstatus",)) / "kstatus")


def kstatus(binary: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as cli-utils' kstatus computes them for `obj`."""
    done = subprocess.run([binary], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=True)
    result = json.loads(done.stdout)
    return result["status"], result["message"]


def verdict(binary: str, obj: dict[str, Any]) -> tuple[str, str]:
    """kstatus's verdict on `obj`, checked against envkiln's own reading of it (core/conditions.kstatus,
    which `envkiln` and the unit tables use): the two must agree."""
    got = kstatus(binary, obj)
    assert mirror(obj) == got, f"core.conditions.kstatus disagrees with cli-utils on {obj.get('status')}"
    return got


def table(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, str]:
    """Column name -> cell of `kubectl get` (the API server's Table, printer columns and -o wide)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"
    data = json.loads(api.call_api("GET", api.configuration.host + path, header_params={
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).read())
    [row] = data["rows"]
    return {column["name"]: cell for column, cell in zip(data["columnDefinitions"], row["cells"], strict=True)}


def _build_of(envs: Envs, spec: dict[str, Any]) -> dict[str, Any]:
    return envs.build(f"envb-{hash_of(spec)}")


def test_objects_the_operator_has_not_seen_are_in_progress(api_client: client.ApiClient, namespace: str,
                                                           kstatus_binary: str) -> None:
    """No operator runs: the API server itself gives both kinds a status whose observedGeneration
    (0) is behind metadata.generation, so kstatus says InProgress, not Current, on create, read,
    list and watch."""
    custom = client.CustomObjectsApi(api_client)
    envs = Envs(api_client, namespace)
    created = envs.create(environment("unseen", image="python:3.11-slim", pip=["kstatus-unseen==1.0"]))
    assert created["status"] == UNRECONCILED_STATUS == {"observedGeneration": 0}
    got = envs.get("unseen")
    assert got["metadata"]["generation"] == 1 and got["status"] == {"observedGeneration": 0}
    assert verdict(kstatus_binary, got) == ("InProgress", "Environment generation is 1, but latest observed "
                                                          "generation is 0")
    # Without the default, kstatus calls the very same object Current: the finding this guards against.
    assert kstatus(kstatus_binary, {k: v for k, v in got.items() if k != "status"}) == ("Current",
                                                                                        "Resource is current")
    [listed] = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ENVIRONMENTS)["items"]
    assert listed["status"] == {"observedGeneration": 0}
    watched = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ENVIRONMENTS, watch=True,
                                                   timeout_seconds=1, _preload_content=False)
    events = [json.loads(line) for line in watched.read().decode().splitlines() if line.strip()]
    assert events and events[0]["object"]["status"] == {"observedGeneration": 0}
    # A later metadata-only edit keeps it (status is the status subresource's; the default stays).
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, ENVIRONMENTS, "unseen",
                                          {"metadata": {"labels": {"team": "a"}}})
    assert verdict(kstatus_binary, envs.get("unseen"))[0] == "InProgress"
    cells = table(api_client, ENVIRONMENTS, namespace, "unseen")
    assert cells["Ready"] is None and cells["Phase"] is None and cells["Message"] is None

    # An EnvironmentBuild as the operator creates it (signed, no status).
    spec = {"image": "python:3.11-slim", "pip": ["kstatus-unseen==1.0"]}
    body = build_manifest(Signer(TEST_SIGNING_KEY.encode()), OperatorSettings(registry="127.0.0.1:1"), namespace,
                          EnvironmentSpec.model_validate(spec), hash_of(spec))
    assert "status" not in body
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS, body)
    build = envs.build(body["metadata"]["name"])
    assert build["status"] == {"observedGeneration": 0}
    assert verdict(kstatus_binary, build) == ("InProgress", "EnvironmentBuild generation is 1, but latest observed "
                                                            "generation is 0")


def test_kstatus_follows_a_real_build_to_ready_and_a_spec_change(
        api_client: client.ApiClient, namespace: str, registry: Registry, start_operator: Any,
        kstatus_binary: str) -> None:
    envs = Envs(api_client, namespace)
    operator = start_operator(namespace)
    spec = {"image": "python:3.11-slim", "pip": ["kstatus-ready==1.0"]}
    envs.create(environment("ready", **spec))

    # Building: the operator made the EnvironmentBuild and its Job; both are InProgress.
    envs.wait_phase("ready", "Building", diagnostics=operator.log)
    job = wait_for(envs.jobs, what="the Kaniko Job", diagnostics=operator.log)[0]
    building = envs.get("ready")
    status, message = verdict(kstatus_binary, building)
    assert status == "InProgress" and message == condition(building["status"], "Reconciling")["message"]
    assert f"envb-{hash_of(spec)}" in message
    build = wait_for(lambda: (b := _build_of(envs, spec)).get("status", {}).get("phase") == "Building" and b,
                     what="the build Building", diagnostics=operator.log)
    assert verdict(kstatus_binary, build) == ("InProgress", condition(build["status"], "Reconciling")["message"])
    cells = table(api_client, ENVIRONMENTS, namespace, "ready")
    assert cells["Phase"] == "Building" and cells["Ready"] == "False" and "building" in cells["Message"]

    # Ready: Current for both.
    digest = push_archive(base_image_archive(), image_for(spec, registry.host, namespace))
    play_kaniko_pod(api_client, namespace, job, 0, digest)
    finish_job(api_client, namespace, job, succeeded=True)
    ready = envs.wait_phase("ready", "Ready", diagnostics=operator.log)
    assert verdict(kstatus_binary, envs.get("ready")) == ("Current", "Resource is Ready")
    build = wait_for(lambda: (b := _build_of(envs, spec)).get("status", {}).get("phase") == "Succeeded" and b,
                     what="the build Succeeded", diagnostics=operator.log)
    assert verdict(kstatus_binary, build) == ("Current", "Resource is Ready")
    cells = table(api_client, ENVIRONMENTS, namespace, "ready")
    assert cells["Ready"] == "True" and cells["Message"] == ready["message"]
    cells = table(api_client, BUILDS, namespace, build["metadata"]["name"])
    assert cells["Phase"] == "Succeeded" and cells["Ready"] == "True" and digest in cells["Message"]

    # A spec change the operator has not seen yet (it is stopped): generation 2, observed 1.
    operator.stop()
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, ENVIRONMENTS, "ready", {"spec": {"description": "now described"}})
    changed = envs.get("ready")
    assert changed["metadata"]["generation"] == 2 and changed["status"]["phase"] == "Ready"
    assert verdict(kstatus_binary, changed) == ("InProgress", "Environment generation is 2, but latest observed "
                                                              "generation is 1")
    # Seen again (a description does not change the image): Current.
    operator.start()
    wait_for(lambda: envs.get("ready")["status"]["observedGeneration"] == 2, what="generation 2 observed",
             diagnostics=operator.log)
    assert verdict(kstatus_binary, envs.get("ready")) == ("Current", "Resource is Ready")


def test_kstatus_says_failed_when_the_build_fails(api_client: client.ApiClient, namespace: str,
                                                  start_operator: Any, kstatus_binary: str) -> None:
    envs = Envs(api_client, namespace)
    operator = start_operator(namespace, build_retry_limit="0")
    spec = {"image": "python:3.11-slim", "pip": ["kstatus-fails==1.0"]}
    envs.create(environment("doomed", **spec))
    job = wait_for(envs.jobs, what="the Kaniko Job", diagnostics=operator.log)[0]
    play_kaniko_pod(api_client, namespace, job, 1, "ERROR: No matching distribution found for kstatus-fails==1.0")
    finish_job(api_client, namespace, job, succeeded=False)
    failed = envs.wait_phase("doomed", "Failed", diagnostics=operator.log)
    status, message = verdict(kstatus_binary, envs.get("doomed"))
    assert status == "Failed" and message == failed["message"] and "failed" in message
    build = wait_for(lambda: (b := _build_of(envs, spec)).get("status", {}).get("phase") == "Failed" and b,
                     what="the build Failed", diagnostics=operator.log)
    status, message = verdict(kstatus_binary, build)
    assert status == "Failed" and message == condition(build["status"], "Stalled")["message"]
    assert "attempt 1 failed" in message
    cells = table(api_client, ENVIRONMENTS, namespace, "doomed")
    assert cells["Phase"] == "Failed" and cells["Ready"] == "False" and cells["Message"] == failed["message"]
